"""The synthetic set: real mp4 files, deterministic, and its classes need time (one frame is at chance)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sigma_ray.config import from_dict
from sigma_ray.data.config import DataConfig
from sigma_ray.data.decode import read_frames
from sigma_ray.data.leakage import affine_motion, leak_checks, nearest_centroid, ridge
from sigma_ray.data.iterator import ClipIterator
from sigma_ray.data.synthetic import (CAMERA_CLASSES, MOTION_CLASSES, PAN_DIRECTIONS, PATTERN_CLASSES, PATTERN_PERIODS,
                                      SCENE_CLASSES, make_synthetic, pattern_frames, scene_frames)
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


def test_motion_classes_are_named_by_the_motion_alone(tmp_path_factory):
    """The motion family: one frame is at chance and so is, nearly, one frame difference (linear on its pixels),
    while the affine flow of the moving objects names the direction and the speed, hence the class."""
    paths = make_synthetic(tmp_path_factory.mktemp("motion"), num_classes=8, train_per_class=12, val_per_class=6,
                           frames=16, size=32, seed=4, kind="motion")
    assert open(paths["classes"]).read().split() == list(MOTION_CLASSES)
    factors = json.loads(Path(paths["factors"]).read_text())["factors"]
    assert factors["speed"]["of_class"] == [c % 2 for c in range(8)] and factors["direction"]["values"] == list(
        PAN_DIRECTIONS)
    xtr, ytr = load(paths, "train")
    xva, yva = load(paths, "val")
    checks = leak_checks(xtr, ytr, xva, yva, {name: f["of_class"] for name, f in factors.items()})
    chance = 1 / 8
    assert checks["one_frame"] < chance + 0.1 and checks["frame_difference"] < chance + 0.2, checks
    assert checks["flow_direction"] > 0.9 and checks["flow_speed"] > 0.9 and checks["flow"] > 0.85, checks


def test_dead_leaves_have_a_natural_images_spectrum():
    """Power falls as ~1/f^2 over the mid frequencies (natural images: exponent ~2), with sharp occluding edges."""
    from sigma_ray.data.synthetic import dead_leaves

    rng = np.random.default_rng(0)
    power = np.mean([np.abs(np.fft.fft2(dead_leaves(rng, 128, 2, 40).mean(-1))) ** 2 for _ in range(8)], axis=0)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(128), np.fft.fftfreq(128)))
    bands = np.geomspace(4 / 128, 32 / 128, 7)
    radial = [power[(f >= lo) & (f < hi)].mean() for lo, hi in zip(bands[:-1], bands[1:])]
    centres = np.sqrt(bands[:-1] * bands[1:])
    slope = np.polyfit(np.log(centres), np.log(radial), 1)[0]
    assert -2.8 < slope < -1.5, slope


def test_shapes_classes_need_the_objects_shape_and_its_motion(tmp_path_factory):
    """The held-out family: one frame tells the shape (a cross's edges line up four ways, a disc's do not) but not
    the direction; the flow names the direction."""
    from sigma_ray.data.synthetic import SHAPE_CLASSES

    paths = make_synthetic(tmp_path_factory.mktemp("shapes"), num_classes=8, train_per_class=10, val_per_class=5,
                           frames=16, size=64, seed=4, kind="shapes")
    assert open(paths["classes"]).read().split() == list(SHAPE_CLASSES)
    xtr, ytr = load(paths, "train")
    xva, yva = load(paths, "val")
    shape = lambda x: np.array([[fourfold_anisotropy(c[8], w) for w in (32, 64)] for c in x])
    # (the textures add edges of their own, so this crude edge statistic reads the shape in 3 of 4 clips)
    assert (nearest_centroid(shape(xtr), ytr % 2, shape(xva)) == yva % 2).mean() > 0.65
    checks = leak_checks(xtr, ytr // 2, xva, yva // 2)
    assert checks["one_frame"] < 1 / 4 + 0.15 and checks["flow"] > 0.9, checks
