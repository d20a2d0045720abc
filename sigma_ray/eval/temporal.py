"""Temporal awareness: the arrow of time, and repetition counting (a task that is not single-label classification).

**Arrow of time**: every clip and the same clip played backwards (its frames in reverse order) are two samples,
labelled forward (0) and reversed (1); a linear probe on the mean-pooled tokens of the train split's pairs is
scored on the val split's pairs. An encoder that sees frames one at a time (its pooled features do not depend on
the frames' order) gives a clip and its reverse the same features, so the probe calls both the same: exactly 50%,
chance, by construction.

**Counting**: ridge regression from the mean-pooled features to the number of repetitions in the clip (SEVERE's
UCFRep task is scored by mean absolute error), the ridge strength chosen by k-fold cross-validation on the train
split only; beside it the error of predicting the train split's median count for every clip.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch

from sigma_ray.eval.features import Features
from sigma_ray.eval.linear import linear_probe

RIDGE_GRID = tuple(10.0 ** e for e in range(-2, 5))   # ridge strengths tried, on standardized features
CV_FOLDS = 5


def reversed_batches(batches: Iterable[dict]) -> Iterator[dict]:
    """The same batches with every clip (``B x T x H x W x C``) played backwards."""
    for batch in batches:
        yield {**batch, "clips": torch.as_tensor(batch["clips"]).flip(1)}


def arrow_pairs(forward: Features, backward: Features) -> Features:
    """One split's forward and reversed features as a 2-class set: label 0 forward, 1 reversed. The reversed
    rows get video ids after the forward ones (the two are different samples of the probe)."""
    if not torch.equal(forward.video_ids, backward.video_ids):
        raise ValueError("the forward and reversed features must cover the same videos in the same order")
    n = len(forward)
    offset = int(forward.video_ids.max()) + 1
    return Features(torch.cat([forward.feats, backward.feats]),
                    torch.cat([torch.zeros(n, dtype=torch.int64), torch.ones(n, dtype=torch.int64)]),
                    torch.cat([forward.video_ids, backward.video_ids + offset]))


def arrow_of_time(train_fwd: Features, train_rev: Features, val_fwd: Features, val_rev: Features,
                  epochs: int = 100, seed: int = 0) -> float:
    """Val accuracy (percent, chance 50) of a linear probe telling clips from their reverses (see the module
    docstring); trained on the train split's pairs."""
    return linear_probe(arrow_pairs(train_fwd, train_rev), arrow_pairs(val_fwd, val_rev), 2, epochs=epochs,
                        seed=seed)["linear_top1"]


def ridge_fit(x: torch.Tensor, y: torch.Tensor, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge regression ``y ~ x @ w + b`` (``x N x D``, ``y N``; the bias is not penalized), float64 closed form:
    ``w = (Xc^T Xc + strength I)^-1 Xc^T yc`` on centred data. Returns ``(w D, b)``."""
    x, y = x.double(), y.double()
    mx, my = x.mean(dim=0), y.mean()
    xc = x - mx
    w = torch.linalg.solve(xc.T @ xc + strength * torch.eye(x.shape[1], dtype=torch.float64), xc.T @ (y - my))
    return w, my - mx @ w


def count_regression(train: Features, val: Features, counts: list[int], seed: int = 0) -> dict[str, float]:
    """Mean absolute error (repetitions) of a ridge regression from features to counts, ``counts[label]`` being
    a class's count. The features are standardized with the train split's statistics; the strength is the one of
    :data:`RIDGE_GRID` with the lowest ``CV_FOLDS``-fold error on train. Returns ``count_mae``,
    ``count_mae_median`` (predicting the train median for all) and ``count_ridge_strength``."""
    table = torch.tensor(counts, dtype=torch.float64)
    y_train, y_val = table[train.labels], table[val.labels]
    mean, std = train.feats.double().mean(dim=0), train.feats.double().std(dim=0).clamp_min(1e-6)
    x_train, x_val = (train.feats.double() - mean) / std, (val.feats.double() - mean) / std
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    folds = order.chunk(min(CV_FOLDS, len(train)))
    cv = {}
    for strength in RIDGE_GRID:
        errors = []
        for fold in folds:
            keep = torch.ones(len(train), dtype=torch.bool)
            keep[fold] = False
            w, b = ridge_fit(x_train[keep], y_train[keep], strength)
            errors.append((x_train[fold] @ w + b - y_train[fold]).abs())
        cv[strength] = float(torch.cat(errors).mean())
    strength = min(cv, key=cv.get)
    w, b = ridge_fit(x_train, y_train, strength)
    return {"count_mae": float((x_val @ w + b - y_val).abs().mean()),
            "count_mae_median": float((y_val - y_train.median()).abs().mean()),
            "count_ridge_strength": strength}
