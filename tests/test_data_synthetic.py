"""The synthetic set: real mp4 files, deterministic, and its classes need time (one frame is at chance)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from sigma_ray.config import from_dict
from sigma_ray.data.config import DataConfig
from sigma_ray.data.decode import read_frames
from sigma_ray.data.iterator import ClipIterator
from sigma_ray.data.synthetic import (CAMERA_CLASSES, PAN_DIRECTIONS, PATTERN_CLASSES, PATTERN_PERIODS, SCENE_CLASSES,
                                      make_synthetic, pattern_frames, scene_frames)
from sigma_ray.model.projection import normalize_tubes, tube_pixels


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return make_synthetic(out, num_classes=8, train_per_class=12, val_per_class=6, frames=20, size=64, seed=1)


def load(paths, split):
    clips, labels = [], []
    for line in open(paths[split]):
        rel, label = line.split()
        clips.append(read_frames(f"{paths['root']}/{rel}", range(16)))
        labels.append(int(label))
    return np.stack(clips), np.array(labels)


def affine_motion(clip, threshold: float = 20):
    """Median over frame pairs of a least-squares affine optical flow (brightness constancy) fitted on the
    pixels that change by more than ``threshold`` grey levels: (translation x, translation y, divergence, curl)."""
    g = clip.astype(np.float32).mean(-1)
    yy, xx = np.mgrid[0:g.shape[1], 0:g.shape[2]].astype(np.float32)
    feats = []
    for a, b in zip(g[:-1], g[1:]):
        iy, ix = np.gradient((a + b) / 2)
        it = b - a
        w = np.abs(it) > threshold
        if w.sum() < 10:
            continue
        x, y = xx[w] - xx[w].mean(), yy[w] - yy[w].mean()
        A = np.stack([ix[w], ix[w] * x, ix[w] * y, iy[w], iy[w] * x, iy[w] * y], 1)
        p = np.linalg.lstsq(A, -it[w], rcond=None)[0]
        feats.append([p[0], p[3], p[1] + p[5], p[4] - p[2]])
    return np.median(feats, 0)


def nearest_centroid(ftr, ytr, fva):
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    ftr, fva = (ftr - mu) / sd, (fva - mu) / sd
    centroids = np.stack([ftr[ytr == k].mean(0) for k in range(ytr.max() + 1)])
    return ((fva[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)


def ridge(ftr, ytr, fva, lam=10.0):
    mu = ftr.mean(0)
    y = np.eye(ytr.max() + 1)[ytr]
    w = np.linalg.solve((ftr - mu).T @ (ftr - mu) + lam * np.eye(ftr.shape[1]), (ftr - mu).T @ y)
    return ((fva - mu) @ w).argmax(1)


def test_deterministic_by_seed(synth, tmp_path):
    again = make_synthetic(tmp_path, num_classes=8, train_per_class=1, val_per_class=1, frames=20, seed=1)
    # byte-identical files, so one seed is one data set (libx264 with mbtree, as before, varied from call to call:
    # 20 encodings of the same frames gave 2-6 distinct files)
    for split in ("train", "val"):
        for line in open(again[split]):
            rel = line.split()[0]
            assert Path(again["root"], rel).read_bytes() == Path(synth["root"], rel).read_bytes(), rel
    first = lambda p: read_frames(f"{p['root']}/{open(p['train']).readline().split()[0]}", range(20))
    diff = lambda a, b: np.abs(first(a).astype(float) - first(b).astype(float)).mean()
    other = make_synthetic(tmp_path / "other", num_classes=8, train_per_class=1, val_per_class=1, frames=20, seed=2)
    assert diff(other, synth) > 20
    lines = open(synth["train"]).read().splitlines()
    assert len(lines) == 96 and lines[0].endswith(" 0") and lines[1].endswith(" 1")


def test_single_frame_at_chance_motion_separates_classes(synth):
    xtr, ytr = load(synth, "train")
    xva, yva = load(synth, "val")
    chance = 1 / 8
    # one frame, 16x16 colour thumbnails: ridge classifier (it fits the train set, it cannot generalize)
    thumb = lambda x: x[:, 8].reshape(len(x), 16, 4, 16, 4, 3).mean((2, 4)).reshape(len(x), -1) / 255
    single = (ridge(thumb(xtr), ytr, thumb(xva)) == yva).mean()
    # frame differences: affine motion features, nearest centroid
    motion = (nearest_centroid(np.stack([affine_motion(c) for c in xtr]), ytr,
                               np.stack([affine_motion(c) for c in xva])) == yva).mean()
    assert single < chance + 0.15, single
    assert motion > 0.7, motion


def test_loads_through_the_data_layer(synth):
    cfg = from_dict(DataConfig, {"train_list": synth["train"], "root": synth["root"], "num_frames": 16,
                                 "sampling_rate": 1, "input_size": 64, "decode_short_side": 64,
                                 "batch_size": 4, "num_classes": 8})
    batch = next(iter(ClipIterator(cfg, "train")))
    assert batch["clips"].shape == (4, 16, 64, 64, 3)


def test_camera_motion_classes_single_frame_at_chance_motion_separates(tmp_path_factory):
    paths = make_synthetic(tmp_path_factory.mktemp("camera"), num_classes=8, train_per_class=8, val_per_class=4,
                           frames=16, size=64, seed=2, kind="camera")
    assert open(paths["classes"]).read().split() == list(CAMERA_CLASSES)
    xtr, ytr = load(paths, "train")
    xva, yva = load(paths, "val")
    thumb = lambda x: x[:, 8].reshape(len(x), 16, 4, 16, 4, 3).mean((2, 4)).reshape(len(x), -1) / 255
    assert (ridge(thumb(xtr), ytr, thumb(xva)) == yva).mean() < 1 / 8 + 0.2
    # the whole frame translates: the affine flow's translation alone names the direction
    motion = lambda x: np.stack([affine_motion(c)[:2] for c in x])
    assert (nearest_centroid(motion(xtr), ytr, motion(xva)) == yva).mean() > 0.9


def fourfold_anisotropy(frame: np.ndarray, window: int = 16) -> float:
    """How much a frame's edges line up along two perpendicular directions, whatever their angle: per window,
    the magnitude of the gradient-weighted mean of exp(4i * orientation), averaged over windows with edges
    (each object has its own angle, so the windows are taken apart). High for squares and crosses, low for
    discs."""
    iy, ix = np.gradient(frame.astype(np.float32).mean(-1))
    w = np.hypot(ix, iy) * (np.hypot(ix, iy) > 8)
    z = w * np.exp(4j * np.arctan2(iy, ix))
    n = frame.shape[0] // window
    zs = z.reshape(n, window, n, window).sum((1, 3))
    ws = w.reshape(n, window, n, window).sum((1, 3))
    keep = ws > 0
    return float((np.abs(zs[keep]) / ws[keep]).mean()) if keep.any() else 0.0


def test_scene_classes_need_appearance_and_motion(tmp_path_factory):
    paths = make_synthetic(tmp_path_factory.mktemp("scenes"), num_classes=8, train_per_class=10, val_per_class=5,
                           frames=16, size=64, seed=4, kind="scenes")
    assert open(paths["classes"]).read().split() == list(SCENE_CLASSES)
    xtr, ytr = load(paths, "train")
    xva, yva = load(paths, "val")
    kind_tr, kind_va, dir_tr, dir_va = ytr % 2, yva % 2, ytr // 2, yva // 2
    # one frame: the scene's kind shows (the edges' four-fold symmetry) ...
    shape = lambda x: np.array([[fourfold_anisotropy(c[8], w) for w in (16, 32)] for c in x])
    assert (nearest_centroid(shape(xtr), kind_tr, shape(xva)) == kind_va).mean() > 0.8
    # ... the pan direction does not (ridge on thumbnails of one frame is at chance for the 4 directions) ...
    thumb = lambda x: x[:, 8].reshape(len(x), 16, 4, 16, 4, 3).mean((2, 4)).reshape(len(x), -1) / 255
    assert (ridge(thumb(xtr), dir_tr, thumb(xva)) == dir_va).mean() < 1 / len(PAN_DIRECTIONS) + 0.2
    # ... and frame differences do: the affine flow's translation names it
    motion = lambda x: np.stack([affine_motion(c)[:2] for c in x])
    assert (nearest_centroid(motion(xtr), dir_tr, motion(xva)) == dir_va).mean() > 0.9
    # both together name the class
    both = lambda x: np.concatenate([shape(x) * 10, motion(x)], axis=1)
    assert (nearest_centroid(both(xtr), ytr, both(xva)) == yva).mean() > 0.75


def axis_to_diagonal_power(frame: np.ndarray, periods: int) -> float:
    """log of the Fourier power at the pattern's axis frequencies (periods, 0), (0, periods) over that at its
    diagonal ones (periods, +-periods), summed over channels: dots have both, checks only the diagonal."""
    f = np.abs(np.fft.fft2(frame.astype(np.float32) - frame.mean((0, 1)), axes=(0, 1))) ** 2
    k = periods
    axis = f[k, 0] + f[0, k] + f[-k, 0] + f[0, -k]
    diagonal = f[k, k] + f[-k, -k] + f[k, -k] + f[-k, k]
    return float(np.log(axis.sum() + 1) - np.log(diagonal.sum() + 1))


def test_pattern_classes_need_appearance_and_motion(tmp_path_factory):
    paths = make_synthetic(tmp_path_factory.mktemp("patterns"), num_classes=8, train_per_class=10,
                           val_per_class=5, frames=16, size=32, seed=4, kind="patterns")
    assert open(paths["classes"]).read().split() == list(PATTERN_CLASSES)
    xtr, ytr = load(paths, "train")
    xva, yva = load(paths, "val")
    kind_tr, kind_va, dir_tr, dir_va = ytr % 2, yva % 2, ytr // 2, yva // 2
    # one frame: the pattern shows (its Fourier power on the axes against the diagonals) ...
    power = lambda x: np.array([[axis_to_diagonal_power(c[8], PATTERN_PERIODS)] for c in x])
    assert (nearest_centroid(power(xtr), kind_tr, power(xva)) == kind_va).mean() > 0.9
    # ... the pan direction does not (ridge on thumbnails of one frame is at chance for the 4 directions) ...
    thumb = lambda x: x[:, 8].reshape(len(x), 8, 4, 8, 4, 3).mean((2, 4)).reshape(len(x), -1) / 255
    assert (ridge(thumb(xtr), dir_tr, thumb(xva)) == dir_va).mean() < 1 / len(PAN_DIRECTIONS) + 0.2
    # ... and frame differences do: the affine flow's translation names it (a low threshold: some walls have
    # little grey-level contrast, their colours cancel in the grey mean)
    motion = lambda x: np.stack([affine_motion(c, threshold=4)[:2] for c in x])
    assert (nearest_centroid(motion(xtr), dir_tr, motion(xva)) == dir_va).mean() > 0.9
    # both together name the class; the motion alone names at most half of it
    both = lambda x: np.concatenate([power(x), motion(x)], axis=1)
    assert (nearest_centroid(both(xtr), ytr, both(xva)) == yva).mean() > 0.8
    assert (nearest_centroid(motion(xtr), ytr, motion(xva)) == yva).mean() < 0.7


def tubes_like_their_slice(video: np.ndarray, patch: int = 8, tubelet: int = 2, tol: float = 0.2) -> float:
    """The fraction of a video's tubes (VideoMAE's per-tube standardized target) that lie within ``tol`` (RMS) of
    their time slice's median tube: the share of masked tubes a model can fill from the visible ones."""
    clip = torch.from_numpy(video.astype(np.float32)).permute(3, 0, 1, 2)[None]        # 1 x C x T x H x W
    x = normalize_tubes(tube_pixels(clip, tubelet, patch), pixel_std=None)[0].double().numpy()
    t = video.shape[0] // tubelet
    x = x.reshape(t, -1, x.shape[-1])                                                 # slices x tubes x values
    median = np.median(x, axis=1, keepdims=True)
    return float((np.sqrt(((x - median) ** 2).mean(2)) < tol).mean())


def test_pattern_tubes_repeat_within_a_time_slice_and_scene_tubes_do_not():
    rng = np.random.default_rng(0)
    patterns = np.mean([tubes_like_their_slice(pattern_frames(c % 8, 16, 32, rng)) for c in range(16)])
    scenes = np.mean([tubes_like_their_slice(scene_frames(c % 8, 16, 32, rng)) for c in range(16)])
    assert patterns > 0.4, patterns
    assert scenes < 0.05, scenes
