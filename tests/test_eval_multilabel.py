"""Multi-label readout: average precision agrees with sklearn (the reference, test-only) to 1e-12 including ties,
the mAP leaves out classes without positives, the prior is the mean positive rate, and the BCE probe learns a
planted multi-label signal but not noise. Lists are paired by path or refused."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from sigma_ray.data.annotations import load_list
from sigma_ray.eval.features import Features
from sigma_ray.eval.multilabel import (align_targets, average_precision, mean_average_precision, multilabel_probe,
                                       multilabel_targets)
from sigma_ray.eval.splits import load_multilabel_list


def test_ap_matches_sklearn_on_random_cases_with_ties():
    rng = np.random.default_rng(0)
    for case in range(300):
        n = int(rng.integers(1, 80))
        # half the cases draw scores from a few values, so most thresholds are tied groups
        scores = rng.integers(0, 4, n).astype(np.float64) if case % 2 else rng.normal(size=n)
        targets = (rng.random(n) < rng.uniform(0.05, 0.9)).astype(np.int64)
        targets[rng.integers(n)] = 1
        assert abs(average_precision(scores, targets) - average_precision_score(targets, scores)) < 1e-12, case
    scores, targets = torch.randn(50, dtype=torch.float64), (torch.rand(50) < 0.3).double()
    targets[0] = 1
    assert abs(average_precision(scores, targets) - average_precision_score(targets.numpy(), scores.numpy())) < 1e-12


def test_map_matches_sklearn_over_many_classes():
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=(120, 157)), 1)                  # rounded: ties in every class
    rates = rng.uniform(0.001, 0.1, 157)                               # long-tailed, as Charades' classes
    targets = (rng.random((120, 157)) < rates).astype(np.float64)
    has_pos = targets.any(axis=0)
    assert 0 < (~has_pos).sum() and has_pos.sum() > 100                # some classes have no positive here
    ref = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in np.flatnonzero(has_pos)])
    out = mean_average_precision(scores, targets)
    assert abs(out["map"] - 100 * ref) < 1e-10
    assert out["classes_scored"] == has_pos.sum()


def test_ap_hand_computed_tiny_case_with_a_tie():
    # ranked: 0.9 (pos) | 0.8 (pos), 0.8 (neg) tied | 0.3 (neg) | 0.1 (pos); 3 positives
    #   >= 0.9: TP 1 of 1 predicted, P = 1,   R = 1/3, gain 1/3
    #   >= 0.8: TP 2 of 3 predicted, P = 2/3, R = 2/3, gain 1/3
    #   >= 0.3: TP 2 of 4 predicted, P = 1/2, R = 2/3, gain 0
    #   >= 0.1: TP 3 of 5 predicted, P = 3/5, R = 1,   gain 1/3
    # AP = 1/3 * (1 + 2/3 + 3/5) = 1/3 * 34/15 = 34/45. Breaking the tie with the positive first would give
    # 1/3 * (1 + 1 + 3/5) = 39/45 instead.
    scores, targets = [0.9, 0.8, 0.8, 0.3, 0.1], [1, 1, 0, 0, 1]
    assert average_precision(scores, targets) == pytest.approx(34 / 45, abs=1e-15)


def test_perfect_ranking_is_100_and_reversed_ranking_has_closed_form():
    n, pos = 20, 5
    targets = np.zeros((n, 3))
    targets[:pos, 0] = 1
    targets[:2, 1] = 1
    targets[:, 2] = np.arange(n) % 2
    perfect = targets + np.linspace(0, 0.5, n)[:, None]                # positives above every negative
    assert mean_average_precision(perfect, targets) == {"map": 100.0, "classes_scored": 3}
    # the positives ranked last: the k-th positive is found at rank n - pos + k, so AP = mean_k k / (n - pos + k)
    rising = np.arange(n, dtype=np.float64)                            # the first rows (the positives) score lowest
    closed = sum(k / (n - pos + k) for k in range(1, pos + 1)) / pos
    assert average_precision(rising, targets[:, 0]) == pytest.approx(closed, abs=1e-15)


def test_class_without_positives_has_nan_ap_and_is_left_out_of_map():
    assert math.isnan(average_precision([0.3, 0.2, 0.1], [0, 0, 0]))
    scores = np.array([[0.9, 0.5, 0.5], [0.1, 0.4, 0.9], [0.5, 0.3, 0.5]])
    targets = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 1]])              # class 1 has no positive
    out = mean_average_precision(scores, targets)
    # class 0 ranked first: AP 1; class 2: 0.9 (pos) then 0.5, 0.5 tied (pos, neg) -> 1/2 * (1 + 2/3) = 5/6
    assert out["classes_scored"] == 2
    assert out["map"] == pytest.approx(100 * (1 + 5 / 6) / 2, abs=1e-12)
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision(scores, np.zeros((3, 3)))


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="0 or 1"):
        average_precision([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="N > 0"):
        average_precision([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="finite"):
        average_precision([float("nan"), 0.2], [1, 0])
    with pytest.raises(ValueError, match="N x C"):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))


def test_multilabel_targets_is_multi_hot():
    t = multilabel_targets([[0, 2], [], [1]], 3)
    assert t.dtype == torch.float32
    assert t.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    with pytest.raises(ValueError, match="video 1: class 3"):
        multilabel_targets([[0], [3]], 3)


def planted(n: int, seed: int, dim: int = 24, classes: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class present with probability 0.3; present classes push the features along their own fixed
    direction (shared across seeds), absent ones the other way: every class is linearly separable with a margin
    of several noise widths. The features are offset and scaled unevenly per dimension (BatchNorm undoes it)."""
    fixed = torch.Generator().manual_seed(7)
    directions = torch.linalg.qr(torch.randn(dim, classes, generator=fixed)).Q.T     # classes x dim, orthonormal
    scale = torch.rand(dim, generator=fixed) * 5 + 0.2
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, classes, generator=g) < 0.3).float()
    x = ((2 * targets - 1) @ directions * 3 + 0.5 * torch.randn(n, dim, generator=g)) * scale + 2.0
    return x, targets


def test_probe_learns_a_planted_multilabel_signal():
    x, y = planted(300, seed=0)
    x_val, y_val = planted(200, seed=1)
    out = multilabel_probe(Features(x, torch.zeros(300, dtype=torch.int64), torch.arange(300)), y, x_val, y_val,
                           epochs=30, batch_size=64)
    assert out["multilabel_map"] > 95, out
    assert out["multilabel_map_train"] > 95
    assert out["multilabel_classes_scored"] == 6
    # the prior ties every video within a class: each AP is the val positive rate
    assert out["multilabel_map_prior"] == pytest.approx(100 * y_val.double().mean().item(), abs=1e-9)


def test_probe_on_noise_stays_near_prior_and_is_deterministic_in_seed():
    g = torch.Generator().manual_seed(3)
    x, x_val = torch.randn(300, 16, generator=g), torch.randn(400, 16, generator=g)
    y, y_val = (torch.rand(300, 5, generator=g) < 0.25).float(), (torch.rand(400, 5, generator=g) < 0.25).float()
    a = multilabel_probe(x, y, x_val, y_val, epochs=20, batch_size=64, seed=5)
    b = multilabel_probe(x, y, x_val, y_val, epochs=20, batch_size=64, seed=5)
    c = multilabel_probe(x, y, x_val, y_val, epochs=20, batch_size=64, seed=6)
    assert a == b
    assert a["multilabel_map"] != c["multilabel_map"]
    assert a["multilabel_map_prior"] == pytest.approx(100 * y_val.double().mean().item(), abs=1e-9)
    assert abs(a["multilabel_map"] - a["multilabel_map_prior"]) < 6, a
    assert a["multilabel_map_train"] > a["multilabel_map"]          # it fits its training set somewhat


def test_align_targets_pairs_rows_by_path_and_refuses_misaligned_lists(tmp_path):
    (tmp_path / "train.csv").write_text("a.mp4 0\nb.mp4 0\nc.mp4 0\n")
    (tmp_path / "train_multilabel.csv").write_text("a.mp4 2,0\nb.mp4 -\nc.mp4 1\n")
    records = load_list(tmp_path / "train.csv", root="/videos", check_files=False)
    items = load_multilabel_list(tmp_path / "train_multilabel.csv", root="/videos", num_classes=3)
    targets = align_targets([r.path for r in records], items, 3)
    assert targets.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    ids = torch.tensor([2, 0])                                        # features of a subset, by video id
    assert targets[ids].tolist() == [[0, 1, 0], [1, 0, 1]]

    swapped = [items[0], items[2], items[1]]
    with pytest.raises(ValueError, match="row 1: /videos/b.mp4 vs /videos/c.mp4"):
        align_targets([r.path for r in records], swapped, 3)
    with pytest.raises(ValueError, match=r"row 2: /videos/c.mp4 vs \(list ended\)"):
        align_targets([r.path for r in records], items[:2], 3)
