"""A small synthetic video classification set whose classes can only be told apart over time.

Every video shows one textured object from a shared pool on one textured background from a shared pool. The
class is the object's motion: left, right, up, down, clockwise, counter-clockwise, approach (grow), recede
(shrink), then fast left / fast right. Positions wrap around the frame, angles start uniform, and sizes are
uniform in log scale (sawtooth in time for approach/recede, with a random phase), so the distribution of any
single frame is the same for every class: a one-frame classifier is at chance, frame differences are not.
``camera=True`` makes the other kind of motion: a static scene (background + object, each video from a random
start) and a camera that pans in one of 8 directions, so every token, not only the object's, sees the class.
Written as real mp4 files (H.264 when available, else MPEG-4) with VideoMAE lists ``train.csv`` / ``val.csv``
(``path label``, paths relative to the output directory, which is the data config's ``root``).
"""
from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np

CLASSES = ("left", "right", "up", "down", "clockwise", "counterclockwise", "approach", "recede",
           "fast_left", "fast_right")
SPEED = 2.0                       # pixels per frame at size 64 (scaled with the frame size)
FAST = 2.5                        # speed factor of the fast classes
TURN = 2 * math.pi / 32           # radians per frame
SCALE_RANGE = (0.6, 1.5)          # object size factors, uniform in log scale
SCALE_PERIOD = 16                 # frames per approach/recede cycle


BACKGROUND_CONTRAST = 48          # coarse background colours lie within 128 +- this (the object uses 0..255)
OBJECT_RADIUS = 0.22              # half the object's side, as a fraction of the frame size


def _smooth_texture(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Float (size, size, 3): coarse random colours upsampled, plus fine grain. Low contrast, so the moving
    object (full contrast), not the static background, is what a model has to explain."""
    coarse = rng.uniform(128 - BACKGROUND_CONTRAST, 128 + BACKGROUND_CONTRAST, (cells, cells, 3))
    idx = np.arange(size) * cells // size
    tex = coarse[idx][:, idx]
    return np.clip(tex + rng.normal(0, 6, tex.shape), 0, 255)


def _object(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A striped, coloured texture and an asymmetric shape mask (so rotation and direction are visible)."""
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    freq, phase = rng.uniform(3, 6), rng.uniform(0, 2 * math.pi)
    stripes = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (xx + 0.5 * yy) + phase)
    colors = rng.uniform(0, 255, (2, 3))
    tex = colors[0] * stripes[..., None] + colors[1] * (1 - stripes[..., None])
    shape = (np.abs(xx) < 0.45) & (np.abs(yy) < 0.45) & ~((xx > 0.1) & (yy < -0.1))   # a square with a notch
    return tex, shape


def _render(bg, tex, shape, cx, cy, angle, scale, radius) -> np.ndarray:
    """One uint8 frame: the object centred at (cx, cy) on a torus, rotated by ``angle``, sized radius*scale."""
    size = bg.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dx = (xx - cx + size / 2) % size - size / 2
    dy = (yy - cy + size / 2) % size - size / 2
    cos, sin = math.cos(angle), math.sin(angle)
    u = (cos * dx + sin * dy) / (radius * scale)      # object coordinates in [-1, 1]
    v = (-sin * dx + cos * dy) / (radius * scale)
    n = tex.shape[0]
    inside = (np.abs(u) < 1) & (np.abs(v) < 1)
    iu = np.clip(((u + 1) / 2 * n).astype(int), 0, n - 1)
    iv = np.clip(((v + 1) / 2 * n).astype(int), 0, n - 1)
    hit = inside & shape[iv, iu]
    frame = bg.copy()
    frame[hit] = tex[iv[hit], iu[hit]]
    return frame.astype(np.uint8)


def synth_frames(cls: int, frames: int, size: int, rng: np.random.Generator, bg, tex, shape) -> np.ndarray:
    """uint8 (frames, size, size, 3) of class ``cls`` (an index into CLASSES)."""
    name = CLASSES[cls]
    speed = SPEED * size / 64 * (FAST if name.startswith("fast") else 1.0)
    cx, cy = rng.uniform(0, size, 2)
    angle = rng.uniform(0, 2 * math.pi)
    lo, hi = (math.log(s) for s in SCALE_RANGE)
    phase = rng.uniform()
    log_scale = rng.uniform(lo, hi)
    out = []
    for t in range(frames):
        x, y, a, ls = cx, cy, angle, log_scale
        if name.endswith("left"):
            x = cx - speed * t
        elif name.endswith("right"):
            x = cx + speed * t
        elif name == "up":
            y = cy - speed * t
        elif name == "down":
            y = cy + speed * t
        elif name == "clockwise":       # image y points down, so a growing angle turns clockwise on screen
            a = angle + TURN * t
        elif name == "counterclockwise":
            a = angle - TURN * t
        elif name in ("approach", "recede"):
            step = t / SCALE_PERIOD if name == "approach" else -t / SCALE_PERIOD
            ls = lo + (hi - lo) * ((phase + step) % 1.0)
        out.append(_render(bg, tex, shape, x, y, a, math.exp(ls), radius=size * OBJECT_RADIUS))
    return np.stack(out)


CAMERA_CLASSES = ("pan_left", "pan_right", "tilt_up", "tilt_down", "up_left", "up_right", "down_left", "down_right")
_CAMERA_DIRECTIONS = ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, -1), (-1, 1), (1, 1))


def camera_frames(cls: int, frames: int, size: int, rng: np.random.Generator, bg, tex, shape) -> np.ndarray:
    """uint8 (frames, size, size, 3): a static scene (background + object) seen by a camera moving in direction
    ``CAMERA_CLASSES[cls]`` at SPEED pixels per frame (the scene wraps around, so every frame is complete)."""
    lo, hi = (math.log(s) for s in SCALE_RANGE)
    scene = _render(bg, tex, shape, *rng.uniform(0, size, 2), rng.uniform(0, 2 * math.pi),
                    math.exp(rng.uniform(lo, hi)), radius=size * OBJECT_RADIUS)
    dx, dy = _CAMERA_DIRECTIONS[cls]
    norm = math.hypot(dx, dy)
    speed = SPEED * size / 64
    # A random start: with the pool's shared backgrounds, any fixed start would give away the direction in a
    # single frame (the background's offset at frame t would be a function of the class).
    ox, oy = rng.integers(0, size, 2)
    return np.stack([np.roll(scene, (oy - round(speed * t * dy / norm), ox - round(speed * t * dx / norm)),
                             axis=(0, 1)) for t in range(frames)])


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 25) -> str:
    """Write uint8 (T, H, W, 3) frames (even H, W) as H.264 (libx264) or, without it, MPEG-4. Returns the codec."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1     # fewer run-to-run differences (not always byte-identical)
        if codec == "libx264":
            stream.options = {"crf": "17", "preset": "fast"}
        else:
            stream.bit_rate = 2_000_000
        for img in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())
    return codec


def make_synthetic(out_dir: str | Path, num_classes: int = 8, train_per_class: int = 40, val_per_class: int = 10,
                   frames: int = 32, size: int = 64, seed: int = 0, pool: int = 4, camera: bool = False
                   ) -> dict[str, str]:
    """Write the data set under ``out_dir``; returns {"root", "train", "val", "classes"} paths.

    ``frames`` is the length of each video (32 lets dense sampling take 16 frames at rate 2); ``pool`` is the
    number of shared objects and of shared backgrounds. ``camera=True``: the classes are the camera's motion over
    a static scene (CAMERA_CLASSES: every token sees the motion) instead of the object's (CLASSES: only the
    object's tokens do). Deterministic in ``seed``.
    """
    names, render = (CAMERA_CLASSES, camera_frames) if camera else (CLASSES, synth_frames)
    if not 2 <= num_classes <= len(names):
        raise ValueError(f"num_classes = {num_classes} must be in [2, {len(names)}]")
    if size % 2 or size < 16:
        raise ValueError(f"size = {size} must be an even number >= 16")
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    pool_rng = np.random.default_rng([seed, 0])
    backgrounds = [_smooth_texture(pool_rng, size, cells=int(pool_rng.integers(4, 9))) for _ in range(pool)]
    objects = [_object(pool_rng, 32) for _ in range(pool)]
    paths = {"root": str(out)}
    for split_id, (split, per_class) in enumerate((("train", train_per_class), ("val", val_per_class)), 1):
        lines = []
        for i in range(num_classes * per_class):
            cls = i % num_classes
            rng = np.random.default_rng([seed, split_id, i])
            bg = backgrounds[int(rng.integers(pool))]
            tex, shape = objects[int(rng.integers(pool))]
            rel = f"videos/{split}_{i:05d}.mp4"
            write_mp4(out / rel, render(cls, frames, size, rng, bg, tex, shape))
            lines.append(f"{rel} {cls}\n")
        (out / f"{split}.csv").write_text("".join(lines))
        paths[split] = str(out / f"{split}.csv")
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in names[:num_classes]))
    paths["classes"] = str(out / "classes.txt")
    return paths
