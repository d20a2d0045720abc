"""Linear probe: linearly separable features are learned to ~100%; chance-level features are not."""
import time

import pytest
import torch

from sigma_ray.eval.features import Features
from sigma_ray.eval.linear import linear_probe


def separable(n: int, dim: int, classes: int, seed: int, offset: float = 0.0) -> Features:
    """Gaussian blobs around fixed random class centres (shared across seeds), far apart relative to the noise,
    shifted by ``offset`` and scaled unevenly per dimension (the BatchNorm has to undo that)."""
    fixed = torch.Generator().manual_seed(123)
    centers = torch.randn(classes, dim, generator=fixed)
    scale = torch.rand(dim, generator=fixed) * 10 + 0.1
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = (centers[y] + 0.3 * torch.randn(n, dim, generator=g)) * scale + offset
    return Features(x, y, torch.arange(n))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_separable_reaches_near_100(optimizer):
    train, val = separable(300, 192, 10, seed=0, offset=4.0), separable(200, 192, 10, seed=1, offset=4.0)
    t0 = time.perf_counter()
    out = linear_probe(train, val, num_classes=10, epochs=100, optimizer=optimizer, seed=0)
    assert time.perf_counter() - t0 < 10   # seconds: cached features, tiny head
    assert out["linear_top1"] >= 97.0, out["linear_top1"]
    assert out["linear_top5"] >= 99.0
    assert len(out["predictions"]) == len(val) and out["targets"] == val.labels.tolist()


def test_random_labels_stay_near_chance_and_seed_is_deterministic():
    g = torch.Generator().manual_seed(0)
    train = Features(torch.randn(300, 32, generator=g), torch.randint(0, 4, (300,), generator=g), torch.arange(300))
    val = Features(torch.randn(400, 32, generator=g), torch.randint(0, 4, (400,), generator=g), torch.arange(400))
    a = linear_probe(train, val, 4, epochs=20, seed=3, batch_size=64)
    b = linear_probe(train, val, 4, epochs=20, seed=3, batch_size=64)
    assert a["predictions"] == b["predictions"]
    assert a["linear_top1"] < 40.0          # chance is 25%: nothing to learn from noise
    assert a["linear_train_top1"] > a["linear_top1"]   # but it does fit its training set somewhat


def test_batch_of_one_left_over_is_skipped():
    train = separable(600, 16, 3, seed=0)
    n = ((len(train) - 1) // 8) * 8 + 1                   # one sample left over after batches of 8
    train = Features(train.feats[:n], train.labels[:n], train.video_ids[:n])
    out = linear_probe(train, train, 3, epochs=3, batch_size=8)
    assert 0.0 <= out["linear_top1"] <= 100.0
