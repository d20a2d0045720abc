"""The synthetic set: real mp4 files, deterministic, and its classes need time (one frame is at chance)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sigma_ray.data.config import DataConfig
from sigma_ray.data.decode import read_frames
from sigma_ray.data.iterator import ClipIterator
from sigma_ray.data.leakage import affine_motion, leak_checks, nearest_centroid, ridge
from sigma_ray.data.synthetic import (ARROW_CLASSES, ARROW_PROCESSES, ARROW_RADIUS, CAMERA_CLASSES, COUNT_CLASSES,
                                      COUNT_CYCLES, COUNT_WINDOW, FINE_CLASSES, FINE_STEP, KIND_CLASSES, KINDS,
                                      MASK_RENDERERS, MOTION_CLASSES, MOTION_SHAPES, MOTION_SPEEDS,
                                      MULTILABEL_CLASSES_FILE, MULTILABEL_KINDS, MULTILABEL_LISTS, PAN_DIRECTIONS,
                                      PATTERN_CLASSES, PATTERN_PERIODS, SCENE_CLASSES, SUPERSAMPLE, TASK_FILE,
                                      SyntheticConfig, _arrow_slide, _linear_offsets, _motion_background,
                                      _motion_objects, arrow_frames, count_frames, make_synthetic, mask_path,
                                      motion_frames, pattern_frames, read_masks, scene_frames, write_mp4)
from sigma_ray.eval.splits import charades_lists, load_multilabel_list
from sigma_ray.infra.checks import ConfigError
from sigma_ray.infra.config import from_dict
from sigma_ray.method.projection import normalize_tubes, tube_pixels


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


def empty_background(seed, size: int) -> np.ndarray:
    """Float (size, size, 3): the motion and arrow renderers' empty background for ``seed`` (their first draws),
    box-filtered as their frames are."""
    res = size * SUPERSAMPLE
    return _motion_background(np.random.default_rng(seed), res).reshape(size, SUPERSAMPLE, size, SUPERSAMPLE,
                                                                       3).mean((1, 3))


def object_contrast(video: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """Float (frames,): the mean absolute difference of each frame from the empty background (grey levels): how
    much of the objects and of what they left shows. A paint trail raises it, melting lowers it."""
    return np.abs(video.astype(np.float64) - empty).mean((1, 2, 3))


def window_rises(contrast: np.ndarray, window: int = 16, rate: int = 2) -> np.ndarray:
    """Bool (windows,): per 16-frame window, whether the statistic is higher at the last frame that an 8-frame clip
    at rate 2 takes from it than at its first. The same clip reversed in time rises exactly when this falls."""
    span = window - rate
    return contrast[span:] > contrast[:-span]


def decoded(video: np.ndarray, path: Path) -> np.ndarray:
    """The frames as the suite sees them: written as mp4 and read back."""
    write_mp4(path, video)
    return read_frames(str(path), range(len(video)))


def test_arrow_processes_run_one_way_so_a_reversed_clip_is_told_apart(tmp_path):
    """On every arrow video, the frames' contrast against the empty background rises (paint: the trail only grows)
    or falls (melt: the object blurs and fades) from every frame to the one 2 later (a clip's step at rate 2; from
    one frame to the next, the object's own contrast over the background it crosses can outweigh the process's
    step), so its sign over a 16-frame window tells a clip from the same clip reversed, decoded from the mp4s, in
    (nearly) every window."""
    size, frames = 32, 32
    told = []
    for c in range(len(ARROW_CLASSES)):
        sign = 1 if ARROW_PROCESSES[c % 2] == "paint" else -1
        for seed in range(3):
            video = arrow_frames(c, frames, size, np.random.default_rng([12, seed, c]))
            empty = empty_background([12, seed, c], size)
            contrast = sign * object_contrast(video, empty)
            assert (contrast[2:] > contrast[:-2]).all(), (c, seed)
            rises = window_rises(object_contrast(decoded(video, tmp_path / "a.mp4"), empty))
            forward = rises if sign > 0 else ~rises          # the rule: forward iff it moves the process's way
            told.append(forward.mean())                      # the reversed clip: called reversed exactly then
    assert min(told) >= 0.95, told


def test_the_arrow_statistic_cannot_tell_reversed_motion_videos(tmp_path):
    """Control: on the motion family (constant velocity, time-symmetric by construction) the same statistic rises
    in about half of the windows, so no sign of it tells forward from reversed: the test above measures the arrow,
    not something every video has."""
    size, frames = 32, 32
    rises = []
    for c in range(len(MOTION_CLASSES)):
        for seed in range(3):
            video = motion_frames(c, frames, size, np.random.default_rng([12, seed, c]))
            empty = empty_background([12, seed, c], size)
            rises.append(window_rises(object_contrast(decoded(video, tmp_path / "m.mp4"), empty)))
    share = np.mean(rises)
    assert 0.35 < share < 0.65, share                        # the better fixed sign's accuracy is max(share, 1 - share)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of the intersection over union of two bool (frames, H, W) stacks."""
    return float(((a & b).sum((1, 2)) / np.maximum((a | b).sum((1, 2)), 1)).mean())


def test_arrow_masks_align_with_frames():
    """The masks are the objects' own footprints at the frame they belong to (an off-by-one mask scores worse).
    Paint: a trail never changes once laid, so what changes from frame t-1 to t is the objects' footprint at t-1
    and t, and nothing outside it (within a pixel). Melt: what differs from the empty background is the object.
    Rendered at 3 px per frame (the family's own speeds move a footprint by under a pixel per frame)."""
    size, frames = 64, 12
    res = size * SUPERSAMPLE
    for process in ARROW_PROCESSES:
        for seed in range(4):
            rng = np.random.default_rng([8, seed])
            background = _motion_background(rng, res)
            objects = _motion_objects(rng, res, ARROW_RADIUS)
            angle = rng.uniform(0, 2 * np.pi)
            offsets = _linear_offsets((3 * SUPERSAMPLE * np.cos(angle), 3 * SUPERSAMPLE * np.sin(angle)), frames)
            video, masks = _arrow_slide(background, objects, offsets, size, process, with_masks=True)
            video, fg = video.astype(np.float64), masks > 0
            if process == "paint":
                changed = np.abs(np.diff(video, axis=0)).max(-1) > 10      # frame t against t - 1, t = 1 ..
                both = fg[1:] | fg[:-1]
                near = both.copy()
                for axis in (1, 2):
                    near |= np.roll(both, 1, axis) | np.roll(both, -1, axis)
                assert (changed & ~near).mean() < 1e-3, seed
            else:
                changed = (np.abs(video - empty_background([8, seed], size)).max(-1) > 10)[1:]
                both = fg[1:]
            aligned, late, early = (iou(b, changed[1:-1]) for b in (both[1:-1], both[2:], both[:-2]))
            assert aligned > 0.6 and aligned > max(late, early), (process, seed, aligned, late, early)
    for c in range(len(ARROW_CLASSES)):
        drawn = []
        video, masks = arrow_frames(c, 6, 32, np.random.default_rng([7, c]), with_masks=True, drawn=drawn)
        assert np.array_equal(video, arrow_frames(c, 6, 32, np.random.default_rng([7, c])))
        assert masks.shape == video.shape[:3] and masks.dtype == np.uint8
        assert 1 <= len(drawn) <= 2 and set(np.unique(masks)) <= set(range(len(drawn) + 1))
        assert (masks > 0).any((1, 2)).all() and set(drawn) <= set(MOTION_SHAPES)


def test_arrow_set_is_process_by_direction(tmp_path):
    paths = make_synthetic(tmp_path, num_classes=8, train_per_class=1, val_per_class=1, frames=4, size=32, seed=2,
                           kind="arrow")
    assert "arrow" in KINDS and open(paths["classes"]).read().split() == list(ARROW_CLASSES)
    assert ARROW_CLASSES[:2] == ("paint_left", "melt_left")
    factors = json.loads(Path(paths["factors"]).read_text())
    assert factors == {"kind": "arrow", "factors": {
        "process": {"values": ["paint", "melt"], "of_class": [0, 1] * 4},
        "direction": {"values": list(PAN_DIRECTIONS), "of_class": [0, 0, 1, 1, 2, 2, 3, 3]}}}
    assert len(list(Path(paths["masks"]).glob("*.npz"))) == 16 and "multilabel_train" in paths
    again = make_synthetic(tmp_path / "again", num_classes=8, train_per_class=1, val_per_class=1, frames=4, size=32,
                           seed=2, kind="arrow")
    for rel in (line.split()[0] for line in open(paths["val"])):
        assert Path(again["root"], rel).read_bytes() == Path(paths["root"], rel).read_bytes(), rel
    SyntheticConfig(kind="arrow").validate()
    from sigma_ray.cli import main

    assert main(["make-synthetic", "--out", str(tmp_path / "cli"), "--kind", "arrow", "--classes", "2",
                 "--train-per-class", "1", "--val-per-class", "1", "--frames", "2", "--size", "16"]) == 0
    assert (tmp_path / "cli" / "factors.json").is_file()


def footprint_shape(mask: np.ndarray) -> str:
    """The shape (one of MOTION_SHAPES) of one object's bool (size, size) footprint, wrapped on the torus, by hand:
    a disc fills the circle through its farthest pixel (squares and crosses fill 0.6-0.75 of it); a cross leaves
    holes in the disc of 0.7 that radius (its arms are 0.6 of its radius wide), a square does not."""
    size = mask.shape[-1]
    yy, xx = np.nonzero(mask)
    centre = lambda v: np.angle(np.exp(2j * np.pi * v / size).mean()) * size / (2 * np.pi)  # noqa: E731
    cx, cy = centre(xx + 0.5), centre(yy + 0.5)
    gy, gx = np.mgrid[0:size, 0:size] + 0.5
    r = np.hypot((gx - cx + size / 2) % size - size / 2, (gy - cy + size / 2) % size - size / 2)
    reach = r[mask].max()
    if mask.sum() / (np.pi * reach ** 2) > 0.85:
        return "disc"
    return "cross" if mask[r < 0.7 * reach].mean() < 0.92 else "square"


def write_tiny_charades(folder: Path) -> None:
    """Charades' annotation files with two classes and one video per split (sigma_ray.eval.splits' input)."""
    folder.mkdir()
    (folder / "Charades_v1_classes.txt").write_text("c000 Holding something\nc001 Putting something\n")
    (folder / "Charades_v1_train.csv").write_text("id,actions\nAAA,c001 0.0 1.0;c000 1.0 2.0\n")
    (folder / "Charades_v1_test.csv").write_text("id,actions\nBBB,c001 0.0 1.0\n")


def test_multilabel_presence_lists_name_the_shapes_drawn(tmp_path):
    """For the kinds whose objects take one of MOTION_SHAPES: lists in the format (and with the names) that
    charades_lists writes, line by line with train.csv / val.csv, labelled with the shapes the renderer drew (its
    own record, re-rendered from make_synthetic's per-video seeds) and seen in the masks; checked independently on
    each topmost object's mask footprint (shape by hand), and not degenerate (each shape present in some videos and
    absent in others)."""
    write_tiny_charades(tmp_path / "ch")
    charades = charades_lists(tmp_path / "ch", tmp_path / "ch_lists")
    assert {s: Path(p).name for s, p in charades.items() if s in MULTILABEL_LISTS} == MULTILABEL_LISTS
    assert "multilabel_train" not in make_synthetic(tmp_path / "patterns", num_classes=2, train_per_class=1,
                                                    val_per_class=1, frames=2, size=16, kind="patterns")
    size, seed, presence = 64, 3, []
    for kind in MULTILABEL_KINDS:
        num_classes = len(KIND_CLASSES[kind]) if kind == "count" else 4
        paths = make_synthetic(tmp_path / kind, num_classes=num_classes, train_per_class=2, val_per_class=1,
                               frames=2, size=size, seed=seed, kind=kind)
        assert Path(paths["multilabel_classes"]).name == MULTILABEL_CLASSES_FILE
        assert Path(paths["multilabel_classes"]).read_text() == "disc\nsquare\ncross\n"
        for split_id, split in enumerate(("train", "val"), 1):
            assert Path(paths[f"multilabel_{split}"]) == Path(paths["root"]) / MULTILABEL_LISTS[split]
            single = [line.split()[0] for line in open(paths[split])]
            multi = load_multilabel_list(paths[f"multilabel_{split}"], num_classes=len(MOTION_SHAPES))
            assert [path for path, _ in multi] == single
            for i, (rel, labels) in enumerate(multi):
                drawn = []
                _, masks = MASK_RENDERERS[kind](i % num_classes, 2, size, np.random.default_rng([seed, split_id, i]),
                                                with_masks=True, drawn=drawn)
                assert np.array_equal(masks, read_masks(mask_path(paths["root"], rel))), rel
                seen = {drawn[k - 1] for k in np.unique(masks) if k}
                assert labels == sorted(MOTION_SHAPES.index(s) for s in seen) and 1 <= len(labels) <= 2, rel
                top = footprint_shape(masks[0] == len(drawn))          # the last drawn is never hidden
                assert MOTION_SHAPES.index(top) in labels, (rel, top, labels)
                if len(drawn) == 1:
                    assert labels == [MOTION_SHAPES.index(top)], (rel, top, labels)
                presence.append(np.isin(range(len(MOTION_SHAPES)), labels))
    presence = np.array(presence)
    assert presence.any(0).all() and (~presence).any(0).all() and (presence.sum(1) == 2).any(), presence.mean(0)
