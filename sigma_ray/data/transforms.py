"""Spatial augmentation of uint8 ``T x H x W x C`` clips: one crop box per clip (the same for every frame).

Boxes are ``(top, left, height, width)`` in pixels. Crops are numpy views; only the final resize touches the
pixels (one batched bilinear, antialiased uint8 interpolation in torch), so a clip is never split into PIL images.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]


def multi_scale_crop_box(height: int, width: int, size: int, scales, max_distort: int,
                         rng: np.random.Generator) -> Box:
    """VideoMAE's GroupMultiScaleCrop: crop sides are ``scales`` of the short side (each side picked
    independently, at most ``max_distort`` scales apart), sides within 3 px of ``size`` snap to it, and the box
    sits at one of 13 fixed positions (corners, centre, edge midpoints, quarter points)."""
    base = min(height, width)
    sides = [int(base * s) for s in scales]
    sides = [size if abs(s - size) < 3 else s for s in sides]
    pairs = [(h, w) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= max_distort]
    ch, cw = pairs[int(rng.integers(len(pairs)))]
    ch, cw = min(ch, height), min(cw, width)
    hs, ws = (height - ch) // 4, (width - cw) // 4
    grid = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (2, 0), (2, 4), (4, 2), (0, 2),
            (1, 1), (1, 3), (3, 1), (3, 3)]
    gy, gx = grid[int(rng.integers(len(grid)))]
    return gy * hs, gx * ws, ch, cw


def random_resized_crop_box(height: int, width: int, scale, ratio, rng: np.random.Generator) -> Box:
    """Inception-style crop: area fraction in ``scale``, aspect ratio (w/h) log-uniform in ``ratio``;
    after 10 failed tries, the centred crop of the largest area with the closest allowed ratio."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def crop_resize(clip: np.ndarray, box: Box, size: int | tuple[int, int]) -> np.ndarray:
    """Crop ``box`` from every frame and resize to ``size`` (int = square, or (height, width)): uint8 out."""
    top, left, h, w = box
    out_h, out_w = (size, size) if isinstance(size, int) else size
    crop = clip[:, top:top + h, left:left + w]
    if (h, w) == (out_h, out_w):
        return np.ascontiguousarray(crop)
    # uint8 in, uint8 out, channels-last (T x H x W x C memory seen as T x C x H x W): torch's vectorized
    # uint8 kernel, ~15x faster than resizing in float (within 1 of the float result after rounding); on a
    # decode actor this resize otherwise costs as much as decoding the window
    x = torch.from_numpy(np.ascontiguousarray(crop)).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def hflip(clip: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(clip[:, :, ::-1])


def resize_short_side(clip: np.ndarray, size: int) -> np.ndarray:
    """Resize so the short side is ``size``, keeping the aspect ratio (the long side is rounded)."""
    _, h, w, _ = clip.shape
    out = (size, round(w * size / h)) if h <= w else (round(h * size / w), size)
    return crop_resize(clip, (0, 0, h, w), out)


def eval_crop_box(height: int, width: int, size: int, num_crops: int, crop: int) -> Box:
    """Square ``size`` crop ``crop`` of ``num_crops`` along the long side: 1 = centre; 3 = start/centre/end
    (left/centre/right for landscape frames, top/centre/bottom for portrait). Expects the short side = size."""
    long_side, is_wide = (width, True) if width >= height else (height, False)
    offset = (long_side - size) // 2 if num_crops == 1 else (long_side - size) * crop // (num_crops - 1)
    short_off = (min(height, width) - size) // 2
    return (short_off, offset, size, size) if is_wide else (offset, short_off, size, size)
