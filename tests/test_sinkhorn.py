"""Sinkhorn-Knopp against a float64 textbook reference, at small eps, in bf16, and gathered over 2 processes."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sigma_ray.method.sinkhorn import sinkhorn, usage_perplexity


def textbook_sinkhorn(scores: torch.Tensor, eps: float, iterations: int) -> torch.Tensor:
    """SwAV's loop, literally, in float64: N x K scores -> N x K codes."""
    q = torch.exp(scores.double() / eps).t()
    q /= q.sum()
    k, n = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= n
    return (q * n).t()


def cosine_scores(n: int, k: int, d: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(n, d, generator=g), dim=1)
    protos = F.normalize(torch.randn(k, d, generator=g), dim=1)
    return feats @ protos.t()


@pytest.mark.parametrize("eps", [0.05, 0.03, 0.02, 0.01])
@pytest.mark.parametrize("score_bound", [1.0, None, 1000.0])  # 1000 forces the log-domain path
def test_matches_float64_reference(eps, score_bound):
    scores = cosine_scores(700, 50)
    ref = textbook_sinkhorn(scores, eps, 10)
    codes = sinkhorn(scores, eps, 10, score_bound=score_bound)
    assert codes.dtype == torch.float32 and codes.shape == (700, 50)
    assert torch.allclose(codes.double(), ref, atol=1e-5, rtol=0)
    assert torch.equal(codes.argmax(1), ref.argmax(1))


def test_columns_sum_to_one_and_prototypes_are_equipartitioned():
    scores = cosine_scores(2000, 40, seed=1)
    codes = sinkhorn(scores, eps=0.05, iterations=200)
    assert torch.allclose(codes.sum(1), torch.ones(2000), atol=1e-5)
    # Each prototype gets 1/K of the tokens' mass.
    marginal = codes.sum(0) / codes.shape[0]
    assert torch.allclose(marginal, torch.full((40,), 1 / 40), atol=1e-3 / 40)


def test_one_iteration_is_one_row_and_one_column_step():
    scores = cosine_scores(300, 20, seed=2)
    assert torch.allclose(sinkhorn(scores, 0.05, 1).double(), textbook_sinkhorn(scores, 0.05, 1), atol=1e-6)


def test_bf16_scores_at_small_eps_stay_finite_where_naive_exp_overflows():
    scores = cosine_scores(500, 64, seed=3)
    scores[:64].fill_diagonal_(1.0)  # tokens that coincide with a prototype: cosine 1
    scores = scores.bfloat16()
    assert not torch.isfinite(torch.exp(scores.float() / 0.01)).all()  # the released code's float32 exp
    codes = sinkhorn(scores, eps=0.01, iterations=10)
    assert torch.isfinite(codes).all()
    assert torch.allclose(codes.double(), textbook_sinkhorn(scores, 0.01, 10), atol=1e-5)


def test_extreme_outlier_token_does_not_produce_nan():
    scores = cosine_scores(200, 16, seed=4)
    scores[0] = -1.0  # a token far below every prototype's best match: its exp underflows at eps=0.01
    codes = sinkhorn(scores, eps=0.01, iterations=10)
    assert torch.isfinite(codes).all()
    assert torch.allclose(codes.double(), textbook_sinkhorn(scores, 0.01, 10), atol=1e-5)


def test_runs_in_float32_under_autocast():
    scores = cosine_scores(256, 32, seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = sinkhorn(scores.bfloat16(), 0.05, 10)
    assert codes.dtype == torch.float32
    assert torch.allclose(codes.double(), textbook_sinkhorn(scores.bfloat16(), 0.05, 10), atol=1e-5)


def test_usage_perplexity_closed_forms():
    assert usage_perplexity(torch.zeros(100, dtype=torch.long), 10).item() == pytest.approx(1.0)
    assert usage_perplexity(torch.arange(100) % 10, 10).item() == pytest.approx(10.0, rel=1e-5)
    assert usage_perplexity(torch.arange(100) % 4, 10).item() == pytest.approx(4.0, rel=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gathered_worker(rank, world, port, shards, eps, iterations, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        codes = sinkhorn(shards[rank], eps, iterations, score_bound=1.0 if eps >= 0.03 else None)
        torch.save(codes, os.path.join(out_dir, f"codes{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("sizes", [(300, 300), (137, 451)])
@pytest.mark.parametrize("eps", [0.05, 0.01])
def test_two_process_gloo_group_equals_single_process_on_concatenated_batch(tmp_path, sizes, eps):
    scores = cosine_scores(sum(sizes), 48, seed=6)
    shards = list(scores.split(list(sizes)))
    mp.start_processes(_gathered_worker, args=(2, _free_port(), shards, eps, 10, str(tmp_path)), nprocs=2,
                       join=True, start_method="spawn")
    gathered = torch.cat([torch.load(tmp_path / f"codes{r}.pt", weights_only=True) for r in range(2)])
    single = sinkhorn(scores, eps, 10)
    # Equal up to float32 summation order over tokens (measured <= 2e-6), with identical hard codes.
    assert torch.allclose(gathered, single, atol=1e-5, rtol=0)
    assert torch.equal(gathered.argmax(1), single.argmax(1))
    # And not the per-shard result: gathering matters.
    local = torch.cat([sinkhorn(s, eps, 10) for s in shards])
    assert not torch.allclose(local, single, atol=1e-4)
