"""``sigma-ray eval --suite RUN_OR_DEMO_DIR...``: every encoder given, on every data set given, on the tasks the
paper's claims rest on, in one table.

Tasks, each run where the set allows it (a task that cannot run on a set is listed as skipped, never a 0):

- **standard**: kNN k=20 and the linear probe on mean-pooled tokens, the attentive probe (V-JEPA's frozen
  protocol, :func:`~sigma_ray.eval.readouts.attentive_probe`);
- **sample efficiency**: the linear probe trained on the first 4 and 16 train videos of each class (and on all);
  on the sets named in ``finetune_sets``, fine-tuning on the same subsets and the curves
  (:mod:`sigma_ray.eval.efficiency`);
- **factors / granularity**: a linear probe per factor of the class (``factors.json``: the ``motion`` family's
  speed and direction, the ``fine`` family's 4-way sector beside its 8-way direction);
- **temporal**: the arrow of time (:mod:`sigma_ray.eval.temporal`; the ``arrow`` family's processes are
  irreversible, the other families' motion is not);
- **task shift**: repetition counting by ridge regression, MAE (a ``task.json`` of task ``count``, or count
  lists), and multi-label presence by mAP (multi-label lists, :mod:`sigma_ray.eval.multilabel`);
- **segmentation**: K-means over each clip's tokens, Hungarian and greedy matching, mIoU (sets with ``masks/``,
  DAVIS-2017 and YouTube-VOS folders; :mod:`sigma_ray.eval.vos`), with the raw pixels of each tube as a
  reference row;
- **domain shift**: every encoder on every set: a cell whose set is not the one the encoder was pretrained on.

Encoders are run directories (their ``config.yaml`` names the method, the seed and the pretraining set),
directories holding run directories (the demo's output) or encoder export files; ``random=True`` adds the random
initial weights of each run's seed. Sets are read by :func:`read_set` (the layouts of :class:`SuiteSet`).
Writes ``suite.json`` (every encoder's numbers), ``suite.md`` (mean +- std over the seeds of each method and
pretraining set) and the sample-efficiency curves.
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

from sigma_ray.data.config import DataConfig
from sigma_ray.eval.config import FinetuneConfig
from sigma_ray.eval.features import Features, eval_batches
from sigma_ray.eval.knn import knn_eval
from sigma_ray.eval.linear import linear_probe
from sigma_ray.eval.metrics import log
from sigma_ray.eval.multilabel import multilabel_probe
from sigma_ray.eval.readouts import attentive_probe, extract_tokens, factor_features, read_factors
from sigma_ray.eval.temporal import arrow_of_time, count_regression, reversed_batches
from sigma_ray.eval.vos import MaskedClips, vos_scores
from sigma_ray.infra.checks import ConfigError
from sigma_ray.infra.config import from_dict, load_yaml
from sigma_ray.runs.files import CONFIG_FILE

SHOTS = (4, 16)
METHOD_NAMES = {"sigma_mlp": "SIGMA-MLP", "sigma_dino": "SIGMA-DINO", "videomae": "VideoMAE", "random": "random init",
                "supervised": "supervised (labels)", "pixels": "raw pixels"}
SELF_SUPERVISED = ("sigma_mlp", "sigma_dino", "videomae")   # the methods whose runs start from random weights


LAYOUTS = ("lists", "multilabel", "counts", "davis", "youtube_vos")


@dataclass(frozen=True)
class SuiteSet:
    """A data set of the suite and what can run on it.

    Layouts: ``lists`` (VideoMAE ``train.csv`` / ``val.csv``: every classification task, plus counting with a
    ``task.json`` of task ``count``, multi-label presence with ``*_multilabel.csv`` beside, segmentation with
    ``masks/``), ``multilabel`` (only Charades-style ``train_multilabel.csv`` / ``val_multilabel.csv``), ``counts``
    (only UCFRep-style ``train_counts.csv`` / ``val_counts.csv``), ``davis`` and ``youtube_vos`` (frame folders with
    object masks: segmentation only). Video paths in the lists are relative to ``root``."""

    name: str                        # the synthetic family (factors.json's kind) or the directory's name
    root: str
    layout: str                      # one of LAYOUTS
    num_classes: int                 # single-label classes (0 for the layouts without them)
    factors: dict[str, list[int]]    # {factor: value of each class}
    counts: list[int] | None         # repetitions of each class (a counting set), else None
    has_masks: bool                  # per-frame object masks (masks/, or the VOS layouts' annotations)
    num_labels: int = 0              # multi-label classes (0: no multi-label lists)
    video_root: str = ""             # what the lists' video paths are relative to ("": root)

    @property
    def videos(self) -> str:
        return self.video_root or self.root


def _list_labels(path: Path) -> list[str]:
    return [line.split()[-1] for line in path.read_text().splitlines() if line.strip()]


def _num_multilabels(root: Path) -> int:
    from sigma_ray.data.annotations import MULTILABEL_SUFFIX
    from sigma_ray.eval.splits import load_multilabel_list

    files = [root / f"{s}{MULTILABEL_SUFFIX}.csv" for s in ("train", "val")]
    if not all(f.is_file() for f in files):
        return 0
    labels = [i for f in files for _, ls in load_multilabel_list(f) for i in ls]
    return max(labels) + 1 if labels else 0


SET_SEPARATOR = "@"   # LISTS_DIR@VIDEO_ROOT: lists in one folder, the videos they name relative to another


def read_set(spec: str | Path) -> SuiteSet:
    """What the suite can do on the set ``spec`` names (see :class:`SuiteSet` for the layouts it recognises):
    a folder, or ``LISTS_DIR@VIDEO_ROOT`` when the lists' paths are relative to another folder (the converters
    of :mod:`sigma_ray.eval.splits` write paths relative to the videos' folder). Raises FileNotFoundError naming
    the files it looked for."""
    lists_dir, _, video_root = str(spec).partition(SET_SEPARATOR)
    found = _read_set(Path(lists_dir).resolve())
    if not video_root:
        return found
    if not Path(video_root).is_dir():
        raise FileNotFoundError(f"{spec}: the video folder {video_root} does not exist")
    return dataclasses.replace(found, video_root=str(Path(video_root).resolve()))


def _read_set(root: Path) -> SuiteSet:
    from sigma_ray.data.annotations import COUNTS_SUFFIX, MULTILABEL_SUFFIX
    from sigma_ray.data.synthetic import MASKS_DIR, TASK_FILE

    name = root.name
    if (root / "ImageSets" / "2017").is_dir() and (root / "JPEGImages").is_dir():
        return SuiteSet(name, str(root), "davis", 0, {}, None, True)
    if (root / "train" / "meta.json").is_file():
        return SuiteSet(name, str(root), "youtube_vos", 0, {}, None, True)
    has = {suffix: all((root / f"{s}{suffix}.csv").is_file() for s in ("train", "val"))
           for suffix in ("", MULTILABEL_SUFFIX, COUNTS_SUFFIX)}
    num_labels = _num_multilabels(root)
    if not has[""]:
        if has[MULTILABEL_SUFFIX]:
            return SuiteSet(name, str(root), "multilabel", 0, {}, None, False, num_labels)
        if has[COUNTS_SUFFIX]:
            counts = [int(c) for s in ("train", "val") for c in _list_labels(root / f"{s}{COUNTS_SUFFIX}.csv")]
            return SuiteSet(name, str(root), "counts", 0, {}, list(range(max(counts) + 1)), False)
        raise FileNotFoundError(f"{root} has no train.csv / val.csv (VideoMAE lists), no train{MULTILABEL_SUFFIX}.csv"
                                f" / val{MULTILABEL_SUFFIX}.csv, no train{COUNTS_SUFFIX}.csv / val{COUNTS_SUFFIX}.csv "
                                "and is no DAVIS-2017 or YouTube-VOS folder")
    labels = [int(v) for s in ("train", "val") for v in _list_labels(root / f"{s}.csv")]
    factors_file = root / "factors.json"
    if factors_file.is_file():
        name = json.loads(factors_file.read_text()).get("kind", name)
    counts = None
    if (root / TASK_FILE).is_file():
        task = json.loads((root / TASK_FILE).read_text())
        if task.get("task") == "count":
            counts = [int(c) for c in task["count_of_class"]]
            name = "count" if name == "synthetic" else name   # a demo's set directory is named "synthetic"
    return SuiteSet(name, str(root), "lists", max(labels) + 1, read_factors(root), counts,
                    (root / MASKS_DIR).is_dir(), num_labels)


@dataclass(frozen=True)
class Entry:
    """One encoder of the suite."""

    method: str                      # a key of METHOD_NAMES (or the run's objective kind)
    seed: int
    pretrained_on: str | None        # the pretraining set's name (None: random init)
    run_dir: str


def run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Encoders named by ``paths``: each path is a run directory (it holds config.yaml), a directory holding run
    directories, or an encoder export file (``encoder.pt``)."""
    out = []
    for path in map(Path, paths):
        if (path / CONFIG_FILE).is_file() or path.is_file():
            out.append(path)
        elif path.is_dir():
            found = sorted(p.parent for p in path.glob(f"*/{CONFIG_FILE}"))
            if not found:
                raise FileNotFoundError(f"{path} holds no run directory (no */{CONFIG_FILE})")
            out += found
        else:
            raise FileNotFoundError(f"{path} is neither a run directory, a directory of run directories nor an "
                                    "encoder file")
    return out


def describe_run(path: Path) -> tuple[Entry, dict]:
    """The :class:`Entry` of a run directory and its saved config (a dict). For an encoder export file, what its
    metadata says (the objective and seed a pretraining export records; else the file's name as the method and
    seed 0; the pretraining set unknown) and a config of its model and the clips it takes (``data``: the
    encoder's frames, size, tubelet and patch; the sampling rate is the data config's default unless the suite
    is given one)."""
    if path.is_file():
        from sigma_ray.runs.export import load_encoder

        encoder = load_encoder(path)
        meta = encoder.export_meta
        method = "supervised" if meta.get("supervised_bound") else str(meta.get("objective") or path.stem)
        c = encoder.config
        data = {"num_frames": c.num_frames, "input_size": c.img_size, "tubelet": c.tubelet, "patch": c.patch,
                "decode_short_side": c.img_size}
        return (Entry(method, int(meta.get("seed", 0)), None, str(path)),
                {"model": dataclasses.asdict(c), "data": data})
    config = load_yaml(path / CONFIG_FILE)
    method = str(config.get("objective", {}).get("kind", "sigma_mlp"))
    match = re.match(r"(supervised)_seed\d+$", path.name)
    method = match.group(1) if match else method
    seed = int(config.get("train", {}).get("seed", 0))
    return Entry(method, seed, read_set(config["data"]["root"]).name, str(path)), config


def load_entry_encoder(entry: Entry, config: dict) -> torch.nn.Module:
    """The encoder of ``entry``: its run's export or newest valid checkpoint; for ``random``, the initial weights
    the run of that seed started from (the trainer seeds torch with the run's seed before building the model)."""
    from sigma_ray.method.sigma import ObjectiveConfig, build_model
    from sigma_ray.method.vit import ModelConfig
    from sigma_ray.runs.encoders import load_any_encoder

    if entry.method == "random":
        model = from_dict(ModelConfig, config.get("model"), prefix="model")
        objective = from_dict(ObjectiveConfig, config.get("objective"), prefix="objective")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(entry.seed)
            return build_model(model, objective).encoder.eval()
    return load_any_encoder(entry.run_dir)[0]


def derived_lists(suite_set: SuiteSet, out_dir: Path) -> Path:
    """VideoMAE lists for a ``multilabel`` or ``counts`` set, so the data layer can read its videos: the same
    videos in the same order, labelled with the count (``counts``) or 0 (``multilabel``: the labels are read from
    the multi-label lists). Written under ``out_dir/lists/<name>``; returns that folder."""
    from sigma_ray.data.annotations import COUNTS_SUFFIX, MULTILABEL_SUFFIX

    root, folder = Path(suite_set.root), out_dir / "lists" / suite_set.name
    folder.mkdir(parents=True, exist_ok=True)
    suffix = COUNTS_SUFFIX if suite_set.layout == "counts" else MULTILABEL_SUFFIX
    for split in ("train", "val"):
        lines = []
        for line in (root / f"{split}{suffix}.csv").read_text().splitlines():
            if line.strip():
                path, field = line.rsplit(maxsplit=1)
                lines.append(f"{Path(suite_set.videos) / path} {field if suite_set.layout == 'counts' else 0}\n")
        (folder / f"{split}.csv").write_text("".join(lines))
    return folder


def set_data(base: DataConfig, suite_set: SuiteSet, out_dir: Path) -> DataConfig:
    """``base`` (the encoders' clip shape and sampling) pointed at ``suite_set``'s videos."""
    if suite_set.layout in ("multilabel", "counts"):
        folder = derived_lists(suite_set, out_dir)
        classes = len(suite_set.counts) if suite_set.counts else 1
        return dataclasses.replace(base, root=None, train_list=str(folder / "train.csv"),
                                   val_list=str(folder / "val.csv"), num_classes=classes)
    return dataclasses.replace(base, root=suite_set.videos, train_list=f"{suite_set.root}/train.csv",
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


def vos_folder_clips(suite_set: SuiteSet, data: DataConfig, limit: int) -> MaskedClips:
    """The first ``limit`` sequences of a DAVIS-2017 ``val`` or YouTube-VOS ``train`` folder as clips: the
    annotated frames only (YouTube-VOS annotates every 5th frame), the centred window of ``data.num_frames`` at
    ``data.sampling_rate`` over them, resized and centre-cropped to ``data.input_size``
    (:func:`~sigma_ray.data.vos_sets.load_sequence`)."""
    from sigma_ray.data.sampling import dense_eval_indices
    from sigma_ray.data.vos_sets import MaskedSequence, davis_sequences, load_sequence, youtube_vos_sequences

    sequences = (davis_sequences(suite_set.root, "val") if suite_set.layout == "davis"
                 else youtube_vos_sequences(suite_set.root, "train"))
    frames, masks = [], []
    for seq in sequences[:limit]:
        kept = [i for i, m in enumerate(seq.masks) if m is not None]
        if not kept:
            continue
        annotated = MaskedSequence(seq.name, tuple(seq.frames[i] for i in kept), tuple(seq.masks[i] for i in kept))
        idx = dense_eval_indices(len(kept), data.num_frames, data.sampling_rate, 1, 0).tolist()
        clip, mask = load_sequence(annotated, idx, data.input_size)
        frames.append(clip)
        masks.append(mask)
    if not frames:
        raise ValueError(f"{suite_set.root}: no annotated sequence to segment")
    return MaskedClips(torch.from_numpy(np.stack(frames)), np.stack(masks))


@dataclass
class SetInputs:
    """What every encoder is scored on for one set, read once."""

    suite_set: SuiteSet
    data: DataConfig | None                      # None for the segmentation-only layouts
    batches: dict[str, list] | None              # {"train", "val"}: one centred view per video
    masked: MaskedClips | None                   # clips with object masks (segmentation)
    targets: dict[str, torch.Tensor] | None      # multi-label targets per split, N x num_labels (list order)


def set_inputs(base: DataConfig, suite_set: SuiteSet, out_dir: Path, vos_videos: int) -> SetInputs:
    """Read ``suite_set``'s clips, masks and multi-label targets once for all encoders."""
    if suite_set.layout in ("davis", "youtube_vos"):
        return SetInputs(suite_set, None, None, vos_folder_clips(suite_set, base, vos_videos), None)
    from sigma_ray.data.annotations import MULTILABEL_SUFFIX, load_split
    from sigma_ray.eval.multilabel import align_targets
    from sigma_ray.eval.splits import load_multilabel_list

    data = set_data(base, suite_set, out_dir)
    batches = {split: list(eval_batches(data, split)) for split in ("train", "val")}
    masked = masked_clips(data, vos_videos) if suite_set.has_masks else None
    targets = None
    if suite_set.num_labels:
        targets = {}
        for split in ("train", "val"):
            items = load_multilabel_list(Path(suite_set.root, f"{split}{MULTILABEL_SUFFIX}.csv"), suite_set.videos,
                                         suite_set.num_labels)
            paths = [r.path for r in load_split(data, split)]
            targets[split] = align_targets(paths, items, suite_set.num_labels)
    return SetInputs(suite_set, data, batches, masked, targets)


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


def set_scores(encoder: torch.nn.Module, inputs: SetInputs, linear_epochs: int, attentive_epochs: int, seed: int,
               tubelet: int, patch: int) -> dict[str, float]:
    """Every task of the suite that ``inputs``' set allows, for one encoder (accuracies and mAP in percent, MAE
    in repetitions)."""
    s, out = inputs.suite_set, {}
    if inputs.batches is not None:
        batches = inputs.batches
        train, val = extract_tokens(encoder, batches["train"]), extract_tokens(encoder, batches["val"])
        a, b = train.mean_pooled(), val.mean_pooled()
        if s.layout == "lists":
            c = s.num_classes
            out.update({"knn20_top1": knn_eval(a, b, c, (20,))["knn20_top1"],
                        "linear_top1": linear_probe(a, b, c, epochs=linear_epochs, seed=seed)["linear_top1"],
                        "attentive_top1": attentive_probe(train, val, c, epochs=attentive_epochs,
                                                          seed=seed)["attentive_top1"]})
            for n in SHOTS:
                out[f"linear_{n}shot_top1"] = linear_probe(first_per_class(a, n), b, c, epochs=linear_epochs,
                                                           seed=seed)["linear_top1"]
            for name, of_class in s.factors.items():
                out[f"{name}_linear_top1"] = linear_probe(
                    factor_features(a, of_class), factor_features(b, of_class), max(of_class) + 1,
                    epochs=linear_epochs, seed=seed)["linear_top1"]
        rev_train = extract_tokens(encoder, reversed_batches(batches["train"])).mean_pooled()
        rev_val = extract_tokens(encoder, reversed_batches(batches["val"])).mean_pooled()
        out["arrow_top1"] = arrow_of_time(a, rev_train, b, rev_val, linear_epochs, seed)
        if s.counts is not None:
            out.update(count_regression(a, b, s.counts, seed))
        if inputs.targets is not None:
            out.update(multilabel_probe(a.feats, inputs.targets["train"][a.video_ids], b.feats,
                                        inputs.targets["val"][b.video_ids], epochs=linear_epochs, seed=seed))
    if inputs.masked is not None:
        out.update(vos_scores(encoder, inputs.masked, tubelet, patch, seed=seed))
    return out


def finetunes(entry: Entry) -> bool:
    """Whether the suite fine-tunes ``entry`` on a ``--finetune`` set: the self-supervised encoders and the random
    initial weights (training from scratch, the floor); not the supervised bound, which was trained with labels
    already (on its own family: fine-tuning it again there says nothing, and costs as much as any other)."""
    return entry.method == "random" or entry.method in SELF_SUPERVISED


def finetune_metrics(encoder: torch.nn.Module, inputs: SetInputs, work_dir: Path, config: FinetuneConfig | None,
                     seed: int) -> dict[str, float]:
    """Fine-tuning with 4, 16 and all labelled train videos per class (:func:`~sigma_ray.eval.efficiency.
    finetune_shots`, ``config`` None: its laptop recipe): ``finetune_4shot_top1`` ... in percent, and the steps.
    A level of at least the smallest class's size would repeat "all" and is left out."""
    from collections import Counter

    from sigma_ray.eval.efficiency import LAPTOP_FINETUNE, finetune_shots, level_key

    smallest = min(Counter(_list_labels(Path(inputs.data.train_list))).values())
    result = finetune_shots(encoder, inputs.data, inputs.suite_set.num_classes,
                            shots=(*(n for n in SHOTS if n < smallest), None), config=config or LAPTOP_FINETUNE,
                            seed=seed, work_dir=work_dir)
    return {k: v for k, v in result.items() if k == "finetune_videos_per_class"
            or any(k in (f"{level_key(n)}_top1", f"{level_key(n)}_steps") for n in (*SHOTS, None))}


def plot_set_curves(summary: dict[str, dict[str, list[float]]], suite_sets: list[SuiteSet], name: str,
                    out_dir: Path) -> str:
    """The sample-efficiency curves of set ``name`` (fine-tune and linear probe against labelled videos per class,
    one colour per method and pretraining set) as ``out_dir/curves_<name>.png``; returns the file's name."""
    from sigma_ray.eval.efficiency import curves_from_metrics, plot_curves

    curves, per_class = {}, None
    for key, metrics in summary.items():
        method, pre, set_name = key.split("|")
        if set_name != name or "finetune_top1" not in metrics:
            continue
        label = METHOD_NAMES.get(method, method) + ("" if pre in ("-", name) else f" ({pre})")
        curves[label] = curves_from_metrics(metrics)
        per_class = metrics["finetune_videos_per_class"][0]
    file = f"curves_{name}.png"
    plot_curves(curves, out_dir / file, per_class, title=f"sample efficiency on {name} (mean +- std over seeds)")
    return file


def skipped_tasks(s: SuiteSet) -> list[str]:
    """Why each task that cannot run on ``s`` is left out (the suite lists them under its tables)."""
    lines = []
    if s.layout != "lists":
        lines.append(f"{s.name}: classification (kNN, linear, attentive, shots, factors) skipped ({s.layout} "
                     "layout: no single-label lists)")
    if s.layout in ("davis", "youtube_vos"):
        lines.append(f"{s.name}: arrow of time, counting and multi-label skipped (segmentation folder)")
        return lines
    if not s.has_masks:
        lines.append(f"{s.name}: segmentation skipped (no masks/ in {s.root})")
    if s.counts is None:
        lines.append(f"{s.name}: counting skipped (not a counting set)")
    if not s.num_labels:
        lines.append(f"{s.name}: multi-label skipped (no train_multilabel.csv / val_multilabel.csv)")
    return lines


def run_suite(paths: Sequence[str | Path], sets: Sequence[str | Path] = (), out_dir: str | Path = "runs/suite",
              random: bool = True, own_sets: bool = True, vos_videos: int = 100, linear_epochs: int = 100,
              attentive_epochs: int = 30, seed: int = 0, finetune_sets: Sequence[str] = (),
              finetune_config: FinetuneConfig | None = None, sampling_rate: int | None = None) -> dict[str, Any]:
    """Evaluate the run directories in ``paths`` (see :func:`run_dirs`) on their own pretraining sets (unless
    ``own_sets`` is False) and on ``sets``; fine-tune every encoder with 4, 16 and all labelled videos per class
    on the sets named in ``finetune_sets`` (:func:`~sigma_ray.eval.efficiency.finetune_shots`, ``finetune_config``
    or its laptop recipe; the encoders :func:`finetunes` says) and plot the sample-efficiency curves there.
    Every encoder sees the clips of the first one's config (``sampling_rate`` replaces its frame stride).
    Writes ``suite.json``, ``suite.md`` and the curves' PNGs into ``out_dir``; returns the summary dict."""
    t_start = time.perf_counter()
    described = [describe_run(d) for d in run_dirs(paths)]
    entries = list(described)
    if random:
        seen = set()
        for e, cfg in described:   # a bare encoder file does not say what it started from
            if e.method in SELF_SUPERVISED and e.seed not in seen and Path(e.run_dir).is_dir():
                seen.add(e.seed)
                entries.append((Entry("random", e.seed, None, e.run_dir), cfg))
    own = [cfg["data"]["root"] for _, cfg in described if "root" in cfg["data"]] if own_sets else []
    roots = list(dict.fromkeys(own + [str(s) for s in sets]))
    if not roots:
        raise FileNotFoundError("no data set to evaluate on: give --sets, or keep the runs' own sets")
    suite_sets = list({s.root: s for s in map(read_set, roots)}.values())
    unknown = set(finetune_sets) - {s.name for s in suite_sets if s.layout == "lists"}
    if unknown:
        raise ConfigError(f"finetune_sets = {sorted(unknown)}: not among the suite's sets with class lists "
                          f"({', '.join(s.name for s in suite_sets if s.layout == 'lists')})")
    base = from_dict(DataConfig, described[0][1]["data"], prefix="data")
    if sampling_rate is not None:
        base = dataclasses.replace(base, sampling_rate=sampling_rate)
    log(f"suite: clips of {base.num_frames} frames at rate {base.sampling_rate}, {base.input_size}x"
        f"{base.input_size} (those of {described[0][0].run_dir})")
    model_cfg = described[0][1]["model"]
    tubelet, patch = int(model_cfg.get("tubelet", 2)), int(model_cfg.get("patch", 16))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"suite: {len(entries)} encoders x {len(suite_sets)} sets ({', '.join(s.name for s in suite_sets)})"
        + (f"; fine-tuning on {', '.join(finetune_sets)}" if finetune_sets else ""))
    rows, skipped = [], []
    for suite_set in suite_sets:
        inputs = set_inputs(base, suite_set, out_dir, vos_videos)
        skipped += skipped_tasks(suite_set)
        if inputs.masked is not None:
            rows.append({"method": "pixels", "seed": 0, "pretrained_on": None, "set": suite_set.name,
                         "metrics": vos_scores(None, inputs.masked, tubelet, patch, seed=seed)})
        for entry, cfg in entries:
            t0 = time.perf_counter()
            encoder = load_entry_encoder(entry, cfg)
            metrics = set_scores(encoder, inputs, linear_epochs, attentive_epochs, seed, tubelet, patch)
            if suite_set.name in finetune_sets and finetunes(entry):
                metrics.update(finetune_metrics(encoder, inputs, out_dir / "finetune" / suite_set.name,
                                                finetune_config, entry.seed))
            rows.append({"method": entry.method, "seed": entry.seed, "pretrained_on": entry.pretrained_on,
                         "set": suite_set.name, "run_dir": entry.run_dir, "metrics": metrics})
            shown = ", ".join(f"{COLUMNS[k]} {metrics[k]:.1f}" for k in PROGRESS_KEYS if k in metrics)
            log(f"{suite_set.name}: {METHOD_NAMES.get(entry.method, entry.method)} seed {entry.seed} "
                f"(pretrained on {entry.pretrained_on or '-'}): {shown} ({time.perf_counter() - t0:.0f} s)")
    for line in skipped:
        log(line)
    summary = summarize_rows(rows)
    curves = {name: plot_set_curves(summary, suite_sets, name, out_dir) for name in finetune_sets}
    result = {"rows": rows, "summary": summary, "skipped": skipped, "sets": [dataclasses.asdict(s) for s in suite_sets],
              "curves": curves, "seconds": time.perf_counter() - t_start}
    (out_dir / "suite.json").write_text(json.dumps(result, indent=2))
    (out_dir / "suite.md").write_text(format_suite(summary, suite_sets, skipped, curves))
    log(f"wrote {out_dir / 'suite.json'} and suite.md ({result['seconds'] / 60:.1f} min)")
    return result


PROGRESS_KEYS = ("linear_top1", "arrow_top1", "multilabel_map", "count_mae", "vos_hungarian_patch",
                 "finetune_top1")


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
           "finetune_4shot_top1": "fine-tune, 4/class", "finetune_16shot_top1": "fine-tune, 16/class",
           "finetune_top1": "fine-tune", "arrow_top1": "arrow of time", "multilabel_map": "multi-label mAP",
           "multilabel_map_prior": "multi-label mAP (prior)", "count_mae": "count MAE",
           "count_mae_median": "count MAE (median)",
           "vos_hungarian_patch": "VOS J (Hungarian, patch)", "vos_hungarian_pixel": "VOS J (Hungarian, pixel)",
           "vos_greedy_patch": "VOS J (K=10, patch)", "vos_greedy_pixel": "VOS J (K=10, pixel)"}


def format_suite(summary: dict[str, dict[str, list[float]]], suite_sets: list[SuiteSet], skipped: list[str],
                 curves: dict[str, str] | None = None) -> str:
    """Markdown: one table per set (rows: method and pretraining set; cells: mean +- std (seeds)), with the
    sample-efficiency curves' PNG (``curves``: set name -> file name in the same folder) under its set's table."""
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
        if curves and s.name in curves:
            lines += [f"![sample efficiency on {s.name}]({curves[s.name]})", ""]
    if skipped:
        lines += ["Skipped:", ""] + [f"- {line}" for line in skipped] + [""]
    return "\n".join(lines)
