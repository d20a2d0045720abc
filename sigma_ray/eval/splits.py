"""Official benchmark annotation files -> the data layer's lists (``path label``, 0-based labels).

UCF101 (``ucfTrainTestlist/``): ``classInd.txt`` (``1 ApplyEyeMakeup``, 1-based), ``trainlist0N.txt``
(``ApplyEyeMakeup/v_..._c01.avi 1``) and ``testlist0N.txt`` (paths only; the class is the folder).
HMDB51 (``testTrainMulti_7030_splits/``): ``<class>_test_split<N>.txt`` per class, lines ``video.avi k`` with
k = 1 train, 2 test, 0 unused; classes in alphabetical order, videos under ``<class>/``.

Something-Something v2 (the folder of its JSON files): ``labels.json`` maps each template to its index as a string
(``{"Approaching something with your camera": "0", ...}``); ``train.json`` / ``validation.json`` are lists of
``{"id": "78687", "label": ..., "template": "Holding [something] next to [something]", "placeholders": [...]}``.
The class is the template without its brackets, looked up in ``labels.json``; the video is ``<id>.webm``.

Kinetics-400 (the folder of its CSV files): ``train.csv`` / ``validate.csv`` with the header
``label,youtube_id,time_start,time_end,split`` (some releases add ``is_cc``; other columns are ignored). The video
is ``<youtube_id>_<time_start:06d>_<time_end:06d>.mp4`` (the ActivityNet downloader's name), in the split's folder
either flat or under a folder named after the label verbatim. Classes are the train labels sorted alphabetically
(the standard index).

FineGym (the folder of its lists): ``gym99_train_element_v1.1.txt`` / ``gym99_val_element.txt`` (Gym288:
``gym288_...``, the same names with 288), lines ``<clip_name> <label>``; the video is ``<clip_name>.mp4``. A subset
of the classes (SEVERE's FX-S1 / UB-S1 of Gym99) keeps only the given class ids, relabelled 0..k-1 in that order.

Charades (the ``Charades/`` annotation folder): ``Charades_v1_classes.txt`` (``c000 Holding some clothes``, the
index is the line), ``Charades_v1_train.csv`` / ``Charades_v1_test.csv`` with an ``id`` column and an ``actions``
column (``c092 11.90 21.20;c147 0.00 12.60``, empty for none). Multi-label, so it writes ``train_multilabel.csv`` /
``val_multilabel.csv`` with lines ``<id>.mp4 <labels>``: the sorted class indices joined by commas, or ``-`` for
a video with no action (:func:`load_multilabel_list` reads them).

UCFRep (``annotations/`` of ``ucf526_annotations.zip`` from the authors' repository,
Xiaodomgdomg/Deep-Temporal-Repetition-Counting): ``train/`` and ``val/`` hold one MATLAB file per UCF101 video,
``v_<Class>_gNN_cNN.mat``, whose struct ``label`` has ``temporal_bound``: the frame numbers of the cycle boundaries
from the start of the first cycle to the end of the last, so the count is their number minus one. Writes
``train_counts.csv`` / ``val_counts.csv`` with lines ``<Class>/<video>.avi <count>`` (:func:`load_count_list`
reads them); reading the ``.mat`` files needs scipy.

Writes ``train.csv``, ``val.csv`` (val = the official test/validation list) and ``classes.txt`` into ``out``
(other names as above); paths stay relative, so ``data.root`` is the folder holding the videos::

    python -m sigma_ray.eval.splits ucf101 /data/ucf101/ucfTrainTestlist /data/ucf101/lists_split1 --split 1
    python -m sigma_ray.eval.splits kinetics400 /data/k400/annotations /data/k400/lists --layout class_folders
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from sigma_ray.data.annotations import COUNTS_SUFFIX, MULTILABEL_SUFFIX, NO_LABELS, AnnotationError



def _write(out: str | Path, classes: list[str] | None, rows: dict[str, list[tuple[str, object]]],
           suffix: str = "") -> dict[str, str]:
    """Write ``<split><suffix>.csv`` (``path label`` lines) per split and ``classes.txt`` unless ``classes`` is
    None; returns split -> path and ``classes`` -> path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, items in rows.items():
        if not items:
            raise ValueError(f"the official split lists no {split} videos")
        (out / f"{split}{suffix}.csv").write_text("".join(f"{path} {label}\n" for path, label in items))
        paths[split] = str(out / f"{split}{suffix}.csv")
    if classes is not None:
        (out / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
        paths["classes"] = str(out / "classes.txt")
    return paths


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"{path}: annotation file does not exist")
    return path


def ucf101_lists(split_dir: str | Path, out: str | Path, split: int = 1) -> dict[str, str]:
    """Convert UCF101's ``classInd.txt`` + ``trainlist0{split}.txt`` / ``testlist0{split}.txt``; returns the paths
    of train.csv, val.csv and classes.txt (101 classes, labels 0..100)."""
    split_dir = Path(split_dir)
    classes = [line.split()[1] for line in (split_dir / "classInd.txt").read_text().splitlines() if line.strip()]
    index = {name: i for i, name in enumerate(classes)}

    def read(name: str) -> list[tuple[str, int]]:
        items = []
        for lineno, line in enumerate((split_dir / name).read_text().splitlines(), 1):
            if not line.strip():
                continue
            path = line.split()[0]
            folder = path.split("/")[0]
            if folder not in index:
                raise ValueError(f"{split_dir / name}:{lineno}: class folder {folder!r} is not in classInd.txt")
            items.append((path, index[folder]))
        return items

    return _write(out, classes, {"train": read(f"trainlist0{split}.txt"), "val": read(f"testlist0{split}.txt")})


def hmdb51_lists(split_dir: str | Path, out: str | Path, split: int = 1) -> dict[str, str]:
    """Convert HMDB51's per-class ``<class>_test_split{split}.txt`` files (1 = train, 2 = test, 0 = unused)."""
    split_dir = Path(split_dir)
    pattern = re.compile(rf"(.+)_test_split{split}\.txt$")
    files = sorted(p for p in split_dir.iterdir() if pattern.match(p.name))
    if not files:
        raise ValueError(f"{split_dir} holds no *_test_split{split}.txt files")
    classes = [pattern.match(p.name).group(1) for p in files]
    rows: dict[str, list[tuple[str, int]]] = {"train": [], "val": []}
    for label, (name, file) in enumerate(zip(classes, files)):
        for line in file.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] in ("1", "2"):
                rows["train" if parts[1] == "1" else "val"].append((f"{name}/{parts[0]}", label))
    return _write(out, classes, rows)


def ssv2_lists(annotation_dir: str | Path, out: str | Path, ext: str = ".webm") -> dict[str, str]:
    """Convert Something-Something v2's ``labels.json`` + ``train.json`` / ``validation.json``; labels are the
    indices of ``labels.json`` and classes.txt lists its templates in index order (174 classes). ``ext`` is the
    videos' extension (``.mp4`` once converted). Errors name the JSON entry (the files are single-line)."""
    annotation_dir = Path(annotation_dir)
    labels_file = _existing(annotation_dir / "labels.json")
    index = {}
    for template, value in json.loads(labels_file.read_text()).items():
        try:
            index[template] = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{labels_file}: index {value!r} of {template!r} is not an integer") from None
    if sorted(index.values()) != list(range(len(index))):
        raise ValueError(f"{labels_file}: the indices are not 0..{len(index) - 1}, each once")
    classes = sorted(index, key=index.get)

    def read(name: str) -> list[tuple[str, int]]:
        file = _existing(annotation_dir / name)
        items = []
        for i, entry in enumerate(json.loads(file.read_text())):
            try:
                video, template = entry["id"], entry["template"]
            except (TypeError, KeyError):
                raise ValueError(f"{file}: entry {i} has no 'id' and 'template'") from None
            cls = template.replace("[", "").replace("]", "")
            if cls not in index:
                raise ValueError(f"{file}: entry {i} (id {video}): template {template!r} is not in labels.json")
            items.append((f"{video}{ext}", index[cls]))
        return items

    return _write(out, classes, {"train": read("train.json"), "val": read("validation.json")})


def kinetics_lists(annotation_dir: str | Path, out: str | Path, layout: str = "class_folders",
                   train_dir: str = "train", val_dir: str = "val", ext: str = ".mp4") -> dict[str, str]:
    """Convert Kinetics-400's ``train.csv`` / ``validate.csv``. Paths are ``<train_dir>/<label>/<file>``
    (``layout="class_folders"``) or ``<train_dir>/<file>`` (``"flat"``), likewise for val; an empty
    ``train_dir`` / ``val_dir`` drops that folder. Labels index the sorted train labels."""
    if layout not in ("flat", "class_folders"):
        raise ValueError(f"layout must be 'flat' or 'class_folders', got {layout!r}")
    annotation_dir = Path(annotation_dir)

    def read(name: str, folder: str) -> list[tuple[str, str, str]]:   # (path, label name, file:line)
        file = _existing(annotation_dir / name)
        items = []
        with file.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = {"label", "youtube_id", "time_start", "time_end"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{file}:1: header lacks {', '.join(sorted(missing))}")
            for row in reader:
                where = f"{file}:{reader.line_num}"
                if None in row.values():
                    raise ValueError(f"{where}: fewer fields than the header")
                try:
                    start, end = int(row["time_start"]), int(row["time_end"])
                except ValueError:
                    raise ValueError(f"{where}: time_start / time_end {row['time_start']!r}, "
                                     f"{row['time_end']!r} are not integers") from None
                clip = f"{row['youtube_id']}_{start:06d}_{end:06d}{ext}"
                parts = (folder, row["label"], clip) if layout == "class_folders" else (folder, clip)
                items.append(("/".join(p for p in parts if p), row["label"], where))
        return items

    train, val = read("train.csv", train_dir), read("validate.csv", val_dir)
    classes = sorted({label for _, label, _ in train})
    index = {name: i for i, name in enumerate(classes)}
    for _, label, where in val:
        if label not in index:
            raise ValueError(f"{where}: label {label!r} is not a train class")
    return _write(out, classes, {"train": [(p, index[label]) for p, label, _ in train],
                                 "val": [(p, index[label]) for p, label, _ in val]})


def finegym_lists(split_dir: str | Path, out: str | Path, num_classes: int = 99,
                  keep: Sequence[int] | None = None, ext: str = ".mp4") -> dict[str, str]:
    """Convert FineGym's ``gym{num_classes}_train_element_v1.1.txt`` / ``gym{num_classes}_val_element.txt``
    (``num_classes`` 99 or 288). With ``keep`` (class ids, e.g. SEVERE's FX-S1 or UB-S1 subset of Gym99), only
    those classes stay, relabelled 0..k-1 in the given order; classes.txt holds the original ids."""
    if num_classes not in (99, 288):
        raise ValueError(f"FineGym has Gym99 and Gym288, got num_classes={num_classes}")
    keep = list(range(num_classes)) if keep is None else list(keep)
    if len(set(keep)) != len(keep) or not all(0 <= c < num_classes for c in keep):
        raise ValueError(f"keep must be distinct class ids in [0, {num_classes}), got {keep}")
    relabel = {c: i for i, c in enumerate(keep)}
    split_dir = Path(split_dir)

    def read(name: str) -> list[tuple[str, int]]:
        file = _existing(split_dir / name)
        items = []
        for lineno, line in enumerate(file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                label = int(parts[1]) if len(parts) == 2 else None
            except ValueError:
                label = None
            if label is None:
                raise ValueError(f"{file}:{lineno}: expected '<clip_name> <label>', got {line!r}")
            if not 0 <= label < num_classes:
                raise ValueError(f"{file}:{lineno}: label {label} is not in [0, {num_classes})")
            if label in relabel:
                items.append((f"{parts[0]}{ext}", relabel[label]))
        return items

    rows = {"train": read(f"gym{num_classes}_train_element_v1.1.txt"),
            "val": read(f"gym{num_classes}_val_element.txt")}
    return _write(out, [str(c) for c in keep], rows)


def charades_lists(annotation_dir: str | Path, out: str | Path, ext: str = ".mp4") -> dict[str, str]:
    """Convert Charades' ``Charades_v1_classes.txt`` + ``Charades_v1_train.csv`` / ``Charades_v1_test.csv`` into
    ``train_multilabel.csv`` / ``val_multilabel.csv`` (``<id>.mp4 <labels>``, see the module docstring) and
    classes.txt (the 157 action names)."""
    annotation_dir = Path(annotation_dir)
    classes_file = _existing(annotation_dir / "Charades_v1_classes.txt")
    index, classes = {}, []
    for lineno, line in enumerate(classes_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or parts[0] in index:
            raise ValueError(f"{classes_file}:{lineno}: expected '<new code> <name>', got {line!r}")
        index[parts[0]] = len(classes)
        classes.append(parts[1].strip())

    def read(name: str) -> list[tuple[str, str]]:
        file = _existing(annotation_dir / name)
        items = []
        with file.open(newline="") as f:
            reader = csv.DictReader(f)
            if not {"id", "actions"} <= set(reader.fieldnames or ()):
                raise ValueError(f"{file}:1: header lacks id / actions")
            for row in reader:
                where = f"{file}:{reader.line_num}"
                if None in row.values():
                    raise ValueError(f"{where}: fewer fields than the header")
                labels = set()
                for action in filter(None, row["actions"].split(";")):
                    fields = action.split()
                    if len(fields) != 3 or fields[0] not in index:
                        raise ValueError(f"{where}: action {action!r} is not '<known class> <start> <end>'")
                    labels.add(index[fields[0]])
                items.append((f"{row['id']}{ext}", ",".join(map(str, sorted(labels))) or NO_LABELS))
        return items

    rows = {"train": read("Charades_v1_train.csv"), "val": read("Charades_v1_test.csv")}
    return _write(out, classes, rows, suffix=MULTILABEL_SUFFIX)


# UCF101 names this class's files v_HandStandPushups_* but its folder HandstandPushups
_UCF101_FOLDERS = {"HandStandPushups": "HandstandPushups"}


def ucfrep_lists(annotation_dir: str | Path, out: str | Path, ext: str = ".avi") -> dict[str, str]:
    """Convert UCFRep's ``train/*.mat`` / ``val/*.mat`` (see the module docstring) into ``train_counts.csv`` /
    ``val_counts.csv`` with paths ``<UCF101 class folder>/<video><ext>``; no classes.txt."""
    try:
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError
    except ImportError:
        raise ValueError("reading UCFRep's .mat annotations needs scipy (pip install scipy)") from None
    annotation_dir = Path(annotation_dir)
    name_pattern = re.compile(r"v_([A-Za-z]+)_g\d+_c\d+$")

    def read(split: str) -> list[tuple[str, int]]:
        folder = annotation_dir / split
        if not folder.is_dir():
            raise ValueError(f"{folder}: annotation folder does not exist")
        items = []
        for file in sorted(folder.glob("*.mat")):
            match = name_pattern.match(file.stem)
            if not match:
                raise ValueError(f"{file}: not a UCF101 video name v_<Class>_gNN_cNN")
            try:
                bounds = loadmat(file)["label"][0, 0]["temporal_bound"].ravel()
            except (KeyError, IndexError, ValueError, MatReadError):
                raise ValueError(f"{file}: not a MATLAB file with a struct 'label' holding 'temporal_bound'") from None
            if bounds.size == 0 or (bounds[1:] <= bounds[:-1]).any():
                raise ValueError(f"{file}: temporal_bound {bounds.tolist()} is not increasing frame numbers")
            cls = _UCF101_FOLDERS.get(match.group(1), match.group(1))
            items.append((f"{cls}/{file.stem}{ext}", int(bounds.size) - 1))
        return items

    return _write(out, None, {"train": read("train"), "val": read("val")}, suffix=COUNTS_SUFFIX)


def _read_pairs(list_file: str | Path, root: str | None):
    """Yield ``(where, path, last_field)`` per non-blank ``path value`` line (the value is the last field, so
    paths may contain spaces); raises AnnotationError for a missing file, a one-field line or an empty list."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise AnnotationError(f"{list_file}: annotation file does not exist")
    empty = True
    for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(None, 1)
        if len(parts) != 2:
            raise AnnotationError(f"{list_file}:{lineno}: expected 'path value', got {line!r}")
        path = parts[0] if os.path.isabs(parts[0]) or root is None else os.path.join(root, parts[0])
        empty = False
        yield f"{list_file}:{lineno}", path, parts[1]
    if empty:
        raise AnnotationError(f"{list_file}: no videos listed")


def load_multilabel_list(list_file: str | Path, root: str | None = None,
                         num_classes: int | None = None) -> list[tuple[str, list[int]]]:
    """Read a multi-label list (``path 3,17,92`` or ``path -``, as :func:`charades_lists` writes it): returns
    ``(path, sorted class indices)`` per line, paths resolved against ``root``. Raises AnnotationError naming
    ``file:line`` for a malformed line or an index that is not an integer in ``[0, num_classes)``."""
    items = []
    for where, path, field in _read_pairs(list_file, root):
        labels = [] if field == NO_LABELS else field.split(",")
        if not all(s.isdigit() for s in labels):
            raise AnnotationError(f"{where}: labels {field!r} are not comma-separated class indices or {NO_LABELS!r}")
        labels = sorted({int(s) for s in labels})
        if num_classes is not None and labels and labels[-1] >= num_classes:
            raise AnnotationError(f"{where}: label {labels[-1]} is not in [0, {num_classes})")
        items.append((path, labels))
    return items


def load_count_list(list_file: str | Path, root: str | None = None) -> list[tuple[str, int]]:
    """Read a repetition-count list (``path count``, as :func:`ucfrep_lists` writes it): returns ``(path,
    count)`` per line, paths resolved against ``root``. Raises AnnotationError naming ``file:line`` for a malformed
    line or a count that is not an integer >= 0."""
    items = []
    for where, path, field in _read_pairs(list_file, root):
        if not field.isdigit():
            raise AnnotationError(f"{where}: count {field!r} is not an integer >= 0")
        items.append((path, int(field)))
    return items


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sigma_ray.eval.splits", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", choices=("ucf101", "hmdb51", "ssv2", "kinetics400", "finegym", "charades", "ucfrep"))
    p.add_argument("split_dir", help="the folder of the official annotation files (see the module docstring)")
    p.add_argument("out", help="where the lists and classes.txt go")
    p.add_argument("--split", type=int, default=1, choices=(1, 2, 3), help="ucf101 / hmdb51 split")
    p.add_argument("--ext", help="video extension (default: .webm ssv2, .avi ucfrep, else .mp4)")
    p.add_argument("--layout", default="class_folders", choices=("flat", "class_folders"), help="kinetics400")
    p.add_argument("--train-dir", default="train", help="kinetics400: the train videos' folder ('' for none)")
    p.add_argument("--val-dir", default="val", help="kinetics400: the validation videos' folder ('' for none)")
    p.add_argument("--num-classes", type=int, default=99, choices=(99, 288), help="finegym: Gym99 or Gym288")
    p.add_argument("--keep", type=lambda text: [int(c) for c in text.split(",")],
                   help="finegym: comma-separated class ids to keep, relabelled 0..k-1 in this order")
    args = p.parse_args(argv)
    ext = {} if args.ext is None else {"ext": args.ext}
    if args.dataset in ("ucf101", "hmdb51"):
        convert = ucf101_lists if args.dataset == "ucf101" else hmdb51_lists
        paths = convert(args.split_dir, args.out, args.split)
    elif args.dataset == "kinetics400":
        paths = kinetics_lists(args.split_dir, args.out, args.layout, args.train_dir, args.val_dir, **ext)
    elif args.dataset == "finegym":
        paths = finegym_lists(args.split_dir, args.out, args.num_classes, args.keep, **ext)
    else:
        convert = {"ssv2": ssv2_lists, "charades": charades_lists, "ucfrep": ucfrep_lists}[args.dataset]
        paths = convert(args.split_dir, args.out, **ext)
    print(f"wrote {', '.join(paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
