"""Linear probe on cached features: seconds per probe (the timing the unit tests do not assert).

    PYTHONPATH=. python benchmarks/linear_probe.py [--n 300] [--dim 192] [--classes 10] [--epochs 100]

Gaussian class blobs (as tests/test_eval_linear.py makes them), BatchNorm + linear head, SGD and AdamW, one CPU
thread per probe; prints the median of ``--repeats`` runs and the probe's top-1 (a sanity check, ~100%).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from sigma_ray.eval.features import Features
from sigma_ray.eval.linear import linear_probe


def blobs(n: int, dim: int, classes: int, seed: int) -> Features:
    fixed = torch.Generator().manual_seed(123)
    centers = torch.randn(classes, dim, generator=fixed)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    return Features(centers[y] + 0.3 * torch.randn(n, dim, generator=g), y, torch.arange(n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    train, val = blobs(args.n, args.dim, args.classes, 0), blobs(args.n, args.dim, args.classes, 1)
    print(f"{args.n} x {args.dim} features, {args.classes} classes, {args.epochs} epochs")
    print("| optimizer | seconds per probe (median) | top-1 |\n| --- | --- | --- |")
    for optimizer in ("sgd", "adamw"):
        seconds = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = linear_probe(train, val, args.classes, epochs=args.epochs, optimizer=optimizer, seed=0)
            seconds.append(time.perf_counter() - t0)
        print(f"| {optimizer} | {statistics.median(seconds):.2f} | {out['linear_top1']:.1f} |")


if __name__ == "__main__":
    main()
