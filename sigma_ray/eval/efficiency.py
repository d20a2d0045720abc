"""Sample efficiency (SEVERE's axis): fine-tune a pretrained encoder on 4, 16 and all labelled train videos per
class and plot accuracy against labelled videos per class, beside the linear probe's curve.

The subsets are the first ``n`` videos of each class in the train list's line order: the videos the suite's
few-shot linear probe uses (:func:`sigma_ray.eval.suite.first_per_class` takes the first ``n`` per class by video
id, and a record's video id is its position in the list). Every shot level gets the same number of optimizer
steps (:func:`level_config`), so the curve measures labelled data, not compute.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

import torch

from sigma_ray.data.annotations import PREPARED_FILE, AnnotationError, VideoRecord, load_list
from sigma_ray.data.config import DataConfig
from sigma_ray.eval.config import FinetuneConfig
from sigma_ray.eval.finetune import finetune
from sigma_ray.eval.metrics import log

SHOT_LEVELS: tuple[int | None, ...] = (4, 16, None)   # labelled train videos per class; None: all of them

# The laptop suite's recipe (the micro ViT on 8 frames at 32x32, batch 8): VideoMAE's layer decay 0.75, drop path
# 0.1 and label smoothing 0.1, at a step budget a CPU affords: every shot level gets epochs x steps_per_epoch =
# 300 steps (level_config), a tenth of them warm-up, about 35 s per level for the micro ViT on one core. The lr
# is far above VideoMAE's 1e-3 (x batch / 256), which at batch 8 barely moves a model in 300 steps: of base lr
# 0.003 ... 0.096 (doubling), 0.048 gave the best all-data top-1 for both a SIGMA-MLP and a VideoMAE demo encoder
# (95 and 71 % against 55 and 51 % at 0.006) and mid-range 4-shot top-1, on a patterns copy of 8 x 30 train
# videos made with data seed 1 (not the demo's evaluation seed 2), one seed each. Mixup, cutmix, RandAugment and
# random erasing are off: with all four on (VideoMAE's values) the same SIGMA encoder fell from 52 to 35 % at 4
# shots and from 55 to 29 % at all data (base lr 0.006; which of the four costs most was not measured). Likely
# causes: in 300 steps soft targets and distortions slow fitting more than they regularize, and on the synthetic
# sets RandAugment's rotations and shears tilt the pan direction that is half of a class. The demo's supervised
# bound trains without them too.
LAPTOP_FINETUNE = FinetuneConfig(epochs=10, steps_per_epoch=30, warmup_epochs=1.0, base_lr=0.048, min_lr=4.8e-4,
                                 batch_size=8, layer_decay=0.75, drop_path=0.1, label_smoothing=0.1, mixup=0.0,
                                 cutmix=0.0, rand_augment=False, random_erasing=0.0, test_split="test")


def subset_list(train_list: str | Path, n_per_class: int | None, out_path: str | Path,
                num_classes: int | None = None) -> Path:
    """Write the first ``n_per_class`` videos of each class of the VideoMAE list ``train_list`` (its line order;
    None: every video) to ``out_path`` as a VideoMAE list, in the source's order; returns ``out_path``.

    Paths are copied as written, so the data config's ``root`` resolves them as before. A class with fewer than
    ``n_per_class`` videos is an AnnotationError naming the class and its count (never a smaller subset: the
    level would silently stop being ``n`` shots); with ``num_classes`` a class absent from the list is one too.
    The source's ``prepared.json`` (its prepared copy's frame stride) is copied beside ``out_path``, so the subset
    reads as the same copy. A folder-per-class layout is an AnnotationError: its order is not a list's.
    """
    source, out_path = Path(train_list), Path(out_path)
    if source.is_dir():
        raise AnnotationError(f"{source}: a folder-per-class layout; shot subsets are cut from a VideoMAE list "
                              "file ('path label' lines)")
    if n_per_class is not None and n_per_class < 1:
        raise ValueError(f"n_per_class = {n_per_class} must be >= 1 (or None for every video)")
    # root=None: the paths stay as the list writes them; no file checks, fine-tuning's own load checks them
    records = load_list(source, num_classes=num_classes, check_files=False)
    by_class: dict[int, list[VideoRecord]] = {}
    for record in records:
        by_class.setdefault(record.label, []).append(record)
    classes = range(num_classes) if num_classes is not None else sorted(by_class)
    need = 1 if n_per_class is None else n_per_class
    short = [f"class {c} has {len(by_class.get(c, []))}" for c in classes if len(by_class.get(c, [])) < need]
    if short:
        raise AnnotationError(f"{source}: {', '.join(short)} videos, fewer than the {need} per class asked for")
    keep = sorted(r.video_id for c in classes for r in by_class[c][:n_per_class])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("".join(f"{records[i].path} {records[i].label}\n" for i in keep))
    prepared = source.parent / PREPARED_FILE
    if prepared.is_file() and prepared.resolve() != (out_path.parent / PREPARED_FILE).resolve():
        shutil.copyfile(prepared, out_path.parent / PREPARED_FILE)
    return out_path


def level_key(n_per_class: int | None) -> str:
    """The metric prefix of a shot level: ``finetune_4shot`` for 4, ``finetune`` for all videos (None)."""
    return "finetune" if n_per_class is None else f"finetune_{n_per_class}shot"


def epoch_steps(config: FinetuneConfig, num_samples: int, batch_size: int) -> int:
    """Steps of one fine-tuning epoch over ``num_samples`` train clips, as :func:`finetune` counts them."""
    steps = max(1, num_samples // batch_size)
    return steps if config.steps_per_epoch is None else min(steps, config.steps_per_epoch)


def level_config(config: FinetuneConfig, budget: int, num_samples: int, batch_size: int) -> FinetuneConfig:
    """``config`` as whole epochs of a subset of ``num_samples`` train clips that add up to ``budget`` optimizer
    steps, up to half an epoch of the subset; warm-up keeps its fraction of the run.

    Equal steps rather than equal epochs: at 4 videos per class an epoch is a few steps, so equal epochs would
    leave the 4-shot model barely trained (its head starts near zero) and the curve would measure compute."""
    steps = epoch_steps(config, num_samples, batch_size)
    epochs = max(1, round(budget / steps))
    return dataclasses.replace(config, epochs=epochs, steps_per_epoch=steps,
                               warmup_epochs=config.warmup_epochs * epochs / config.epochs)


def finetune_shots(encoder: torch.nn.Module, data: DataConfig, num_classes: int,
                   shots: Sequence[int | None] = SHOT_LEVELS, config: FinetuneConfig = LAPTOP_FINETUNE,
                   seed: int = 0, work_dir: str | Path | None = None, device: torch.device | str = "cpu",
                   use_ray: bool = False) -> dict[str, float]:
    """Fine-tune a fresh copy of ``encoder`` (the argument is not modified) on the first ``n`` train videos of each
    class for each ``n`` of ``shots`` (None: all), each scored on the unchanged ``config.test_split``.

    Every level gets the optimizer steps :func:`finetune` takes with ``config`` on the whole train list
    (:func:`level_config`). ``seed`` seeds each level's fine-tuning (finetune re-seeds this process's global torch,
    numpy and python RNGs with it) and replaces ``data.seed`` (data order and crops), as the demo's supervised
    bound does; every level starts from the same seed, so a level's result does not depend on the others. The
    subset lists (``train_<n>shot.csv``, ``train_all.csv``) go to ``work_dir`` (None: a temporary directory,
    removed after).

    Returns numbers, per level with prefix :func:`level_key` (``finetune_4shot``, ``finetune_16shot``,
    ``finetune``): ``<prefix>_top1`` (percent, as finetune scores ``config.test_split``: multi-view on the val
    list for ``test``), ``<prefix>_steps``, ``<prefix>_train_loss`` (the last epoch's mean) and
    ``<prefix>_seconds``; then ``finetune_videos_per_class`` (the whole train list's videos / classes: where the
    "all" level sits on a curve) and ``seconds`` (the whole call).
    """
    if len(set(shots)) != len(shots) or any(n is not None and n < 1 for n in shots):
        raise ValueError(f"shots = {list(shots)} must be distinct counts >= 1 (None: all videos)")
    if data.train_list is None:
        raise AnnotationError("train_list is not set in the data config")
    t_start = time.perf_counter()
    data = dataclasses.replace(data, seed=seed)
    batch_size = config.batch_size or data.batch_size
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="sigma-ray-shots-") as tmp:
        folder = Path(tmp) if work_dir is None else Path(work_dir)
        full = subset_list(data.train_list, None, folder / "train_all.csv", num_classes)
        num_videos = len(load_list(full, check_files=False))
        budget = config.epochs * epoch_steps(config, num_videos * data.samples_per_video("train"), batch_size)
        out["finetune_videos_per_class"] = num_videos / num_classes
        for n in shots:
            key, t0 = level_key(n), time.perf_counter()
            path = full if n is None else subset_list(data.train_list, n, folder / f"train_{n}shot.csv", num_classes)
            level_data = dataclasses.replace(data, train_list=str(path))
            samples = len(load_list(path, check_files=False)) * data.samples_per_video("train")
            result = finetune(encoder, level_config(config, budget, samples, batch_size), level_data, num_classes,
                              device=device, use_ray=use_ray, seed=seed, log_every=10**9)
            out[f"{key}_top1"] = float(result["finetune_top1"])
            out[f"{key}_steps"] = result["steps"]
            out[f"{key}_train_loss"] = result["finetune_train_loss"]
            out[f"{key}_seconds"] = time.perf_counter() - t0
            log(f"{key}: top-1 {out[f'{key}_top1']:.1f} after {result['steps']} steps "
                f"({out[f'{key}_seconds']:.0f} s)")
    out["seconds"] = time.perf_counter() - t_start
    return out


CurvePoint = Sequence[float]          # [mean, sample std, count] of one metric over seeds
Curves = Mapping[str, Mapping[str, Mapping[int | str, CurvePoint]]]
PROTOCOL_STYLE = {"finetune": ("-", "fine-tune"), "linear": ("--", "linear probe")}
LEVEL_METRIC = re.compile(r"(linear|finetune)_(?:(\d+)shot_)?top1$")


def curves_from_metrics(metrics: Mapping[str, CurvePoint]) -> dict[str, dict[int | str, CurvePoint]]:
    """One method's curves from its ``{metric: [mean, std, count]}`` summary (the suite's :func:`summarize_rows`
    entry): ``linear_4shot_top1`` -> ``{"linear": {4: ...}}``, ``finetune_top1`` -> ``{"finetune": {"all": ...}}``;
    other metrics are ignored."""
    curves: dict[str, dict[int | str, CurvePoint]] = {}
    for name, point in metrics.items():
        match = LEVEL_METRIC.match(name)
        if match:
            curves.setdefault(match.group(1), {})[int(match.group(2)) if match.group(2) else "all"] = point
    return curves


def plot_curves(summary: Curves, path: str | Path, all_per_class: float | None = None,
                title: str = "sample efficiency") -> Path:
    """Write a PNG of top-1 accuracy (percent) against labelled train videos per class (log x axis); returns it.

    ``summary``: ``{method label: {protocol: {level: [mean, std, count]}}}`` with protocol ``"finetune"`` (solid
    line) or ``"linear"`` (dashed), one colour per method; level an int (videos per class, or its string, as JSON
    keys are) or ``"all"``, plotted at ``all_per_class`` (the set's real videos per class; required when a level
    is ``"all"``). mean and std (the sample std over ``count`` seeds) in percent; the error bar is +- std, none when
    count < 2. A missing protocol or level is left out of its line.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def x_of(level: int | str) -> float:
        if str(level) == "all":
            if all_per_class is None:
                raise ValueError("a level is 'all': pass all_per_class, the set's videos per class")
            return float(all_per_class)
        return float(level)

    fig = Figure(figsize=(6.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(summary))]
    ticks: dict[float, str] = {}
    for color, (method, protocols) in zip(colors, summary.items()):
        for protocol, (style, name) in PROTOCOL_STYLE.items():
            points = sorted(((x_of(level), point) for level, point in protocols.get(protocol, {}).items()),
                            key=lambda xp: xp[0])
            if not points:
                continue
            xs = [x for x, _ in points]
            means = [float(p[0]) for _, p in points]
            stds = [float(p[1]) if int(p[2]) > 1 else 0.0 for _, p in points]
            ax.errorbar(xs, means, yerr=stds, linestyle=style, marker="o", color=color, capsize=3,
                        label=f"{method}, {name}")
            for level, _ in protocols[protocol].items():
                x = x_of(level)
                ticks[x] = f"all ({x:g})" if str(level) == "all" else f"{x:g}"
    if not ticks:
        raise ValueError("summary holds no point to plot")
    ax.set_xscale("log")
    ax.set_xticks(sorted(ticks), [ticks[x] for x in sorted(ticks)])
    ax.minorticks_off()
    ax.set_xlabel("labelled train videos per class")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
