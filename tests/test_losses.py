"""SwappedPredictionLoss against hand-written references: the cross-entropy with hard and with soft (SwAV) codes in
float64 loops, the soft-code gradient in closed form, and ``gather=False`` in a real two-process gloo group."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sigma_ray.method.losses import SwappedPredictionLoss

from test_sinkhorn import _free_port, cosine_scores, textbook_sinkhorn

TAU, EPS, ITERS = 0.1, 0.05, 10


def hand_cross_entropy(scores: torch.Tensor, codes: torch.Tensor, hard: bool) -> float:
    """mean over tokens of -sum_k target[k] * log softmax(scores / tau)[k], one token at a time, in float64."""
    total = 0.0
    for s, q in zip(scores.double().tolist(), codes.double().tolist()):
        logits = [x / TAU for x in s]
        top = max(logits)
        log_z = top + math.log(sum(math.exp(x - top) for x in logits))
        target = [0.0] * len(q)
        if hard:
            target[max(range(len(q)), key=q.__getitem__)] = 1.0
        else:
            target = q
        total -= sum(t * (x - log_z) for t, x in zip(target, logits))
    return total / len(scores)


@pytest.mark.parametrize("hard", [True, False], ids=["hard", "soft"])
def test_swapped_prediction_equals_the_hand_written_cross_entropy(hard):
    video, proj = cosine_scores(96, 24, seed=1), cosine_scores(96, 24, seed=2)
    loss = SwappedPredictionLoss(24, TAU, EPS, ITERS, hard=hard, gather=False)
    out = loss(video, proj)
    codes_video, codes_proj = textbook_sinkhorn(video, EPS, ITERS), textbook_sinkhorn(proj, EPS, ITERS)
    # each side predicts the other's codes
    assert out["loss_proj"].item() == pytest.approx(hand_cross_entropy(proj, codes_video, hard), rel=1e-5)
    assert out["loss_video"].item() == pytest.approx(hand_cross_entropy(video, codes_proj, hard), rel=1e-5)
    assert out["loss"].item() == pytest.approx(out["loss_proj"].item() + out["loss_video"].item(), rel=1e-6)
    assert torch.equal(out["codes_video"], codes_video.argmax(1)) and torch.equal(out["codes_proj"],
                                                                                  codes_proj.argmax(1))
    # the soft loss is not the hard one under another name
    other = SwappedPredictionLoss(24, TAU, EPS, ITERS, hard=not hard, gather=False)(video, proj)
    assert abs(other["loss"].item() - out["loss"].item()) > 1e-3


def test_soft_code_gradient_is_softmax_minus_codes_over_tau():
    """d/ds mean_m CE(s_m / tau, q_m) = (softmax(s_m / tau) - q_m) / (tau * M), the codes held fixed."""
    video = cosine_scores(40, 16, seed=3).requires_grad_(True)
    proj = cosine_scores(40, 16, seed=4).requires_grad_(True)
    SwappedPredictionLoss(16, TAU, EPS, ITERS, hard=False, gather=False)(video, proj)["loss"].backward()
    for scores, other in ((proj, video), (video, proj)):
        q = textbook_sinkhorn(other.detach(), EPS, ITERS)
        expected = (torch.softmax(scores.detach().double() / TAU, dim=1) - q) / (TAU * len(q))
        torch.testing.assert_close(scores.grad.double(), expected, atol=1e-7, rtol=1e-4)


def _loss_worker(rank, world, port, shards, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        video, proj = shards[rank]
        out = {gather: SwappedPredictionLoss(24, TAU, EPS, ITERS, gather=gather)(video, proj)["loss"]
               for gather in (False, True)}
        torch.save(out, os.path.join(out_dir, f"loss{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gather_false_keeps_the_codes_local_in_a_process_group(tmp_path):
    """Two gloo processes, each with half the tokens: with ``gather=False`` each one's loss is what one process
    computes on its half alone; with ``gather=True`` the codes are the whole batch's, and the losses differ."""
    video, proj = cosine_scores(200, 24, seed=5), cosine_scores(200, 24, seed=6)
    shards = [(video[:90], proj[:90]), (video[90:], proj[90:])]
    mp.start_processes(_loss_worker, args=(2, _free_port(), shards, str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    for rank, (v, p) in enumerate(shards):
        got = torch.load(tmp_path / f"loss{rank}.pt", weights_only=True)
        alone = SwappedPredictionLoss(24, TAU, EPS, ITERS, gather=False)(v, p)["loss"]
        assert got[False].item() == pytest.approx(alone.item(), rel=1e-6)
        codes_video = textbook_sinkhorn(video, EPS, ITERS)[rank * 90: 90 + rank * 110]
        codes_proj = textbook_sinkhorn(proj, EPS, ITERS)[rank * 90: 90 + rank * 110]
        whole = hand_cross_entropy(p, codes_video, True) + hand_cross_entropy(v, codes_proj, True)
        assert got[True].item() == pytest.approx(whole, rel=1e-5)
        assert abs(got[True].item() - got[False].item()) > 1e-4
