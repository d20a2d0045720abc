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
