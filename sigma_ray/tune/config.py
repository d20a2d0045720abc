"""The sweep's configuration: the search space, the base pretraining run, ASHA, resources and the Optuna study.

A sweep runs ``num_samples`` trials; each is a short pretraining run (the base :class:`PretrainConfig` with the
trial's sampled parameters, ``trial.steps`` optimizer steps) probed (kNN, and a linear probe when that is the
score) every ``trial.probe_every`` steps. Everything is checked at load time, before Ray starts: a search range
that is empty or inverted fails with the field's name (``search.temperature.low = 0.3 must be < high = 0.03``),
and so does a base pretraining config that does not load. No Ray import here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sigma_ray.infra.checks import ConfigError, check_choice, check_range
from sigma_ray.infra.config import deep_merge, from_dict, load_yaml, merge_overrides
from sigma_ray.runs.files import STUDY_FILE, is_uri
from sigma_ray.train.config import PretrainConfig

# what probe.score may name (the first is the default): val top-1, %, maximized; mean_top1 is the mean of the other two
SCORES = ("knn_top1", "linear_top1", "mean_top1")
TUNE_ID_ATTR = "tune_trial_id"     # Optuna user attribute linking a study trial to its Tune trial
RUN_DIR_ATTR = "run_dir"           # Optuna user attribute: the trial's pretraining run directory
# The trainer's collapse diagnostic, kept as Optuna user attributes at every probe (the last probe's survive):
# prototype-usage perplexity of each side's hard codes (1 = collapse) and, when the trainer reports them, the
# distinct codes per clip.
COLLAPSE_METRICS = ("perplexity_video", "perplexity_proj", "codes_per_clip_video", "codes_per_clip_proj")


def _check_interval(low: float, high: float, log: bool) -> None:
    if not low < high:
        raise ConfigError(f"low = {low!r} must be < high = {high!r} (an empty or inverted range)")
    if log and low <= 0:
        raise ConfigError(f"low = {low!r} must be > 0 on a log scale")


@dataclass(frozen=True)
class FloatRange:
    """Reals in ``[low, high]``, uniform or uniform in log scale."""

    low: float
    high: float
    log: bool = False

    def validate(self) -> None:
        _check_interval(self.low, self.high, self.log)


@dataclass(frozen=True)
class IntRange(FloatRange):
    """Integers in ``[low, high]`` (both included), uniform or uniform in log scale."""

    low: int
    high: int


# Where each searchable parameter goes in the PretrainConfig, and the smallest value that field accepts
# (checked here so a bad range fails at load time, not in a trial).
PARAM_FIELDS: dict[str, tuple[str, ...]] = {
    "num_prototypes": ("objective", "num_prototypes"),
    "temperature": ("objective", "temperature"),
    "sinkhorn_iterations": ("objective", "sinkhorn_iterations"),
    "sinkhorn_eps": ("objective", "sinkhorn_eps"),
    "queue_length": ("objective", "queue_length"),
    "lr": ("train", "base_lr"),
    "mask_ratio": ("data", "mask", "ratio"),
}
_PARAM_MIN: dict[str, tuple[float, bool]] = {   # (bound, open)
    "num_prototypes": (2, False), "temperature": (0.0, True), "sinkhorn_iterations": (1, False),
    "sinkhorn_eps": (0.0, True), "queue_length": (0, False), "lr": (0.0, True), "mask_ratio": (0.0, True),
}


@dataclass(frozen=True)
class SearchSpace:
    """The sampled parameters; ``null`` leaves one out (the base config's value is used). ``lr`` is the base
    learning rate ``train.base_lr`` (scaled by global batch / 256 like every run's); ``mask_ratio`` is
    ``data.mask.ratio`` and ``queue_length`` SIGMA's ``objective.queue_length`` (0 = no queue)."""

    num_prototypes: IntRange | None = IntRange(64, 4096, log=True)
    temperature: FloatRange | None = FloatRange(0.03, 0.3, log=True)
    sinkhorn_iterations: IntRange | None = IntRange(1, 10)
    sinkhorn_eps: FloatRange | None = None
    queue_length: IntRange | None = None
    lr: FloatRange | None = None
    mask_ratio: FloatRange | None = None

    def validate(self) -> None:
        for name, rng in self.ranges().items():
            bound, open_ = _PARAM_MIN[name]
            check_range(f"{name}.low", rng.low, bound, lo_open=open_)
        if self.mask_ratio is not None:
            check_range("mask_ratio.high", self.mask_ratio.high, 0.0, 1.0, hi_open=True)
        if not self.ranges():
            raise ConfigError("every parameter is null: the search space is empty")

    def ranges(self) -> dict[str, IntRange | FloatRange]:
        """The searched parameters by name, in field order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class TrialConfig:
    """One trial's length and probe interval, in optimizer steps. The probe runs every ``probe_every`` steps
    and at the last step; each probe is one intermediate score for ASHA (and a checkpoint, so a trial interrupted
    with the driver resumes from its last probe)."""

    steps: int = 2000
    probe_every: int = 500

    def validate(self) -> None:
        check_range("steps", self.steps, 1)
        check_range("probe_every", self.probe_every, 1, self.steps)

    @property
    def num_probes(self) -> int:
        return -(-self.steps // self.probe_every)


@dataclass(frozen=True)
class AshaConfig:
    """ASHA, in probe intervals: a trial reaching rung ``grace_period x reduction_factor^k`` (k = 0, 1, ...)
    stops when its score is below the top ``1 / reduction_factor`` of the scores earlier trials had there.
    ``max_t`` caps the rungs (default: the trial's number of probes); trials always run to ``trial.steps``
    unless stopped at a rung."""

    grace_period: int = 1
    reduction_factor: float = 2.0
    max_t: int | None = None

    def validate(self) -> None:
        check_range("grace_period", self.grace_period, 1)
        check_range("reduction_factor", self.reduction_factor, 1.0, lo_open=True)
        if self.max_t is not None:
            check_range("max_t", self.max_t, self.grace_period)


@dataclass(frozen=True)
class TrialResources:
    """Per trial: ``num_workers`` Ray Train workers with ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs
    each (0: CPU training), plus the trial's own process, which only drives the Train run (``driver_cpus``;
    ``driver_resources`` can pin it to safe nodes, e.g. ``{head_node: 0.01}``). The Train workers reserve their
    own placement group; the decode actors are the base config's ``data`` section."""

    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    driver_cpus: float = 0.5
    driver_resources: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        check_range("num_workers", self.num_workers, 1, 65536)
        check_range("cpus_per_worker", self.cpus_per_worker, 0.0, 1024)
        check_range("gpus_per_worker", self.gpus_per_worker, 0.0, 16)
        check_range("driver_cpus", self.driver_cpus, 0.0, 1024)
        for k, v in self.driver_resources.items():
            check_range(f"driver_resources.{k}", v, 0.0, lo_open=True)


@dataclass(frozen=True)
class ProbeConfig:
    """The trial's score ``score``: weighted kNN top-1 accuracy (percent) of the val split against the train split
    as the bank (``knn_top1``), or the val top-1 of a linear probe (BatchNorm + linear, ``linear_epochs`` epochs of
    SGD) trained on the train split's features (``linear_top1``), or the mean of the two (``mean_top1``: an encoder
    must be good on both probes); the kNN score is reported either way.
    ``train_per_class`` / ``val_per_class`` take the first that many videos of each class from the lists (written
    to ``<sweep dir>/probe/``): the probe decodes its clips once per trial and keeps them in memory, so the full
    K400 train list is out of reach. ``num_classes`` None: ``data.num_classes``, else the largest label in the
    lists + 1."""

    score: str = SCORES[0]
    k: int = 20
    temperature: float = 0.07
    linear_epochs: int = 100
    train_per_class: int | None = None
    val_per_class: int | None = None
    num_classes: int | None = None

    def validate(self) -> None:
        check_choice("score", self.score, SCORES)
        check_range("k", self.k, 1)
        check_range("temperature", self.temperature, 0.0, lo_open=True)
        check_range("linear_epochs", self.linear_epochs, 1)
        for name in ("train_per_class", "val_per_class"):
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), 1)
        if self.num_classes is not None:
            check_range("num_classes", self.num_classes, 2)


@dataclass(frozen=True)
class SweepConfig:
    """A sweep. Its directory ``storage_path/name`` holds Tune's experiment (per-trial ``progress.csv``,
    ``result.json`` and TensorBoard events), each trial's pretraining run under ``trials/``, the Optuna study
    (``study.db`` unless ``study_storage`` names a SQLAlchemy URL), ``best_config.yaml``, ``summary.csv`` and the
    plots. Running the same config again resumes an interrupted sweep.

    The base pretraining run is ``pretrain_config`` (a YAML file, relative to the working directory) updated with
    the inline ``pretrain`` mapping and the ``overrides`` (``section.field=value``); the sweep then sets each
    trial's steps, probe interval, resources, name and storage.
    """

    name: str = "sweep"
    storage_path: str = "runs/sweeps"
    pretrain_config: str | None = None
    pretrain: dict[str, Any] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()
    search: SearchSpace = field(default_factory=SearchSpace)
    num_samples: int = 16
    max_concurrent: int = 2
    trial: TrialConfig = field(default_factory=TrialConfig)
    asha: AshaConfig = field(default_factory=AshaConfig)
    resources: TrialResources = field(default_factory=TrialResources)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    seed: int = 0                          # the TPE sampler's; a resumed sweep continues at seed + trials so far
    study_storage: str | None = None       # SQLAlchemy URL; None: sqlite:///<sweep dir>/study.db

    def validate(self) -> None:
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"name = {self.name!r} must be a non-empty directory name without '/'")
        if not self.storage_path:
            raise ConfigError("storage_path must not be empty")
        if is_uri(self.storage_path) and self.study_storage is None:
            raise ConfigError(f"storage_path = {self.storage_path!r} is a URI: set study_storage to a SQLAlchemy "
                              "URL (the default SQLite file needs a local directory)")
        if is_uri(self.storage_path) and (self.probe.train_per_class or self.probe.val_per_class):
            raise ConfigError(f"probe.train_per_class / val_per_class write list files into the sweep directory, "
                              f"and storage_path = {self.storage_path!r} is a URI: use a shared file system path")
        check_range("num_samples", self.num_samples, 1)
        check_range("max_concurrent", self.max_concurrent, 1)
        check_range("seed", self.seed, 0, 2**31 - 1)
        if self.asha.max_t is not None:
            check_range("asha.max_t", self.asha.max_t, self.asha.grace_period, self.trial.num_probes)
        self.base_pretrain()   # the base run must load too, before any Ray work

    def base_pretrain(self) -> PretrainConfig:
        """The base pretraining config (file + inline section + overrides), validated; errors say ``pretrain``."""
        data = load_yaml(self.pretrain_config) if self.pretrain_config is not None else {}
        data = deep_merge(data, self.pretrain)
        try:
            return from_dict(PretrainConfig, merge_overrides(data, self.overrides))
        except ConfigError as e:
            where = f" ({self.pretrain_config})" if self.pretrain_config else ""
            raise ConfigError(f"pretrain{where}: {e}") from None

    @property
    def sweep_dir(self) -> str:
        """``storage_path/name``, absolute for a local path."""
        if is_uri(self.storage_path):
            return f"{self.storage_path.rstrip('/')}/{self.name}"
        return str((Path(self.storage_path).expanduser() / self.name).resolve())

    @property
    def study_url(self) -> str:
        return self.study_storage or f"sqlite:///{self.sweep_dir}/{STUDY_FILE}"

    @property
    def rung_steps(self) -> tuple[int, int]:
        """ASHA's grace period and max_t in optimizer steps (the scheduler's time attribute is the step)."""
        max_t = self.asha.max_t if self.asha.max_t is not None else self.trial.num_probes
        return self.asha.grace_period * self.trial.probe_every, min(max_t * self.trial.probe_every, self.trial.steps)


def trial_pretrain_config(base: PretrainConfig, params: dict[str, Any], sweep: SweepConfig, name: str,
                          storage_path: str) -> PretrainConfig:
    """The pretraining run of one trial: ``base`` with the sampled ``params`` (names of :data:`PARAM_FIELDS`), the
    sweep's steps, probe interval (a checkpoint at every probe) and resources, validated."""
    tr = sweep.resources
    data = apply_params(base, params)
    data.update(name=name, storage_path=storage_path)
    data["train"].update(max_steps=sweep.trial.steps, probe_every=sweep.trial.probe_every,
                         checkpoint_every=sweep.trial.probe_every, num_workers=tr.num_workers,
                         cpus_per_worker=tr.cpus_per_worker, use_gpu=tr.gpus_per_worker > 0,
                         gpus_per_worker=tr.gpus_per_worker if tr.gpus_per_worker > 0 else None)
    return from_dict(PretrainConfig, data)


def apply_params(base: PretrainConfig, params: dict[str, Any]) -> dict[str, Any]:
    """``base`` as a nested dict with the sampled ``params`` written into their fields. A sampled ``lr`` scales
    ``train.min_lr`` with it, so every trial's cosine ends at the base config's fraction of its peak (the demo's
    1%); a fixed floor would change the schedule's shape from trial to trial, and lie above a low peak."""
    from sigma_ray.infra.config import to_dict

    data = to_dict(base)
    if "lr" in params:
        data["train"]["min_lr"] = base.train.min_lr * params["lr"] / base.train.base_lr
    for key, value in params.items():
        if key not in PARAM_FIELDS:
            raise ConfigError(f"unknown search parameter {key!r}; known: {', '.join(PARAM_FIELDS)}")
        *sections, fld = PARAM_FIELDS[key]
        node = data
        for section in sections:
            node = node[section]
        node[fld] = value
    return data
