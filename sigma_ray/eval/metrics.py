"""Helpers shared by the protocols: top-k accuracy in percent, progress lines, a one-thread CPU block."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def topk_accuracy(scores: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy in percent (0..100) for each k, from scores ``Q x C`` and int targets ``Q``.

    k is capped at C (top-5 of a 3-class problem is top-3, i.e. 100%). Ties are broken by ``torch.topk``.
    """
    if scores.shape[0] != targets.shape[0]:
        raise ValueError(f"{scores.shape[0]} score rows for {targets.shape[0]} targets")
    if scores.shape[0] == 0:
        raise ValueError("no samples to score")
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices                       # Q x kmax
    hit = top == targets.to(top.device).long()[:, None]          # Q x kmax, at most one True per row
    return {k: 100.0 * hit[:, :min(k, kmax)].any(dim=1).float().mean().item() for k in ks}


def log(message: str) -> None:
    """One progress line on stdout (flushed: Ray job logs and pytest -s show it as it happens)."""
    print(f"[sigma-ray eval] {message}", flush=True)


@contextmanager
def single_thread(enabled: bool = True) -> Iterator[None]:
    """Run the block on one intra-op CPU thread, then restore the previous count. The probe's ops are so small
    that thread hand-offs dominate: on a busy 2-core machine 100 epochs took 7 s with 2 threads, 0.3 s with 1."""
    before = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def effective_rank(features: torch.Tensor) -> float:
    """exp(entropy) of the normalized singular values of the centred ``N x D`` features (Roy & Vetterli 2007):
    D for isotropic features, 1 when every video maps onto one line. Low values mean a probe sees few
    directions."""
    x = features.double() - features.double().mean(dim=0)
    s = torch.linalg.svdvals(x)
    p = s / s.sum().clamp_min(1e-300)
    return float(torch.exp(-(p * p.clamp_min(1e-300).log()).sum()))


def class_variance_share(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of the ``N x D`` features' total variance that lies between the class means (trace of the
    between-class scatter over the trace of the total scatter, in [0, 1]). A cosine kNN finds neighbours along
    the directions that vary most, so a class that moves the features by a sliver of their variance is missed by
    kNN even where a linear probe finds it. Labels carrying no information give about ``(C - 1) / (N - 1)``."""
    x = features.double() - features.double().mean(dim=0)
    classes, index = labels.unique(return_inverse=True)
    means = torch.zeros(len(classes), x.shape[1], dtype=torch.float64).index_add_(0, index, x)
    counts = torch.bincount(index, minlength=len(classes)).double()
    between = ((means ** 2).sum(dim=1) / counts).sum()
    return float(between / (x ** 2).sum().clamp_min(1e-300))
