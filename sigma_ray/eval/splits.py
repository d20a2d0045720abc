"""Official UCF101 / HMDB51 split files -> the data layer's VideoMAE lists (``path label``, 0-based labels).

UCF101 (``ucfTrainTestlist/``): ``classInd.txt`` (``1 ApplyEyeMakeup``, 1-based), ``trainlist0N.txt``
(``ApplyEyeMakeup/v_..._c01.avi 1``) and ``testlist0N.txt`` (paths only; the class is the folder).
HMDB51 (``testTrainMulti_7030_splits/``): ``<class>_test_split<N>.txt`` per class, lines ``video.avi k`` with
k = 1 train, 2 test, 0 unused; classes in alphabetical order, videos under ``<class>/``.

Writes ``train.csv``, ``val.csv`` (val = the official test list) and ``classes.txt`` into ``out``; paths stay
relative, so ``data.root`` is the folder holding the class folders of videos::

    python -m sigma_ray.eval.splits ucf101 /data/ucf101/ucfTrainTestlist /data/ucf101/lists_split1 --split 1
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def _write(out: str | Path, classes: list[str], rows: dict[str, list[tuple[str, int]]]) -> dict[str, str]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, items in rows.items():
        if not items:
            raise ValueError(f"the official split lists no {split} videos")
        (out / f"{split}.csv").write_text("".join(f"{path} {label}\n" for path, label in items))
        paths[split] = str(out / f"{split}.csv")
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    paths["classes"] = str(out / "classes.txt")
    return paths


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sigma_ray.eval.splits", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", choices=("ucf101", "hmdb51"))
    p.add_argument("split_dir", help="ucfTrainTestlist/ or testTrainMulti_7030_splits/")
    p.add_argument("out", help="where train.csv, val.csv and classes.txt go")
    p.add_argument("--split", type=int, default=1, choices=(1, 2, 3))
    args = p.parse_args(argv)
    convert = ucf101_lists if args.dataset == "ucf101" else hmdb51_lists
    paths = convert(args.split_dir, args.out, args.split)
    print(f"wrote {paths['train']}, {paths['val']} and {paths['classes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
