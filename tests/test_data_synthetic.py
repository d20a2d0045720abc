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
from sigma_ray.config import ConfigError
from sigma_ray.data.synthetic import (CAMERA_CLASSES, COUNT_CLASSES, COUNT_CYCLES, COUNT_WINDOW, FINE_CLASSES,
                                      FINE_STEP, MOTION_CLASSES, MOTION_SPEEDS, PAN_DIRECTIONS, PATTERN_CLASSES,
                                      PATTERN_PERIODS, SCENE_CLASSES, SUPERSAMPLE, TASK_FILE, SyntheticConfig,
                                      _motion_background, count_frames, make_synthetic, mask_path, motion_frames,
                                      pattern_frames, read_masks, scene_frames)
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


def torus_centroid(mask: np.ndarray, label: int) -> np.ndarray:
    """(x, y) pixels: the circular mean of the pixels of ``mask`` (size, size) that hold ``label``, the centroid of
    an object wrapped on the torus (it moves exactly with the object, wherever the edges cut it)."""
    size = mask.shape[-1]
    yy, xx = np.nonzero(mask == label)
    mean = lambda v: np.angle(np.exp(2j * np.pi * v / size).mean()) * size / (2 * np.pi)  # noqa: E731
    return np.array([mean(xx), mean(yy)])


def track(masks: np.ndarray, label: int) -> np.ndarray:
    """Float (frames, 2): the centroid of ``label``'s pixels from frame to frame, unwrapped (steps of less than half
    the frame), relative to frame 0."""
    size = masks.shape[-1]
    steps = np.diff(np.stack([torus_centroid(m, label) for m in masks]), axis=0)
    return np.concatenate([np.zeros((1, 2)), np.cumsum((steps + size / 2) % size - size / 2, axis=0)])


def test_pattern_masks_cover_exactly_the_flat_objects(tmp_path):
    """Raw frames: every pixel of object k's mask has that object's one colour, and no pixel outside it does; the
    masks leave the frames as they were. Decoded frames: the mask's inside is flat within the codec's error."""
    for c in range(8):
        frames, masks = pattern_frames(c, 8, 32, np.random.default_rng(c), with_masks=True)
        assert np.array_equal(frames, pattern_frames(c, 8, 32, np.random.default_rng(c)))
        assert masks.shape == frames.shape[:3] and masks.dtype == np.uint8 and masks.max() <= 2
        for k in (1, 2):
            if (masks == k).any():
                colour = np.unique(frames[masks == k], axis=0)
                assert len(colour) == 1, (c, k, colour)
                assert not (frames[masks != k] == colour).all(-1).any(), (c, k)
    paths = make_synthetic(tmp_path, num_classes=8, train_per_class=1, val_per_class=1, frames=8, size=64, seed=3,
                           kind="patterns")
    for line in open(paths["val"]):
        rel = line.split()[0]
        video = read_frames(f"{paths['root']}/{rel}", range(8)).astype(np.float32)
        masks = read_masks(mask_path(paths["root"], rel))
        for k in (1, 2):
            # away from the edges (4:2:0 chroma and the codec's blocks blur them by a pixel or two)
            inner = masks == k
            for axis in (1, 2):
                inner = inner & (np.roll(masks, 1, axis) == k) & (np.roll(masks, -1, axis) == k)
            if inner.any():
                pixels = video[inner]
                assert np.abs(pixels - np.median(pixels, axis=0)).mean() < 6, (rel, k)


def test_motion_masks_move_with_the_objects(tmp_path):
    """The topmost object's mask (no other object hides part of it) moves at the class's velocity, frame by frame,
    and mask[t] matches the pixels that differ from the empty background at frame t better than mask[t +- 1]."""
    size, frames = 64, 16
    for c in range(8):
        seed = [7, c]
        video, masks = motion_frames(c, frames, size, np.random.default_rng(seed), with_masks=True)
        assert np.array_equal(video, motion_frames(c, frames, size, np.random.default_rng(seed)))
        path = track(masks, masks.max())
        t = np.arange(frames)
        velocity = np.polyfit(t, path, 1)[0]
        assert np.abs(path - np.outer(t, velocity) - (path - np.outer(t, velocity)).mean(0)).max() < 1, c
        direction = np.array(PAN_DIRECTIONS[list(PAN_DIRECTIONS)[c // 2]])
        lo, hi = (v * size / 64 for v in MOTION_SPEEDS[list(MOTION_SPEEDS)[c % 2]])
        assert lo - 0.1 < velocity @ direction < hi + 0.1 and abs(velocity @ direction[::-1]) < 0.1, (c, velocity)
        # the renderer's own background (its first draws), box-filtered as the frames are
        res = size * SUPERSAMPLE
        empty = _motion_background(np.random.default_rng(seed), res).reshape(size, SUPERSAMPLE, size, SUPERSAMPLE,
                                                                             3).mean((1, 3))
        changed = np.abs(video - empty).max(-1) > 10
        iou = lambda a, b: ((a & b).sum((1, 2)) / (a | b).sum((1, 2))).mean()  # noqa: E731
        fg = masks > 0
        aligned = iou(fg[1:-1], changed[1:-1])
        assert aligned > 0.85 and aligned > iou(fg[2:], changed[1:-1]) and aligned > iou(fg[:-2], changed[1:-1]), c
    paths = make_synthetic(tmp_path, num_classes=8, train_per_class=1, val_per_class=1, frames=frames, size=32,
                           seed=3, kind="motion")
    assert Path(paths["masks"]).is_dir()
    for split in ("train", "val"):
        for line in open(paths[split]):
            rel = line.split()[0]
            masks = read_masks(mask_path(paths["root"], rel))
            assert masks.dtype == np.uint8
            assert masks.shape == read_frames(f"{paths['root']}/{rel}", range(frames)).shape[:3]
            assert 1 <= masks.max() <= 2 and (masks > 0).any((1, 2)).all()


def test_fine_classes_are_the_direction_45_degrees_apart(tmp_path):
    paths = make_synthetic(tmp_path, num_classes=8, train_per_class=8, val_per_class=4, frames=16, size=32, seed=5,
                           kind="fine")
    assert open(paths["classes"]).read().split() == list(FINE_CLASSES)
    factors = json.loads(Path(paths["factors"]).read_text())["factors"]
    assert factors["diagonal"] == {"values": ["axis", "diagonal"], "of_class": [0, 1] * 4}
    assert factors["sector"]["of_class"] == [0, 0, 1, 1, 2, 2, 3, 3] and len(factors["sector"]["values"]) == 4
    xtr, ytr = load(paths, "train")
    xva, yva = load(paths, "val")
    off = lambda a, c: (a - FINE_STEP * c + 180) % 360 - 180  # noqa: E731
    for split, clips, labels in (("train", xtr, ytr), ("val", xva, yva)):
        rels = [line.split()[0] for line in open(paths[split])]
        for rel, clip, c in zip(rels, clips, labels):
            masks = read_masks(mask_path(paths["root"], rel))
            x, y = track(masks, masks.max())[-1]
            assert abs(off(np.degrees(np.arctan2(y, x)), c)) < 10, rel
            tx, ty = affine_motion(clip, threshold=10)[:2]          # the decoded video's global motion
            assert abs(off(np.degrees(np.arctan2(ty, tx)), c)) < 10, rel
    thumb = lambda x: x[:, 8].reshape(len(x), 8, 4, 8, 4, 3).mean((2, 4)).reshape(len(x), -1) / 255  # noqa: E731
    assert (ridge(thumb(xtr), ytr, thumb(xva)) == yva).mean() < 1 / 8 + 0.15


def test_count_classes_are_cycles_per_window(tmp_path):
    """The topmost object's centroid along its swing makes n cycles per COUNT_WINDOW frames: the spectrum's peak,
    over the window's 16 frames and over the 8 frames a clip at rate 2 takes from it."""
    for c, n in enumerate(COUNT_CYCLES):
        for seed in range(3):
            _, masks = count_frames(c, COUNT_WINDOW, 32, np.random.default_rng([seed, c]), with_masks=True)
            path = track(masks, masks.max())
            path -= path.mean(0)
            along = path @ np.linalg.svd(path, full_matrices=False)[2][0]
            assert np.abs(np.fft.rfft(along))[1:].argmax() + 1 == n, (c, seed)
            assert np.abs(np.fft.rfft(along[::2] - along[::2].mean()))[1:].argmax() + 1 == n, (c, seed)
    paths = make_synthetic(tmp_path, num_classes=3, train_per_class=1, val_per_class=1, frames=16, size=32, seed=2,
                           kind="count")
    assert open(paths["classes"]).read().split() == list(COUNT_CLASSES)
    assert json.loads(Path(paths["task"]).read_text()) == {"task": "count", "count_of_class": [1, 2, 3],
                                                            "window_frames": 16}
    assert Path(paths["task"]).name == TASK_FILE and "factors" not in paths
    assert not (tmp_path / "factors.json").exists() and len(list(Path(paths["masks"]).glob("*.npz"))) == 6
    with pytest.raises(ValueError):
        make_synthetic(tmp_path / "four", num_classes=4, kind="count")
    with pytest.raises(ConfigError):
        SyntheticConfig(kind="count", num_classes=4).validate()
    SyntheticConfig(kind="count", num_classes=3).validate()
    SyntheticConfig(kind="fine", num_classes=8).validate()
