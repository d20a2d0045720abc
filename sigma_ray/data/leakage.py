"""Leak checks for a labelled video set whose class should need time: how much of the class one frame, one
frame difference or the frames' global motion give away to simple classifiers (numpy only, no model).

A motion-defined set should leave one frame at chance and one frame difference near it (appearance and a single
change say little), while the global motion (an affine optical flow fitted to the changing pixels) names what
moves; a set that a linear read of one frame solves would measure appearance, not motion. Used by the tests of
the synthetic families and by ``experiments/leak_checks.py`` on whole sets.
"""
from __future__ import annotations

import numpy as np


def affine_motion(clip: np.ndarray, threshold: float = 20) -> np.ndarray:
    """Median over frame pairs of a least-squares affine optical flow (brightness constancy) fitted on the pixels
    that change by more than ``threshold`` grey levels: (translation x, translation y, divergence, curl).
    ``clip``: uint8 or float (T, H, W, C)."""
    g = clip.astype(np.float32).mean(-1)
    yy, xx = np.mgrid[0:g.shape[1], 0:g.shape[2]].astype(np.float32)
    feats = []
    for a, b in zip(g[:-1], g[1:]):
        iy, ix = np.gradient((a + b) / 2)
        it = b - a
        w = np.abs(it) > threshold
        if w.sum() < 10:
            continue
        x, y = xx[w] - xx[w].mean(), yy[w] - yy[w].mean()
        design = np.stack([ix[w], ix[w] * x, ix[w] * y, iy[w], iy[w] * x, iy[w] * y], 1)
        p = np.linalg.lstsq(design, -it[w], rcond=None)[0]
        feats.append([p[0], p[3], p[1] + p[5], p[4] - p[2]])
    return np.median(feats, 0) if feats else np.zeros(4)


def nearest_centroid(train: np.ndarray, labels: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Labels of ``test`` rows by the nearest class centroid of the standardized ``train`` features."""
    mu, sd = train.mean(0), train.std(0) + 1e-6
    train, test = (train - mu) / sd, (test - mu) / sd
    centroids = np.stack([train[labels == k].mean(0) for k in range(labels.max() + 1)])
    return ((test[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)


def ridge(train: np.ndarray, labels: np.ndarray, test: np.ndarray, lam: float = 10.0) -> np.ndarray:
    """Labels of ``test`` rows by a ridge regression onto one-hot labels (a linear classifier in closed form)."""
    mu = train.mean(0)
    y = np.eye(labels.max() + 1)[labels]
    w = np.linalg.solve((train - mu).T @ (train - mu) + lam * np.eye(train.shape[1]), (train - mu).T @ y)
    return ((test - mu) @ w).argmax(1)


def thumbnails(clips: np.ndarray, frame: int, cells: int = 8) -> np.ndarray:
    """(N, cells*cells*3) colour thumbnails in [0, 1] of one frame of each clip (N, T, H, W, C), by box filter."""
    n, _, h, w, c = clips.shape
    small = clips[:, frame].reshape(n, cells, h // cells, cells, w // cells, c).mean((2, 4))
    return small.reshape(n, -1) / 255


def leak_checks(train: np.ndarray, train_labels: np.ndarray, val: np.ndarray, val_labels: np.ndarray,
                factors: dict[str, list[int]] | None = None, threshold: float = 10) -> dict[str, float]:
    """Val accuracy (fraction) of: ``one_frame`` (ridge on a thumbnail of the middle frame), ``frame_difference``
    (ridge on the full-resolution difference of the frames around the middle), ``flow`` (nearest centroid on the
    affine flow's translation and its largest component); and the flow per factor (``flow_<factor>``)."""
    mid = train.shape[1] // 2
    difference = lambda x: (x[:, mid + 1].astype(np.float32) - x[:, mid - 1]).reshape(len(x), -1) / 255  # noqa
    flow = lambda x: np.stack([affine_motion(c, threshold)[:2] for c in x])                              # noqa
    with_speed = lambda f: np.concatenate([f, np.abs(f).max(axis=1, keepdims=True)], axis=1)            # noqa
    ftr, fva = with_speed(flow(train)), with_speed(flow(val))
    out = {"one_frame": float((ridge(thumbnails(train, mid), train_labels, thumbnails(val, mid)) == val_labels).mean()),
           "frame_difference": float((ridge(difference(train), train_labels, difference(val)) == val_labels).mean()),
           "flow": float((nearest_centroid(ftr, train_labels, fva) == val_labels).mean())}
    for name, of_class in (factors or {}).items():
        mapping = np.asarray(of_class)
        out[f"flow_{name}"] = float((nearest_centroid(ftr, mapping[train_labels], fva) == mapping[val_labels]).mean())
    return out
