"""``sigma-ray eval --suite RUN_OR_DEMO_DIR...``: every encoder given, on every data set given, on the tasks the
paper's claims rest on, in one table.

Tasks, each run where the set allows it (a task that cannot run on a set is listed as skipped, never a 0):

- **standard**: kNN k=20 and the linear probe on mean-pooled tokens, the attentive probe (V-JEPA's frozen
  protocol, :func:`~sigma_ray.eval.readouts.attentive_probe`);
- **sample efficiency**: the linear probe trained on the first 4 and 16 train videos of each class (and on all);
- **factors / granularity**: a linear probe per factor of the class (``factors.json``: the ``motion`` family's
  speed and direction, the ``fine`` family's 4-way sector beside its 8-way direction);
- **temporal**: the arrow of time (:mod:`sigma_ray.eval.temporal`);
- **task shift**: repetition counting by ridge regression, MAE (sets with a ``task.json`` of task ``count``);
- **segmentation**: K-means over each clip's tokens, Hungarian and greedy matching, mIoU (sets with ``masks/``;
  :mod:`sigma_ray.eval.vos`), with the raw pixels of each tube as a reference row;
- **domain shift**: every encoder on every set: a cell whose set is not the one the encoder was pretrained on.

Encoders are run directories (their ``config.yaml`` names the method, the seed and the pretraining set) or
directories holding run directories (the demo's output); ``random=True`` adds the random initial weights of each
seed. Writes ``suite.json`` (every encoder's numbers) and ``suite.md`` (mean +- std over the seeds of each method
and pretraining set).
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from sigma_ray.config import from_dict, load_yaml
from sigma_ray.data.config import DataConfig
from sigma_ray.eval.features import Features, eval_batches
from sigma_ray.eval.knn import knn_eval
from sigma_ray.eval.linear import linear_probe
from sigma_ray.eval.metrics import log
from sigma_ray.eval.readouts import attentive_probe, extract_tokens, factor_features, read_factors
from sigma_ray.eval.temporal import arrow_of_time, count_regression, reversed_batches
from sigma_ray.eval.vos import MaskedClips, vos_scores

SHOTS = (4, 16)
METHOD_NAMES = {"sigma_mlp": "SIGMA-MLP", "sigma_dino": "SIGMA-DINO", "videomae": "VideoMAE", "random": "random init",
                "supervised": "supervised (labels)", "pixels": "raw pixels"}
RUN_CONFIG = "config.yaml"


@dataclass(frozen=True)
class SuiteSet:
    """A data set of the suite: VideoMAE lists ``train.csv`` / ``val.csv`` in ``root``."""

    name: str                        # the synthetic family (factors.json's kind) or the directory's name
    root: str
    num_classes: int
    factors: dict[str, list[int]]    # {factor: value of each class}
    counts: list[int] | None         # repetitions of each class (a counting set), else None
    has_masks: bool                  # per-frame object masks under root/masks


def read_set(root: str | Path) -> SuiteSet:
    """What the suite can do on the set in ``root`` (raises FileNotFoundError without its lists)."""
    from sigma_ray.data.synthetic import MASKS_DIR, TASK_FILE

    root = Path(root).resolve()
    for split in ("train", "val"):
        if not (root / f"{split}.csv").is_file():
            raise FileNotFoundError(f"{root} has no {split}.csv (a VideoMAE list)")
    labels = [int(line.split()[-1]) for s in ("train", "val")
              for line in (root / f"{s}.csv").read_text().splitlines() if line.strip()]
    name = root.name
    factors_file = root / "factors.json"
    if factors_file.is_file():
        name = json.loads(factors_file.read_text()).get("kind", name)
    counts = None
    if (root / TASK_FILE).is_file():
        task = json.loads((root / TASK_FILE).read_text())
        if task.get("task") == "count":
            counts = [int(c) for c in task["count_of_class"]]
            name = "count" if name == "synthetic" else name   # a demo's set directory is named "synthetic"
    return SuiteSet(name, str(root), max(labels) + 1, read_factors(root), counts, (root / MASKS_DIR).is_dir())


@dataclass(frozen=True)
class Entry:
    """One encoder of the suite."""

    method: str                      # a key of METHOD_NAMES (or the run's objective kind)
    seed: int
    pretrained_on: str | None        # the pretraining set's name (None: random init)
    run_dir: str


def run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories named by ``paths``: each path is one (it holds config.yaml) or holds some."""
    out = []
    for path in map(Path, paths):
        if (path / RUN_CONFIG).is_file():
            out.append(path)
        elif path.is_dir():
            found = sorted(p.parent for p in path.glob(f"*/{RUN_CONFIG}"))
            if not found:
                raise FileNotFoundError(f"{path} holds no run directory (no */{RUN_CONFIG})")
            out += found
        else:
            raise FileNotFoundError(f"{path} is neither a run directory nor a directory of run directories")
    return out


def describe_run(run_dir: Path) -> tuple[Entry, dict]:
    """The :class:`Entry` of a run directory and its saved config (a dict)."""
    config = load_yaml(run_dir / RUN_CONFIG)
    method = str(config.get("objective", {}).get("kind", "sigma_mlp"))
    match = re.match(r"(supervised)_seed\d+$", run_dir.name)
    method = match.group(1) if match else method
    seed = int(config.get("train", {}).get("seed", 0))
    return Entry(method, seed, read_set(config["data"]["root"]).name, str(run_dir)), config


def load_entry_encoder(entry: Entry, config: dict) -> torch.nn.Module:
    """The encoder of ``entry``: its run's export or newest valid checkpoint; for ``random``, the initial weights
    the run of that seed started from (the trainer seeds torch with the run's seed before building the model)."""
    from sigma_ray.eval.run import load_any_encoder
    from sigma_ray.model.sigma import build_model
    from sigma_ray.train.config import PretrainConfig

    if entry.method == "random":
        pretrain = from_dict(PretrainConfig, config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(entry.seed)
            return build_model(pretrain.model, pretrain.objective).encoder.eval()
    return load_any_encoder(entry.run_dir)[0]


def set_data(base: DataConfig, suite_set: SuiteSet) -> DataConfig:
    """``base`` (the encoders' clip shape and sampling) pointed at ``suite_set``'s lists."""
    return dataclasses.replace(base, root=suite_set.root, train_list=f"{suite_set.root}/train.csv",
                               val_list=f"{suite_set.root}/val.csv", num_classes=suite_set.num_classes)


def masked_clips(data: DataConfig, limit: int) -> MaskedClips:
    """The first ``limit`` val videos' single val views in time (the centred window of ``data.num_frames`` at
    ``data.sampling_rate``, :func:`~sigma_ray.data.sampling.dense_eval_indices`) with their
    object masks; the frames must be ``input_size`` square (the synthetic sets are written at the clip size)."""
    from sigma_ray.data.annotations import load_split
    from sigma_ray.data.decode import read_frames
    from sigma_ray.data.sampling import dense_eval_indices
    from sigma_ray.data.synthetic import mask_path, read_masks

    frames, masks = [], []
    for record in load_split(data, "val")[:limit]:
        mask = read_masks(mask_path(data.root, Path(record.path).relative_to(data.root)))
        idx = dense_eval_indices(mask.shape[0], data.num_frames, data.sampling_rate, 1, 0).tolist()
        clip = read_frames(record.path, idx)
        if clip.shape[1:3] != (data.input_size, data.input_size):
            raise ValueError(f"{record.path}: frames {clip.shape[2]}x{clip.shape[1]}, the encoder takes "
                             f"{data.input_size}x{data.input_size}: segmentation needs the set at the clip size")
        frames.append(clip)
        masks.append(mask[idx])
    return MaskedClips(torch.from_numpy(np.stack(frames)), np.stack(masks))


def first_per_class(features: Features, n: int) -> Features:
    """The first ``n`` videos of each class (by video id): the same subset for every encoder."""
    taken: dict[int, int] = {}
    keep = []
    for i, label in enumerate(features.labels.tolist()):
        if taken.get(label, 0) < n:
            taken[label] = taken.get(label, 0) + 1
            keep.append(i)
    idx = torch.tensor(keep)
    return Features(features.feats[idx], features.labels[idx], features.video_ids[idx])


def set_scores(encoder: torch.nn.Module, suite_set: SuiteSet, batches: dict[str, list], masked: MaskedClips | None,
               linear_epochs: int, attentive_epochs: int, seed: int, tubelet: int, patch: int) -> dict[str, float]:
    """Every task of the suite for one encoder on one set (accuracies in percent, MAE in repetitions)."""
    train, val = extract_tokens(encoder, batches["train"]), extract_tokens(encoder, batches["val"])
    a, b = train.mean_pooled(), val.mean_pooled()
    c = suite_set.num_classes
    out = {"knn20_top1": knn_eval(a, b, c, (20,))["knn20_top1"],
           "linear_top1": linear_probe(a, b, c, epochs=linear_epochs, seed=seed)["linear_top1"],
           "attentive_top1": attentive_probe(train, val, c, epochs=attentive_epochs, seed=seed)["attentive_top1"]}
    for n in SHOTS:
        out[f"linear_{n}shot_top1"] = linear_probe(first_per_class(a, n), b, c, epochs=linear_epochs,
                                                   seed=seed)["linear_top1"]
    for name, of_class in suite_set.factors.items():
        out[f"{name}_linear_top1"] = linear_probe(factor_features(a, of_class), factor_features(b, of_class),
                                                  max(of_class) + 1, epochs=linear_epochs, seed=seed)["linear_top1"]
    rev_train = extract_tokens(encoder, reversed_batches(batches["train"])).mean_pooled()
    rev_val = extract_tokens(encoder, reversed_batches(batches["val"])).mean_pooled()
    out["arrow_top1"] = arrow_of_time(a, rev_train, b, rev_val, linear_epochs, seed)
    if suite_set.counts is not None:
        out.update(count_regression(a, b, suite_set.counts, seed))
    if masked is not None:
        out.update(vos_scores(encoder, masked, tubelet, patch, seed=seed))
    return out


def run_suite(paths: Sequence[str | Path], sets: Sequence[str | Path] = (), out_dir: str | Path = "runs/suite",
              random: bool = True, own_sets: bool = True, vos_videos: int = 100, linear_epochs: int = 100, attentive_epochs: int = 30,
              seed: int = 0) -> dict[str, Any]:
    """Evaluate the run directories in ``paths`` (see :func:`run_dirs`) on their own pretraining sets (unless
    ``own_sets`` is False) and on ``sets``; write ``suite.json`` and ``suite.md`` into ``out_dir`` and return the summary dict."""
    t_start = time.perf_counter()
    described = [describe_run(d) for d in run_dirs(paths)]
    entries = list(described)
    if random:
        seen = set()
        for e, cfg in described:
            if e.method in ("sigma_mlp", "videomae", "sigma_dino") and e.seed not in seen:
                seen.add(e.seed)
                entries.append((Entry("random", e.seed, None, e.run_dir), cfg))
    own = [cfg["data"]["root"] for _, cfg in described] if own_sets else []
    roots = list(dict.fromkeys(own + [str(s) for s in sets]))
    if not roots:
        raise FileNotFoundError("no data set to evaluate on: give --sets, or keep the runs' own sets")
    suite_sets = list({s.root: s for s in map(read_set, roots)}.values())
    base = from_dict(DataConfig, described[0][1]["data"], prefix="data")
    model_cfg = described[0][1]["model"]
    tubelet, patch = int(model_cfg.get("tubelet", 2)), int(model_cfg.get("patch", 16))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"suite: {len(entries)} encoders x {len(suite_sets)} sets ({', '.join(s.name for s in suite_sets)})")
    rows, skipped = [], []
    for suite_set in suite_sets:
        data = set_data(base, suite_set)
        batches = {split: list(eval_batches(data, split)) for split in ("train", "val")}
        masked = None
        if suite_set.has_masks:
            masked = masked_clips(data, vos_videos)
            rows.append({"method": "pixels", "seed": 0, "pretrained_on": None, "set": suite_set.name,
                         "metrics": vos_scores(None, masked, tubelet, patch, seed=seed)})
        else:
            skipped.append(f"{suite_set.name}: segmentation skipped (no masks/ in {suite_set.root})")
        if suite_set.counts is None:
            skipped.append(f"{suite_set.name}: counting skipped (not a counting set)")
        for entry, cfg in entries:
            t0 = time.perf_counter()
            encoder = load_entry_encoder(entry, cfg)
            metrics = set_scores(encoder, suite_set, batches, masked, linear_epochs, attentive_epochs, seed,
                                 tubelet, patch)
            rows.append({"method": entry.method, "seed": entry.seed, "pretrained_on": entry.pretrained_on,
                         "set": suite_set.name, "run_dir": entry.run_dir, "metrics": metrics})
            log(f"{suite_set.name}: {METHOD_NAMES.get(entry.method, entry.method)} seed {entry.seed} "
                f"(pretrained on {entry.pretrained_on or '-'}): linear {metrics['linear_top1']:.1f}, arrow "
                f"{metrics['arrow_top1']:.1f} ({time.perf_counter() - t0:.0f} s)")
    for line in skipped:
        log(line)
    summary = summarize_rows(rows)
    result = {"rows": rows, "summary": summary, "skipped": skipped, "sets": [dataclasses.asdict(s) for s in suite_sets],
              "seconds": time.perf_counter() - t_start}
    (out_dir / "suite.json").write_text(json.dumps(result, indent=2))
    (out_dir / "suite.md").write_text(format_suite(summary, suite_sets, skipped))
    log(f"wrote {out_dir / 'suite.json'} and suite.md ({result['seconds'] / 60:.1f} min)")
    return result


def group_key(row: dict) -> str:
    return f"{row['method']}|{row['pretrained_on'] or '-'}|{row['set']}"


def summarize_rows(rows: list[dict]) -> dict[str, dict[str, list[float]]]:
    """``{method|pretrained_on|set: {metric: [mean, sample std, n]}}`` over the rows (seeds) of each group."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(group_key(row), []).append(row["metrics"])
    out = {}
    for key, metrics in groups.items():
        out[key] = {}
        for m in metrics[0]:
            v = np.array([x[m] for x in metrics], dtype=np.float64)
            out[key][m] = [float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)]
    return out


COLUMNS = {"linear_top1": "linear", "knn20_top1": "kNN k=20", "attentive_top1": "attentive",
           "linear_4shot_top1": "linear, 4/class", "linear_16shot_top1": "linear, 16/class",
           "arrow_top1": "arrow of time", "count_mae": "count MAE", "count_mae_median": "count MAE (median)",
           "vos_hungarian_patch": "VOS J (Hungarian, patch)", "vos_hungarian_pixel": "VOS J (Hungarian, pixel)",
           "vos_greedy_patch": "VOS J (K=10, patch)", "vos_greedy_pixel": "VOS J (K=10, pixel)"}


def format_suite(summary: dict[str, dict[str, list[float]]], suite_sets: list[SuiteSet], skipped: list[str]) -> str:
    """Markdown: one table per set (rows: method and pretraining set; cells: mean +- std (seeds))."""
    lines = ["# sigma-ray evaluation suite", ""]
    for s in suite_sets:
        keys = [k for k in summary if k.endswith(f"|{s.name}")]
        metrics = [m for m in (*COLUMNS, *(f"{f}_linear_top1" for f in s.factors))
                   if any(m in summary[k] for k in keys)]
        names = [COLUMNS.get(m, m.replace("_linear_top1", " (linear)")) for m in metrics]
        lines += [f"## `{s.name}` ({s.num_classes} classes)", "",
                  "| method | pretrained on | " + " | ".join(names) + " |", "| --- " * (len(names) + 2) + "|"]
        for k in keys:
            method, pre, _ = k.split("|")
            cells = []
            for m in metrics:
                if m not in summary[k]:
                    cells.append("")
                    continue
                mean, std, n = summary[k][m]
                digits = 2 if m.startswith("count") else 1
                cells.append(f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} +- {std:.{digits}f} ({n})")
            note = "" if pre in ("-", s.name) else " (domain shift)"
            lines.append(f"| {METHOD_NAMES.get(method, method)} | {pre}{note} | " + " | ".join(cells) + " |")
        lines.append("")
    if skipped:
        lines += ["Skipped:", ""] + [f"- {line}" for line in skipped] + [""]
    return "\n".join(lines)
