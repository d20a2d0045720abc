"""The per-video work shared by the plain iterator and the Ray actors: row -> (clip, mask, label, video id).

Randomness comes from a generator seeded by ``(seed, epoch, video_id, view)`` alone, so a sample is the same
whichever process or actor makes it and in whatever order. Bad videos raise VideoDecodeError; callers skip
them (never substitute another video) and count them in a :class:`~sigma_ray.data.stats.SkipStats`.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from sigma_ray.data import sampling, transforms
from sigma_ray.data.annotations import VideoRecord, clip_rate
from sigma_ray.data.config import DataConfig
from sigma_ray.data.decode import open_video
from sigma_ray.data.frame_cache import whole_video
from sigma_ray.method.masking import MaskGenerator


class Row(NamedTuple):
    """One sample to make: a video and which view of it (always 0 except for the test split)."""
    path: str
    label: int
    video_id: int
    view: int


class Sample(NamedTuple):
    clip: np.ndarray   # uint8 (T, H, W, C), H = W = input_size
    mask: np.ndarray   # bool (N,), True = masked, time-major tokens
    label: int
    video_id: int
    view: int


def epoch_rows(records: list[VideoRecord], config: DataConfig, split: str, epoch: int) -> list[Row]:
    """The rows of one epoch: train is shuffled by ``(seed, epoch)``; val/test keep list order and expand every
    video into ``config.views(split)`` rows."""
    views = config.views(split)
    order = range(len(records))
    if split == "train":
        order = np.random.default_rng([config.seed, epoch]).permutation(len(records))
    return [Row(records[i].path, records[i].label, records[i].video_id, v) for i in order for v in range(views)]


def sample_rng(seed: int, epoch: int, video_id: int, view: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, video_id, view])


class ClipMaker:
    """Makes the samples of one split. ``maker(row, epoch)`` -> Sample; raises VideoDecodeError for bad videos.

    train: dense (random window) or segment sampling, multi-scale or random resized crop, optional flip.
    val/test: deterministic temporal clip(s) and spatial crop(s) of the short side; epoch is ignored.
    """

    def __init__(self, config: DataConfig, split: str):
        config.views(split)  # validates the split name
        self.config = config
        self.split = split
        self.rate = clip_rate(config, split)   # the sampling rate in the copy's frames (a stride copy keeps fewer)
        self.masks = MaskGenerator(config.grid, config.mask)
        if config.decoder == "torchcodec":   # fail here, once, naming what is missing, not on every video
            from sigma_ray.data.ffmpeg_libs import load_torchcodec

            load_torchcodec()

    def __call__(self, row: Row, epoch: int = 0) -> Sample:
        """The row's sample (for train with ``num_repeats > 1``: the first repeat only; see :meth:`make`)."""
        return self.make(row, epoch, num_repeats=1)[0]

    def make(self, row: Row, epoch: int = 0, num_repeats: int | None = None) -> list[Sample]:
        """Repeated sampling: decode the row's window once and cut ``num_repeats`` samples from it (default
        ``config.samples_per_row(split)``: ``num_repeats`` for train, 1 for val/test), each with its own crop,
        flip and mask. Repeat 0 is exactly ``self(row, epoch)``; repeat ``r`` draws from the generator
        ``(seed, epoch, video_id, view, r)`` and is returned with ``view = row.view + r``."""
        c = self.config
        k = c.samples_per_row(self.split) if num_repeats is None else num_repeats
        if k > 1 and self.split != "train":
            raise ValueError(f"repeated sampling is for the train split, not {self.split!r}")
        train = self.split == "train"
        e = epoch if train else 0
        rng = sample_rng(c.seed, e, row.video_id, row.view)
        frames = self.window(row, rng)
        samples = [self._augment(frames, row, rng, row.view)]
        for r in range(1, k):
            samples.append(self._augment(frames, row, np.random.default_rng([c.seed, e, row.video_id, row.view, r]),
                                         row.view + r))
        return samples

    def window(self, row: Row, rng: np.random.Generator) -> np.ndarray:
        """Decode the frames of the row's clip with ``config.decoder``: uint8 ``(T, H', W', C)`` at
        ``decode_short_side``; cut from the whole decoded video when ``decode_cache_mb`` > 0 and it fits
        (:mod:`sigma_ray.data.frame_cache`)."""
        c = self.config
        train = self.split == "train"
        clip_i = row.view // c.test_num_crops
        num_clips = c.test_num_clips if self.split == "test" else 1

        def indices(n: int) -> np.ndarray:
            if c.sampling == "dense":
                return (sampling.dense_indices(n, c.num_frames, self.rate, rng) if train else
                        sampling.dense_eval_indices(n, c.num_frames, self.rate, num_clips, clip_i))
            return (sampling.segment_indices(n, c.num_frames, rng) if train else
                    sampling.segment_eval_indices(n, c.num_frames, num_clips, clip_i))

        if c.decode_cache_mb > 0:
            video = whole_video(row.path, c.decode_short_side, c.decode_threads, c.decode_cache_mb, c.decoder)
            if video is not None:
                return video[indices(len(video))]
        with open_video(row.path, c.decoder, c.decode_threads) as reader:
            return reader.frames(indices(reader.info.num_frames), c.decode_short_side)

    def _augment(self, frames: np.ndarray, row: Row, rng: np.random.Generator, view: int) -> Sample:
        c = self.config
        train = self.split == "train"
        crop_i = row.view % c.test_num_crops
        num_crops = c.test_num_crops if self.split == "test" else 1
        _, h, w, _ = frames.shape
        if train:
            box = (transforms.multi_scale_crop_box(h, w, c.input_size, c.scales, c.max_distort, rng)
                   if c.crop == "multiscale" else
                   transforms.random_resized_crop_box(h, w, c.rrc_scale, c.rrc_ratio, rng))
        else:
            box = transforms.eval_crop_box(h, w, min(h, w), num_crops, crop_i)
        clip = transforms.crop_resize(frames, box, c.input_size)
        if train and c.flip and rng.random() < 0.5:
            clip = transforms.hflip(clip)
        return Sample(clip, self.masks(rng), row.label, row.video_id, view)
