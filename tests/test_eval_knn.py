"""kNN: a hand-made case with a known answer, and a naive per-query loop as an independent reference."""
import math

import pytest
import torch

from sigma_ray.eval.features import Features
from sigma_ray.eval.knn import knn_eval, knn_predict
from sigma_ray.eval.metrics import topk_accuracy


def naive_knn(bank, labels, queries, num_classes, k, temperature):
    """Score every query with plain Python loops over sorted cosine similarities."""
    out = []
    for q in queries.tolist():
        sims = []
        for row, lab in zip(bank.tolist(), labels.tolist()):
            dot = sum(a * b for a, b in zip(q, row))
            norm = math.sqrt(sum(a * a for a in q)) * math.sqrt(sum(b * b for b in row))
            sims.append((dot / norm, lab))
        sims.sort(key=lambda s: -s[0])
        scores = [0.0] * num_classes
        for sim, lab in sims[:k]:
            scores[lab] += math.exp(sim / temperature)
        out.append(scores)
    return torch.tensor(out)


def test_hand_made_known_answer():
    # bank: two points near +x (class 0), one near +y (class 1); the query sits at 45 degrees but closer to +y
    bank = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 3.0]])
    labels = torch.tensor([0, 0, 1])
    query = torch.tensor([[0.6, 0.8]])
    # k=1: only the +y point votes -> class 1, weight exp(0.8 / T)
    s1 = knn_predict(bank, labels, query, num_classes=2, k=1, temperature=0.5)
    assert s1[0, 0] == 0 and s1[0, 1] == pytest.approx(math.exp(0.8 / 0.5), rel=1e-5)
    # k=3 with a high temperature: the two class-0 votes outweigh the single class-1 vote
    s3 = knn_predict(bank, labels, query, num_classes=2, k=3, temperature=100.0)
    assert s3.argmax(1).item() == 0
    cos_b = (0.6 * 2.0 + 0.8 * 0.1) / math.hypot(2.0, 0.1)
    assert s3[0, 0] == pytest.approx(math.exp(0.6 / 100) + math.exp(cos_b / 100), rel=1e-5)
    # k larger than the bank is capped (no error), same as k = 3
    assert torch.allclose(knn_predict(bank, labels, query, 2, k=50, temperature=100.0), s3)


@pytest.mark.parametrize("k,temperature,chunk", [(1, 0.07, 4096), (5, 0.07, 3), (20, 0.5, 7)])
def test_matches_naive_loop(k, temperature, chunk):
    g = torch.Generator().manual_seed(k)
    bank, queries = torch.randn(40, 6, generator=g), torch.randn(11, 6, generator=g)
    labels = torch.randint(0, 4, (40,), generator=g)
    got = knn_predict(bank, labels, queries, 4, k=k, temperature=temperature, chunk=chunk)
    want = naive_knn(bank, labels, queries, 4, k, temperature)
    assert torch.allclose(got, want, rtol=1e-4)


def test_knn_eval_percentages_and_k_cap():
    # class c lives around direction e_c; val queries are noisy copies, one deliberately mislabeled
    g = torch.Generator().manual_seed(0)
    centers = torch.eye(3) * 5
    train_labels = torch.arange(3).repeat(10)
    train = Features(centers[train_labels] + 0.3 * torch.randn(30, 3, generator=g), train_labels, torch.arange(30))
    val_labels = torch.tensor([0, 1, 2, 0])
    feats = centers[torch.tensor([0, 1, 2, 1])] + 0.1 * torch.randn(4, 3, generator=g)
    val = Features(feats, val_labels, torch.arange(4))
    out = knn_eval(train, val, num_classes=3, ks=(5, 200), temperature=0.07)
    assert out["knn5_top1"] == pytest.approx(75.0)
    assert out["knn200_top1"] == pytest.approx(75.0)      # k capped at the 30-video bank
    assert out["knn5_top5"] == pytest.approx(100.0)        # top-5 of 3 classes is everything
    assert out["predictions"] == [0, 1, 2, 1] and out["targets"] == [0, 1, 2, 0]


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    acc = topk_accuracy(scores, torch.tensor([2, 0, 0]), (1, 2, 5))
    assert acc[1] == pytest.approx(100 / 3) and acc[2] == pytest.approx(200 / 3) and acc[5] == 100.0


def test_class_variance_share_against_a_naive_loop_and_its_limits():
    from sigma_ray.eval.metrics import class_variance_share

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 5, generator=g), torch.randint(0, 4, (300,), generator=g)
    x[y == 2] += 3.0
    xd = x.double() - x.double().mean(0)
    between = sum((y == c).sum() * ((xd[y == c].mean(0)) ** 2).sum() for c in range(4))
    assert class_variance_share(x, y) == pytest.approx(float(between / (xd ** 2).sum()), rel=1e-9)
    assert class_variance_share(torch.eye(3)[y[:60] % 3] * 2.0, y[:60] % 3) == pytest.approx(1.0)  # only class means
    # labels independent of the features: about (C - 1) / (N - 1) of the variance, by chance alone
    shares = [class_variance_share(torch.randn(400, 8, generator=g), torch.randint(0, 8, (400,), generator=g))
              for _ in range(50)]
    assert sum(shares) / len(shares) == pytest.approx(7 / 399, rel=0.15)
