"""Linear probe: linearly separable features are learned to ~100%; chance-level features are not; a batch of one
left over is skipped (BatchNorm cannot normalize it). Its speed is measured in benchmarks/linear_probe.py."""
import pytest
import torch

from sigma_ray.eval import linear
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
    out = linear_probe(train, val, num_classes=10, epochs=100, optimizer=optimizer, seed=0)
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


def test_batch_of_one_left_over_is_skipped(monkeypatch):
    """33 samples in batches of 8: each epoch trains on 4 batches of 8 and skips the one sample left over (a
    different one each epoch, as the order is reshuffled), instead of failing in BatchNorm."""
    train = separable(33, 16, 3, seed=0)
    row_of = {tuple(r.tolist()): i for i, r in enumerate(train.feats)}
    batches = []

    def spying_head(dim, num_classes):
        head = make_head(dim, num_classes)
        head.register_forward_pre_hook(
            lambda module, args: batches.append([row_of[tuple(r.tolist())] for r in args[0]])
            if module.training else None)
        return head

    make_head = linear.make_head
    monkeypatch.setattr(linear, "make_head", spying_head)
    epochs = 6
    out = linear_probe(train, train, 3, epochs=epochs, batch_size=8, seed=1)
    assert [len(b) for b in batches] == [8] * 4 * epochs            # the batch of one never reached the head
    per_epoch = [sum(batches[4 * e: 4 * e + 4], []) for e in range(epochs)]
    left_out = [set(range(33)) - set(rows) for rows in per_epoch]
    assert all(len(rows) == len(set(rows)) == 32 for rows in per_epoch) and all(len(x) == 1 for x in left_out)
    assert len(set.union(*left_out)) > 1                             # not always the same sample
    assert out["linear_top1"] > 90.0
