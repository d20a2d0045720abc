"""The evaluation run's configuration: which encoder, which protocols with which settings, which data.

Defaults are SIGMA.md's evaluation protocols (kNN k = 20 and 200 at T = 0.07; VideoMAE/SIGMA fine-tuning:
layer decay 0.75, drop path 0.1, mixup 0.8, cutmix 1.0, label smoothing 0.1, RandAugment m7-n4, random erasing
0.25, 5 warm-up epochs). Built from YAML with :func:`sigma_ray.infra.config.load_config`; a bad value fails at load
time with the field's name and allowed range.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sigma_ray.data.config import DataConfig
from sigma_ray.data.synthetic import SyntheticConfig
from sigma_ray.infra.checks import ConfigError, check_choice, check_range

PROTOCOLS = ("knn", "linear", "finetune")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class KnnConfig:
    ks: tuple[int, ...] = (20, 200)   # each capped at the bank size at run time
    temperature: float = 0.07
    chunk: int = 4096                 # queries scored at a time (memory: chunk x bank size floats)

    def validate(self) -> None:
        if not self.ks:
            raise ConfigError("ks must list at least one k")
        for i, k in enumerate(self.ks):
            check_range(f"ks[{i}]", k, 1)
        check_range("temperature", self.temperature, 0.0, lo_open=True)
        check_range("chunk", self.chunk, 1)


@dataclass(frozen=True)
class LinearConfig:
    epochs: int = 100
    lr: float | None = None           # None: 0.1 for SGD, 1e-3 for AdamW (cosine-decayed to 0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    batch_size: int = 256
    weight_decay: float = 0.0

    def validate(self) -> None:
        check_range("epochs", self.epochs, 1, 100000)
        if self.lr is not None:
            check_range("lr", self.lr, 0.0, 10.0, lo_open=True)
        check_choice("optimizer", self.optimizer, ("sgd", "adamw"))
        check_range("batch_size", self.batch_size, 2, 1 << 20)
        check_range("weight_decay", self.weight_decay, 0.0, 1.0)


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning of the whole encoder plus a LayerNorm + linear head on mean-pooled tokens (VideoMAE's recipe,
    which SIGMA follows). The lr is ``base_lr x batch_size / 256``. ``steps_per_epoch`` caps an epoch (tests,
    demos); ``batch_size`` None takes ``data.batch_size``."""

    epochs: int = 40                  # VideoMAE ViT-B: 40 on SSv2, 75 on K400
    warmup_epochs: float = 5
    base_lr: float = 1e-3             # scaled by batch / 256
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = 0.75
    drop_path: float = 0.1
    head_init_scale: float = 0.001    # the head starts near zero so early steps do not wreck the encoder
    mixup: float = 0.8                # Beta(alpha, alpha) of mixup; 0 turns it off
    cutmix: float = 1.0               # Beta(alpha, alpha) of cutmix; 0 turns it off
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1
    rand_augment: bool = True
    rand_augment_ops: int = 4         # RandAugment n4-m7: the same ops and magnitudes for every frame of a clip
    rand_augment_magnitude: int = 7   # on timm's 0..10 scale
    random_erasing: float = 0.25      # probability of erasing one box (the same box in every frame)
    grad_clip: float | None = None
    batch_size: int | None = None
    steps_per_epoch: int | None = None
    test_split: Literal["val", "test"] = "test"   # test: multi-view (test_num_clips x test_num_crops) accuracy
    precision: Literal["auto", "fp32", "bf16"] = "auto"   # auto: bf16 autocast on GPU, fp32 on CPU

    def validate(self) -> None:
        check_range("epochs", self.epochs, 1, 100000)
        check_range("warmup_epochs", self.warmup_epochs, 0.0, self.epochs)
        check_range("base_lr", self.base_lr, 0.0, 1.0, lo_open=True)
        check_range("min_lr", self.min_lr, 0.0, self.base_lr)
        check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        for i, b in enumerate(self.betas):
            check_range(f"betas[{i}]", b, 0.0, 1.0, hi_open=True)
        check_range("layer_decay", self.layer_decay, 0.0, 1.0, lo_open=True)
        check_range("drop_path", self.drop_path, 0.0, 1.0, hi_open=True)
        check_range("head_init_scale", self.head_init_scale, 0.0, 10.0, lo_open=True)
        check_range("mixup", self.mixup, 0.0, 10.0)
        check_range("cutmix", self.cutmix, 0.0, 10.0)
        check_range("mixup_prob", self.mixup_prob, 0.0, 1.0)
        check_range("mixup_switch_prob", self.mixup_switch_prob, 0.0, 1.0)
        check_range("label_smoothing", self.label_smoothing, 0.0, 1.0, hi_open=True)
        check_range("rand_augment_ops", self.rand_augment_ops, 1, 16)
        check_range("rand_augment_magnitude", self.rand_augment_magnitude, 0, 10)
        check_range("random_erasing", self.random_erasing, 0.0, 1.0)
        if self.grad_clip is not None:
            check_range("grad_clip", self.grad_clip, 0.0, lo_open=True)
        if self.batch_size is not None:
            check_range("batch_size", self.batch_size, 1, 65536)
        if self.steps_per_epoch is not None:
            check_range("steps_per_epoch", self.steps_per_epoch, 1)
        check_choice("test_split", self.test_split, ("val", "test"))
        check_choice("precision", self.precision, PRECISIONS)

    @property
    def mixing(self) -> bool:
        """Whether mixup or cutmix is on (then the targets are soft and the batch size must be even)."""
        return self.mixup_prob > 0 and (self.mixup > 0 or self.cutmix > 0)


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation of one pretrained encoder.

    ``encoder``: an ``encoder.pt`` export, a run directory (its ``encoder.pt``, else its latest
    ``checkpoint_*/``), or one training checkpoint directory (``state.pt``; the model shape is read from the run
    directory's ``config.yaml`` one level up). kNN and the linear probe use features of the train list (one
    centred view per video) and of ``query_split``: ``val`` (one centred view) or ``test`` (multi-view, averaged).
    ``class_names``: a file with one class per line (or ``index name`` lines, as UCF101's classInd.txt) for the
    confusion-matrix axes; unset, ``classes.txt`` beside the train list is used when present.
    ``synthetic`` (``true`` or a SyntheticConfig mapping) writes the synthetic set into ``data.root`` when
    ``data.train_list`` is missing (local configs).
    """

    encoder: str = ""
    protocols: tuple[str, ...] = ("knn", "linear")
    query_split: Literal["val", "test"] = "val"
    out_dir: str = "runs/eval"
    device: str = "auto"              # auto: cuda when available, else cpu; or cpu, cuda, cuda:1
    use_ray: bool = False             # decode with ClipPipeline's Ray Data actors (else in-process)
    feature_batch_size: int | None = None   # clips per forward pass for features (None: data.batch_size)
    class_names: str | None = None
    synthetic: bool | SyntheticConfig = False
    seed: int = 0
    knn: KnnConfig = field(default_factory=KnnConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> None:
        if not self.encoder:
            raise ConfigError("encoder must name an encoder.pt, a run directory or a checkpoint directory")
        if not self.protocols:
            raise ConfigError(f"protocols must list at least one of {', '.join(PROTOCOLS)}")
        for i, p in enumerate(self.protocols):
            check_choice(f"protocols[{i}]", p, PROTOCOLS)
        if len(set(self.protocols)) != len(self.protocols):
            raise ConfigError(f"protocols = {list(self.protocols)} lists a protocol twice")
        check_choice("query_split", self.query_split, ("val", "test"))
        if isinstance(self.synthetic, SyntheticConfig):
            self.synthetic.validate()
        if not self.out_dir:
            raise ConfigError("out_dir must be a directory path")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device = {self.device!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")
        if self.feature_batch_size is not None:
            check_range("feature_batch_size", self.feature_batch_size, 1, 65536)
        check_range("seed", self.seed, 0, 2**63 - 1)
        if not self.data.labeled:
            raise ConfigError("data.labeled must be true: every protocol scores against labels")
        if self.data.num_classes is None:
            raise ConfigError("data.num_classes must be set (the classifier width)")
