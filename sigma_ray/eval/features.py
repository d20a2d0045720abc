"""Frozen-encoder features: mean-pooled tokens of unmasked clips, one row per video (all views averaged).

The encoder runs in eval mode under ``torch.no_grad``; batches come from any iterable of the data layer's batch
dicts (``clips`` uint8 B x T x H x W x C, ``labels`` and ``video_ids`` int64 B, optional ``views``), i.e. the
in-process :class:`~sigma_ray.data.iterator.ClipIterator` or Ray Data's ``iter_torch_batches``. Views of one
video may arrive in any order and in different batches: they are summed per video id and divided at the end.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import nn

from sigma_ray.data.config import DataConfig
from sigma_ray.method.step import autocast_context, normalize_clips


@dataclass
class Features:
    """Cached features of one split, sorted by video id."""

    feats: torch.Tensor      # N x D float32, one row per video (its views averaged)
    labels: torch.Tensor     # N int64
    video_ids: torch.Tensor  # N int64

    def __post_init__(self) -> None:
        n = self.feats.shape[0]
        if self.feats.dim() != 2 or self.labels.shape != (n,) or self.video_ids.shape != (n,):
            raise ValueError(f"Features need feats N x D, labels N and video_ids N; got {tuple(self.feats.shape)}, "
                             f"{tuple(self.labels.shape)}, {tuple(self.video_ids.shape)}")

    def __len__(self) -> int:
        return self.feats.shape[0]

    @property
    def dim(self) -> int:
        return self.feats.shape[1]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode (no dropout / drop path) for the block, then restore its previous mode."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def pool_features(encoder: nn.Module, clips_uint8: torch.Tensor, device: torch.device | str,
                  amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Mean-pooled encoder tokens of uint8 clips ``B x T x H x W x C`` -> float32 ``B x D`` on ``device``.

    No gradients; the caller decides the module's mode (:func:`extract_features` uses eval mode).
    """
    device = torch.device(device)
    with torch.no_grad():
        clips = normalize_clips(clips_uint8, device)
        with autocast_context(device, amp_dtype):
            tokens = encoder.forward_features(clips)       # B x N x D
        return tokens.float().mean(dim=1)


def average_by_video(values: torch.Tensor, video_ids: torch.Tensor, labels: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Average the rows of ``values`` (M x D, one per view) that share a video id.

    Returns ``(means K x D, labels K, ids K)`` sorted by video id, K = number of distinct ids. Raises ValueError
    when the views of one video disagree on the label (a broken data pipeline, not something to average over).
    """
    ids, inverse = torch.unique(video_ids, sorted=True, return_inverse=True)
    k = ids.shape[0]
    sums = torch.zeros(k, values.shape[1], dtype=torch.float64).index_add_(0, inverse, values.double())
    counts = torch.zeros(k, dtype=torch.float64).index_add_(0, inverse, torch.ones_like(inverse, dtype=torch.float64))
    # every view writes its label; a disagreement shows up as a view whose label differs from the one kept
    out_labels = torch.empty(k, dtype=torch.int64).scatter_(0, inverse, labels.long())
    bad = out_labels[inverse] != labels.long()
    if bool(bad.any()):
        vid = int(video_ids[bad.nonzero()[0, 0]])
        raise ValueError(f"views of video {vid} carry different labels")
    return (sums / counts[:, None]).float(), out_labels, ids.long()


def extract_features(encoder: nn.Module, batches: Iterable[dict], device: torch.device | str = "cpu",
                     amp_dtype: torch.dtype | None = None) -> Features:
    """Features of every video in ``batches``: pooled per clip, averaged over the views of each video id.

    The encoder is put in eval mode for the pass (its previous mode is restored afterwards). Batches may hold
    numpy arrays or torch tensors, on any device.
    """
    feats, labels, ids = [], [], []
    with eval_mode(encoder):
        for batch in batches:
            if len(batch["video_ids"]) == 0:
                continue
            feats.append(pool_features(encoder, batch["clips"], device, amp_dtype).cpu())
            labels.append(torch.as_tensor(batch["labels"]).long().cpu())
            ids.append(torch.as_tensor(batch["video_ids"]).long().cpu())
    if not feats:
        raise ValueError("no batches to extract features from")
    mean, video_labels, video_ids = average_by_video(torch.cat(feats), torch.cat(ids), torch.cat(labels))
    return Features(mean, video_labels, video_ids)


def eval_batches(data_config: DataConfig, split: str, use_ray: bool = False, batch_size: int | None = None,
                 augment: bool = False) -> Iterable[dict]:
    """Batches of ``split`` for feature extraction (torch tensors).

    ``split="train"`` without ``augment`` reads the train list with the deterministic single centred view of the
    val split (the kNN bank and the probe's training features must not depend on random crops);
    ``augment=True`` keeps the train split's random crops. ``val`` is one centred view per video, ``test`` is
    ``test_num_clips x test_num_crops`` views per video (both from ``val_list``).
    """
    from sigma_ray.data.annotations import load_split

    config = dataclasses.replace(data_config, batch_size=batch_size) if batch_size else data_config
    records = None
    if split == "train" and not augment:
        records, split = load_split(config, "train"), "val"
    if use_ray:
        from sigma_ray.data.pipeline import ClipPipeline   # imports Ray: only on this path

        return ClipPipeline(config, split, records=records).iter_torch_batches()
    from sigma_ray.data.iterator import ClipIterator

    return ClipIterator(config, split, records=records, as_torch=True)


def features_for_split(encoder: nn.Module, data_config: DataConfig, split: str, device: torch.device | str = "cpu",
                       use_ray: bool = False, batch_size: int | None = None, augment: bool = False,
                       amp_dtype: torch.dtype | None = None) -> Features:
    """Features of one split (see :func:`eval_batches` for which views): decoded in-process by a ClipIterator
    (``use_ray=False``: tests, the sweep's in-training probe, tiny sets) or by ClipPipeline's Ray Data actors
    (``use_ray=True``), with the encoder running here, in the driver or Ray worker that calls this."""
    batches = eval_batches(data_config, split, use_ray, batch_size, augment)
    return extract_features(encoder, batches, device, amp_dtype)
