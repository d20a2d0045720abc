"""The data section of a run's configuration: where the videos are, how clips are sampled, augmented and masked,
and how many CPU actors make them. No Ray import: the plain iterator and notebooks use it too."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sigma_ray.infra.checks import ConfigError, check_choice, check_range
from sigma_ray.method.masking import MaskConfig, num_masked, token_grid

Split = Literal["train", "val", "test"]
SPLITS = ("train", "val", "test")
# (DataConfig field, ModelConfig field) pairs that hold one fact: the clips the data layer makes are those the
# model embeds
SHARED_SIZES = (("num_frames", "num_frames"), ("input_size", "img_size"), ("tubelet", "tubelet"), ("patch", "patch"))
DECODERS = ("pyav", "torchcodec")


@dataclass(frozen=True)
class DataConfig:
    """Defaults are VideoMAE/SIGMA pretraining on Kinetics-400 (16 frames at rate 4, 224 px, tube mask 0.9).

    Annotations: ``train_list`` / ``val_list`` are VideoMAE files (``path label`` per line) or, when they name a
    directory, a folder-per-class layout. ``labeled=False`` reads path-only pretraining lists (label -1).
    Splits: ``train`` = random window + random crop; ``val`` = one centred view from ``val_list``;
    ``test`` = ``test_num_clips`` x ``test_num_crops`` deterministic views from ``val_list``.
    """

    train_list: str | None = None
    val_list: str | None = None
    root: str | None = None               # relative paths in the lists are resolved against it
    labeled: bool = True
    num_classes: int | None = None        # labels must lie in [0, num_classes) when given
    check_files: bool = True              # stat every listed file at load time (error names file:line)

    num_frames: int = 16
    sampling_rate: int = 4                # frame stride of dense sampling (4 for K400, 2 for SSv2)
    # the prepared copy's frame stride (sigma-ray prepare --frame-stride); None: read from prepared.json beside
    # the split's list where the clips are made (the Ray pipeline reads it in the driver and passes it on)
    frame_stride: int | None = None
    sampling: Literal["dense", "segment"] = "dense"
    input_size: int = 224
    decode_short_side: int = 320          # sources larger than this are resized in the decoder (K400 uses 320)
    crop: Literal["multiscale", "random_resized"] = "multiscale"
    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)   # multi-scale crop, fractions of the short side
    max_distort: int = 1                  # multi-scale crop: max index distance between width and height scales
    rrc_scale: tuple[float, float] = (0.08, 1.0)          # random resized crop: area fraction range
    rrc_ratio: tuple[float, float] = (0.75, 4.0 / 3.0)    # random resized crop: aspect ratio range
    flip: bool = False                    # off by default: flipping breaks left/right classes
    num_repeats: int = 1                  # train: clips cut from one decoded window, each with its own crop,
                                          # flip and mask, counted as separate samples (1 = the paper; 2-4
                                          # when decoding is the bottleneck, at the cost of less diverse batches)
    mask: MaskConfig = field(default_factory=MaskConfig)
    tubelet: int = 2
    patch: int = 16

    batch_size: int = 8
    num_actors_min: int = 1
    num_actors_max: int = 2
    actor_num_cpus: float = 0.5           # fractional so a 2-core machine can run actors beside the trainer
    actor_resources: dict[str, float] = field(default_factory=dict)   # e.g. {"decode_node": 0.01}: cluster.yaml's
                                          # CPU-only cpu_decode nodes, keeping GPU nodes' cores for trainers
    decoder: Literal["pyav", "torchcodec"] = "pyav"   # the video decoder of the clip actors: PyAV, or torchcodec
                                          # on the same FFmpeg (benchmarks/README.md compares them per core)
    decode_threads: int = 1               # FFmpeg threads per decoder; 1 since actors already run in parallel
    decode_cache_mb: float = 0.0          # per process: keep whole decoded videos up to this many MiB and cut
                                          # clips from them (0 = decode every clip; for sets that fit in memory)
    seed: int = 0
    max_skip_fraction: float = 0.05       # more skipped videos than this fraction of rows seen is an error
    skip_min_rows: int = 20               # the fraction is checked once this many rows were seen (and at the end)
    test_num_clips: int = 5
    test_num_crops: int = 3

    def validate(self) -> None:
        check_range("num_classes", self.num_classes or 1, 1)
        check_range("num_frames", self.num_frames, 1)
        check_range("sampling_rate", self.sampling_rate, 1, 64)
        if self.frame_stride is not None:
            check_range("frame_stride", self.frame_stride, 1, 64)
        check_choice("sampling", self.sampling, ("dense", "segment"))
        check_range("input_size", self.input_size, 16, 4096)
        check_range("decode_short_side", self.decode_short_side, self.input_size, 8192)
        check_choice("crop", self.crop, ("multiscale", "random_resized"))
        if not self.scales:
            raise ConfigError("scales must list at least one scale in (0, 1]")
        for i, s in enumerate(self.scales):
            check_range(f"scales[{i}]", s, 0.0, 1.0, lo_open=True)
        check_range("max_distort", self.max_distort, 0, len(self.scales))
        check_range("rrc_scale[0]", self.rrc_scale[0], 0.0, self.rrc_scale[1], lo_open=True)
        check_range("rrc_scale[1]", self.rrc_scale[1], self.rrc_scale[0], 1.0)
        check_range("rrc_ratio[0]", self.rrc_ratio[0], 0.0, self.rrc_ratio[1], lo_open=True)
        check_range("rrc_ratio[1]", self.rrc_ratio[1], self.rrc_ratio[0], 100.0)
        check_range("num_repeats", self.num_repeats, 1, 64)
        check_range("tubelet", self.tubelet, 1, self.num_frames)
        check_range("patch", self.patch, 1, self.input_size)
        try:
            grid = token_grid(self.num_frames, self.input_size, self.input_size, self.tubelet, self.patch)
            num_masked(grid, self.mask.ratio, self.mask.kind)
        except ConfigError as e:
            raise ConfigError(f"num_frames/input_size/tubelet/patch/mask: {e}") from None
        check_range("batch_size", self.batch_size, 1, 65536)
        check_range("num_actors_min", self.num_actors_min, 1, 4096)
        check_range("num_actors_max", self.num_actors_max, self.num_actors_min, 4096)
        check_range("actor_num_cpus", self.actor_num_cpus, 0.0, 64.0, lo_open=True)
        for k, v in self.actor_resources.items():
            check_range(f"actor_resources.{k}", v, 0.0, lo_open=True)
        check_choice("decoder", self.decoder, DECODERS)
        check_range("decode_threads", self.decode_threads, 0, 64)
        check_range("decode_cache_mb", self.decode_cache_mb, 0.0, 2.0**20)
        check_range("seed", self.seed, 0, 2**63 - 1)
        check_range("max_skip_fraction", self.max_skip_fraction, 0.0, 1.0)
        check_range("skip_min_rows", self.skip_min_rows, 1)
        check_range("test_num_clips", self.test_num_clips, 1, 64)
        check_choice("test_num_crops", self.test_num_crops, (1, 3))

    @property
    def grid(self) -> tuple[int, int, int]:
        """The (t, h, w) token grid of one clip."""
        return token_grid(self.num_frames, self.input_size, self.input_size, self.tubelet, self.patch)

    def views(self, split: str) -> int:
        """Samples per video: 1 for train/val, test_num_clips x test_num_crops for test."""
        check_choice("split", split, SPLITS)
        return self.test_num_clips * self.test_num_crops if split == "test" else 1

    def samples_per_row(self, split: str) -> int:
        """Samples made from one row (video view): ``num_repeats`` for train, 1 for val/test."""
        check_choice("split", split, SPLITS)
        return self.num_repeats if split == "train" else 1

    def samples_per_video(self, split: str) -> int:
        """Samples per video and epoch: ``num_repeats`` for train, ``views(split)`` for val/test."""
        return self.views(split) * self.samples_per_row(split)
