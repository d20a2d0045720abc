"""The pretraining run's configuration: the optimizer recipe, the Ray Train resources, and the whole run.

:class:`TrainConfig` holds the paper's ViT-B recipe (AdamW, betas (0.9, 0.95), weight decay 0.05, base lr 1.5e-4
and min lr 1e-5 both scaled by global batch / 256, 40 warm-up epochs of 800). :class:`PretrainConfig` bundles
the model, objective, data and train sections with the run's name and storage path, and checks that they agree
(the clip shape the data layer makes is the one the model embeds). No Ray import here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sigma_ray.data.config import SHARED_SIZES, DataConfig
from sigma_ray.data.synthetic import SyntheticConfig
from sigma_ray.infra.checks import ConfigError, check_choice, check_range
from sigma_ray.infra.config import from_dict, load_yaml, merge_overrides
from sigma_ray.method.sigma import ObjectiveConfig
from sigma_ray.method.vit import ModelConfig

Precision = Literal["auto", "bf16", "fp16", "fp32"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer, schedule, precision, resources and bookkeeping of one pretraining run.

    Steps are optimizer steps. One step consumes ``data.batch_size x accumulate_steps`` clips on each of
    ``num_workers`` workers (the *global batch*); an epoch is ``len(train set) // global batch`` steps
    (``steps_per_epoch`` caps it). ``max_steps`` caps the run *and* compresses the schedule to that many steps
    (warm-up keeps its fraction ``warmup_epochs / epochs``): for tests and demos.

    ``init_from``: a sigma-ray model state (``model.pt``, written by ``sigma-ray import`` from a released
    pretraining checkpoint) loaded before step 0 when the run has no checkpoint of its own; a resumed run ignores it.
    A local or shared-filesystem path every worker can read; it must match ``model`` and ``objective``.
    """

    epochs: int = 800
    warmup_epochs: float = 40
    base_lr: float = 1.5e-4               # scaled by global batch / 256
    min_lr: float = 1e-5                  # scaled by global batch / 256 too
    weight_decay: float = 0.05
    weight_decay_end: float | None = None  # cosine weight-decay schedule to this value when set
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = None
    accumulate_steps: int = 1
    compile: bool = False
    precision: Precision = "auto"         # auto: bf16 autocast on GPU, fp32 on CPU; fp16 uses a GradScaler

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # 1 when use_gpu and unset; ignored without use_gpu
    check_placement: bool = True          # fail before starting when a fixed-size cluster cannot hold the run

    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    max_failures: int = 0
    max_steps: int | None = None
    steps_per_epoch: int | None = None
    seed: int = 0
    probe_every: int | None = None        # steps between probes of the encoder (needs a probe; see pretrain)
    torch_threads: int | None = None      # intra-op threads per worker; None keeps Ray's (its CPUs, at least 1)
    init_from: str | None = None          # model.pt to start from (not resumed runs)

    def validate(self) -> None:
        check_range("epochs", self.epochs, 1)
        check_range("warmup_epochs", self.warmup_epochs, 0, self.epochs)
        check_range("base_lr", self.base_lr, 0.0, lo_open=True)
        check_range("min_lr", self.min_lr, 0.0)
        check_range("weight_decay", self.weight_decay, 0.0)
        if self.weight_decay_end is not None:
            check_range("weight_decay_end", self.weight_decay_end, 0.0)
        for i, b in enumerate(self.betas):
            check_range(f"betas[{i}]", b, 0.0, 1.0, hi_open=True)
        if self.grad_clip is not None:
            check_range("grad_clip", self.grad_clip, 0.0, lo_open=True)
        check_range("accumulate_steps", self.accumulate_steps, 1, 4096)
        check_choice("precision", self.precision, ("auto", "bf16", "fp16", "fp32"))
        check_range("num_workers", self.num_workers, 1, 65536)
        check_range("cpus_per_worker", self.cpus_per_worker, 0.0, 1024)
        if self.gpus_per_worker is not None:
            check_range("gpus_per_worker", self.gpus_per_worker, 0.0, 16, lo_open=self.use_gpu)
        check_range("log_every", self.log_every, 1)
        check_range("checkpoint_every", self.checkpoint_every, 1)
        check_range("keep_checkpoints", self.keep_checkpoints, 1)
        check_range("max_failures", self.max_failures, -1)
        if self.max_steps is not None:
            check_range("max_steps", self.max_steps, 1)
        if self.steps_per_epoch is not None:
            check_range("steps_per_epoch", self.steps_per_epoch, 1)
        check_range("seed", self.seed, 0, 2**63 - 1)
        if self.probe_every is not None:
            check_range("probe_every", self.probe_every, 1)
        if self.torch_threads is not None:
            check_range("torch_threads", self.torch_threads, 1, 1024)
        if self.init_from is not None and (not self.init_from or "://" in self.init_from):
            raise ConfigError(f"init_from = {self.init_from!r} must be a file path every worker can read "
                              "(a local or shared-filesystem path, not a URI)")

    @property
    def worker_gpus(self) -> float:
        """GPUs per worker actually requested: 0 without use_gpu, else gpus_per_worker (default 1)."""
        if not self.use_gpu:
            return 0.0
        return 1.0 if self.gpus_per_worker is None else float(self.gpus_per_worker)

    def resources_per_worker(self) -> dict[str, float]:
        res = {"CPU": float(self.cpus_per_worker)}
        if self.use_gpu:
            res["GPU"] = self.worker_gpus
        return res


@dataclass(frozen=True)
class PretrainConfig:
    """One pretraining run. Checkpoints, TensorBoard scalars, ``config.yaml`` and ``encoder.pt`` go to
    ``storage_path/name`` (use shared storage, e.g. ``s3://...`` or NFS, on a multi-node cluster; a relative
    path is taken from the working directory). Running again with the same name and storage path resumes
    from the latest checkpoint.

    ``synthetic`` (``true`` or a :class:`~sigma_ray.data.synthetic.SyntheticConfig` mapping) makes the launcher
    write the synthetic data set into ``data.root`` when ``data.train_list`` does not exist yet (local configs).

    The data section must make the clips the model embeds: ``data.num_frames``, ``data.input_size``,
    ``data.tubelet`` and ``data.patch`` are ``model.num_frames``, ``model.img_size``, ``model.tubelet`` and
    ``model.patch``. A config states them in ``model`` alone and the data section takes them from there
    (:meth:`fill_derived`); one that states them in both must state the same values (a mismatch is an error,
    never silently fixed).
    """

    name: str = "sigma"
    storage_path: str = "runs"
    synthetic: bool | SyntheticConfig = False
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @staticmethod
    def fill_derived(raw: dict[str, Any]) -> dict[str, Any]:
        """``raw`` (a PretrainConfig mapping) with each clip size its data section omits taken from its model
        section (or the model's default); ``raw`` itself is left as it was."""
        data = raw.get("data")
        if data is not None and not isinstance(data, dict):
            return raw                    # a DataConfig already built states every size
        model = raw.get("model") or {}
        model = dataclasses.asdict(model) if isinstance(model, ModelConfig) else model
        defaults = ModelConfig()
        data = dict(data or {})
        for d, m in SHARED_SIZES:
            if d not in data:
                data[d] = model.get(m, getattr(defaults, m))
        return {**raw, "data": data}

    def validate(self) -> None:
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"name = {self.name!r} must be a non-empty directory name without '/'")
        if not self.storage_path:
            raise ConfigError("storage_path must not be empty")
        for d, m in SHARED_SIZES:
            if getattr(self.data, d) != getattr(self.model, m):
                raise ConfigError(f"data.{d} = {getattr(self.data, d)} differs from model.{m} = "
                                  f"{getattr(self.model, m)}: the data must make the clips the model embeds")
        if isinstance(self.synthetic, SyntheticConfig):
            self.synthetic.validate()
        if self.synthetic is not False and not (self.data.root and self.data.train_list):
            raise ConfigError("synthetic needs data.root (where to write the set) and data.train_list")

    @property
    def global_batch(self) -> int:
        """Clips per optimizer step over all workers."""
        return self.data.batch_size * self.train.accumulate_steps * self.train.num_workers


def run_length(config: PretrainConfig, num_videos: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) of ``config`` on a train set of ``num_videos`` videos:
    whole global batches per epoch (``train.steps_per_epoch`` caps it), ``train.epochs`` of them, capped by
    ``train.max_steps``. Raises ConfigError when the set holds less than one global batch."""
    tc = config.train
    spe = num_videos // config.global_batch
    if spe < 1:
        raise ConfigError(f"the train set has {num_videos} videos, fewer than one global batch of "
                          f"{config.global_batch} (data.batch_size x train.accumulate_steps x train.num_workers)")
    if tc.steps_per_epoch is not None:
        spe = min(spe, tc.steps_per_epoch)
    total = tc.epochs * spe
    return spe, total if tc.max_steps is None else min(total, tc.max_steps)


def load_pretrain_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                         **top: Any) -> PretrainConfig:
    """A PretrainConfig from an optional YAML file, ``section.field=value`` overrides (values parsed as YAML)
    and top-level keyword overrides (``name=``, ``storage_path=``; None leaves the value). Raises ConfigError
    naming the field for unknown keys, wrong types and out-of-range or inconsistent values."""
    data = load_yaml(path) if path is not None else {}
    data = merge_overrides(data, overrides)
    for k, v in top.items():
        if v is not None:
            data[k] = v
    return from_dict(PretrainConfig, data)
