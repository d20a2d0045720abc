"""The segmentation protocol's metrics and the temporal tasks, each against an independent reference."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from sigma_ray.data.sampling import dense_eval_indices
from sigma_ray.eval.features import Features
from sigma_ray.eval.temporal import arrow_of_time, arrow_pairs, count_regression, reversed_batches, ridge_fit
from sigma_ray.eval.vos import (MaskedClips, greedy_objects, hungarian_objects, iou_matrix, kmeans, object_jaccard,
                                segment_clip, tube_labels, upsample_tubes, vos_scores)


def test_jaccard_by_hand():
    gt = np.array([[0, 1, 1], [0, 2, 2]])
    pred = np.array([[0, 1, 0], [2, 2, 2]])
    # object 1: pred {(0,1)}, gt {(0,1),(0,2)} -> 1/2; object 2: pred {(1,0),(1,1),(1,2)}, gt {(1,1),(1,2)} -> 2/3
    assert object_jaccard(pred, gt) == pytest.approx({1: 0.5, 2: 2 / 3})
    m = iou_matrix(pred, gt, 3, np.array([0, 1, 2]))
    assert m[0, 0] == pytest.approx(1 / 3) and m[2, 2] == pytest.approx(2 / 3) and m[1, 0] == 0


def test_hungarian_recovers_a_permuted_identity():
    gt = np.repeat(np.arange(4), 5).reshape(4, 5)
    perm = np.array([2, 0, 3, 1])
    pred = perm[gt]                                   # the same partition under other cluster names
    assert np.array_equal(hungarian_objects(pred, gt, 4), gt)
    assert object_jaccard(hungarian_objects(pred, gt, 4), gt) == {1: 1.0, 2: 1.0, 3: 1.0}


def test_hungarian_is_one_to_one_and_greedy_many_to_one():
    gt = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 1, 2, 2, 3, 3])               # four clusters, background split in three
    hung = hungarian_objects(pred, gt, 4)
    assert hung.tolist() == [-1, -1, 0, 0, 1, 1]      # the best background cluster (IoU 1/2) kept, two left out
    assert np.array_equal(greedy_objects(pred, gt, 4), gt)


def test_kmeans_matches_sklearn():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.3, (30, 3)) for c in ((0, 0, 0), (4, 0, 0), (0, 4, 0))])
    ours = kmeans(torch.from_numpy(x), 3, seed=0).numpy()
    ref = KMeans(3, n_init=4, random_state=0).fit(x).labels_
    assert np.array_equal(hungarian_objects(ours, ref, 3), ref)        # the same partition
    noise = rng.normal(size=(80, 5))
    labels = kmeans(torch.from_numpy(noise), 6, seed=1).numpy()
    inertia = sum(((noise[labels == c] - noise[labels == c].mean(0)) ** 2).sum() for c in range(6))
    assert inertia <= KMeans(6, n_init=10, random_state=0).fit(noise).inertia_ * 1.05


def test_tube_labels_and_upsampling():
    masks = np.zeros((4, 4, 4), np.uint8)
    masks[:, :2, :2] = 1                              # object 1 fills the top-left tube of every time slice
    masks[2:, 2:, 2:] = 2                             # object 2 the bottom-right tube of the second slice only
    tubes = tube_labels(masks, 2, 2)
    assert tubes.tolist() == [[[1, 0], [0, 0]], [[1, 0], [0, 2]]]
    assert np.array_equal(upsample_tubes(tubes, 2, 2), masks)


def test_segment_clip_perfect_tokens_score_one_and_a_frame_shift_does_not():
    masks = np.zeros((4, 8, 8), np.uint8)
    masks[:2, :4, :4] = 1
    masks[2:, 4:, 4:] = 1                             # the object moves between the two time slices
    grid = (2, 4, 4)
    ids = tube_labels(masks, 2, 2).reshape(-1)
    tokens = torch.nn.functional.one_hot(torch.from_numpy(ids).long(), 4).double() + 0.01 * torch.randn(32, 4)
    scores = segment_clip(tokens, grid, masks, 2, 2)
    assert scores == pytest.approx({"hungarian_patch": 1.0, "hungarian_pixel": 1.0, "greedy_patch": 1.0,
                                    "greedy_pixel": 1.0})
    shifted = np.roll(masks, 2, axis=0)               # masks two frames late: the tokens no longer fit
    assert segment_clip(tokens, grid, shifted, 2, 2)["hungarian_pixel"] < 0.4   # 1/3: only the background fits
    assert segment_clip(tokens, grid, np.zeros_like(masks), 2, 2) is None


def test_vos_scores_pixel_reference_finds_a_flat_object():
    clips = np.full((2, 4, 8, 8, 3), 40, np.uint8)
    masks = np.zeros((2, 4, 8, 8), np.uint8)
    clips[:, :, 2:6, 2:6] = 220
    masks[:, :, 2:6, 2:6] = 1
    out = vos_scores(None, MaskedClips(torch.from_numpy(clips), masks), 2, 2)
    assert out["vos_hungarian_pixel"] == pytest.approx(100.0) and out["vos_clips"] == 2


def test_the_segmentation_window_is_the_centred_val_view():
    assert dense_eval_indices(32, 8, 2, 1, 0).tolist() == list(range(8, 24, 2))
    assert dense_eval_indices(5, 4, 2, 1, 0).tolist() == [0, 2, 4, 4]


def _feats(x, labels):
    return Features(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(labels), torch.arange(len(labels)))


def test_reversed_batches_reverse_the_frames():
    clips = torch.arange(5).view(1, 5, 1, 1, 1).expand(2, 5, 2, 2, 3).to(torch.uint8)
    out = next(reversed_batches([{"clips": clips, "labels": torch.zeros(2)}]))
    assert out["clips"][0, :, 0, 0, 0].tolist() == [4, 3, 2, 1, 0]


def test_arrow_of_time_is_chance_for_an_order_blind_encoder_and_high_for_an_ordered_one():
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(60, 6, 4))              # 60 clips of 6 "frames" of 4 features
    ramp = np.linspace(-1, 1, 6)[None, :, None]

    def encode(clips):                                # order-blind: the mean over frames
        return _feats(clips.mean(1), np.zeros(len(clips), int))

    def ordered(clips):                               # sees order: the frames weighted by time
        return _feats(np.concatenate([clips.mean(1), (clips * ramp).mean(1)], 1), np.zeros(len(clips), int))

    drift = frames + 2 * ramp                         # every clip brightens over time
    tr, va = drift[:40], drift[40:]
    assert arrow_of_time(encode(tr), encode(tr[:, ::-1]), encode(va), encode(va[:, ::-1])) == 50.0
    assert arrow_of_time(ordered(tr), ordered(tr[:, ::-1]), ordered(va), ordered(va[:, ::-1])) == 100.0
    pairs = arrow_pairs(encode(tr), encode(tr[:, ::-1]))
    assert pairs.labels.tolist() == [0] * 40 + [1] * 40 and len(set(pairs.video_ids.tolist())) == 80


def test_ridge_matches_numpy_and_counting_beats_the_median():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0]) + 3.0
    w, b = ridge_fit(torch.from_numpy(x), torch.from_numpy(y), 2.0)
    xc, yc = x - x.mean(0), y - y.mean()
    w_ref = np.linalg.solve(xc.T @ xc + 2.0 * np.eye(4), xc.T @ yc)
    assert np.allclose(w.numpy(), w_ref) and float(b) == pytest.approx(y.mean() - x.mean(0) @ w_ref)
    labels = rng.integers(0, 3, 200)
    feats = np.stack([labels + 0.1 * rng.normal(size=200), rng.normal(size=200)], 1)
    out = count_regression(_feats(feats[:150], labels[:150]), _feats(feats[150:], labels[150:]), [1, 2, 3])
    assert out["count_mae"] < 0.15 < out["count_mae_median"]
    blind = count_regression(_feats(rng.normal(size=(150, 2)), labels[:150]),
                             _feats(rng.normal(size=(50, 2)), labels[150:]), [1, 2, 3])
    assert blind["count_mae"] > 0.5                    # features that say nothing: no better than guessing
