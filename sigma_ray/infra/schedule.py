"""Learning-rate arithmetic shared by pretraining, fine-tuning and the linear probe (no Ray, no torch).

The paper's linear scaling rule (:func:`scaled_lr`), a half cosine (:func:`cosine`) and linear warm-up followed by
that cosine (:func:`warmup_cosine`), each step-indexed and 0-based.
"""
from __future__ import annotations

import math


def scaled_lr(lr: float, batch: int) -> float:
    """The linear scaling rule of MAE/VideoMAE/SIGMA: ``lr x batch / 256`` (``batch`` is the global batch)."""
    return lr * batch / 256


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Half cosine from ``start`` (step 0) to ``end`` (step ``total``), constant ``end`` after."""
    if total <= 0 or step >= total:
        return end
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * step / total))


def warmup_cosine(step: int, total: int, warmup: int, peak: float, end: float) -> float:
    """Linear warm-up from ``peak / warmup`` (step 0) to ``peak`` (step ``warmup - 1``), then a half cosine to
    ``end`` at step ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return cosine(step - warmup, total - warmup, peak, end)
