"""Video lists: VideoMAE annotation files, folder-per-class layouts and unlabeled pretraining lists.

Every loader returns a list of :class:`VideoRecord` whose ``video_id`` is the row's position in the list, so
ids are stable across epochs, actors and processes (the per-sample RNG and the eval aggregation key on it).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

from sigma_ray.infra.checks import ConfigError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
UNLABELED = -1
# Lists beside the VideoMAE ones (``<split><suffix>.csv``): multi-label lines ``path 3,17`` (Charades' converter,
# the synthetic presence lists) and count lines ``path 4`` (UCFRep's converter); the evaluation suite reads them.
MULTILABEL_SUFFIX, COUNTS_SUFFIX = "_multilabel", "_counts"
NO_LABELS = "-"   # a video with no label in a multi-label list (an empty field would vanish on split())


class AnnotationError(ConfigError):
    """A malformed row, a missing file or an unknown label; the message starts with ``file:line``. A config
    error: the commands report it as one ``config error: ...`` line before any work starts."""


class VideoRecord(NamedTuple):
    path: str
    label: int       # -1 for unlabeled pretraining lists
    video_id: int    # position in the list


def _resolve(path: str, root: str | None) -> str:
    return path if os.path.isabs(path) or root is None else os.path.join(root, path)


def load_list(list_file: str | Path, root: str | None = None, labeled: bool = True,
              num_classes: int | None = None, check_files: bool = True) -> list[VideoRecord]:
    """Read a VideoMAE list: ``path label`` per line (space-separated, no header), or ``path`` when unlabeled.

    The label is the last field, so paths may contain spaces. Blank lines are ignored. Relative paths are
    resolved against ``root``. Raises AnnotationError naming ``file:line`` for a malformed row, a label that
    is not an integer in ``[0, num_classes)``, or (with ``check_files``) a file that does not exist.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise AnnotationError(f"{list_file}: annotation file does not exist")
    records = []
    with list_file.open() as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            where = f"{list_file}:{lineno}"
            if labeled:
                parts = line.rsplit(None, 1)
                if len(parts) != 2:
                    raise AnnotationError(f"{where}: expected 'path label', got {line!r}")
                path, label_text = parts
                try:
                    label = int(label_text)
                except ValueError:
                    raise AnnotationError(f"{where}: label {label_text!r} is not an integer") from None
                if label < 0 or (num_classes is not None and label >= num_classes):
                    bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
                    raise AnnotationError(f"{where}: unknown label {label}, labels must be {bound}")
            else:
                path, label = line, UNLABELED
            path = _resolve(path, root)
            if check_files and not os.path.isfile(path):
                raise AnnotationError(f"{where}: video file {path} does not exist")
            records.append(VideoRecord(path, label, len(records)))
    if not records:
        raise AnnotationError(f"{list_file}: no videos listed")
    return records


def load_folder(root: str | Path, classes: list[str] | None = None) -> tuple[list[VideoRecord], list[str]]:
    """Read ``root/class_name/*.mp4``; labels index the sorted class names (or ``classes`` when given).

    Pass the train split's ``classes`` when reading val so labels agree; a folder that is not among them is an
    unknown label (AnnotationError naming the folder). Returns (records, class names).
    """
    root = Path(root)
    if not root.is_dir():
        raise AnnotationError(f"{root}: video folder does not exist")
    found = sorted(d.name for d in root.iterdir() if d.is_dir())
    if classes is None:
        classes = found
    index = {name: i for i, name in enumerate(classes)}
    records = []
    for name in found:
        if name not in index:
            raise AnnotationError(f"{root / name}: unknown label {name!r}, known classes: {', '.join(classes)}")
        for p in sorted((root / name).iterdir()):
            if p.suffix.lower() in VIDEO_EXTENSIONS:
                records.append(VideoRecord(str(p), index[name], len(records)))
    if not records:
        raise AnnotationError(f"{root}: no videos found in class folders")
    return records, list(classes)


PREPARED_FILE = "prepared.json"   # beside a prepared copy's lists: how ``sigma-ray prepare`` made it


def frame_stride(list_path: str | Path) -> int:
    """Every how many source frames the prepared copy a list belongs to keeps one (``prepared.json`` in the
    list's folder, written by ``sigma-ray prepare --frame-stride``); 1 when there is none."""
    folder = Path(list_path) if Path(list_path).is_dir() else Path(list_path).parent
    meta = folder / PREPARED_FILE
    if not meta.is_file():
        return 1
    try:
        return int(json.loads(meta.read_text()).get("frame_stride", 1))
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise AnnotationError(f"{meta}: unreadable ({e})") from None


def split_list(config, split: str) -> str | None:
    """The annotation list a split reads: ``train_list`` for train, ``val_list`` for val and test."""
    return config.train_list if split == "train" else config.val_list


def copy_stride(config, split: str) -> int:
    """The frame stride of the split's copy: ``data.frame_stride``, or read beside its list when that is None."""
    if config.frame_stride is not None:
        return config.frame_stride
    list_path = split_list(config, split)
    return frame_stride(list_path) if list_path is not None else 1


def clip_rate(config, split: str) -> int:
    """``data.sampling_rate`` counted in the copy's kept frames (sampling_rate / frame stride: rate 4 on a
    stride-4 copy takes consecutive frames); the stride is ``data.frame_stride``, or read beside the split's list
    when that is None. Raises AnnotationError when dense sampling's rate is not a multiple of the stride: those
    frames are not in the copy."""
    stride = copy_stride(config, split)
    if config.sampling == "dense" and config.sampling_rate % stride:
        raise AnnotationError(f"data.sampling_rate = {config.sampling_rate} is not a multiple of the frame stride "
                              f"{stride} of the prepared copy {split_list(config, split)} belongs to: use a rate "
                              f"of {stride}, {2 * stride}, ... or a copy prepared with a smaller --frame-stride")
    return config.sampling_rate // stride


def load_split(config, split: str) -> list[VideoRecord]:
    """The records of ``split`` for a :class:`~sigma_ray.data.config.DataConfig` (val and test read val_list).

    A list path naming a directory is read as a folder-per-class layout; val/test then take the class names of
    the train folder so labels agree. ``root`` applies to the video paths inside list files. A sampling rate the
    list's prepared copy cannot give (:func:`clip_rate`) is an AnnotationError here, before any work.
    """
    list_path = split_list(config, split)
    if list_path is None:
        raise AnnotationError(f"{'train_list' if split == 'train' else 'val_list'} is not set in the data config")
    clip_rate(config, split)
    full = Path(list_path)
    if full.is_dir():
        classes = None
        if split != "train" and config.train_list is not None:
            train_dir = Path(config.train_list)
            if train_dir.is_dir():
                classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
        return load_folder(full, classes)[0]
    return load_list(full, config.root, config.labeled, config.num_classes, config.check_files)
