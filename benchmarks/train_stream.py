"""What the trainer waits for: the training stream (Ray Data, one clip actor) alone, consumed by a loop that
sleeps ``--step-ms`` per batch in place of the optimizer step, on the demo's data set (1,600 train videos of 32
frames at 32x32, written under ``--data`` on first use). Once without and once with the decode cache
(``data.decode_cache_mb``), in one Ray session:

    python benchmarks/train_stream.py --batches 1000 --step-ms 30

Per variant: seconds to the first batch, the longest wait after it, the total, and the mean wait per batch after
the first epoch (the cache's steady state). What a trainer can gain is the total minus ``batches x step``.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

from sigma_ray.demo import DemoConfig, pretrain_config


def consume(data, batches: int, step_s: float) -> dict[str, float]:
    import ray

    from sigma_ray.data.pipeline import ClipPipeline
    from sigma_ray.train.cursor import DataCursor
    from sigma_ray.train.dataset import in_order, training_stream

    pipeline = ClipPipeline(data, "train")
    per_epoch = len(pipeline.records) // data.batch_size
    ds = training_stream(pipeline, per_epoch * data.batch_size, -(-batches // per_epoch) + 1, DataCursor.remote())
    ds.context.execution_options = in_order()
    t0 = time.perf_counter()
    waits = []
    it = iter(ds.iter_torch_batches(batch_size=data.batch_size, drop_last=True, prefetch_batches=2))
    for _ in range(batches):
        t = time.perf_counter()
        next(it)
        waits.append(time.perf_counter() - t)
        time.sleep(step_s)
    total = time.perf_counter() - t0
    ray.kill(pipeline.stats_actor)
    later = waits[per_epoch:]
    return {"first_s": waits[0], "max_wait_s": max(waits[1:]), "total_s": total,
            "wait_ms_after_epoch0": 1e3 * sum(later) / max(1, len(later))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="runs/bench_stream", help="where the demo's data set is (or is written)")
    p.add_argument("--batches", type=int, default=1000)
    p.add_argument("--step-ms", type=float, default=30.0)
    p.add_argument("--cache-mb", type=float, default=512.0)
    args = p.parse_args()

    import ray

    from sigma_ray.data.synthetic import ensure_synthetic
    from sigma_ray.infra.ray_session import init_ray

    demo = DemoConfig(out_dir=args.data)
    data = pretrain_config(demo, "videomae").data
    ensure_synthetic(demo.synthetic, data)
    init_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    print(f"| decode cache | first batch (s) | longest wait after it (s) | total for {args.batches} batches (s) | "
          f"wait per batch after epoch 0 (ms) |\n| --- | --- | --- | --- | --- |")
    for cache in (0.0, args.cache_mb):
        r = consume(dataclasses.replace(data, decode_cache_mb=cache), args.batches, args.step_ms / 1e3)
        print(f"| {'off' if cache == 0 else f'{cache:g} MiB'} | {r['first_s']:.1f} | {r['max_wait_s']:.2f} | "
              f"{r['total_s']:.1f} | {r['wait_ms_after_epoch0']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
