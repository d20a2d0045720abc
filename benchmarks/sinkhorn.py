"""Sinkhorn-Knopp: milliseconds per call, extra memory and error against float64, for each implementation.

Pure PyTorch (no Ray). The issue's setting on an H100:

    PYTHONPATH=. python benchmarks/sinkhorn.py --n 22528 --k 3000 --iterations 10 --device cuda

Rows: the released code's loop (float32 exp with no max shift, the K x N matrix rescaled twice per iteration),
this project's log-domain path, its scaled path (the default whenever exact), and the scaled path compiled.
The error columns compare with the textbook loop in float64 on the same scores: max |codes - ref| and the
fraction of tokens whose hard code (argmax) is the same.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from sigma_ray.method.sinkhorn import sinkhorn


@torch.no_grad()
def released_style(scores: torch.Tensor, eps: float, iterations: int) -> torch.Tensor:
    """The common SwAV-derived loop: no max subtraction (overflows below eps ~ 0.0113), matrix rescaled in place."""
    q = torch.exp(scores.float() / eps).t()
    q /= q.sum()
    k, n = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= n
    return (q * n).t()


@torch.no_grad()
def _textbook64(scores: torch.Tensor, eps: float, iterations: int) -> torch.Tensor:
    logits = scores.double() / eps
    q = torch.exp(logits - logits.max()).t()
    q /= q.sum()
    k, n = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True) * k
        q /= q.sum(dim=0, keepdim=True) * n
    return (q * n).t()


def timed(fn, device: torch.device, repeats: int, warmup: int = 2) -> tuple[float, float, torch.Tensor]:
    """(ms per call, peak extra bytes during a call, the last output)."""
    for _ in range(warmup):
        out = fn()
    del out
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    ms = 1e3 * (time.perf_counter() - start) / repeats
    extra = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else float("nan")
    return ms, extra, out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=22528, help="tokens (masked tokens of the batch)")
    p.add_argument("--k", type=int, default=3000, help="prototypes")
    p.add_argument("--d", type=int, default=256, help="feature width")
    p.add_argument("--eps", type=float, default=0.05)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="dtype the scores arrive in")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    g = torch.Generator(device="cpu").manual_seed(0)
    feats = F.normalize(torch.randn(args.n, args.d, generator=g), dim=1)
    protos = F.normalize(torch.randn(args.k, args.d, generator=g), dim=1)
    scores = (feats @ protos.t()).to(device=device, dtype=getattr(torch, args.dtype))
    ref = _textbook64(scores, args.eps, args.iterations)
    matrix_bytes = args.n * args.k * 4

    rows = [("released-style loop (fp32, no max shift)", lambda: released_style(scores, args.eps, args.iterations)),
            ("log domain (exact for any eps)", lambda: sinkhorn(scores, args.eps, args.iterations, score_bound=1e9)),
            ("scaled vectors (default)", lambda: sinkhorn(scores, args.eps, args.iterations))]
    if not args.no_compile:
        compiled = torch.compile(sinkhorn)
        rows.append(("scaled vectors, torch.compile", lambda: compiled(scores, args.eps, args.iterations)))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}, torch {torch.__version__}; N={args.n} K={args.k} eps={args.eps} "
          f"iterations={args.iterations}, scores in {args.dtype}; one K x N float32 = {matrix_bytes / 2**20:.0f} MiB")
    print(f"{'implementation':44s} {'ms/call':>9s} {'extra K x N':>11s} {'max |err|':>10s} {'codes =':>8s}")
    for label, fn in rows:
        ms, extra, out = timed(fn, device, args.repeats)
        finite = bool(torch.isfinite(out).all())
        err = (out.double() - ref).abs().max().item() if finite else float("inf")
        same = (out.argmax(1) == ref.argmax(1)).float().mean().item()
        print(f"{label:44s} {ms:9.2f} {extra / matrix_bytes:11.2f} {err:10.2e} {same:8.4f}"
              + ("" if finite else "  (non-finite output)"))


if __name__ == "__main__":
    main()
