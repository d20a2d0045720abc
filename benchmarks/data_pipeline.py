"""Clips/s for 16x224x224 training clips from bigbuckbunny.mp4 (720p) and bikes.mp4 through (a) the plain loop,
(b) a torch DataLoader with 2 workers, (c) the Ray Data pipeline with 2 actors, and (ref) the usual VideoMAE
path: decode the whole window from the start, convert every frame to PIL, crop and resize per frame.

    python benchmarks/data_pipeline.py [--clips 24] [--shared ../shared/data]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import av
import numpy as np
import torch

from sigma_ray.data.annotations import VideoRecord
from sigma_ray.data.clips import ClipMaker, epoch_rows
from sigma_ray.data.config import DataConfig
from sigma_ray.data.decode import VideoDecodeError
from sigma_ray.data.iterator import ClipIterator, collate
from sigma_ray.data import sampling, transforms


class RowDataset(torch.utils.data.Dataset):
    """The same ClipMaker behind a map-style dataset (bad videos become None and are dropped in collate)."""

    def __init__(self, config, rows):
        self.maker, self.rows = ClipMaker(config, "train"), rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        try:
            return self.maker(self.rows[i])
        except VideoDecodeError:
            return None


def pil_reference(path: str, config: DataConfig, rng: np.random.Generator):
    """The frame-by-frame VideoMAE path (decord/PIL style): decode from the start to the end of the window,
    keep the sampled frames as PIL images, then crop + resize each image."""
    with av.open(path) as c:
        n = c.streams.video[0].frames
        idx = sampling.dense_indices(n, config.num_frames, config.sampling_rate, rng)
        wanted, images = set(idx.tolist()), {}
        for i, frame in enumerate(c.decode(video=0)):
            if i in wanted:
                images[i] = frame.to_image()
            if i >= idx[-1]:
                break
    w, h = images[idx[0]].size
    top, left, ch, cw = transforms.multi_scale_crop_box(h, w, config.input_size, config.scales, 1, rng)
    size = (config.input_size, config.input_size)
    return np.stack([np.asarray(images[i].crop((left, top, left + cw, top + ch)).resize(size)) for i in idx])


def rate(batches, clips: int) -> tuple[float, float]:
    """(clips/s overall, clips/s after the first batch): the second excludes worker/actor start-up."""
    t = time.perf_counter()
    got, first = 0, None
    for b in batches:
        if first is None:
            first, first_n = time.perf_counter(), len(b["labels"])
        got += len(b["labels"])
    end = time.perf_counter()
    assert got == clips, (got, clips)
    return clips / (end - t), (clips - first_n) / max(end - first, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    videos = [str(Path(args.shared) / "videos" / n) for n in ("bigbuckbunny.mp4", "bikes.mp4")]
    records = [VideoRecord(videos[i % 2], 0, i) for i in range(args.clips)]
    cfg = DataConfig(batch_size=4, num_actors_min=2, num_actors_max=2, actor_num_cpus=1.0)
    rows = epoch_rows(records, cfg, "train", 0)
    results = {}

    results["plain loop (1 process)"] = rate(ClipIterator(cfg, "train", records=records), args.clips)
    loader = torch.utils.data.DataLoader(
        RowDataset(cfg, rows), batch_size=cfg.batch_size, num_workers=2,
        collate_fn=lambda s: collate([x for x in s if x is not None]))
    results["DataLoader, 2 workers"] = rate(loader, args.clips)

    import ray
    from sigma_ray.data.pipeline import ClipPipeline
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results["Ray Data, 2 actors"] = rate(ClipPipeline(cfg, "train", records).iter_torch_batches(0), args.clips)
    ray.shutdown()

    rng = np.random.default_rng(0)
    results["PIL per-frame reference (1 process)"] = rate(
        ({"labels": pil_reference(videos[i % 2], cfg, rng)[:1]} for i in range(args.clips)), args.clips)

    print(f"{'':38s} {'overall':>9s} {'steady':>9s}  (clips/s; steady = after the first batch)")
    for name, (r, steady) in results.items():
        print(f"{name:38s} {r:9.2f} {steady:9.2f}")
    (plain, _), (dl, dl_s), (ray_rate, ray_s), (pil, _) = results.values()
    print(f"Ray / DataLoader (same 2 cores): overall {ray_rate / dl:.2f}x, steady {ray_s / dl_s:.2f}x")
    print(f"DataLoader / plain: {dl / plain:.2f}x   Ray / plain: {ray_rate / plain:.2f}x")
    print(f"plain (seek + resize in decoder) / PIL per-frame reference, one core each: {plain / pil:.2f}x")


if __name__ == "__main__":
    main()
