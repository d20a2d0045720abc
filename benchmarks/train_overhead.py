"""What Ray Train + Ray Data cost on top of the core's step: the same model and batch, in one run,

(a) the core's ``train_step`` in a plain loop over batches already in memory (no data loading at all), and
(b) the Ray Train loop (1 worker) fed by the Ray Data clip pipeline, timed from its own step-time metrics after
    the pipeline is warm (the first ``--warm-steps`` are left out).

    python benchmarks/train_overhead.py --steps 120 --warm-steps 40
    python benchmarks/train_overhead.py --model-size micro --size 32 --patch 8 --batch 8 --objective videomae

The ratio (b)/(a) - 1 is the overhead; the goal is under 10% once the pipeline is warm. On a 2-core machine the
decode actors compete with the trainer for the same cores, so (b) also pays for decoding here; on a GPU node the
trainer's step runs on the GPU and decoding on the spare cores.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sigma_ray.data.iterator import ClipIterator
from sigma_ray.infra.config import from_dict
from sigma_ray.method.sigma import build_model
from sigma_ray.method.step import train_step
from sigma_ray.train.config import PretrainConfig
from sigma_ray.train.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[1]


def bench_config(synthetic: dict, storage: str, steps: int, args: argparse.Namespace, log_every: int
                 ) -> PretrainConfig:
    """local_tiny.yaml with the benchmark's model size, clip size, patch, objective and batch."""
    from sigma_ray.infra.config import load_yaml

    raw = load_yaml(ROOT / "experiments" / "configs" / "local_tiny.yaml")
    raw.update(name="overhead", storage_path=storage, synthetic=False)
    raw["model"].update(size=args.model_size, img_size=args.size, patch=args.patch)
    raw["objective"].update(kind=args.objective)
    raw["data"].update(root=synthetic["root"], train_list=synthetic["train"], val_list=synthetic["val"],
                       batch_size=args.batch, num_actors_max=1, input_size=args.size, decode_short_side=args.size,
                       patch=args.patch)
    raw["train"].update(max_steps=steps, epochs=100, steps_per_epoch=None, log_every=log_every,
                        checkpoint_every=10 * steps, probe_every=None)
    return from_dict(PretrainConfig, raw)


def plain_loop(config: PretrainConfig, steps: int, threads: int) -> float:
    """Median seconds per step of the core's train_step on batches decoded beforehand, on ``threads`` threads."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(config.model, config.objective)
    optimizer = build_optimizer(model, 1e-4, 0.05, (0.9, 0.95))
    batches = []
    for batch in ClipIterator(config.data, "train", as_torch=True):
        batches.append(batch)
        if len(batches) == 8:
            break
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        train_step(model, batches[i % len(batches)], optimizer)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[len(times) // 4:])


def ray_train_loop(config: PretrainConfig, warm_steps: int) -> tuple[float, float]:
    """(median seconds per step, median data wait per step) over the reported intervals after ``warm_steps``."""
    import ray

    from sigma_ray.train.launch import pretrain

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    result = pretrain(config)
    rows = [json.loads(line) for line in Path(result.run_dir, "metrics.jsonl").read_text().splitlines()]
    warm = [r for r in rows if r["step"] > warm_steps]
    return statistics.median(r["step_time_s"] for r in warm), statistics.median(r["data_wait_s"] for r in warm)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--warm-steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--model-size", default="tiny", help="a name in VIT_SIZES")
    p.add_argument("--size", type=int, default=64, help="clip height and width (pixels)")
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--objective", default="sigma_mlp", help="objective.kind, e.g. sigma_mlp or videomae")
    args = p.parse_args()

    from sigma_ray.data.synthetic import make_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        synthetic = make_synthetic(Path(tmp) / "synthetic", num_classes=4, train_per_class=16, val_per_class=1,
                                   frames=32, size=max(64, args.size))
        config = bench_config(synthetic, str(Path(tmp) / "runs"), args.steps, args, log_every=10)
        default_threads = torch.get_num_threads()
        # Ray gives a worker with a fractional CPU OMP_NUM_THREADS=1: the like-for-like loop runs on one thread.
        plain = plain_loop(config, max(args.steps // 2, 20), threads=1)
        plain_all = plain_loop(config, max(args.steps // 2, 20), threads=default_threads)
        ray_step, ray_wait = ray_train_loop(config, args.warm_steps)
    print(f"\n{args.model_size} model, {args.objective}, batch {args.batch}, "
          f"{config.model.num_frames}x{config.model.img_size}^2 clips, patch {args.patch}, "
          f"K={config.objective.num_prototypes}")
    print("| path | ms/step | clips/s | data wait ms/step |\n| --- | --- | --- | --- |")
    print(f"| core train_step, batches in memory, {default_threads} threads | {plain_all * 1e3:.0f} "
          f"| {args.batch / plain_all:.1f} | 0 |")
    print(f"| core train_step, batches in memory, 1 thread | {plain * 1e3:.0f} | {args.batch / plain:.1f} | 0 |")
    print(f"| Ray Train (1 worker, 1 thread) + Ray Data, warm | {ray_step * 1e3:.0f} | {args.batch / ray_step:.1f} "
          f"| {ray_wait * 1e3:.0f} |")
    print(f"overhead against the 1-thread loop: {100 * (ray_step / plain - 1):+.1f}% (goal < 10%)")


if __name__ == "__main__":
    main()
