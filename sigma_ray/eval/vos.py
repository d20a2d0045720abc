"""Unsupervised video object segmentation from a frozen encoder's space-time patch tokens.

The protocol of the paper's third benchmark family: per clip, K-means over the encoder's tokens (one token per
``tubelet x patch x patch`` tube), then the clusters are matched to the ground-truth segments (the background and
each object) and scored by the Jaccard index J (IoU) of every foreground object, averaged per clip and then over
clips (mIoU). Two matchings:

- **clustering**: K = the number of ground-truth segments in the clip, one cluster per segment by the Hungarian
  algorithm on the IoU matrix (``scipy.optimize.linear_sum_assignment``);
- **over-clustering**: K = 10 (default), each cluster goes to the segment that holds most of its area (greedy
  many-to-one), an object's prediction is the union of its clusters.

Both are scored at patch resolution (the ground truth reduced to one segment per tube, by majority) and at pixel
resolution (each pixel takes its tube's cluster). K-means runs on L2-normalized tokens (cosine geometry),
k-means++ seeding and Lloyd iterations, several restarts, deterministic in the seed.
"""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from sigma_ray.eval.features import eval_mode
from sigma_ray.method.projection import tube_pixels
from sigma_ray.method.step import normalize_clips

OVERCLUSTER_K = 10


def kmeans(x: torch.Tensor, k: int, seed: int = 0, iterations: int = 50, restarts: int = 4) -> torch.Tensor:
    """Cluster ``N x D`` points into ``k`` clusters (squared Euclidean, k-means++ seeding, Lloyd iterations; of
    ``restarts`` runs the one with the lowest inertia). Returns int64 labels ``N`` in ``[0, k)``; with ``k >= N``
    every point is its own cluster. Deterministic in ``seed``."""
    n = x.shape[0]
    if k >= n:
        return torch.arange(n)
    x = x.double()
    gen = torch.Generator().manual_seed(seed)
    best, best_inertia = None, float("inf")
    for _ in range(restarts):
        centres = x[torch.randint(n, (1,), generator=gen)]
        for _ in range(1, k):   # k-means++: the next centre with probability ~ squared distance to the nearest
            d2 = torch.cdist(x, centres).pow(2).min(dim=1).values
            if float(d2.sum()) <= 0:
                idx = torch.randint(n, (1,), generator=gen)
            else:
                idx = torch.multinomial(d2 / d2.sum(), 1, generator=gen)
            centres = torch.cat([centres, x[idx]])
        labels = torch.cdist(x, centres).argmin(dim=1)
        for _ in range(iterations):
            for c in range(k):
                members = labels == c
                if bool(members.any()):
                    centres[c] = x[members].mean(dim=0)
            new = torch.cdist(x, centres).argmin(dim=1)
            if bool((new == labels).all()):
                break
            labels = new
        inertia = float(((x - centres[labels]) ** 2).sum())
        if inertia < best_inertia - 1e-12:
            best, best_inertia = labels, inertia
    return best


def iou_matrix(pred: np.ndarray, gt: np.ndarray, k: int, segments: np.ndarray) -> np.ndarray:
    """IoU of every predicted cluster ``0..k-1`` with every ground-truth segment id in ``segments``:
    ``k x len(segments)`` float64, from label arrays ``pred`` and ``gt`` of the same shape."""
    p = pred.reshape(-1)
    g = np.searchsorted(segments, gt.reshape(-1))
    counts = np.bincount(p * len(segments) + g, minlength=k * len(segments)).reshape(k, len(segments))
    union = counts.sum(axis=1, keepdims=True) + counts.sum(axis=0, keepdims=True) - counts
    return np.where(union > 0, counts / np.maximum(union, 1), 0.0)


def hungarian_objects(pred: np.ndarray, gt: np.ndarray, k: int) -> np.ndarray:
    """Predicted segment per pixel after one-to-one matching: cluster ``c`` becomes the ground-truth segment the
    Hungarian algorithm gives it (the assignment maximizing the summed IoU); a cluster left unmatched (more
    clusters than segments) becomes -1. Same shape as ``pred``."""
    segments = np.unique(gt)
    rows, cols = linear_sum_assignment(iou_matrix(pred, gt, k, segments), maximize=True)
    lookup = np.full(k, -1, dtype=np.int64)
    lookup[rows] = segments[cols]
    return lookup[pred]


def greedy_objects(pred: np.ndarray, gt: np.ndarray, k: int) -> np.ndarray:
    """Predicted segment per pixel after many-to-one matching: each cluster becomes the ground-truth segment
    holding most of its pixels (ties: the lower id). Same shape as ``pred``."""
    segments = np.unique(gt)
    g = np.searchsorted(segments, gt.reshape(-1))
    counts = np.bincount(pred.reshape(-1) * len(segments) + g, minlength=k * len(segments)).reshape(k, -1)
    return segments[counts.argmax(axis=1)][pred]


def object_jaccard(pred_segments: np.ndarray, gt: np.ndarray) -> dict[int, float]:
    """J (IoU) of each foreground object (gt id > 0) between the predicted and the true segment maps."""
    out = {}
    for obj in np.unique(gt):
        if obj == 0:
            continue
        p, g = pred_segments == obj, gt == obj
        out[int(obj)] = float((p & g).sum() / (p | g).sum())
    return out


def tube_labels(masks: np.ndarray, tubelet: int, patch: int) -> np.ndarray:
    """Per-pixel masks ``T x H x W`` (segment ids) -> one id per tube ``t x h x w``: the id covering most of the
    tube's pixels (ties: the lower id)."""
    t, h, w = masks.shape[0] // tubelet, masks.shape[1] // patch, masks.shape[2] // patch
    tubes = masks[:t * tubelet, :h * patch, :w * patch].reshape(t, tubelet, h, patch, w, patch)
    tubes = tubes.transpose(0, 2, 4, 1, 3, 5).reshape(t, h, w, -1)
    ids = np.unique(masks)
    counts = (tubes[..., None] == ids).sum(axis=3)
    return ids[counts.argmax(axis=-1)]


def upsample_tubes(labels: np.ndarray, tubelet: int, patch: int) -> np.ndarray:
    """Tube labels ``t x h x w`` -> pixel labels ``(t*tubelet) x (h*patch) x (w*patch)`` (each pixel its tube's)."""
    return labels.repeat(tubelet, axis=0).repeat(patch, axis=1).repeat(patch, axis=2)


def segment_clip(tokens: torch.Tensor, grid: tuple[int, int, int], masks: np.ndarray, tubelet: int, patch: int,
                 overcluster_k: int = OVERCLUSTER_K, seed: int = 0) -> dict[str, float] | None:
    """Score one clip: ``tokens L x D`` (time-major over ``grid`` = t, h, w), ``masks T x H x W`` (0 background,
    k > 0 objects). Returns the mean J over the clip's objects for each matching and resolution
    (``hungarian_patch``, ``hungarian_pixel``, ``greedy_patch``, ``greedy_pixel``; 0..1), or None when the clip
    shows no object."""
    if not (masks > 0).any():
        return None
    x = torch.nn.functional.normalize(tokens.double(), dim=1)
    gt_tubes = tube_labels(masks, tubelet, patch)
    pixels = masks[:grid[0] * tubelet, :grid[1] * patch, :grid[2] * patch]
    out = {}
    segments = len(np.unique(pixels))   # the clip's ground-truth segments, background included
    for name, k, match in (("hungarian", segments, hungarian_objects), ("greedy", overcluster_k, greedy_objects)):
        clusters = kmeans(x, k, seed).numpy().reshape(grid)
        k_used = min(k, x.shape[0])
        for res, pred, gt in (("patch", clusters, gt_tubes),
                              ("pixel", upsample_tubes(clusters, tubelet, patch), pixels)):
            j = object_jaccard(match(pred, gt, k_used), gt)
            # an object that no tube holds a majority of still counts at patch resolution: J = 0 there
            for obj in np.unique(pixels):
                if obj > 0 and int(obj) not in j:
                    j[int(obj)] = 0.0
            out[f"{name}_{res}"] = float(np.mean(list(j.values())))
    return out


@dataclass
class MaskedClips:
    """Clips with per-pixel object masks for the segmentation protocol."""

    clips: torch.Tensor      # N x T x H x W x 3 uint8
    masks: np.ndarray        # N x T x H x W uint8, 0 background, k > 0 object k


def pixel_tokens(clips_uint8: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """The raw-pixel reference: each tube's normalized pixels as its feature, ``B x L x (tubelet*patch*patch*3)``
    time-major (what K-means on colour and its change alone finds)."""
    return tube_pixels(normalize_clips(clips_uint8), tubelet, patch)


def vos_scores(encoder: nn.Module | None, data: MaskedClips, tubelet: int, patch: int, batch_size: int = 32,
               overcluster_k: int = OVERCLUSTER_K, seed: int = 0) -> dict[str, float]:
    """mIoU (percent) of ``encoder``'s tokens over ``data``'s clips, for both matchings at patch and pixel
    resolution (``vos_hungarian_patch`` ...); ``encoder=None`` clusters the raw pixels of each tube instead.
    Also ``vos_clips``: the clips scored (those showing an object)."""
    per_clip: list[dict[str, float]] = []
    n = data.clips.shape[0]
    for start in range(0, n, batch_size):
        clips = data.clips[start:start + batch_size]
        grid = (clips.shape[1] // tubelet, clips.shape[2] // patch, clips.shape[3] // patch)
        if encoder is None:
            tokens = pixel_tokens(clips, tubelet, patch)
        else:
            with eval_mode(encoder), torch.no_grad():
                tokens = encoder.forward_features(normalize_clips(clips)).float()
        for i in range(tokens.shape[0]):
            scored = segment_clip(tokens[i], grid, data.masks[start + i], tubelet, patch, overcluster_k, seed)
            if scored is not None:
                per_clip.append(scored)
    if not per_clip:
        raise ValueError("no clip shows an object: nothing to segment")
    out = {f"vos_{k}": 100.0 * float(np.mean([c[k] for c in per_clip])) for k in per_clip[0]}
    out["vos_clips"] = float(len(per_clip))
    return out
