"""Speed, memory and numerics of the SIGMA training step, one optimization at a time, side by side in one run.

Pure PyTorch (no Ray): runs on the GPU machine as ``PYTHONPATH=. python benchmarks/train_step.py``.

    # the issue's reference setting on an H100
    PYTHONPATH=. python benchmarks/train_step.py --size base --batch 16 --device cuda
    # a quick CPU run
    PYTHONPATH=. python benchmarks/train_step.py --size tiny --frames 16 --img 64 --batch 8 --device cpu

Each row of the ladder adds one change to the row above: float32 eager with the math attention kernel and
the for-each AdamW -> bf16 autocast -> flash/efficient SDPA kernels -> fused AdamW -> ``torch.compile`` of the
model. Every row starts from the same weights and batch; its loss and hard codes on that batch are compared
with the float32 eager row (relative loss error, fraction of identical codes). A batch-size sweep of the final
path finds the batch that runs fastest per clip, and the achieved matmul rate is computed from an operation
count of the step (forward + backward = 3x the forward's multiply-adds x 2).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from sigma_ray.method.masking import MaskConfig, MaskGenerator, num_masked
from sigma_ray.method.sigma import ObjectiveConfig, SigmaModel
from sigma_ray.method.step import forward_backward, normalize_clips, optimizer_step
from sigma_ray.method.vit import VIT_SIZES, ModelConfig

H100_BF16_TFLOPS = 800.0  # measured 8192^3 bf16 matmul rate on the lent H100


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    amp: bool = False
    fast_attention: bool = False
    fused_adamw: bool = False
    compile: bool = False


LADDER = [
    Variant("fp32 eager (math SDPA, foreach AdamW)"),
    Variant("+ bf16 autocast", amp=True),
    Variant("+ flash/efficient SDPA", amp=True, fast_attention=True),
    Variant("+ fused AdamW", amp=True, fast_attention=True, fused_adamw=True),
    Variant("+ torch.compile(model)", amp=True, fast_attention=True, fused_adamw=True, compile=True),
]


def step_gflop(model: ModelConfig, objective: ObjectiveConfig, ratio: float) -> float:
    """Multiply-add count x 2 of one clip's forward, x 3 for forward + backward, in GFLOP."""
    size = VIT_SIZES[model.size]
    t, h, w = model.grid
    n = t * h * w
    n_mask = num_masked(model.grid, ratio)
    n_vis = n - n_mask

    def blocks(tokens: int, dim: int, depth: int) -> float:
        linear = tokens * (4 * dim * dim + 2 * dim * int(dim * size.mlp_ratio))
        attention = 2 * tokens * tokens * dim
        return depth * (linear + attention)

    macs = n * model.tube_pixels * size.embed_dim  # patch embedding (all tokens, then gathered)
    macs += blocks(n_vis, size.embed_dim, size.depth)
    macs += n_vis * size.embed_dim * size.decoder_dim + blocks(n, size.decoder_dim, size.decoder_depth)
    if objective.kind == "videomae":
        macs += n_mask * size.decoder_dim * model.tube_pixels
    else:
        d = objective.feature_dim
        macs += n_mask * size.decoder_dim * d
        if objective.kind == "sigma_mlp":
            dims = (model.tube_pixels, 1024, 1024, 512, d)
            macs += n_mask * sum(a * b for a, b in zip(dims[:-1], dims[1:]))
        macs += 2 * n_mask * d * objective.num_prototypes  # both sides' prototype scores
    return 3 * 2 * macs / 1e9


def make_batch(model: ModelConfig, mask: MaskConfig, batch: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    clips = rng.integers(0, 256, (batch, model.num_frames, model.img_size, model.img_size, 3), dtype=np.uint8)
    masks = MaskGenerator(model.grid, mask).batch(batch, rng)
    return {"clips": torch.from_numpy(clips), "masks": torch.from_numpy(masks)}


def build(model_cfg: ModelConfig, objective: ObjectiveConfig, variant: Variant, device: torch.device):
    torch.manual_seed(0)
    model = SigmaModel(model_cfg, objective).to(device)
    fused = variant.fused_adamw and device.type == "cuda"
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                  betas=(0.9, 0.95), weight_decay=0.05, fused=fused, foreach=not fused)
    runner = torch.compile(model) if variant.compile else model
    return model, runner, optimizer


def attention_context(variant: Variant):
    if variant.fast_attention:
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe(runner, batch: dict, device: torch.device, amp: bool) -> tuple[float, torch.Tensor | None]:
    """Loss and the video side's hard codes (or None for the pixel objective) on ``batch``, no update."""
    masks = batch["masks"]
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        out = runner(normalize_clips(batch["clips"], device), masks.to(device), num_masked=int(masks[0].sum()))
    codes = out.get("codes_video")
    return float(out["loss"]), None if codes is None else codes.cpu()


def run_variant(model_cfg, objective, mask, variant, device, batch_size, steps, warmup, reference=None):
    model, runner, optimizer = build(model_cfg, objective, variant, device)
    batch = make_batch(model_cfg, mask, batch_size)
    with attention_context(variant):
        loss, codes = probe(runner, batch, device, variant.amp)
        amp_dtype = torch.bfloat16 if variant.amp else None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for i in range(warmup + steps):
            if i == warmup:
                sync(device)
                start = time.perf_counter()
            forward_backward(runner, batch, device, amp_dtype)
            optimizer_step(model, optimizer)
        sync(device)
        seconds = (time.perf_counter() - start) / steps
    row = {"variant": variant.name, "batch": batch_size, "ms_step": 1e3 * seconds,
           "clips_s": batch_size / seconds, "loss": loss,
           "peak_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")}
    if reference is not None:
        row["loss_rel_err"] = abs(loss - reference[0]) / abs(reference[0])
        row["codes_equal"] = float((codes == reference[1]).float().mean()) if codes is not None else float("nan")
    del model, runner, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row, (loss, codes)


def print_table(rows: list[dict], gflop: float, device: torch.device) -> None:
    print(f"\n{'variant':42s} {'batch':>5s} {'ms/step':>9s} {'clips/s':>8s} {'peak GB':>8s} "
          f"{'TFLOP/s':>8s} {'%peak':>6s} {'loss rel err':>12s} {'codes =':>8s}")
    for r in rows:
        tflops = gflop * r["clips_s"] / 1e3
        pct = f"{100 * tflops / H100_BF16_TFLOPS:5.1f}%" if device.type == "cuda" else "   n/a"
        err = f"{r['loss_rel_err']:12.2e}" if "loss_rel_err" in r else f"{'-':>12s}"
        same = f"{r['codes_equal']:8.3f}" if "codes_equal" in r else f"{'-':>8s}"
        print(f"{r['variant']:42s} {r['batch']:5d} {r['ms_step']:9.1f} {r['clips_s']:8.1f} {r['peak_gb']:8.2f} "
              f"{tflops:8.2f} {pct:>6s} {err} {same}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="base", choices=sorted(VIT_SIZES))
    p.add_argument("--objective", default="sigma_mlp", choices=["sigma_mlp", "videomae"])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--sweep-batches", default="", help="comma-separated batch sizes for the final path")
    p.add_argument("--prototypes", type=int, default=3000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variants", default="", help="comma-separated indices into the ladder (default: all)")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    model_cfg = ModelConfig(size=args.size, num_frames=args.frames, img_size=args.img)
    objective = ObjectiveConfig(kind=args.objective, num_prototypes=args.prototypes, sinkhorn_eps=0.05,
                                sinkhorn_iterations=10)
    mask = MaskConfig()
    gflop = step_gflop(model_cfg, objective, mask.ratio)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}, torch {torch.__version__}; {args.size} {args.objective} {args.frames}x{args.img}^2, "
          f"K={args.prototypes}, {gflop:.1f} GFLOP per clip (fwd+bwd)")
    ladder = [LADDER[int(i)] for i in args.variants.split(",")] if args.variants else LADDER
    rows, reference = [], None
    for variant in ladder:
        row, result = run_variant(model_cfg, objective, mask, variant, device, args.batch, args.steps, args.warmup,
                                  reference)
        reference = reference or result
        rows.append(row)
        print(f"  done: {row['variant']}: {row['clips_s']:.1f} clips/s", flush=True)
    for b in [int(b) for b in args.sweep_batches.split(",") if b]:
        row, _ = run_variant(model_cfg, objective, mask, ladder[-1], device, b, args.steps, args.warmup, reference=None)
        rows.append(row)
        print(f"  done: batch {b}: {row['clips_s']:.1f} clips/s", flush=True)
    print_table(rows, gflop, device)


if __name__ == "__main__":
    main()
