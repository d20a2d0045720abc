"""A plain single-process iterator over the same decode + augment + mask code as the Ray pipeline (no Ray).

For notebooks, tests and the GPU benchmark. Batches are dicts: ``clips`` uint8 (B, T, H, W, C), ``masks`` bool
(B, N), ``labels`` int64 (B,), ``video_ids`` int64 (B,), and for the test split ``views`` int64 (B,). With
repeated sampling (train, ``num_repeats > 1``) every row gives ``num_repeats`` samples, each its own batch entry
(the repeat index is in ``views``), so B counts clips, not videos.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from sigma_ray.data.annotations import VideoRecord, load_split
from sigma_ray.data.clips import ClipMaker, Row, Sample, epoch_rows
from sigma_ray.data.config import DataConfig
from sigma_ray.data.decode import VideoDecodeError
from sigma_ray.data.stats import SkipStats


def has_views(config: DataConfig, split: str) -> bool:
    """Whether batches of ``split`` carry ``views``: the test split, and train with repeated sampling."""
    return split == "test" or config.samples_per_row(split) > 1


def collate(samples: list[Sample], with_views: bool = False) -> dict[str, np.ndarray]:
    """Stack samples into the batch dict layout (numpy)."""
    batch = {
        "clips": np.stack([s.clip for s in samples]),
        "masks": np.stack([s.mask for s in samples]),
        "labels": np.array([s.label for s in samples], dtype=np.int64),
        "video_ids": np.array([s.video_id for s in samples], dtype=np.int64),
    }
    if with_views:
        batch["views"] = np.array([s.view for s in samples], dtype=np.int64)
    return batch


class ClipIterator:
    """Iterate one epoch of ``split`` in batches of ``config.batch_size`` (the last may be smaller).

    Bad videos are skipped and recorded in ``self.stats`` (a :class:`SkipStats`); the skip bound is checked
    as rows go by (after ``config.skip_min_rows``) and once more at the end of the epoch. ``as_torch=True``
    yields torch tensors instead of numpy arrays. ``records`` overrides the config's annotation list.
    """

    def __init__(self, config: DataConfig, split: str = "train", epoch: int = 0,
                 records: list[VideoRecord] | None = None, as_torch: bool = False):
        self.config = config
        self.split = split
        self.epoch = epoch
        self.rows: list[Row] = epoch_rows(records if records is not None else load_split(config, split),
                                          config, split, epoch)
        self.maker = ClipMaker(config, split)
        self.as_torch = as_torch
        self.stats = SkipStats()

    def __len__(self) -> int:
        """Batches in the epoch if no video is skipped."""
        return -(-self.num_samples // self.config.batch_size)

    @property
    def num_samples(self) -> int:
        """Samples in the epoch if no video is skipped (rows x ``num_repeats`` for train)."""
        return len(self.rows) * self.config.samples_per_row(self.split)

    def samples(self) -> Iterator[Sample]:
        c = self.config
        for row in self.rows:
            try:
                samples = self.maker.make(row, self.epoch)
            except VideoDecodeError as e:
                self.stats.add(1, [(e.path, e.reason)])
                self.stats.check(c.max_skip_fraction, c.skip_min_rows)
                continue
            self.stats.add(1)
            yield from samples
        self.stats.check(c.max_skip_fraction, c.skip_min_rows, final=True)

    def __iter__(self) -> Iterator[dict]:
        buf: list[Sample] = []
        for sample in self.samples():
            buf.append(sample)
            if len(buf) == self.config.batch_size:
                yield self._out(buf)
                buf = []
        if buf:
            yield self._out(buf)

    def _out(self, samples: list[Sample]) -> dict:
        batch = collate(samples, with_views=has_views(self.config, self.split))
        if self.as_torch:
            batch = {k: torch.from_numpy(v) for k, v in batch.items()}
        return batch
