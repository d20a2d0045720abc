"""Leak checks of labelled video sets (sigma_ray.data.leakage): one frame, one frame difference and the global
motion against the class, on the train / val lists of each DATA_DIR, as a Markdown table.

    python experiments/leak_checks.py DATA_DIR [DATA_DIR ...] [--frames 16]

Each video's first ``--frames`` frames are read at full size; the factors of ``factors.json`` get a flow column
each. Chance is 1 / classes (one frame and one difference should stay near it for a motion-defined set).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def load(root: Path, split: str, frames: int) -> tuple[np.ndarray, np.ndarray]:
    from sigma_ray.data.decode import read_frames

    clips, labels = [], []
    for line in (root / f"{split}.csv").read_text().splitlines():
        rel, label = line.rsplit(maxsplit=1)
        clips.append(read_frames(str(root / rel), range(frames)))
        labels.append(int(label))
    return np.stack(clips), np.array(labels)


def main(argv: list[str] | None = None) -> int:
    from sigma_ray.data.leakage import leak_checks
    from sigma_ray.eval.readouts import read_factors

    parser = argparse.ArgumentParser(prog="leak_checks.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dirs", nargs="+", type=Path)
    parser.add_argument("--frames", type=int, default=16)
    args = parser.parse_args(argv)
    rows = []
    for root in args.data_dirs:
        (xtr, ytr), (xva, yva) = load(root, "train", args.frames), load(root, "val", args.frames)
        factors = read_factors(root)
        checks = leak_checks(xtr, ytr, xva, yva, factors)
        rows.append((root, int(max(ytr.max(), yva.max())) + 1, len(ytr), len(yva), checks))
    keys = list(rows[0][-1])
    print("| set | classes | train / val | " + " | ".join(keys) + " |")
    print("| --- " * (len(keys) + 3) + "|")
    for root, classes, n_train, n_val, checks in rows:
        print(f"| {root} | {classes} | {n_train} / {n_val} | "
              + " | ".join(f"{100 * checks[k]:.1f}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
