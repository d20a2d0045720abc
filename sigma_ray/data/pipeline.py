"""The Ray Data pipeline: rows (path, label, video id, view) -> a pool of CPU actors that decode, augment and
mask -> batches with the plain iterator's dict layout, streamed to consumers (``iter_torch_batches`` here, or
``get_dataset_shard`` in a Ray Train worker).

Determinism: every sample is made by :class:`~sigma_ray.data.clips.ClipMaker` with its own
``(seed, epoch, video_id, view)`` generator, so the pipeline gives exactly the plain iterator's clips and masks;
only the order of samples may differ (compare by video id). Epochs reshuffle the rows with ``(seed, epoch)``.

Skipped videos: each actor drops them from its output batch and reports (rows seen, [(path, reason)]) to one
small :class:`SkipStatsActor` per pipeline, which keeps the counts per epoch. The actor that pushes the count
over ``max_skip_fraction`` (after ``skip_min_rows`` rows) raises SkipBoundError, which fails the dataset for
every consumer; :meth:`ClipPipeline.iter_torch_batches` checks the final count once more at the end. (The
trainer's stream leaves the bound to the training loop, which stops all its workers together.)

Throughput: the same actor keeps a :class:`PipelineStats` per epoch (a SkipStats with more fields): clips
produced by the clip actors and their busy time (producer side), and per consumer the clips taken, the time it
waited for them and its wall time (consumer side, fed by a :class:`ConsumerMeter`: ``iter_torch_batches`` uses
one; a Ray Train worker wraps its shard's iterator in one). ``pipeline.stats(epoch).summary()`` reads e.g.
``produced 412 clips, 20.1 clips/s (9.8 per actor-second) | consumed 412, 19.9 clips/s, waited 3% of the time``.

Repeated sampling (``num_repeats > 1``, train): each actor cuts that many clips from every decoded window
(:meth:`ClipMaker.make`), each a separate batch entry with its repeat index in ``views``.

Placement: ``actor_num_cpus`` and ``actor_resources`` go to every clip actor; on a cluster with CPU-only decode
nodes (``cluster.yaml``'s ``cpu_decode`` advertises ``decode_node: 1``), ``actor_resources={"decode_node":
0.01}`` keeps the actors there and the GPU nodes' cores for the trainers.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import ray

from sigma_ray.data.annotations import VideoRecord, load_split
from sigma_ray.data.clips import ClipMaker, Row, SkipStats, epoch_rows
from sigma_ray.data.config import DataConfig
from sigma_ray.data.decode import VideoDecodeError
from sigma_ray.data.iterator import collate, has_views


def ensure_ray() -> None:
    """Connect to the running Ray (``RAY_ADDRESS``), or start a local one (:func:`sigma_ray.ray_session.init_ray`)."""
    from sigma_ray.ray_session import init_ray

    init_ray()


@dataclass
class PipelineStats(SkipStats):
    """One epoch of a pipeline: the skip counts plus clips produced versus consumed and consumer wait time.

    Producer: ``produced`` clips made by the clip actors, ``busy_s`` the actors' summed time making them, and
    ``first_t`` / ``last_t`` the wall-clock start of the first and end of the last batch. Consumers (one per
    trainer worker, by name): ``(clips, wait_s, wall_s)``, the clips taken, the seconds spent waiting for them,
    and the seconds from the first request to the last batch.
    """

    produced: int = 0
    busy_s: float = 0.0
    first_t: float | None = None
    last_t: float | None = None
    consumers: dict[str, tuple[int, float, float]] = field(default_factory=dict)

    def produce(self, clips: int, busy_s: float, t_start: float, t_end: float) -> None:
        self.produced += clips
        self.busy_s += busy_s
        self.first_t = t_start if self.first_t is None else min(self.first_t, t_start)
        self.last_t = t_end if self.last_t is None else max(self.last_t, t_end)

    def consume(self, name: str, clips: int, wait_s: float, wall_s: float) -> None:
        """Set (not add) consumer ``name``'s running totals."""
        self.consumers[name] = (int(clips), float(wait_s), float(wall_s))

    @property
    def produced_per_s(self) -> float:
        """Clips/s made by all actors together, over the wall time from the first to the last batch."""
        span = (self.last_t or 0.0) - (self.first_t or 0.0)
        return self.produced / span if span > 0 else 0.0

    @property
    def clips_per_actor_s(self) -> float:
        """Clips per second of actor work (per core when each actor has one CPU)."""
        return self.produced / self.busy_s if self.busy_s > 0 else 0.0

    @property
    def consumed(self) -> int:
        return sum(c for c, _, _ in self.consumers.values())

    @property
    def wait_s(self) -> float:
        """Seconds consumers waited for data, summed over consumers."""
        return sum(w for _, w, _ in self.consumers.values())

    @property
    def consumed_per_s(self) -> float:
        """Clips/s taken by all consumers together (each over its own wall time)."""
        return sum(c / t for c, _, t in self.consumers.values() if t > 0)

    @property
    def wait_fraction(self) -> float:
        """Mean over consumers of the fraction of their wall time spent waiting for data."""
        parts = [w / t for _, w, t in self.consumers.values() if t > 0]
        return sum(parts) / len(parts) if parts else 0.0

    def summary(self) -> str:
        return (f"produced {self.produced} clips, {self.produced_per_s:.1f} clips/s "
                f"({self.clips_per_actor_s:.1f} per actor-second) | consumed {self.consumed} by "
                f"{len(self.consumers)} consumer(s), {self.consumed_per_s:.1f} clips/s, waited {self.wait_s:.1f} s "
                f"({self.wait_fraction:.0%} of the time) | {self.seen} videos seen, {len(self.skipped)} skipped")


@ray.remote(num_cpus=0)
class SkipStatsActor:
    """Per-epoch :class:`PipelineStats` of one pipeline, fed by the clip actors and the consumers."""

    def __init__(self):
        self.epochs: dict[int, PipelineStats] = {}

    def add(self, epoch: int, seen: int, skipped: list[tuple[str, str]], produced: int = 0, busy_s: float = 0.0,
            t_start: float | None = None, t_end: float | None = None) -> PipelineStats:
        stats = self.epochs.setdefault(epoch, PipelineStats())
        stats.add(seen, skipped)
        if t_start is not None:
            stats.produce(produced, busy_s, t_start, t_end if t_end is not None else t_start)
        return stats

    def consumed(self, epoch: int, name: str, clips: int, wait_s: float, wall_s: float) -> None:
        self.epochs.setdefault(epoch, PipelineStats()).consume(name, clips, wait_s, wall_s)

    def get(self, epoch: int) -> PipelineStats:
        return self.epochs.get(epoch, PipelineStats())

    def all(self) -> dict[int, PipelineStats]:
        return dict(self.epochs)


class ConsumerMeter:
    """Wraps a batch iterator and measures what its consumer (a trainer) gets: clips taken, seconds waited in
    ``next()``, and wall seconds since the first request; reports them to a pipeline's stats actor every
    ``report_every_s`` and at the end. In a Ray Train worker::

        meter = ConsumerMeter(stats_actor, epoch, name=f"rank{rank}")     # stats_actor = pipeline.stats_actor
        for batch in meter.wrap(shard.iter_torch_batches(batch_size=...)):
            ...
        meter.wait_s   # this worker's data wait time

    ``stats_actor=None`` measures without reporting.
    """

    def __init__(self, stats_actor=None, epoch: int = 0, name: str = "consumer", report_every_s: float = 10.0):
        self.stats_actor, self.epoch, self.name = stats_actor, epoch, name
        self.report_every_s = report_every_s
        self.clips, self.wait_s, self.wall_s = 0, 0.0, 0.0
        self._t0: float | None = None
        self._reported = 0.0

    def wrap(self, batches: Iterable[dict], key: str = "video_ids") -> Iterator[dict]:
        it = iter(batches)
        self._t0 = time.perf_counter()
        try:
            while True:
                t = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    break
                now = time.perf_counter()
                self.wait_s += now - t
                self.wall_s = now - self._t0
                self.clips += len(batch[key])
                if self.stats_actor is not None and now - self._reported >= self.report_every_s:
                    self._reported = now
                    self.report()
                yield batch
        finally:
            self.report(block=True)

    def report(self, block: bool = False) -> None:
        if self.stats_actor is None:
            return
        ref = self.stats_actor.consumed.remote(self.epoch, self.name, self.clips, self.wait_s, self.wall_s)
        if block:
            ray.get(ref)


class ClipBatchUDF:
    """The ``map_batches`` callable class: one per actor, holding the decoder/augmentation settings."""

    def __init__(self, config: DataConfig, split: str, epoch: int, stats: ray.actor.ActorHandle,
                 enforce_bound: bool = True):
        self.config = config
        self.epoch = epoch
        self.stats = stats
        self.enforce_bound = enforce_bound
        self.maker = ClipMaker(config, split)
        self.with_views = has_views(config, split)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t_start, t0 = time.time(), time.perf_counter()
        samples, skipped = [], []
        for path, label, video_id, view in zip(batch["path"], batch["label"], batch["video_id"], batch["view"]):
            try:
                samples.extend(self.maker.make(Row(str(path), int(label), int(video_id), int(view)), self.epoch))
            except VideoDecodeError as e:
                skipped.append((e.path, e.reason))
        busy = time.perf_counter() - t0
        # synchronous, so the counts are complete by the time the consumer sees this batch's rows
        total = ray.get(self.stats.add.remote(self.epoch, len(batch["path"]), skipped, len(samples), busy,
                                              t_start, t_start + busy))
        if self.enforce_bound:
            total.check(self.config.max_skip_fraction, self.config.skip_min_rows)
        return collate(samples, self.with_views) if samples else self._empty()

    def _empty(self) -> dict[str, np.ndarray]:
        c = self.config
        out = {"clips": np.zeros((0, c.num_frames, c.input_size, c.input_size, 3), np.uint8),
               "masks": np.zeros((0, self.maker.masks.num_tokens), bool),
               "labels": np.zeros(0, np.int64), "video_ids": np.zeros(0, np.int64)}
        if self.with_views:
            out["views"] = np.zeros(0, np.int64)
        return out


class ClipPipeline:
    """Datasets of one split, one per epoch, plus the skip statistics of each epoch.

    ``records`` overrides the config's annotation list. Starts a local Ray when none is running.
    """

    def __init__(self, config: DataConfig, split: str = "train", records: list[VideoRecord] | None = None):
        ensure_ray()
        self.config = config
        self.split = split
        self.records = records if records is not None else load_split(config, split)
        self.stats_actor = SkipStatsActor.remote()

    def dataset(self, epoch: int = 0) -> "ray.data.Dataset":
        c = self.config
        rows = [r._asdict() for r in epoch_rows(self.records, c, self.split, epoch)]
        rows_per_batch = max(1, -(-c.batch_size // c.samples_per_row(self.split)))   # ~batch_size clips out
        ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // rows_per_batch)))
        return ds.map_batches(
            ClipBatchUDF,
            fn_constructor_kwargs={"config": c, "split": self.split, "epoch": epoch, "stats": self.stats_actor},
            batch_size=rows_per_batch, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=c.num_actors_min, max_size=c.num_actors_max),
            num_cpus=c.actor_num_cpus, resources=dict(c.actor_resources) or None)

    def stats(self, epoch: int = 0) -> PipelineStats:
        """Rows seen and videos skipped so far in ``epoch`` (complete once its dataset was consumed), plus clips
        produced versus consumed and consumer wait time (a :class:`PipelineStats`, which is a SkipStats)."""
        return ray.get(self.stats_actor.get.remote(epoch))

    def num_samples(self, epoch: int = 0) -> int:
        """Samples in ``epoch`` if no video is skipped (rows x ``num_repeats`` for train)."""
        return len(self.records) * self.config.samples_per_video(self.split)

    def iter_torch_batches(self, epoch: int = 0, device: str = "cpu", consumer: str = "driver",
                           **kwargs) -> Iterator[dict]:
        """Torch batches of ``config.batch_size`` for ``epoch``; checks the skip bound at the end. The time spent
        waiting for batches is reported to ``stats(epoch)`` under the name ``consumer``."""
        meter = ConsumerMeter(self.stats_actor, epoch, consumer)
        yield from meter.wrap(self.dataset(epoch).iter_torch_batches(batch_size=self.config.batch_size,
                                                                     device=device, **kwargs))
        self.stats(epoch).check(self.config.max_skip_fraction, self.config.skip_min_rows, final=True)


def build_dataset(config: DataConfig, split: str = "train", epoch: int = 0,
                  records: list[VideoRecord] | None = None) -> "ray.data.Dataset":
    """The dataset of one epoch (use :class:`ClipPipeline` directly to read its skip statistics)."""
    return ClipPipeline(config, split, records).dataset(epoch)
