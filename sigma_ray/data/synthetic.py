"""Small synthetic video classification sets, written as real mp4 files with VideoMAE lists.

Nine kinds (``make_synthetic(kind=...)``):

- ``patterns`` (the demo's): a camera pans over a wall papered with a periodic pattern, in front of which float
  two flat objects. The class is the pattern (checks or a lattice of dots: appearance) *and* the pan direction
  (left, right, up, down: motion), 8 classes; the objects (a disc, square or cross each, of random colour, size,
  place and angle) and the pattern's colours, contrast, phase and the pan's speed are random per video and say
  nothing about the class. The pattern repeats ``PATTERN_PERIODS`` times across the frame: with the demo's 32 px
  frames and 8 px patches, one period per patch, so the wall's part of a masked tube can be told from the visible
  tubes of the same time slice. That makes the pixel target learnable where it is not occluded (on ``scenes``
  it is not, docs/studies/patterns.md). One frame tells the pattern but not the direction.
- ``scenes``: a camera pans over a static scene. The class is the scene's kind (appearance: round
  discs, or angular squares and crosses) *and* the pan direction (motion: left, right, up, down), 8 classes in
  all. Every video has its own scene (a smooth periodic background and 3-5 objects of random colour, size, place
  and angle) and a random start, so one frame tells the scene's kind but nothing about the direction; the pan is
  seen by every token. Scenes have edges and smooth shading and no pixel noise, meant to make a masked tube's
  content predictable from its neighbours and the motion; at the demo's budget the pixel baseline's loss still
  stays at its trivial value (docs/studies/patterns.md).
- ``motion``: 1-2 objects covered with dead-leaves textures (natural-image statistics) slide over a blurred,
  low-contrast dead-leaves background; the class is their speed (slow, fast) and direction (4), 8 classes, and one
  frame is at chance: only the motion names it.
- ``shapes``: one disc or cross with a fractal texture slides over a fractal background; the class is its shape and
  its direction (4), 8 classes (the held-out family of the transfer study).
- ``fine``: the motion family's scenes with the objects sliding in one of 8 directions 45 degrees apart (the fine-
  grained task); factors.json also gives the 90-degree sector of each (the coarse 4-way task on the same videos).
- ``count``: the motion family's scenes with the objects swinging back and forth; the class is the number of cycles
  in a window of ``COUNT_WINDOW`` = 16 frames (1, 2 or 3), a repetition count (``task.json`` says so).
- ``object``: one textured object from a shared pool on a textured background from a shared pool; the class
  is the object's motion (left, right, up, down, clockwise, counter-clockwise, approach, recede, fast left, fast
  right); a single frame is at chance.
- ``camera``: a static object scene from the shared pool under a camera panning in one of 8 directions.
- ``arrow``: the motion family's scenes (smaller objects, slower) with an irreversible process acting on the moving
  objects at a steady rate over the whole video; the class is the process (``paint``: each object leaves a trail
  of its colours that only grows; ``melt``: each object blurs and fades into the background) and the direction
  (4), 8 classes. Every other family moves at constant velocity or swings, so a clip run backwards is a valid
  forward clip; here it is not, so the arrow of time (a clip against the same clip reversed) can be told.

Files are H.264 when available (else MPEG-4); ``train.csv`` / ``val.csv`` hold ``path label`` lines with paths
relative to the output directory (the data config's ``root``). For the kinds whose renderer knows its objects
(``patterns``, ``motion``, ``shapes``, ``fine``, ``count``, ``arrow``), ``masks/<video name>.npz`` holds each video's
per-frame object masks (:func:`mask_path`, :func:`read_masks`), for unsupervised video object segmentation. For
those whose objects each take one of MOTION_SHAPES (``motion``, ``fine``, ``count``, ``arrow``),
``train_multilabel.csv`` / ``val_multilabel.csv`` (MULTILABEL_LISTS) name the shapes seen in each video
(``path 0,2``, as sigma_ray.eval.splits writes Charades'), line by line with train.csv / val.csv, and
``multilabel_classes.txt`` the shapes, one a line: multi-label presence of objects.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from sigma_ray.data.annotations import MULTILABEL_SUFFIX, NO_LABELS
from sigma_ray.infra.checks import ConfigError, check_choice, check_range

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
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            # without mbtree: with it, encoding the same frames gave different files from call to call (2-6
            # distinct files in 20 calls, up to 33 grey levels apart once decoded, even on one thread); without it,
            # one seed makes one byte-identical data set (tests/test_data_synthetic.py)
            stream.options = {"crf": "17", "preset": "fast", "x264-params": "mbtree=0"}
        else:
            stream.bit_rate = 2_000_000
        for img in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())
    return codec


SCENE_KINDS = {"round": ("disc",), "angular": ("square", "cross")}
PAN_DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# Class c is scene kind c % 2 and direction c // 2, so the first 4 classes already need both factors.
SCENE_CLASSES = tuple(f"{kind}_{d}" for d in PAN_DIRECTIONS for kind in SCENE_KINDS)
SCENE_OBJECTS = (3, 5)            # objects per scene
SCENE_RADIUS = (0.12, 0.2)        # object radius, fraction of the frame size
SCENE_SPEED = (1.5, 2.5)          # camera speed, pixels per frame at size 64 (scaled with the frame size)
SCENE_CONTRAST = 60               # background base colours lie within 128 +- this
SCENE_WAVE = 30                   # amplitude of the background's shading waves (grey levels)


def _periodic_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float (size, size, 3): a base colour plus one wave of one period per channel, seamless on the torus."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((size, size, 3))
    for c, base in enumerate(rng.uniform(128 - SCENE_CONTRAST, 128 + SCENE_CONTRAST, 3)):
        kx, ky = rng.integers(-1, 2, 2)
        kx = 1 if kx == 0 and ky == 0 else kx
        phase = rng.uniform(0, 2 * math.pi)
        out[..., c] = base + SCENE_WAVE * np.cos(2 * math.pi * (kx * xx + ky * yy) + phase)
    return out


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test in object coordinates (the object spans [-1, 1]^2)."""
    if shape == "disc":
        return u * u + v * v < 1
    if shape == "square":
        return (np.abs(u) < 0.8) & (np.abs(v) < 0.8)
    if shape == "cross":
        return ((np.abs(u) < 0.3) & (np.abs(v) < 1)) | ((np.abs(v) < 0.3) & (np.abs(u) < 1))
    raise ValueError(f"unknown shape {shape!r}")


def _placed_shape(shape: str, dx: np.ndarray, dy: np.ndarray, size: int, radius: float, angle: float
                  ) -> np.ndarray:
    """Inside-test of ``shape`` of ``radius`` (pixels) turned by ``angle``, at offsets ``dx, dy`` from its centre,
    wrapped on the ``size`` x ``size`` torus (an object leaving one edge shows at the other)."""
    dx, dy = (dx + size / 2) % size - size / 2, (dy + size / 2) % size - size / 2
    cos, sin = math.cos(angle), math.sin(angle)
    return _shape_mask(shape, (cos * dx + sin * dy) / radius, (-sin * dx + cos * dy) / radius)


def _scene(rng: np.random.Generator, size: int, shapes: tuple[str, ...]) -> np.ndarray:
    """Float (size, size, 3): a periodic background with 3-5 objects of ``shapes``, wrapped on the torus."""
    img = _periodic_background(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    for _ in range(int(rng.integers(SCENE_OBJECTS[0], SCENE_OBJECTS[1] + 1))):
        shape = shapes[int(rng.integers(len(shapes)))]
        cx, cy = rng.uniform(0, size, 2)
        radius = rng.uniform(*SCENE_RADIUS) * size
        angle = rng.uniform(0, 2 * math.pi)
        inside = _placed_shape(shape, xx - cx, yy - cy, size, radius, angle)
        img[inside] = rng.uniform(0, 255, 3)
    return img


def scene_frames(cls: int, frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (frames, size, size, 3) of ``SCENE_CLASSES[cls]``: a new scene of that kind seen by a camera that
    pans in that direction, from a random start, with sub-pixel (bilinear) steps on the torus."""
    kind, direction = list(SCENE_KINDS)[cls % 2], list(PAN_DIRECTIONS)[cls // 2]
    scene = _scene(rng, size, SCENE_KINDS[kind])
    dx, dy = PAN_DIRECTIONS[direction]
    speed = rng.uniform(*SCENE_SPEED) * size / 64
    ox, oy = rng.uniform(0, size, 2)
    out = []
    for t in range(frames):
        x, y = ox + speed * t * dx, oy + speed * t * dy
        ix, iy = math.floor(x), math.floor(y)
        fx, fy = x - ix, y - iy
        a = np.roll(scene, (-iy, -ix), axis=(0, 1))
        right, down = np.roll(a, -1, axis=1), np.roll(a, -1, axis=0)
        img = (1 - fx) * (1 - fy) * a + fx * (1 - fy) * right + (1 - fx) * fy * down \
            + fx * fy * np.roll(right, -1, axis=0)
        out.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    return np.stack(out)


PATTERN_KINDS = ("checks", "dots")
# Class c is pattern c % 2 and direction c // 2, as in SCENE_CLASSES.
PATTERN_CLASSES = tuple(f"{kind}_{d}" for d in PAN_DIRECTIONS for kind in PATTERN_KINDS)
PATTERN_PERIODS = 4               # periods of the pattern across the frame (one per 8 px patch at 32 px)
PATTERN_OBJECTS = 2               # class-neutral objects in front of the wall
PATTERN_CONTRAST = (40, 70)       # the pattern's amplitude (grey levels) around its base colour


def _pattern(kind: str, x: np.ndarray, y: np.ndarray, period: float) -> np.ndarray:
    """The wall's modulation in [-1, 1] at positions ``x, y`` (pixels): smooth checks or a lattice of dots."""
    if kind == "checks":
        return np.tanh(3 * np.sin(2 * math.pi * x / period) * np.sin(2 * math.pi * y / period))
    dx = (x + period / 2) % period - period / 2
    dy = (y + period / 2) % period - period / 2
    return 2 * np.exp(-(dx ** 2 + dy ** 2) / (2 * (period / 5) ** 2)) - 1


def pattern_frames(cls: int, frames: int, size: int, rng: np.random.Generator, with_masks: bool = False
                   ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """uint8 (frames, size, size, 3) of ``PATTERN_CLASSES[cls]``: the pattern on a random base colour (each channel
    modulated with its own random sign and weight), two class-neutral objects, and a camera panning in that
    direction from a random phase, rendered at sub-pixel positions on the torus. With ``with_masks``, also the
    objects' uint8 (frames, size, size) masks: 0 the wall, k the k-th object (the second drawn over the first),
    exact, since the objects are drawn at the output's resolution with flat colours."""
    kind, direction = PATTERN_KINDS[cls % 2], list(PAN_DIRECTIONS)[cls // 2]
    dx, dy = PAN_DIRECTIONS[direction]
    period = size / PATTERN_PERIODS
    px, py = rng.uniform(0, period, 2)
    speed = rng.uniform(*SCENE_SPEED) * size / 64
    base = rng.uniform(70, 186, 3)
    amplitude = rng.uniform(*PATTERN_CONTRAST) * rng.uniform(0.3, 1.0, 3) * rng.choice([-1.0, 1.0], 3)
    objects = [(("disc", "square", "cross")[int(rng.integers(3))], *rng.uniform(0, size, 2),
                rng.uniform(*SCENE_RADIUS) * size, rng.uniform(0, 2 * math.pi), rng.uniform(0, 255, 3))
               for _ in range(PATTERN_OBJECTS)]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    out, masks = [], []
    for t in range(frames):
        sx, sy = speed * t * dx, speed * t * dy          # the camera's offset: the content moves the other way
        img = base + amplitude * _pattern(kind, xx + px + sx, yy + py + sy, period)[..., None]
        mask = np.zeros((size, size), np.uint8)
        for k, (shape, cx, cy, radius, angle, colour) in enumerate(objects, 1):
            inside = _placed_shape(shape, xx - cx + sx, yy - cy + sy, size, radius, angle)
            img[inside] = colour
            mask[inside] = k
        out.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
        masks.append(mask)
    return (np.stack(out), np.stack(masks)) if with_masks else np.stack(out)


MOTION_SPEEDS = {"slow": (0.8, 1.2), "fast": (2.0, 3.0)}   # pixels per frame at size 64 (scaled with the size)
# Class c is speed c % 2 and direction c // 2, so the first 4 classes already need both factors.
MOTION_CLASSES = tuple(f"{speed}_{d}" for d in PAN_DIRECTIONS for speed in MOTION_SPEEDS)
MOTION_OBJECTS = (1, 2)           # moving objects per video, all with the class's velocity
MOTION_RADIUS = (0.18, 0.28)      # object radius, fraction of the frame size
MOTION_SHAPES = ("disc", "square", "cross")
MOTION_BLUR = (1.5, 3.0)          # the background's Gaussian blur, pixels at size 32 (a camera focused on the
                                  # objects; scaled with the size)
MOTION_BACKGROUND_CONTRAST = (0.4, 0.8)   # the background's contrast around its mean, a fraction of its own
SUPERSAMPLE = 4                   # rendered at 4x and box-filtered: anti-aliased edges, quarter-pixel motion


def dead_leaves(rng: np.random.Generator, res: int, r_min: float, r_max: float) -> np.ndarray:
    """Float (res, res, 3): a dead-leaves image, discs of radius ~ r^-3 on [r_min, r_max] pixels stacked at random
    places. Its statistics are those of natural images (a ~1/f^2 power spectrum, sharp occluding edges, scale
    invariance); each image has its own palette (a base colour, a tint of the leaves' brightness, colour noise)."""
    n = int(6 * res * res / (math.pi * r_min * r_max))    # enough leaves to cover the image several times over
    radii = 1 / np.sqrt(1 / r_min ** 2 - rng.uniform(size=n) * (1 / r_min ** 2 - 1 / r_max ** 2))
    centres = rng.uniform(0, res, (n, 2))
    base, tint = rng.uniform(60, 196, 3), rng.uniform(0.3, 1.0, 3)
    colours = np.clip(base + 100 * rng.uniform(-1, 1, (n, 1)) * tint + rng.normal(0, 20, (n, 3)), 0, 255)
    img = np.empty((res, res, 3))
    img[:] = base
    grid = np.arange(res) + 0.5
    for (cx, cy), r, colour in zip(centres, radii, colours):
        x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 1, res)
        y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 1, res)
        if x0 < x1 and y0 < y1:
            inside = (grid[None, x0:x1] - cx) ** 2 + (grid[y0:y1, None] - cy) ** 2 < r * r
            img[y0:y1, x0:x1][inside] = colour
    return img


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a (res, res, C) image on the torus, ``sigma`` in pixels (by FFT: no SciPy needed)."""
    f = np.fft.fftfreq(img.shape[0])
    gain = np.exp(-2 * (math.pi * sigma) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    return np.real(np.fft.ifft2(np.fft.fft2(img, axes=(0, 1)) * gain[..., None], axes=(0, 1)))


def _linear_offsets(velocity: tuple[float, float], frames: int) -> np.ndarray:
    """Float (frames, 2): the x, y offsets of a constant ``velocity`` (pixels per frame), zero at the video's middle
    frame (so that the positions drawn for the middle frame are where the objects are then)."""
    return np.asarray(velocity, np.float64) * (np.arange(frames) - (frames - 1) / 2)[:, None]


def _slide(background: np.ndarray, objects: list, offsets: np.ndarray, size: int, with_masks: bool = False
           ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """uint8 (frames, size, size, 3): ``objects`` (shape, centre x, centre y, radius, angle, texture; supersampled
    pixels) moved by ``offsets`` (float (frames, 2): every object's x, y offset at each frame, supersampled pixels,
    rounded to whole ones) over a static supersampled ``background``, each texture moving with its object, on the
    torus, drawn in order (a later object covers an earlier one); box-filtered to ``size``.

    With ``with_masks``, also the uint8 (frames, size, size) object masks: 0 the background, k the k-th of
    ``objects``, taken at the supersampled resolution and reduced by majority: an output pixel gets the label that
    covers most of its SUPERSAMPLE x SUPERSAMPLE sub-pixels, a tie going to the lower label (the background before
    any object, an earlier object before a later one)."""
    res = background.shape[0]
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float64) + 0.5
    out, masks = [], []
    for ox, oy in offsets.tolist():
        # whole supersampled pixels, so that the texture and the outline move together
        sx, sy = round(ox), round(oy)
        img = background.copy()
        label = np.zeros((res, res), np.uint8)
        for k, (shape, cx, cy, radius, angle, texture) in enumerate(objects, 1):
            inside = _placed_shape(shape, xx - cx - sx, yy - cy - sy, res, radius, angle)
            img[inside] = np.roll(texture, (sy, sx), axis=(0, 1))[inside]
            label[inside] = k
        out.append(_box_filter(img, size))
        masks.append(_majority(label, len(objects), size))
    return (np.stack(out), np.stack(masks)) if with_masks else np.stack(out)


def _box_filter(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 (size, size, 3): a float supersampled (size * SUPERSAMPLE, ..., 3) image averaged over blocks."""
    small = img.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def _majority(label: np.ndarray, objects: int, size: int) -> np.ndarray:
    """uint8 (size, size): a supersampled label image (0 .. ``objects``) reduced by majority per block, a tie going
    to the lower label."""
    blocks = label.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE)
    votes = np.stack([(blocks == k).sum(axis=(1, 3)) for k in range(objects + 1)])
    return votes.argmax(axis=0).astype(np.uint8)     # argmax takes the first of tied labels


def _motion_background(rng: np.random.Generator, res: int) -> np.ndarray:
    """Float (res, res, 3), supersampled: the motion family's background, a dead-leaves image blurred (a camera
    focused on the objects) and with its contrast lowered around its mean."""
    background = _blur(dead_leaves(rng, res, SUPERSAMPLE, res / 3), rng.uniform(*MOTION_BLUR) * res / 32)
    mean = background.mean(axis=(0, 1))
    return mean + rng.uniform(*MOTION_BACKGROUND_CONTRAST) * (background - mean)


def _motion_objects(rng: np.random.Generator, res: int, radius: tuple[float, float] = MOTION_RADIUS) -> list:
    """The motion family's 1-2 objects for :func:`_slide` (supersampled pixels): each of random shape (one of
    MOTION_SHAPES), radius (a fraction of the frame in ``radius``) and angle, its centre uniform on the torus,
    covered with its own dead-leaves texture."""
    return [(MOTION_SHAPES[int(rng.integers(len(MOTION_SHAPES)))], *rng.uniform(0, res, 2),
             rng.uniform(*radius) * res, rng.uniform(0, 2 * math.pi),
             dead_leaves(rng, res, SUPERSAMPLE / 2, res / 6))
            for _ in range(int(rng.integers(MOTION_OBJECTS[0], MOTION_OBJECTS[1] + 1)))]


def _record_shapes(objects: list, drawn: list[str] | None) -> list:
    """``objects`` unchanged, their shapes appended to ``drawn`` (unless None) in drawing order, so that the
    masks' label k is ``drawn[k - 1]``: what the multi-label lists are made from (make_synthetic)."""
    if drawn is not None:
        drawn.extend(shape for shape, *_ in objects)
    return objects


def motion_frames(cls: int, frames: int, size: int, rng: np.random.Generator, with_masks: bool = False,
                  drawn: list[str] | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """uint8 (frames, size, size, 3) of ``MOTION_CLASSES[cls]``: 1-2 objects of random shape, size and angle, each
    covered with its own dead-leaves texture, sliding in the class's direction at a speed drawn from the class's
    range, over a static, blurred, low-contrast dead-leaves background; every object's position at the video's
    middle frame is uniform on the torus, so no single frame tells the class. Appearance (shapes, textures,
    palettes, blur) is drawn independently of the class: only the motion names it. With ``with_masks``, also the
    objects' masks (:func:`_slide`); a list ``drawn`` gets the objects' shapes (:func:`_record_shapes`)."""
    speed_name, direction = list(MOTION_SPEEDS)[cls % 2], list(PAN_DIRECTIONS)[cls // 2]
    dx, dy = PAN_DIRECTIONS[direction]
    res = size * SUPERSAMPLE
    background = _motion_background(rng, res)
    speed = rng.uniform(*MOTION_SPEEDS[speed_name]) * size / 64 * SUPERSAMPLE     # supersampled pixels per frame
    objects = _record_shapes(_motion_objects(rng, res), drawn)
    return _slide(background, objects, _linear_offsets((speed * dx, speed * dy), frames), size, with_masks)


SHAPE_KINDS = ("disc", "cross")
# Class c is the object's shape c % 2 and its direction c // 2.
SHAPE_CLASSES = tuple(f"{shape}_{d}" for d in PAN_DIRECTIONS for shape in SHAPE_KINDS)
SHAPE_SPEED = (1.0, 3.0)          # pixels per frame at size 64 (scaled with the size), class-neutral
SHAPE_RADIUS = (0.2, 0.3)         # object radius, fraction of the frame size


def fractal_noise(rng: np.random.Generator, res: int, exponent: float) -> np.ndarray:
    """Float (res, res, 3): random-phase noise with a power spectrum ~ 1/f^exponent in each of three channels,
    mixed by a random colour matrix around a random base colour (seamless on the torus)."""
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(res), np.fft.fftfreq(res)))
    amplitude = np.where(f > 0, f, np.inf) ** (-exponent / 2)
    spectrum = amplitude[..., None] * np.exp(2j * math.pi * rng.uniform(size=(res, res, 3)))
    noise = np.real(np.fft.ifft2(spectrum, axes=(0, 1)))
    noise /= noise.std(axis=(0, 1))
    return rng.uniform(70, 186, 3) + noise @ rng.normal(0, 22, (3, 3))


def shapes_frames(cls: int, frames: int, size: int, rng: np.random.Generator, with_masks: bool = False
                  ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """uint8 (frames, size, size, 3) of ``SHAPE_CLASSES[cls]``: one disc or cross (appearance) of random size and
    angle, covered with a smooth fractal texture, sliding in one of four directions (motion) at a random speed over
    a static, blurred fractal background, its position at the middle frame uniform on the torus. The held-out
    family of the transfer study (docs/studies/transfer.md): its textures are not dead leaves, its class needs
    the object's shape and its motion, and nothing was tuned on it. With ``with_masks``, also the object's mask
    (:func:`_slide`)."""
    shape, direction = SHAPE_KINDS[cls % 2], list(PAN_DIRECTIONS)[cls // 2]
    dx, dy = PAN_DIRECTIONS[direction]
    res = size * SUPERSAMPLE
    background = _blur(fractal_noise(rng, res, rng.uniform(2.0, 3.0)), rng.uniform(1.0, 2.0) * res / 32)
    speed = rng.uniform(*SHAPE_SPEED) * size / 64 * SUPERSAMPLE
    objects = [(shape, *rng.uniform(0, res, 2), rng.uniform(*SHAPE_RADIUS) * res, rng.uniform(0, 2 * math.pi),
                fractal_noise(rng, res, rng.uniform(1.5, 2.5)))]
    return _slide(background, objects, _linear_offsets((speed * dx, speed * dy), frames), size, with_masks)


FINE_STEP = 45                    # degrees between the directions of neighbouring classes
# Class c moves at 45 c degrees in image coordinates (0 right, 90 down): odd classes are diagonals (the first factor,
# c % 2) and classes 2s, 2s + 1 share the 90-degree sector from 90 s degrees (the second, c // 2).
FINE_CLASSES = tuple(f"dir{FINE_STEP * c:03d}" for c in range(360 // FINE_STEP))
FINE_SECTORS = tuple(f"sector{90 * s:03d}" for s in range(4))
FINE_SPEED = (1.0, 2.5)           # pixels per frame at size 64 (scaled with the size), class-neutral: from within
                                  # motion's slow range to within its fast one


def fine_frames(cls: int, frames: int, size: int, rng: np.random.Generator, with_masks: bool = False,
                drawn: list[str] | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """uint8 (frames, size, size, 3) of ``FINE_CLASSES[cls]``: the motion family's scene (1-2 dead-leaves-textured
    objects over a blurred low-contrast dead-leaves background, each object's position at the middle frame uniform
    on the torus) with every object sliding at ``FINE_STEP * cls`` degrees (image coordinates: 0 right, 90 down) at
    a speed drawn from FINE_SPEED. Only the direction names the class: the 8-way task tells directions 45 degrees
    apart, the 4-way sector (factors.json) the coarse task on the same videos. With ``with_masks``, also the
    objects' masks (:func:`_slide`); a list ``drawn`` gets the objects' shapes (:func:`_record_shapes`)."""
    res = size * SUPERSAMPLE
    background = _motion_background(rng, res)
    speed = rng.uniform(*FINE_SPEED) * size / 64 * SUPERSAMPLE          # supersampled pixels per frame
    objects = _record_shapes(_motion_objects(rng, res), drawn)
    angle = math.radians(FINE_STEP * cls)
    velocity = (speed * math.cos(angle), speed * math.sin(angle))
    return _slide(background, objects, _linear_offsets(velocity, frames), size, with_masks)


COUNT_WINDOW = 16                 # frames over which a class's cycles are counted (8 frames at sampling rate 2)
# Class c makes c + 1 back-and-forth cycles per COUNT_WINDOW frames. 4 cycles are left out: an 8-frame clip at
# rate 2 would sample them twice per cycle (the Nyquist limit), aliased: the samples alternate between two points
# A sin(phi) either side of the centre, so the swing's apparent size depends on its phase and vanishes at phi = 0.
COUNT_CYCLES = (1, 2, 3)
COUNT_CLASSES = tuple(f"count{n}" for n in COUNT_CYCLES)
COUNT_AMPLITUDE = (0.15, 0.3)     # the swing's amplitude (half its extent), fraction of the frame size
TASK_FILE = "task.json"           # for kinds whose class is a count, not a category: what the label counts


def count_frames(cls: int, frames: int, size: int, rng: np.random.Generator, with_masks: bool = False,
                 drawn: list[str] | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """uint8 (frames, size, size, 3) of ``COUNT_CLASSES[cls]``: the motion family's scene with its objects swinging
    back and forth, together (one direction, amplitude and phase per video, all random and class-neutral), at
    n = ``COUNT_CYCLES[cls]`` cycles per COUNT_WINDOW frames: position(t) = p0 + A sin(2 pi n t / COUNT_WINDOW +
    phi) u. The class is the count; the amplitude does not depend on it, so the objects' mean speed (4 A n /
    COUNT_WINDOW pixels per frame) grows with it. With ``with_masks``, also the objects' masks (:func:`_slide`); a
    list ``drawn`` gets the objects' shapes (:func:`_record_shapes`)."""
    res = size * SUPERSAMPLE
    background = _motion_background(rng, res)
    objects = _record_shapes(_motion_objects(rng, res), drawn)
    amplitude = rng.uniform(*COUNT_AMPLITUDE) * res                      # supersampled pixels
    direction, phase = rng.uniform(0, 2 * math.pi, 2)
    swing = amplitude * np.sin(2 * math.pi * COUNT_CYCLES[cls] * np.arange(frames) / COUNT_WINDOW + phase)
    offsets = swing[:, None] * np.array([math.cos(direction), math.sin(direction)])
    return _slide(background, objects, offsets, size, with_masks)


ARROW_PROCESSES = ("paint", "melt")
# Class c is process c % 2 and direction c // 2, as in MOTION_CLASSES.
ARROW_CLASSES = tuple(f"{process}_{d}" for d in PAN_DIRECTIONS for process in ARROW_PROCESSES)
ARROW_SPEED = (0.5, 0.9)          # pixels per frame at size 64 (scaled with the size), class-neutral: slow enough
                                  # that a trail never wraps round the torus onto itself within 32 frames
ARROW_RADIUS = (0.12, 0.2)        # object radius, fraction of the frame size (smaller than the motion family's, so
                                  # that a trail has room to grow)
PAINT_OPACITY = 0.6               # a trail's colour over the background (the object itself is opaque)
MELT_BLUR = 2.0                   # the object's Gaussian blur at the last frame, pixels at size 32 (scaled with
                                  # the size)
MELT_FADE = 0.5                   # opacity the object loses by the last frame (from 1 to 0.5)


def _arrow_slide(background: np.ndarray, objects: list, offsets: np.ndarray, size: int, process: str,
                 with_masks: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """:func:`_slide` with an irreversible ``process`` (one of ARROW_PROCESSES) acting on the moving objects:

    - ``paint``: each pixel an object has covered (supersampled) keeps the colour it last showed there, at
      PAINT_OPACITY over the background, behind the objects: the painted area only grows.
    - ``melt``: at frame t of T, every object is blurred by a Gaussian of MELT_BLUR * t / (T - 1) pixels (at size
      32) and drawn at opacity 1 - MELT_FADE * t / (T - 1) (premultiplied colour and coverage blurred alike): its
      sharpness and contrast only fall, at a steady rate over the whole video; frame 0 is drawn as :func:`_slide`.

    With ``with_masks``, also the uint8 (frames, size, size) masks of the objects' own footprints, as
    :func:`_slide` makes them: for ``paint`` the object, not its trail; for ``melt`` its sharp outline, not the
    blurred halo."""
    res = background.shape[0]
    frames = len(offsets)
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float64) + 0.5
    trail, painted = background.copy(), np.zeros((res, res), bool)
    out, masks = [], []
    for t, (ox, oy) in enumerate(offsets.tolist()):
        sx, sy = round(ox), round(oy)
        label = np.zeros((res, res), np.uint8)
        layers = []
        for k, (shape, cx, cy, radius, angle, texture) in enumerate(objects, 1):
            inside = _placed_shape(shape, xx - cx - sx, yy - cy - sy, res, radius, angle)
            layers.append((inside, np.roll(texture, (sy, sx), axis=(0, 1))))
            label[inside] = k
        img = background.copy()
        if process == "paint":
            for inside, texture in layers:
                trail[inside] = texture[inside]
                painted |= inside
            img[painted] = (1 - PAINT_OPACITY) * background[painted] + PAINT_OPACITY * trail[painted]
            for inside, texture in layers:
                img[inside] = texture[inside]
        else:
            progress = t / max(frames - 1, 1)
            sigma, opacity = MELT_BLUR * progress * res / 32, 1 - MELT_FADE * progress
            for inside, texture in layers:
                cover = inside[..., None].astype(np.float64)
                img = img * (1 - opacity * _blur(cover, sigma)) + opacity * _blur(cover * texture, sigma)
        out.append(_box_filter(img, size))
        masks.append(_majority(label, len(objects), size))
    return (np.stack(out), np.stack(masks)) if with_masks else np.stack(out)


def arrow_frames(cls: int, frames: int, size: int, rng: np.random.Generator, with_masks: bool = False,
                 drawn: list[str] | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """uint8 (frames, size, size, 3) of ``ARROW_CLASSES[cls]``: the motion family's scene (1-2 dead-leaves-textured
    objects of MOTION_SHAPES, radius from ARROW_RADIUS, over a blurred low-contrast dead-leaves background, each
    object's position at the middle frame uniform on the torus), its objects sliding in the class's direction at a
    speed drawn from ARROW_SPEED while the class's irreversible process (:func:`_arrow_slide`) runs at a steady
    rate over the whole video: the objects paint a trail that only grows, or melt into the background. A clip run
    backwards is no clip of any class (a trail that shrinks, an object that sharpens), so the arrow of time is
    seen. One frame tells the process; a painted one also tells the direction (the trail lies behind the object).
    With ``with_masks``, also the objects' masks; a list ``drawn`` gets the objects' shapes
    (:func:`_record_shapes`)."""
    process, direction = ARROW_PROCESSES[cls % 2], list(PAN_DIRECTIONS)[cls // 2]
    dx, dy = PAN_DIRECTIONS[direction]
    res = size * SUPERSAMPLE
    background = _motion_background(rng, res)
    speed = rng.uniform(*ARROW_SPEED) * size / 64 * SUPERSAMPLE          # supersampled pixels per frame
    objects = _record_shapes(_motion_objects(rng, res, ARROW_RADIUS), drawn)
    return _arrow_slide(background, objects, _linear_offsets((speed * dx, speed * dy), frames), size, process,
                        with_masks)


KINDS = ("patterns", "motion", "shapes", "fine", "count", "scenes", "object", "camera", "arrow")
KIND_CLASSES = {"patterns": PATTERN_CLASSES, "motion": MOTION_CLASSES, "shapes": SHAPE_CLASSES,
                "fine": FINE_CLASSES, "count": COUNT_CLASSES, "scenes": SCENE_CLASSES, "object": CLASSES,
                "camera": CAMERA_CLASSES, "arrow": ARROW_CLASSES}
# The kinds whose renderer knows its objects exactly, so that make_synthetic writes their masks beside the videos
# (for unsupervised video object segmentation): each renderer's ``with_masks=True`` returns (frames, masks).
MASK_RENDERERS = {"patterns": pattern_frames, "motion": motion_frames, "shapes": shapes_frames,
                  "fine": fine_frames, "count": count_frames, "arrow": arrow_frames}
MASKS_DIR = "masks"
# The kinds whose objects each take one of MOTION_SHAPES (their renderers take ``drawn``, :func:`_record_shapes`):
# make_synthetic also writes multi-label presence lists for them, as sigma_ray.eval.splits.charades_lists writes
# Charades' (``path 0,2``: the sorted indices into MOTION_SHAPES of the shapes seen in the video), beside
# train.csv / val.csv and line by line with them, and the label names, one a line (a task-shift task: multi-label
# presence of objects, scored by mAP).
MULTILABEL_KINDS = ("motion", "fine", "count", "arrow")
MULTILABEL_LISTS = {split: f"{split}{MULTILABEL_SUFFIX}.csv" for split in ("train", "val")}   # *_multilabel.csv
MULTILABEL_CLASSES_FILE = "multilabel_classes.txt"
# The kinds whose class is a product of two factors: class c has the first factor's value c % 2 and the second's
# c // 2 (written to factors.json for the evaluation's factor probes, sigma_ray.eval.readouts).
KIND_FACTORS = {"patterns": {"pattern": PATTERN_KINDS, "direction": tuple(PAN_DIRECTIONS)},
                "motion": {"speed": tuple(MOTION_SPEEDS), "direction": tuple(PAN_DIRECTIONS)},
                "shapes": {"shape": SHAPE_KINDS, "direction": tuple(PAN_DIRECTIONS)},
                "scenes": {"scene": tuple(SCENE_KINDS), "direction": tuple(PAN_DIRECTIONS)},
                "fine": {"diagonal": ("axis", "diagonal"), "sector": FINE_SECTORS},
                "arrow": {"process": ARROW_PROCESSES, "direction": tuple(PAN_DIRECTIONS)}}


def class_factors(kind: str, num_classes: int) -> dict[str, dict[str, list]]:
    """``{factor: {"values": names, "of_class": [value index of class 0, 1, ...]}}`` for the first
    ``num_classes`` classes of ``kind``; ``{}`` for kinds whose class is not a product of factors."""
    out = {}
    for i, (name, values) in enumerate(KIND_FACTORS.get(kind, {}).items()):
        of_class = [c % 2 if i == 0 else c // 2 for c in range(num_classes)]
        out[name] = {"values": list(values[:max(of_class) + 1]), "of_class": of_class}
    return out


def mask_path(root: str | Path, video_rel_path: str | Path) -> Path:
    """Where make_synthetic writes the masks of the video at ``video_rel_path`` (relative to ``root``):
    ``root/masks/<the video's file name without its suffix>.npz``."""
    return Path(root) / MASKS_DIR / (Path(video_rel_path).stem + ".npz")


def read_masks(path: str | Path) -> np.ndarray:
    """uint8 (frames, size, size) object masks of one video (0 background, k the k-th object drawn)."""
    with np.load(path) as z:
        return z["masks"]


def presence_labels(masks: np.ndarray, drawn: list[str]) -> list[int]:
    """The sorted indices into MOTION_SHAPES of the shapes seen in a video: those of the objects (``drawn``, in
    drawing order) whose label occurs in its uint8 (frames, size, size) ``masks`` in at least one frame (an object
    wholly hidden behind another is not seen)."""
    return sorted({MOTION_SHAPES.index(drawn[k - 1]) for k in np.unique(masks).tolist() if k})


def make_synthetic(out_dir: str | Path, num_classes: int = 8, train_per_class: int = 40, val_per_class: int = 10,
                   frames: int = 32, size: int = 64, seed: int = 0, pool: int = 4, kind: str = "object"
                   ) -> dict[str, str]:
    """Write the data set under ``out_dir``; returns {"root", "train", "val", "classes"} paths, with "factors"
    (factors.json) for the kinds of KIND_FACTORS, "masks" (the masks' directory) for those of MASK_RENDERERS,
    "task" (TASK_FILE) for ``count`` and "multilabel_train", "multilabel_val" (MULTILABEL_LISTS) and
    "multilabel_classes" (MULTILABEL_CLASSES_FILE: MOTION_SHAPES) for those of MULTILABEL_KINDS.

    ``kind`` is one of :data:`KINDS` (see the module's docstring); the first ``num_classes`` of its classes are
    used. For the kinds of MASK_RENDERERS every video's object masks go to :func:`mask_path`
    (``np.savez_compressed``, key ``"masks"``: uint8 (frames, size, size), 0 background, k the k-th object, the
    topmost where they overlap). ``frames`` is the length of each video (32 lets dense sampling take 16 frames at
    rate 2); ``pool`` is the number of shared objects and of shared backgrounds (``object`` and ``camera``; every
    ``patterns`` and ``scenes`` video has its own). Deterministic in ``seed``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind = {kind!r} is not one of {', '.join(KINDS)}")
    names = KIND_CLASSES[kind]
    if not 2 <= num_classes <= len(names):
        raise ValueError(f"num_classes = {num_classes} must be in [2, {len(names)}]")
    if size % 2 or size < 16:
        raise ValueError(f"size = {size} must be an even number >= 16")
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    if kind in MASK_RENDERERS:
        (out / MASKS_DIR).mkdir(exist_ok=True)
    if kind in ("object", "camera"):
        pool_rng = np.random.default_rng([seed, 0])
        backgrounds = [_smooth_texture(pool_rng, size, cells=int(pool_rng.integers(4, 9))) for _ in range(pool)]
        objects = [_object(pool_rng, 32) for _ in range(pool)]
        render = camera_frames if kind == "camera" else synth_frames
    paths = {"root": str(out)}
    for split_id, (split, per_class) in enumerate((("train", train_per_class), ("val", val_per_class)), 1):
        lines, multilabel_lines = [], []
        for i in range(num_classes * per_class):
            cls = i % num_classes
            rng = np.random.default_rng([seed, split_id, i])
            rel = f"videos/{split}_{i:05d}.mp4"
            if kind in MASK_RENDERERS:
                drawn: list[str] = []
                record = {"drawn": drawn} if kind in MULTILABEL_KINDS else {}
                video, masks = MASK_RENDERERS[kind](cls, frames, size, rng, with_masks=True, **record)
                np.savez_compressed(mask_path(out, rel), masks=masks)
                if kind in MULTILABEL_KINDS:
                    labels = ",".join(map(str, presence_labels(masks, drawn))) or NO_LABELS
                    multilabel_lines.append(f"{rel} {labels}\n")
            elif kind == "scenes":
                video = scene_frames(cls, frames, size, rng)
            else:
                bg = backgrounds[int(rng.integers(pool))]
                tex, shape = objects[int(rng.integers(pool))]
                video = render(cls, frames, size, rng, bg, tex, shape)
            write_mp4(out / rel, video)
            lines.append(f"{rel} {cls}\n")
        (out / f"{split}.csv").write_text("".join(lines))
        paths[split] = str(out / f"{split}.csv")
        if kind in MULTILABEL_KINDS:
            (out / MULTILABEL_LISTS[split]).write_text("".join(multilabel_lines))
            paths[f"multilabel_{split}"] = str(out / MULTILABEL_LISTS[split])
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in names[:num_classes]))
    paths["classes"] = str(out / "classes.txt")
    factors = class_factors(kind, num_classes)
    if factors:
        (out / "factors.json").write_text(json.dumps({"kind": kind, "factors": factors}, indent=1))
        paths["factors"] = str(out / "factors.json")
    if kind in MASK_RENDERERS:
        paths["masks"] = str(out / MASKS_DIR)
    if kind in MULTILABEL_KINDS:
        (out / MULTILABEL_CLASSES_FILE).write_text("".join(f"{c}\n" for c in MOTION_SHAPES))
        paths["multilabel_classes"] = str(out / MULTILABEL_CLASSES_FILE)
    if kind == "count":
        task = {"task": "count", "count_of_class": list(COUNT_CYCLES[:num_classes]), "window_frames": COUNT_WINDOW}
        (out / TASK_FILE).write_text(json.dumps(task, indent=1))
        paths["task"] = str(out / TASK_FILE)
    return paths


@dataclass(frozen=True)
class SyntheticConfig:
    """A synthetic set for a config's ``synthetic:`` key (``true`` takes these defaults). ``frames`` / ``size``
    None: the data section's needs, at least 32 frames (16 at rate 2) and 64 px."""

    kind: str = "patterns"
    num_classes: int = 8
    train_per_class: int = 40
    val_per_class: int = 10
    frames: int | None = None
    size: int | None = None
    seed: int = 0

    def validate(self) -> None:
        check_choice("synthetic.kind", self.kind, KINDS)
        check_range("synthetic.num_classes", self.num_classes, 2, len(KIND_CLASSES[self.kind]))
        check_range("synthetic.train_per_class", self.train_per_class, 1)
        check_range("synthetic.val_per_class", self.val_per_class, 1)
        if self.frames is not None:
            check_range("synthetic.frames", self.frames, 2)
        if self.size is not None and (self.size % 2 or self.size < 16):
            raise ConfigError(f"synthetic.size = {self.size} must be an even number >= 16")


def ensure_synthetic(spec: SyntheticConfig | bool, data) -> None:
    """Write the synthetic set ``spec`` (``True``: the defaults) into ``data.root`` when ``data.train_list`` does
    not exist yet; ``data`` is a DataConfig. Raises ConfigError when the set would not land where ``data`` reads."""
    if spec is False or (data.train_list and Path(data.train_list).is_file()):
        return
    spec = SyntheticConfig() if spec is True else spec
    if not data.root or not data.train_list:
        raise ConfigError("synthetic needs data.root (where to write the set) and data.train_list (root/train.csv)")
    print(f"[sigma-ray] writing the synthetic data set ({spec.kind}) to {data.root}", flush=True)
    paths = make_synthetic(data.root, num_classes=spec.num_classes, train_per_class=spec.train_per_class,
                           val_per_class=spec.val_per_class,
                           frames=spec.frames or max(32, data.num_frames * data.sampling_rate),
                           size=spec.size or max(64, data.input_size), seed=spec.seed, kind=spec.kind)
    if Path(paths["train"]) != Path(data.train_list):
        raise ConfigError(f"synthetic wrote {paths['train']}, but data.train_list = {data.train_list}: point "
                          "data.train_list at root/train.csv")
