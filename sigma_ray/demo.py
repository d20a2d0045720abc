"""The embedded demo (``make demo`` / ``sigma-ray demo``): does SIGMA learn, on a laptop CPU, in minutes?

1. Writes the data set: by default the synthetic ``patterns`` set (:mod:`sigma_ray.data.synthetic`: 8 classes =
   the wall's pattern (appearance) x the camera's pan direction (motion)); ``data_kind="motion"`` is the family
   whose class is the motion of objects alone, ``data_dir`` any set of one's own (VideoMAE lists).
2. For each seed, pretrains the same video model on the local Ray twice at equal compute (the same steps, batch,
   clips, schedule and initial weights): SIGMA-MLP and the VideoMAE pixel baseline, each with its own settings
   (the YAML experiments ``experiments/configs/demo_sigma_mlp.yaml`` and ``demo_videomae.yaml``, which
   ``experiments/pretrain.py --config`` runs alone too). A kNN probe runs every ``train.probe_every`` steps inside
   the training loop. The steps are ``steps`` whatever the set's size.
3. Trains the same encoder from the same initial weights *with the labels* for the same steps on the same clips
   (the supervised bound: how much this small ViT can learn from this budget at all).
4. Evaluates SIGMA-MLP, VideoMAE, the random initial weights and the supervised encoder on the val split: kNN
   (k = 20, 200) and linear probe on mean-pooled features, the same on per-time-slice features, an attentive
   probe, the factors of the class one by one (when the set has factors), and the effective rank.
5. Prints the tables (mean +- std over seeds, and every seed's row) with the verdict on the ordering SIGMA-MLP >
   VideoMAE > random init, and writes ``report.md`` with the plots: loss curves with the pixel target's trivial
   loss, both sides' prototype usage, the codes per clip, kNN and the effective rank during training, and a strip
   of one clip's codes.
6. With ``suite`` (``sigma-ray demo --suite``): the evaluation suite (:mod:`sigma_ray.eval.suite`) on the same
   encoders and fresh held-back copies of the generated families, with fine-tuning on 4 / 16 / all labelled
   videos per class on the demo's own family; its tables join ``report.md`` (``suite/``).

Everything lands in ``out_dir`` (default ``runs/demo``): ``synthetic/``, one run directory per method and seed,
``supervised_seed<N>/`` (the supervised bound's encoder, for ``sigma-ray eval --suite``), ``results.json``,
``report.md`` and the PNGs. Running it again reuses finished runs (their checkpoints).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sigma_ray.data.config import DataConfig
from sigma_ray.data.synthetic import KINDS, SyntheticConfig, class_factors, ensure_synthetic
from sigma_ray.eval.features import eval_batches
from sigma_ray.eval.knn import KnnProbe
from sigma_ray.infra.checks import ConfigError, check_choice, check_range
from sigma_ray.infra.config import from_dict, load_yaml, merge_overrides, save_yaml, to_dict
from sigma_ray.runs.encoders import load_model
from sigma_ray.runs.files import CONFIG_FILE, ENCODER_FILE, METRICS_FILE
from sigma_ray.train.config import PretrainConfig

METHODS = {"sigma_mlp": "SIGMA-MLP", "videomae": "VideoMAE (pixels)", "random": "random init",
           "supervised": "supervised (labels)"}
PRETRAINED = ("sigma_mlp", "videomae")
# the demo's pretraining runs as YAML experiments (demo.yaml, demo_sigma_mlp.yaml, demo_videomae.yaml)
CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"
# The main table's columns: the standard readouts (mean pooling), the two that keep time, the effective rank.
COLUMNS = {"knn20_top1": "kNN k=20", "knn200_top1": "kNN k=200", "linear_top1": "linear", "time_knn20_top1":
           "time-slice kNN k=20", "time_linear_top1": "time-slice linear", "attentive_top1": "attentive",
           "effective_rank": "effective rank"}


@dataclass(frozen=True)
class DemoConfig:
    """The demo's knobs; the defaults are ``make demo`` (one seed, about 7 minutes on a 2-core CPU).

    The two pretraining runs are YAML experiments (``experiments/configs/demo_sigma_mlp.yaml`` and
    ``demo_videomae.yaml``, both on ``demo.yaml``): model, clips, schedule, each method's objective, lr and mask
    ratio, and the generated data set (their ``synthetic`` section). ``sigma``, ``pixels`` and ``runs`` are
    ``section.field=value`` overrides of the SIGMA-MLP run, the VideoMAE run and both (``objective.queue_length=0``,
    ``data.batch_size=4``); the demo then sets each run's name, storage, seed, data paths and threads, and its
    epochs from the set's size, so that every run takes ``steps`` optimizer steps whatever the set.

    Seed ``s`` of ``seed .. seed + seeds - 1`` sets the initial weights, the data order, the crops and the masks;
    the data set itself is fixed by the experiments' ``synthetic.seed``. ``torch_threads`` None: every core of this
    machine for the trainer.
    """

    out_dir: str = "runs/demo"
    seeds: int = 1
    seed: int = 0
    sigma_experiment: str = str(CONFIGS / "demo_sigma_mlp.yaml")
    pixels_experiment: str = str(CONFIGS / "demo_videomae.yaml")
    sigma: tuple[str, ...] = ()
    pixels: tuple[str, ...] = ()
    runs: tuple[str, ...] = ()
    # The data set: the experiments' synthetic family (``data_kind`` None) or another of
    # sigma_ray.data.synthetic.KINDS, written under out_dir/synthetic, or ``data_dir``, a directory of your own with
    # VideoMAE lists train.csv and val.csv (``path label`` lines, paths relative to it) and optionally
    # factors.json (factor probes). Either way the classes are the lists' labels.
    data_kind: str | None = None
    data_dir: str | None = None
    steps: int | None = None              # None: the experiments' train.max_steps (2,400)
    warmup_steps: int | None = None       # None: the experiments' warm-up in steps (120)
    probe_per_class: int = 20             # the in-training kNN probe's bank and queries per class (the final
                                          # evaluation uses the whole train and val splits)
    linear_epochs: int = 100
    attentive_epochs: int = 30
    torch_threads: int | None = None
    supervised: bool = True
    # base lr of the supervised bound: the best of 0.006, 0.012, 0.024 by its own head's val top-1 on the tuning
    # copy (data seed 1), mean of 3 seeds (docs/studies/patterns.md, "The demo's settings")
    supervised_lr: float = 0.006
    # ``sigma-ray demo --suite``: after the demo, the evaluation suite (sigma_ray.eval.suite) on fresh copies of
    # these families written with ``suite_data_seed`` (no run, tuning or choice used that seed), each with
    # ``suite_train`` / ``suite_val`` videos in all (the per-class counts follow from the class counts), and
    # fine-tuning with 4 / 16 / all labelled videos per class on the copy of the demo's own family
    suite: bool = False
    suite_kinds: tuple[str, ...] = ("patterns", "motion", "fine", "count", "arrow")
    suite_data_seed: int = 3
    suite_train: int = 240
    suite_val: int = 120
    suite_finetune: bool = True
    suite_finetune_epochs: int = 10       # epochs of the laptop fine-tuning recipe (eval.efficiency.LAPTOP_FINETUNE)

    def validate(self) -> None:
        check_range("seeds", self.seeds, 1, 100)
        if self.data_kind is not None:
            check_choice("data_kind", self.data_kind, KINDS)
        if self.steps is not None:
            check_range("steps", self.steps, 1)
        runs = {kind: self.experiment(kind) for kind in PRETRAINED}   # each names its file and field when wrong
        if runs["sigma_mlp"].synthetic != runs["videomae"].synthetic:
            raise ConfigError("the two experiments' synthetic sections differ: both methods must train on one set")
        if self.warmup_steps is not None:
            check_range("warmup_steps", self.warmup_steps, 0, self.total_steps)
        check_range("probe_per_class", self.probe_per_class, 1)
        check_range("attentive_epochs", self.attentive_epochs, 1)
        check_range("supervised_lr", self.supervised_lr, 0.0, lo_open=True)
        for kind in self.suite_kinds:
            check_choice("suite_kinds", kind, KINDS)
        check_range("suite_train", self.suite_train, 1)
        check_range("suite_val", self.suite_val, 1)
        check_range("suite_finetune_epochs", self.suite_finetune_epochs, 1)
        if self.suite and self.data_dir is None and self.suite_data_seed == self.synthetic.seed:
            raise ConfigError(f"suite_data_seed = {self.suite_data_seed} is the demo's own data seed: the suite's "
                              "copies would not be held back")
        if self.torch_threads is not None:
            check_range("torch_threads", self.torch_threads, 1, 1024)
        s = self.synthetic
        if self.data_dir is None and s.num_classes * s.train_per_class < self.batch_size:
            raise ConfigError(f"synthetic.train_per_class x num_classes = {s.num_classes * s.train_per_class} must "
                              f"hold at least one batch of data.batch_size = {self.batch_size}")

    def experiment(self, kind: str) -> PretrainConfig:
        """The YAML experiment of ``kind`` (``sigma_mlp`` or ``videomae``) with ``runs`` and that method's
        overrides, validated; errors name the file and the field. Read once per DemoConfig."""
        return self._experiments[kind]

    @functools.cached_property
    def _experiments(self) -> dict[str, PretrainConfig]:
        # cached_property writes the instance's __dict__ directly, which a frozen dataclass allows
        runs = {}
        for kind, path, own in (("sigma_mlp", self.sigma_experiment, self.sigma),
                                ("videomae", self.pixels_experiment, self.pixels)):
            try:
                runs[kind] = from_dict(PretrainConfig, merge_overrides(load_yaml(path), (*self.runs, *own)))
            except ConfigError as e:
                raise ConfigError(f"{Path(path).name}: {e}") from None
        return runs

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seed, self.seed + self.seeds))

    @property
    def synthetic(self) -> SyntheticConfig:
        """The demo's generated data set (written under ``out_dir/synthetic`` on first use): the experiments'
        ``synthetic`` section, of family ``data_kind`` when set."""
        synthetic = self.experiment("sigma_mlp").synthetic
        if not isinstance(synthetic, SyntheticConfig):
            raise ConfigError(f"{Path(self.sigma_experiment).name}: synthetic must describe the demo's data set")
        return synthetic if self.data_kind is None else dataclasses.replace(synthetic, kind=self.data_kind)

    @property
    def family(self) -> str:
        """The generated family the demo trains on."""
        return self.synthetic.kind

    @property
    def total_steps(self) -> int:
        """Optimizer steps per method and seed."""
        return self.steps if self.steps is not None else self.experiment("sigma_mlp").train.max_steps

    @property
    def warmup(self) -> int:
        """Warm-up steps: ``warmup_steps``, else the experiments' (their warm-up epochs' share of their steps)."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        train = self.experiment("sigma_mlp").train
        return round(train.max_steps * train.warmup_epochs / train.epochs)

    @property
    def batch_size(self) -> int:
        return self.experiment("sigma_mlp").data.batch_size


def quick_config(out_dir: str = "runs/demo_quick") -> DemoConfig:
    """The smallest end-to-end run (tests, a first look): every step of the demo in about a minute."""
    return DemoConfig(out_dir=out_dir, steps=4, warmup_steps=1, probe_per_class=2, linear_epochs=5,
                      runs=("synthetic.num_classes=4", "synthetic.train_per_class=4", "synthetic.val_per_class=2",
                            "data.batch_size=4", "train.probe_every=2"),
                      sigma=("objective.num_prototypes=16", "objective.projection_hidden=[64]",
                             "objective.queue_length=64"),
                      suite_kinds=("patterns", "count", "arrow"), suite_train=24, suite_val=12,
                      suite_finetune_epochs=1)


RUN_OVERRIDES = ("sigma", "pixels", "runs")   # --set sigma.objective.queue_length=0: an override of that run


def with_overrides(demo: DemoConfig, overrides: list[str]) -> DemoConfig:
    """``demo`` with ``field=value`` overrides of its own fields and ``sigma.KEY=VALUE`` / ``pixels.KEY=VALUE`` /
    ``runs.KEY=VALUE`` overrides of its runs (``sigma.objective.queue_length=0``), checked like a config file: an
    unknown key or a bad value names it."""
    own, runs = [], {name: list(getattr(demo, name)) for name in RUN_OVERRIDES}
    for text in overrides:
        head, _, rest = text.partition(".")
        if head in RUN_OVERRIDES and "=" in rest and rest.index("=") > 0:
            runs[head].append(rest)
        else:
            own.append(text)
    raw = merge_overrides(dataclasses.asdict(demo), own)
    raw.update({name: tuple(v) for name, v in runs.items()})
    return from_dict(DemoConfig, raw)   # validate() builds both runs: a bad run override fails here


def with_data(demo: DemoConfig, data: str, keep_out_dir: bool = False) -> DemoConfig:
    """``demo`` on ``data`` (``sigma-ray demo --data``): a synthetic family of :data:`KINDS` or a directory with
    VideoMAE lists. Each set gets its own runs: the output directory becomes ``{out_dir}_{name}`` (``runs/demo_
    motion``, ``runs/demo_myset``) unless ``keep_out_dir`` or the set is ``demo``'s own family."""
    is_kind = data in KINDS
    name = data if is_kind else Path(data).resolve().name
    if is_kind and demo.data_dir is None and data == demo.family:
        return demo
    demo = dataclasses.replace(demo, **({"data_kind": data} if is_kind else {"data_dir": data}))
    return demo if keep_out_dir else dataclasses.replace(demo, out_dir=f"{demo.out_dir}_{name}")


def run_name(kind: str, seed: int) -> str:
    return f"{kind}_seed{seed}"


@dataclass(frozen=True)
class DemoData:
    """The set the demo runs on, as it is on disk (or as the generator will write it)."""

    name: str                             # the synthetic family or the directory's name
    root: str                             # holds train.csv and val.csv
    num_classes: int
    num_train: int                        # train videos: what an epoch is made of
    num_val: int
    factors: dict[str, list[int]]         # {factor: its value for each class}; {} when the set has none


def demo_data(demo: DemoConfig) -> DemoData:
    """``demo``'s data set: read from its lists when they exist (``data_dir``, or a synthetic set already written),
    else what the synthetic generator will write. Raises ConfigError when ``data_dir`` lacks its lists."""
    from sigma_ray.eval.readouts import read_factors

    if demo.data_dir is not None:
        root = Path(demo.data_dir).resolve()
        missing = [n for n in ("train.csv", "val.csv") if not (root / n).is_file()]
        if missing:
            raise ConfigError(f"data_dir = {demo.data_dir!r} has no {' or '.join(missing)} (VideoMAE lists, "
                              "`path label` per line)")
        name, factors = root.name, read_factors(root)
    else:
        root = Path(demo.out_dir, "synthetic").resolve()
        name = demo.family
    counts = {}
    for split in ("train", "val"):
        path = root / f"{split}.csv"
        counts[split] = [int(line.split()[-1]) for line in path.read_text().splitlines() if line.strip()] \
            if path.is_file() else None
    if counts["train"] is None:   # not written yet: the generator's numbers
        s = demo.synthetic
        num_classes = s.num_classes
        num_train, num_val = s.num_classes * s.train_per_class, s.num_classes * s.val_per_class
    else:
        num_classes = max(counts["train"] + counts["val"]) + 1
        num_train, num_val = len(counts["train"]), len(counts["val"])
    if demo.data_dir is None:
        factors = {f: v["of_class"] for f, v in class_factors(demo.family, num_classes).items()}
    if num_train < demo.batch_size:
        raise ConfigError(f"the train set has {num_train} videos, fewer than one batch of batch_size = "
                          f"{demo.batch_size}")
    return DemoData(name, str(root), num_classes, num_train, num_val, factors)


def pretrain_config(demo: DemoConfig, kind: str, seed: int | None = None, data: DemoData | None = None
                    ) -> PretrainConfig:
    """The pretraining run of one method (``sigma_mlp`` or ``videomae``) and seed on the demo's data set
    (``data``, default :func:`demo_data`): the method's experiment (:meth:`DemoConfig.experiment`) with this
    demo's name, storage, seed, data paths and threads, and ``demo.total_steps`` steps as epochs of the set's size
    (the same warm-up steps whatever the set)."""
    seed = demo.seed if seed is None else seed
    data = demo_data(demo) if data is None else data
    raw = to_dict(demo.experiment(kind))
    steps, root = demo.total_steps, data.root
    epochs = -(-steps // (data.num_train // raw["data"]["batch_size"]))
    raw.update(name=run_name(kind, seed), storage_path=str(Path(demo.out_dir).resolve()),
               synthetic=False)   # the demo writes its set itself (ensure_synthetic), under out_dir
    raw["data"].update(root=root, train_list=f"{root}/train.csv", val_list=f"{root}/val.csv",
                       num_classes=data.num_classes, seed=seed)
    raw["train"].update(epochs=epochs, max_steps=steps, warmup_epochs=epochs * demo.warmup / steps,
                        torch_threads=demo.torch_threads or os.cpu_count() or 1, checkpoint_every=steps, seed=seed)
    return from_dict(PretrainConfig, raw)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The run's ``metrics.jsonl`` rows; a resumed run's repeated steps keep their latest row."""
    rows: dict[int, dict] = {}
    for line in Path(run_dir, METRICS_FILE).read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]


def step_seconds(rows: list[dict]) -> float:
    """A run's optimizer steps' wall time in seconds, from its metrics rows (each row's mean step time x the
    steps since the previous row): without Ray's start, probes and checkpoints, and the same for a run this
    demo reuses as for one it trains now."""
    seconds, previous = 0.0, 0
    for row in rows:
        seconds += row["step_time_s"] * (row["step"] - previous)
        previous = row["step"]
    return seconds


def evaluate_encoders(encoders: dict[str, torch.nn.Module], data: DataConfig, num_classes: int,
                      linear_epochs: int, seed: int, factors: dict[str, list[int]] | None = None,
                      attentive_epochs: int = 30) -> dict[str, dict[str, float]]:
    """Every frozen readout of each encoder (:func:`~sigma_ray.eval.readouts.frozen_probes`: kNN, linear probe and
    factor probes on mean-pooled and on per-time-slice features, the attentive probe, the effective rank) on the
    val split with the train split as bank and probe training set; accuracies in percent. The clips are decoded
    once for all encoders."""
    from sigma_ray.eval.readouts import frozen_probes

    train_batches, val_batches = list(eval_batches(data, "train")), list(eval_batches(data, "val"))
    return {name: frozen_probes(encoder, train_batches, val_batches, num_classes, factors, linear_epochs,
                                attentive_epochs, seed) for name, encoder in encoders.items()}


def supervised_bound(demo: DemoConfig, data: DataConfig, encoder: torch.nn.Module, seed: int,
                     num_train: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The same encoder trained with the labels (LayerNorm + linear head on mean-pooled tokens, cross-entropy)
    from the same initial weights, on the same train clips (the pretraining's crops), for the same steps and
    batch, with the same warm-up + cosine schedule; no other augmentation or regularization. Returns the trained
    encoder and ``finetune``'s result (its own head's val accuracy ``finetune_top1``)."""
    from sigma_ray.eval.config import FinetuneConfig
    from sigma_ray.eval.finetune import finetune

    epochs = -(-demo.total_steps // (num_train // demo.batch_size))
    steps_per_epoch = demo.total_steps // epochs
    config = FinetuneConfig(epochs=epochs, steps_per_epoch=steps_per_epoch, warmup_epochs=demo.warmup /
                            steps_per_epoch, base_lr=demo.supervised_lr, min_lr=demo.supervised_lr / 100,
                            betas=(0.9, 0.95), layer_decay=1.0, drop_path=0.0, mixup=0.0, cutmix=0.0,
                            label_smoothing=0.0, rand_augment=False, random_erasing=0.0, test_split="val",
                            precision="fp32", head_init_scale=1.0)
    with torch.random.fork_rng(devices=[]):
        result = finetune(encoder, config, dataclasses.replace(data, seed=seed), data.num_classes, seed=seed,
                          log_every=10**9)
    model = result.pop("model")
    return model.encoder.eval(), result


SUPERVISED_FILE = "supervised.json"      # the bound's own result, written last: a finished bound has it


def save_supervised(encoder: torch.nn.Module, config: PretrainConfig, run_dir: Path, result: dict,
                    supervised_lr: float) -> None:
    """Keep the supervised bound's encoder as a run directory (``encoder.pt`` and the ``config.yaml`` of the run
    whose clips and steps it shared), so that ``sigma-ray eval --suite`` evaluates it beside the pretrained ones,
    and its head's val top-1, steps, seconds and lr (``supervised.json``), so that a rerun reuses it."""
    from sigma_ray.runs.export import save_encoder

    save_encoder(encoder, config.model, run_dir / ENCODER_FILE,
                 meta={"supervised_bound": True, "seed": config.train.seed})
    save_yaml(to_dict(dataclasses.replace(config, name=run_dir.name)), run_dir / CONFIG_FILE)
    keep = {k: result[k] for k in ("finetune_top1", "steps", "seconds")}
    (run_dir / SUPERVISED_FILE).write_text(json.dumps({**keep, "supervised_lr": supervised_lr}))


def load_supervised(config: PretrainConfig, run_dir: Path, supervised_lr: float
                    ) -> tuple[torch.nn.Module, dict] | None:
    """A finished supervised bound of the same run (its config.yaml equals ``config`` up to the name, the same
    lr) from ``run_dir``, as ``(encoder, result)``; None when there is none to reuse."""
    from sigma_ray.infra.config import load_yaml
    from sigma_ray.runs.encoders import load_any_encoder

    done = run_dir / SUPERVISED_FILE
    if not done.is_file():
        return None
    result = json.loads(done.read_text())
    same = load_yaml(run_dir / CONFIG_FILE) == to_dict(dataclasses.replace(config, name=run_dir.name))
    if not same or result.get("supervised_lr") != supervised_lr:
        return None
    return load_any_encoder(str(run_dir))[0].eval(), result


def trivial_pixel_loss(data: DataConfig, mask_ratio: float, normalize_target: bool = True, batches: int = 8,
                       seed: int = 0, target_motion: bool = False) -> float:
    """The pixel baseline's loss when it predicts one constant for every masked tube, the targets' mean: 0 for
    standardized targets (and their frame differences, with ``target_motion``), each channel's mean pixel for raw
    ones. The value its loss must fall below to have learned anything. On train clips with the demo's masks."""
    from sigma_ray.data.iterator import ClipIterator
    from sigma_ray.method.projection import tube_pixels, tube_target
    from sigma_ray.method.step import normalize_clips
    from sigma_ray.method.vit import gather_tokens, split_indices

    config = dataclasses.replace(data, mask=dataclasses.replace(data.mask, ratio=mask_ratio), seed=seed)
    targets = []
    for i, batch in enumerate(ClipIterator(config, "train", as_torch=True)):
        if i == batches:
            break
        _, masked = split_indices(batch["masks"])
        tubes = gather_tokens(tube_pixels(normalize_clips(batch["clips"]), data.tubelet, data.patch), masked)
        targets.append(tube_target(tubes, data.tubelet, normalize_target, target_motion).unflatten(-1, (-1, 3)))
    target = torch.cat(targets).double()
    mean = 0.0 if normalize_target else target.mean(dim=(0, 1, 2))
    return float((target - mean).pow(2).mean())


def token_assignments(model, clip: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Prototype ids per token for one clip: the projection's (every token) and the video model's prediction
    (masked tokens; -1 on visible ones). ``clip``: uint8 ``T x H x W x C``; ``mask``: ``N`` bool."""
    from sigma_ray.method.step import normalize_clips
    from sigma_ray.method.vit import split_indices

    x = normalize_clips(clip[None])
    all_idx = torch.arange(mask.numel())[None]
    visible_idx, masked_idx = split_indices(mask[None])
    with torch.no_grad():
        model.prototypes.normalize_()
        target = model.prototypes(model.projection(x, all_idx)[0]).argmax(dim=1).numpy()
        pred = model.prototypes(model.video(x, visible_idx, masked_idx)[0]).argmax(dim=1).numpy()
    predicted = np.full(mask.numel(), -1)
    predicted[masked_idx[0].numpy()] = pred
    return target, predicted


def summarize(per_seed: dict[int, dict[str, dict[str, float]]]) -> dict[str, dict[str, tuple[float, float]]]:
    """{method: {metric: (mean, std)}} over seeds (std 0 for one seed; sample std otherwise)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    seeds = sorted(per_seed)
    for method in per_seed[seeds[0]]:
        out[method] = {}
        for metric in per_seed[seeds[0]][method]:
            values = np.array([per_seed[s][method][metric] for s in seeds], dtype=np.float64)
            out[method][metric] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)
    return out


def _cell(mean: float, std: float, seeds: int, digits: int = 1) -> str:
    return f"{mean:.{digits}f}" if seeds == 1 else f"{mean:.{digits}f} +- {std:.{digits}f}"


def format_table(summary: dict[str, dict[str, tuple[float, float]]], chance: float, seeds: int,
                 seconds: dict[str, float]) -> str:
    """Markdown table of :data:`COLUMNS`: accuracy in percent (mean +- std over seeds), effective rank, training
    seconds (pretraining: the optimizer steps, :func:`step_seconds`; supervised: the whole fine-tuning call)."""
    lines = ["| method | " + " | ".join(COLUMNS.values()) + " | training (s per seed) |",
             "| --- " * (len(COLUMNS) + 2) + "|"]
    for kind, r in summary.items():
        secs = f"{seconds[kind]:.0f}" if kind in seconds else "-"
        lines.append(f"| {METHODS[kind]} | " + " | ".join(_cell(*r[m], seeds) for m in COLUMNS) + f" | {secs} |")
    lines.append("| chance | " + " | ".join("" if m == "effective_rank" else f"{chance:.1f}" for m in COLUMNS)
                 + " | |")
    return "\n".join(lines)


def factor_columns(factors: dict[str, list[int]]) -> dict[str, str]:
    """{metric: column title} of the factor probes: each factor's linear probe on mean-pooled and on per-time-slice
    features."""
    return {key: title for f in factors for key, title in ((f"{f}_linear_top1", f"{f}: linear"),
                                                            (f"time_{f}_linear_top1", f"{f}: time-slice linear"))}


def format_factor_table(summary: dict[str, dict[str, tuple[float, float]]], factors: dict[str, list[int]],
                        seeds: int) -> str:
    """Markdown table of the factor probes (accuracy in percent, mean +- std over seeds), with each factor's
    chance; empty when the set has no factors."""
    columns = factor_columns(factors)
    if not columns:
        return ""
    lines = ["| method | " + " | ".join(columns.values()) + " |", "| --- " * (len(columns) + 1) + "|"]
    for kind, r in summary.items():
        lines.append(f"| {METHODS[kind]} | " + " | ".join(_cell(*r[m], seeds) for m in columns) + " |")
    lines.append("| chance | " + " | ".join(f"{100 / (max(factors[f]) + 1):.1f}" for f in factors for _ in (0, 1))
                 + " |")
    return "\n".join(lines)


def format_seed_rows(per_seed: dict[int, dict[str, dict[str, float]]], factors: dict[str, list[int]]) -> str:
    """Every run, one row per seed and method (no run is left out of the report)."""
    columns = {**COLUMNS, **factor_columns(factors)}
    lines = ["| seed | method | " + " | ".join(columns.values()) + " |", "| --- " * (len(columns) + 2) + "|"]
    for s in sorted(per_seed):
        for kind, r in per_seed[s].items():
            lines.append(f"| {s} | {METHODS[kind]} | " + " | ".join(f"{r[m]:.1f}" for m in columns) + " |")
    return "\n".join(lines)


def verdict(summary: dict[str, dict[str, tuple[float, float]]]) -> str:
    """Whether SIGMA-MLP > VideoMAE > random init holds on the linear probe and on kNN (k = 20), by the means."""
    parts, holds = [], True
    for metric, label in (("linear_top1", "linear probe"), ("knn20_top1", "kNN k=20")):
        s, v, r = (summary[k][metric][0] for k in ("sigma_mlp", "videomae", "random"))
        ok = s > v > r
        holds &= ok
        parts.append(f"{label}: SIGMA-MLP {s:.1f} {'>' if s > v else '<='} VideoMAE {v:.1f} "
                     f"{'>' if v > r else '<='} random {r:.1f}")
    head = "The ordering SIGMA-MLP > VideoMAE > random init holds" if holds else \
        "The ordering SIGMA-MLP > VideoMAE > random init does NOT hold"
    return f"{head} ({'; '.join(parts)})."


def _plot_runs(ax, runs: dict[int, list[dict]], key: str, label: str, colour: str) -> None:
    for i, (seed, rows) in enumerate(sorted(runs.items())):
        xs = [r["step"] for r in rows if key in r]
        if xs:
            ax.plot(xs, [r[key] for r in rows if key in r], color=colour, alpha=0.9 if i == 0 else 0.45,
                    label=label if i == 0 else None)


def plot_curves(runs: dict[str, dict[int, list[dict]]], out: Path, trivial_loss: float | None = None
                ) -> dict[str, str]:
    """loss.png (each method's loss per seed; the pixel target's trivial loss dashed), usage.png (both sides'
    prototype-usage perplexity), codes_per_clip.png (distinct codes among a clip's masked tokens) and knn.png
    (kNN top-1 and the effective rank during pretraining). Returns {plot title: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for key, colour in (("loss_video", "C0"), ("loss_proj", "C1"), ("loss", "C2")):
        _plot_runs(axes[0], runs["sigma_mlp"], key, key, colour)
    axes[0].set(title=METHODS["sigma_mlp"], xlabel="step", ylabel="loss")
    _plot_runs(axes[1], runs["videomae"], "loss", "loss (MSE)", "C2")
    if trivial_loss is not None:
        axes[1].axhline(trivial_loss, ls="--", color="k", lw=1, label=f"predict the mean: {trivial_loss:.3f}")
    axes[1].set(title=METHODS["videomae"], xlabel="step", ylabel="loss")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110)
    plt.close(fig)
    files["loss curves"] = "loss.png"

    for name, (title, keys) in {
            "usage.png": ("prototype usage over the batch (perplexity; 1 = collapse)",
                          ("perplexity_video", "perplexity_proj")),
            "codes_per_clip.png": ("distinct codes among a clip's masked tokens (1 = the code names the clip)",
                                   ("codes_per_clip_video", "codes_per_clip_proj"))}.items():
        fig, ax = plt.subplots(figsize=(6, 3.4))
        for key, colour in zip(keys, ("C0", "C1")):
            _plot_runs(ax, runs["sigma_mlp"], key, "video model's codes" if key.endswith("video") else
                       "projection's codes", colour)
        ax.set(title=title, xlabel="step")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files["prototype usage" if name == "usage.png" else "codes per clip"] = name

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, (key, title, unit) in zip(axes, (
            ("knn_top1", "kNN top-1 during pretraining (k=20, probe subset of train/val)", "accuracy (%)"),
            ("effective_rank", "effective rank of the probe bank's pooled features", "effective rank"))):
        for kind, colour in (("sigma_mlp", "C0"), ("videomae", "C1")):
            _plot_runs(ax, runs[kind], key, METHODS[kind], colour)
        ax.set(title=title, xlabel="step", ylabel=unit)
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "knn.png", dpi=110)
    plt.close(fig)
    files["kNN and effective rank during pretraining"] = "knn.png"
    return files


def plot_strip(model, data: DataConfig, out: Path, seed: int) -> str:
    """strip.png: one val clip's frames (first frame of each tubelet), the tube mask, the projection's prototype
    per token and the video model's predicted prototype for the masked tokens, coloured by prototype id."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sigma_ray.method.masking import MaskGenerator

    batch = next(iter(eval_batches(dataclasses.replace(data, batch_size=1), "val")))
    clip = batch["clips"][0]
    grid = data.grid
    mask = torch.from_numpy(MaskGenerator(grid, data.mask)(np.random.default_rng(seed)))
    target, predicted = token_assignments(model, clip, mask)
    t, h, w = grid
    palette = plt.get_cmap("tab20")(np.arange(20))[:, :3]
    up = clip.shape[1] // h

    def colour(ids: np.ndarray) -> np.ndarray:
        return np.where(ids[..., None] >= 0, palette[np.maximum(ids, 0) % 20], 1.0).repeat(up, 0).repeat(up, 1)

    fig, axes = plt.subplots(4, t, figsize=(1.6 * t, 6.8))
    rows = ("frame", "tube mask", "projection's prototype", "video model's prediction")
    for i in range(t):
        frame = clip[i * data.tubelet].numpy() / 255.0
        m = mask.view(t, h, w)[i].numpy().repeat(up, 0).repeat(up, 1)
        masked_frame = np.where(m[..., None], 0.25 + 0.1 * frame, frame)
        tgt, prd = colour(target.reshape(t, h, w)[i]), colour(predicted.reshape(t, h, w)[i])
        for r, img in enumerate((frame, masked_frame, 0.85 * tgt + 0.15 * frame, prd)):
            axes[r, i].imshow(img)
            axes[r, i].set_xticks([])
            axes[r, i].set_yticks([])
            if i == 0:
                axes[r, i].set_ylabel(rows[r], fontsize=7)
    fig.suptitle("SIGMA-MLP on one val clip (colour = prototype id mod 20; white = visible, not predicted)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "strip.png", dpi=110)
    plt.close(fig)
    return "strip.png"


def _probe(demo: DemoConfig, data: DataConfig, out: Path) -> KnnProbe:
    """The in-training kNN probe on the first ``probe_per_class`` train and val videos of each class."""
    from sigma_ray.data.annotations import load_split
    from sigma_ray.tune.sweep import first_per_class, write_list

    lists = {split: write_list(first_per_class(load_split(data, split), demo.probe_per_class),
                               out / "probe" / f"{split}.csv") for split in ("train", "val")}
    return KnnProbe(dataclasses.replace(data, root=None, train_list=lists["train"], val_list=lists["val"]),
                    data.num_classes, k=20)


def suite_set_roots(demo: DemoConfig, out: Path) -> list[str]:
    """The held-back copies of ``demo.suite_kinds`` for the demo's suite, written under ``out/suite_sets`` on
    first use (data seed ``suite_data_seed``; ``suite_train`` / ``suite_val`` videos split evenly over the classes,
    as many classes as the demo's set where the family has them)."""
    from sigma_ray.data.synthetic import KIND_CLASSES, make_synthetic

    roots = []
    for kind in demo.suite_kinds:
        classes = min(demo.synthetic.num_classes, len(KIND_CLASSES[kind]))
        root = out / "suite_sets" / kind
        if not (root / "val.csv").is_file():   # the lists are written last: a set without them is rewritten
            print(f"[demo] suite: writing the held-back {kind} set (data seed {demo.suite_data_seed})", flush=True)
            make_synthetic(root, num_classes=classes, train_per_class=max(1, demo.suite_train // classes),
                           val_per_class=max(1, demo.suite_val // classes), frames=demo.synthetic.frames,
                           size=demo.synthetic.size, seed=demo.suite_data_seed, kind=kind)
        roots.append(str(root))
    return roots


def run_demo_suite(demo: DemoConfig, out: Path) -> str:
    """The evaluation suite on this demo's runs of its seeds (SIGMA-MLP, VideoMAE, the supervised bound and the
    random initial weights) and the held-back sets; returns the Markdown of ``out/suite/suite.md`` for the
    report, its images' paths made relative to ``out``."""
    from sigma_ray.eval.efficiency import LAPTOP_FINETUNE
    from sigma_ray.eval.suite import run_suite

    runs = [out / run_name(kind, seed) for seed in demo.seed_list for kind in (*PRETRAINED, "supervised")
            if (out / run_name(kind, seed) / CONFIG_FILE).is_file()]
    finetune = ((demo.family,) if demo.suite_finetune and demo.data_dir is None
                and demo.family in demo.suite_kinds else ())
    print(f"[demo] suite: {len(runs)} runs and the random initial weights on {', '.join(demo.suite_kinds)}"
          + (f"; fine-tuning on {finetune[0]}" if finetune else ""), flush=True)
    run_suite(runs, suite_set_roots(demo, out), out / "suite", own_sets=False, linear_epochs=demo.linear_epochs,
              attentive_epochs=demo.attentive_epochs, seed=demo.seed, finetune_sets=finetune,
              finetune_config=dataclasses.replace(LAPTOP_FINETUNE, epochs=demo.suite_finetune_epochs))
    text = (out / "suite" / "suite.md").read_text().split("\n", 1)[1]     # without its title
    return text.replace("](curves_", "](suite/curves_")


def run_demo(demo: DemoConfig = DemoConfig()) -> dict[str, Any]:
    """Run the whole demo (see the module docstring); returns the summary also written to results.json."""
    from sigma_ray.infra.ray_session import init_ray
    from sigma_ray.method.sigma import build_model
    from sigma_ray.train.launch import pretrain

    demo.validate()
    t_start = time.perf_counter()
    out = Path(demo.out_dir).resolve()
    if demo.data_dir is None:
        ensure_synthetic(demo.synthetic, pretrain_config(demo, "sigma_mlp").data)
    dataset = demo_data(demo)
    data = pretrain_config(demo, "sigma_mlp", data=dataset).data
    print(f"[demo] data: {dataset.name} at {dataset.root}: {dataset.num_classes} classes, {dataset.num_train} train / "
          f"{dataset.num_val} val videos; {demo.total_steps} steps = "
          f"{-(-demo.total_steps // (dataset.num_train // demo.batch_size))}"
          f" epochs of {dataset.num_train // demo.batch_size} steps", flush=True)
    # The dashboard: to watch the runs, and Ray Train V2's placement-group cleaner queries its state API.
    init_ray(include_dashboard=True)
    probe = _probe(demo, data, out)

    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    runs: dict[str, dict[int, list[dict]]] = {kind: {} for kind in PRETRAINED}
    seconds: dict[str, list[float]] = {kind: [] for kind in (*PRETRAINED, "supervised")}
    supervised_head: dict[int, float] = {}
    sigma_model = None
    for seed in demo.seed_list:
        models = {}
        for kind in PRETRAINED:
            config = pretrain_config(demo, kind, seed, dataset)
            print(f"[demo] seed {seed}: pretraining {METHODS[kind]}, {demo.total_steps} steps x {demo.batch_size} clips",
                  flush=True)
            result = pretrain(config, probe=probe)
            runs[kind][seed] = read_metrics(result.run_dir)
            seconds[kind].append(step_seconds(runs[kind][seed]))
            models[kind] = load_model(result.run_dir, config.model, config.objective)
        sigma_model = sigma_model or models["sigma_mlp"]
        config = pretrain_config(demo, "sigma_mlp", seed, dataset)
        torch.manual_seed(seed)  # the initial weights both runs started from (the trainer seeds the same way)
        random_encoder = build_model(config.model, config.objective).encoder.eval()
        encoders = {"sigma_mlp": models["sigma_mlp"].encoder, "videomae": models["videomae"].encoder,
                    "random": random_encoder}
        if demo.supervised:
            sup_dir = out / run_name("supervised", seed)
            reused = load_supervised(config, sup_dir, demo.supervised_lr)
            if reused is None:
                print(f"[demo] seed {seed}: the supervised bound, {demo.total_steps} steps x {demo.batch_size} labelled "
                      "clips", flush=True)
                t0 = time.perf_counter()
                encoders["supervised"], sup = supervised_bound(demo, data, random_encoder, seed, dataset.num_train)
                sup["seconds"] = time.perf_counter() - t0
                save_supervised(encoders["supervised"], config, sup_dir, sup, demo.supervised_lr)
            else:
                print(f"[demo] seed {seed}: reusing the supervised bound in {sup_dir}", flush=True)
                encoders["supervised"], sup = reused
            seconds["supervised"].append(sup["seconds"])
            supervised_head[seed] = sup["finetune_top1"]
        print(f"[demo] seed {seed}: evaluating {', '.join(METHODS[k] for k in encoders)} (kNN, linear, time-slice "
              f"and attentive probes{', factors ' + ', '.join(dataset.factors) if dataset.factors else ''})",
              flush=True)
        per_seed[seed] = evaluate_encoders(encoders, data, dataset.num_classes, demo.linear_epochs, seed,
                                           dataset.factors, demo.attentive_epochs)

    summary = summarize(per_seed)
    pixels = pretrain_config(demo, "videomae", data=dataset)
    trivial = trivial_pixel_loss(data, pixels.data.mask.ratio, pixels.objective.normalize_target,
                                 target_motion=pixels.objective.target_motion)
    plots = plot_curves(runs, out, trivial)
    plots["frames, mask and prototype assignments"] = plot_strip(sigma_model, data, out, demo.seed)
    chance = 100.0 / dataset.num_classes
    mean_seconds = {k: float(np.mean(v)) for k, v in seconds.items() if v}
    table = format_table(summary, chance, demo.seeds, mean_seconds)
    factor_table = format_factor_table(summary, dataset.factors, demo.seeds)
    final = {kind: {s: rows[-1] for s, rows in r.items()} for kind, r in runs.items()}
    sigma = pretrain_config(demo, "sigma_mlp", data=dataset)
    diagnostics = _diagnostics(final, trivial, supervised_head, sigma.objective.num_prototypes)
    suite_md = None
    if demo.suite:
        t_suite = time.perf_counter()
        suite_md = run_demo_suite(demo, out)
        seconds["suite"] = [time.perf_counter() - t_suite]
    total = time.perf_counter() - t_start
    result = {"config": dataclasses.asdict(demo), "data": dataclasses.asdict(dataset), "per_seed": per_seed,
              "summary": {k: {m: list(v) for m, v in r.items()} for k, r in summary.items()},
              "final_training_metrics": final, "trivial_pixel_loss": trivial,
              "supervised_head_top1": supervised_head, "seconds": seconds, "total_seconds": total,
              "chance": chance}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    line = verdict(summary)
    write_report(out / "report.md", demo, dataset, table, factor_table, format_seed_rows(per_seed, dataset.factors),
                 line, diagnostics, plots, total, suite_md)
    print("\n" + table + (f"\n\n{factor_table}" if factor_table else "")
          + f"\n\n{diagnostics}\n\n{line}\n[demo] {total / 60:.1f} min; report: {out / 'report.md'}", flush=True)
    return result


def _diagnostics(final: dict[str, dict[int, dict]], trivial: float, supervised_head: dict[int, float],
                 num_prototypes: int) -> str:
    """The end-of-training numbers that say whether each objective learned (means over seeds)."""
    def mean(kind: str, key: str) -> float:
        return float(np.mean([row[key] for row in final[kind].values()]))

    lines = [f"- VideoMAE's pixel loss at the end: {mean('videomae', 'loss'):.3f} (predicting the targets' mean "
             f"for every masked tube: {trivial:.3f}; {100 * (1 - mean('videomae', 'loss') / trivial):.1f}% below it)",
             f"- SIGMA-MLP's codes at the end: prototype-usage perplexity {mean('sigma_mlp', 'perplexity_proj'):.1f} "
             f"(projection) / {mean('sigma_mlp', 'perplexity_video'):.1f} (video model) of K = {num_prototypes}; distinct "
             f"codes per clip {mean('sigma_mlp', 'codes_per_clip_proj'):.1f} / "
             f"{mean('sigma_mlp', 'codes_per_clip_video'):.1f} (1 = every token of a clip gets the clip's code)"]
    if supervised_head:
        lines.append(f"- the supervised bound's own head on val: "
                     f"{float(np.mean(list(supervised_head.values()))):.1f}% top-1")
    return "\n".join(lines)


def write_report(path: Path, demo: DemoConfig, dataset: DemoData, table: str, factor_table: str, seed_rows: str,
                 line: str, diagnostics: str, plots: dict[str, str], total_s: float,
                 suite_md: str | None = None) -> None:
    sigma, pixels = (pretrain_config(demo, kind, data=dataset) for kind in PRETRAINED)
    s, m = sigma.objective, sigma.model
    where = f"the synthetic '{dataset.name}' set" if demo.data_dir is None else f"the set in {dataset.root}"
    lines = [
        "# sigma-ray demo", "",
        f"The `{m.size}` video ViT ({m.num_frames} frames at {m.img_size}x{m.img_size}, tubelet "
        f"{m.tubelet}, patch {m.patch}) pretrained for {demo.total_steps} steps x {demo.batch_size} clips on {where} "
        f"({dataset.num_classes} classes, {dataset.num_train} train / {dataset.num_val} val videos), once with "
        f"SIGMA-MLP (K = {s.num_prototypes}, temperature {s.temperature}, {s.sinkhorn_iterations} Sinkhorn "
        f"iterations, eps {s.sinkhorn_eps}, {'hard' if s.hard_codes else 'soft'} codes, queue {s.queue_length}, "
        f"target motion {s.target_motion}, base lr {sigma.train.base_lr}, mask ratio {sigma.data.mask.ratio}) and "
        f"once with the VideoMAE pixel target (base lr {pixels.train.base_lr}, mask ratio {pixels.data.mask.ratio}), "
        "at equal compute: the same steps, "
        "batch, clips, schedule and initial weights. 'random init' is those initial weights; 'supervised' is the "
        f"same encoder trained with the labels for the same steps. Seeds: {', '.join(map(str, demo.seed_list))}.",
        "", "Accuracy on the val split in percent, of frozen encoders. kNN: bank from the train split, T = 0.07; "
        f"linear: BatchNorm + linear head, {demo.linear_epochs} epochs of SGD; both on mean-pooled tokens (the "
        "standard readout) and on time-slice features (tokens averaged over space per time slice, concatenated: "
        f"time is kept); attentive: a learned query attending over all tokens, {demo.attentive_epochs} epochs. "
        "Effective rank of the mean-pooled train features; training seconds per seed (pretraining: the optimizer "
        "steps' wall time, without Ray's start, probes and checkpoints; supervised: the whole fine-tuning):", "",
        table, "", line, ""]
    if factor_table:
        lines += ["Each factor of the class alone (linear probes on the same features, labelled with the factor):",
                  "", factor_table, ""]
    lines += [diagnostics, "", "Every run:", "", seed_rows, "", f"Total time {total_s / 60:.1f} min.", ""]
    for title, file in plots.items():
        lines += [f"## {title}", "", f"![{title}]({file})", ""]
    if suite_md is not None:
        lines += ["## The evaluation suite", "", f"The same encoders on fresh copies of the generated families "
                  f"(data seed {demo.suite_data_seed}, {demo.suite_train} train / {demo.suite_val} val videos each), "
                  "which no run or choice used (`suite/suite.json` has every encoder's numbers):", "",
                  suite_md.replace("\n## ", "\n### ")]
    path.write_text("\n".join(lines))
