"""DAVIS-2017 and YouTube-VOS frame folders with their object masks, for video object segmentation evaluation.

DAVIS-2017: ``root/JPEGImages/<resolution>/<seq>/00000.jpg``, ``root/Annotations/<resolution>/<seq>/00000.png``
and ``root/ImageSets/2017/<split>.txt`` (one sequence name per line). YouTube-VOS 2018/2019:
``root/<split>/JPEGImages/<vid>/<frame>.jpg``, ``root/<split>/Annotations/<vid>/<frame>.png`` and
``root/<split>/meta.json`` (``{"videos": {vid: {"objects": {"1": {"category": ..., "frames": [...]}}}}}``), which
lists the videos. In both, an annotation is a palette PNG whose pixel values are object ids (0 = background); a
frame is annotated when its PNG of the same name exists (YouTube-VOS ``valid`` gives only the first frame of
each object, DAVIS ``test-dev`` only the first frame). Plain numpy + Pillow.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class MaskedSequence:
    """One video as frame files; ``masks[t]`` is the annotation PNG of ``frames[t]``, None where there is none."""
    name: str
    frames: tuple[Path, ...]
    masks: tuple[Path | None, ...]


def _folder(path: Path) -> Path:
    if not path.is_dir():
        raise ValueError(f"{path}: folder does not exist")
    return path


def _sequence(name: str, frame_dir: Path, mask_dir: Path) -> MaskedSequence:
    frames = sorted(_folder(frame_dir).glob("*.jpg"))
    if not frames:
        raise ValueError(f"{frame_dir}: no .jpg frames")
    masks = {p.stem: p for p in _folder(mask_dir).glob("*.png")}
    # a mask no frame matches means the two folders disagree (a renamed or shifted export), not a missing label
    orphans = sorted(set(masks) - {p.stem for p in frames})
    if orphans:
        raise ValueError(f"{mask_dir}: annotations {', '.join(orphans[:3])} have no frame in {frame_dir}")
    return MaskedSequence(name, tuple(frames), tuple(masks.get(p.stem) for p in frames))


def davis_sequences(root: str | Path, split: str = "val", resolution: str = "480p") -> list[MaskedSequence]:
    """The sequences of ``ImageSets/2017/<split>.txt`` (``train``, ``val``, ``test-dev``, ...), sorted by name."""
    root = Path(root)
    listing = root / "ImageSets" / "2017" / f"{split}.txt"
    if not listing.is_file():
        raise ValueError(f"{listing}: sequence list does not exist")
    names = sorted({line.strip() for line in listing.read_text().splitlines() if line.strip()})
    if not names:
        raise ValueError(f"{listing}: no sequences listed")
    return [_sequence(name, root / "JPEGImages" / resolution / name, root / "Annotations" / resolution / name)
            for name in names]


def youtube_vos_sequences(root: str | Path, split: str = "train") -> list[MaskedSequence]:
    """The videos of ``<split>/meta.json`` (``train``, ``valid``, ...), sorted by name."""
    base = _folder(Path(root) / split)
    meta = base / "meta.json"
    if not meta.is_file():
        raise ValueError(f"{meta}: meta file does not exist")
    videos = json.loads(meta.read_text()).get("videos")
    if not isinstance(videos, dict) or not videos:
        raise ValueError(f"{meta}: no 'videos' mapping")
    return [_sequence(vid, base / "JPEGImages" / vid, base / "Annotations" / vid) for vid in sorted(videos)]


def _resize_crop(image: Image.Image, size: int, resample: int) -> np.ndarray:
    w, h = image.size
    scale = size / min(w, h)
    w2, h2 = round(w * scale), round(h * scale)   # the short side becomes exactly size
    array = np.asarray(image.resize((w2, h2), resample))
    top, left = (h2 - size) // 2, (w2 - size) // 2
    return array[top:top + size, left:left + size]


def load_sequence(seq: MaskedSequence, indices: Sequence[int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``uint8 (T, size, size, 3)`` and masks ``uint8 (T, size, size)`` (object ids, 0 background) at
    ``indices``: the short side resized to ``size`` (bilinear for frames, nearest for masks, so ids are never
    blended), then the centre ``size x size`` crop. Raises ValueError for an index out of range, a frame without
    annotation, a mask that is not a palette / grayscale PNG, or a mask of another size than its frame."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    frames = np.empty((len(indices), size, size, 3), np.uint8)
    masks = np.empty((len(indices), size, size), np.uint8)
    for i, t in enumerate(indices):
        if not 0 <= t < len(seq.frames):
            raise ValueError(f"{seq.name}: frame index {t} is not in [0, {len(seq.frames)})")
        if seq.masks[t] is None:
            raise ValueError(f"{seq.name}: frame {t} ({seq.frames[t].name}) has no annotation")
        with Image.open(seq.frames[t]) as frame, Image.open(seq.masks[t]) as mask:
            # palette indices are the object ids; converting to RGB or L would turn them into colours
            if mask.mode not in ("P", "L"):
                raise ValueError(f"{seq.masks[t]}: mode {mask.mode}, expected a palette (P) or grayscale (L) PNG")
            if mask.size != frame.size:
                raise ValueError(f"{seq.masks[t]}: size {mask.size} differs from its frame's {frame.size}")
            frames[i] = _resize_crop(frame.convert("RGB"), size, Image.BILINEAR)
            masks[i] = _resize_crop(mask, size, Image.NEAREST)
    return frames, masks
