"""Multi-label presence: SEVERE's task shift to Charades, where a video shows several of 157 actions at once and a
readout is scored by mean average precision (mAP) instead of top-1 accuracy.

**Average precision** of one class: rank the videos by their score for it, descending; at every distinct score
``t`` (tied scores are one threshold: the videos scoring ``>= t`` are predicted positive together) take the
precision ``P_n`` and recall ``R_n`` of that prediction, and sum the recall gained times the precision there::

    AP = sum_n (R_n - R_{n-1}) * P_n,    R_0 = 0

(the step-rule area under the precision-recall curve, no interpolation), which is what
``sklearn.metrics.average_precision_score`` computes. Without ties it equals the mean, over the positives, of the
precision at each positive's rank (Charades_v1_classify.m's rule). A class with no positive has no recall to gain:
its AP is NaN, and the mAP averages the classes that have at least one positive (on Charades' full test set every
class has one, so that is the mean over all 157), reporting how many were scored.

**Probe**: the linear probe of :mod:`sigma_ray.eval.linear` (BatchNorm without affine + Linear on the cached
mean-pooled features) with one sigmoid per class, trained by binary cross-entropy. Beside it the prior: every val
video scored with the train split's label frequencies. All videos then tie within a class, so each class's AP is
its val positive rate and the prior mAP is the mean positive rate, the chance reference.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sigma_ray.eval.features import Features
from sigma_ray.eval.linear import DEFAULT_LR, fit_head, make_head
from sigma_ray.eval.metrics import single_thread
from sigma_ray.infra.checks import check_choice, check_range

ArrayLike = np.ndarray | torch.Tensor


def _float64(values: ArrayLike | Sequence[float]) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def _check_targets(targets: np.ndarray) -> None:
    if not np.isin(targets, (0.0, 1.0)).all():
        raise ValueError("targets must be 0 or 1")


def average_precision(scores: ArrayLike, targets: ArrayLike) -> float:
    """AP (a fraction in [0, 1]) of one class from ``scores`` ``N`` (higher = more likely present, finite) and
    ``targets`` ``N`` in {0, 1}, by the step rule with ties as one threshold (see the module docstring). NaN when
    ``targets`` has no positive."""
    s, y = _float64(scores), _float64(targets)
    if s.ndim != 1 or s.shape != y.shape or s.size == 0:
        raise ValueError(f"scores and targets must both be N > 0 long; got {s.shape} and {y.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (ties among infinities would not be detected)")
    _check_targets(y)
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # the last position of each run of equal scores: one threshold per distinct score
    ends = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[ends]
    precision = tp / (ends + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def mean_average_precision(scores: ArrayLike, targets: ArrayLike) -> dict[str, float | int]:
    """mAP of ``scores`` ``N x C`` against multi-hot ``targets`` ``N x C``: ``map`` (percent, 0..100) is the mean
    AP over the classes with at least one positive in ``targets`` (a class without one has no AP), and
    ``classes_scored`` is how many those are. Raises ValueError when no class has a positive."""
    s, y = _float64(scores), _float64(targets)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"scores and targets must both be N x C; got {s.shape} and {y.shape}")
    _check_targets(y)
    scored = np.flatnonzero(y.any(axis=0))
    if scored.size == 0:
        raise ValueError("no class has a positive in targets: the mAP is undefined")
    aps = [average_precision(s[:, c], y[:, c]) for c in scored]
    return {"map": 100.0 * float(np.mean(aps)), "classes_scored": int(scored.size)}


def multilabel_targets(labels: Sequence[Sequence[int]], num_classes: int) -> torch.Tensor:
    """Multi-hot float32 ``N x num_classes`` from each video's class indices (an empty list: a video with no
    action, a row of zeros). Raises ValueError for an index outside ``[0, num_classes)``."""
    check_range("num_classes", num_classes, 1)
    targets = torch.zeros(len(labels), num_classes)
    for row, classes in enumerate(labels):
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"video {row}: class {bad[0]} is not in [0, {num_classes})")
        targets[row, list(classes)] = 1.0
    return targets


def align_targets(video_paths: Sequence[str], items: Sequence[tuple[str, Sequence[int]]],
                  num_classes: int) -> torch.Tensor:
    """Multi-hot targets ``N x num_classes`` indexed by video id, i.e. by the row of ``video_paths`` (the paths of
    a VideoMAE list in list order, as :func:`~sigma_ray.data.annotations.load_list` numbers them), from ``items``
    (:func:`~sigma_ray.eval.splits.load_multilabel_list` of the same videos, read with the same root). Features
    then get theirs as ``targets[features.video_ids]``.

    The two lists must be line-aligned (the same paths, normalized, in the same order): otherwise ValueError naming
    the first row where they differ, so a reordered or filtered list cannot silently pair videos with others'
    labels."""
    for row in range(max(len(video_paths), len(items))):
        path = video_paths[row] if row < len(video_paths) else None
        item_path = items[row][0] if row < len(items) else None
        if path is None or item_path is None or os.path.normpath(path) != os.path.normpath(item_path):
            raise ValueError(f"the video list and the multi-label list differ at row {row}: "
                             f"{path or '(list ended)'} vs {item_path or '(list ended)'}")
    return multilabel_targets([classes for _, classes in items], num_classes)


def summed_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on the logits (``B x C``), summed over classes and averaged over the batch, so each
    class's logistic regression sees the same step size however many classes there are (a mean over classes
    would divide it by C: 157 on Charades)."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[0]


def _feats(features: Features | torch.Tensor) -> torch.Tensor:
    return features.feats if isinstance(features, Features) else features


def multilabel_probe(train: Features | torch.Tensor, train_targets: torch.Tensor, val: Features | torch.Tensor,
                     val_targets: torch.Tensor, epochs: int = 100, lr: float | None = None, optimizer: str = "sgd",
                     batch_size: int = 256, weight_decay: float = 0.0, seed: int = 0,
                     device: torch.device | str = "cpu") -> dict[str, float | int]:
    """Train the multi-label probe on ``train`` features (``Features`` or ``N x D``) with multi-hot
    ``train_targets`` ``N x C``; score ``val`` (``M x D``) against ``val_targets`` ``M x C``.

    Optimizer and lr defaults as :func:`~sigma_ray.eval.linear.linear_probe` (SGD momentum 0.9 at 0.1, AdamW at
    1e-3, cosine to 0), deterministic in ``seed``, one CPU thread. Returns ``multilabel_map`` (val, percent),
    ``multilabel_map_train``, ``multilabel_map_prior`` (val scored with the train label frequencies: the mean val
    positive rate, see the module docstring) and ``multilabel_classes_scored`` (val classes with a positive).
    """
    check_choice("optimizer", optimizer, DEFAULT_LR)
    check_range("epochs", epochs, 1)
    check_range("batch_size", batch_size, 2)
    x, x_val = _feats(train).float(), _feats(val).float()
    y, y_val = train_targets.float(), val_targets.float()
    if x.dim() != 2 or x_val.dim() != 2 or x.shape[1] != x_val.shape[1]:
        raise ValueError(f"features must be N x D with one D; got {tuple(x.shape)} and {tuple(x_val.shape)}")
    if y.shape[0] != x.shape[0] or y_val.shape[0] != x_val.shape[0] or y.dim() != 2 or y.shape[1:] != y_val.shape[1:]:
        raise ValueError(f"targets must be N x C matching the features; got {tuple(y.shape)} for "
                         f"{x.shape[0]} train and {tuple(y_val.shape)} for {x_val.shape[0]} val videos")
    if x.shape[0] < 2:
        raise ValueError("the multi-label probe needs at least 2 training videos (BatchNorm statistics)")
    _check_targets(_float64(y))
    lr = DEFAULT_LR[optimizer] if lr is None else lr
    device = torch.device(device)
    # enable_grad: callers may hold no_grad; the head still has to train
    with single_thread(device.type == "cpu"), torch.enable_grad():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = make_head(x.shape[1], y.shape[1]).to(device)
        params = head.parameters()
        opt = (torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay) if optimizer == "sgd" else
               torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay))
        # BatchNorm cannot normalize a batch of one sample; that sample is seen in other epochs
        fit_head(head, x.to(device), y.to(device), opt, epochs, batch_size, seed, min_batch=2, loss_fn=summed_bce)
        with torch.no_grad():
            train_scores = head(x.to(device)).cpu()
            val_scores = head(x_val.to(device)).cpu()
    val_map = mean_average_precision(val_scores, y_val)
    prior = y.mean(dim=0).expand_as(y_val)
    return {"multilabel_map": val_map["map"],
            "multilabel_map_train": mean_average_precision(train_scores, y)["map"],
            "multilabel_map_prior": mean_average_precision(prior, y_val)["map"],
            "multilabel_classes_scored": val_map["classes_scored"]}
