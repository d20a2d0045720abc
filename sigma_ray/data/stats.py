"""What a pass over a data set counts: rows seen, videos skipped as unreadable (:class:`SkipStats`), and for the
Ray pipeline clips produced versus consumed and the consumers' wait time (:class:`PipelineStats`), kept per epoch
by one :class:`~sigma_ray.data.stats_actor.SkipStatsActor` per pipeline and fed on the consumer side by a
:class:`ConsumerMeter`.

No Ray import here (the plain iterator and the in-process training loop count with these classes on machines
without Ray); the actor lives in :mod:`sigma_ray.data.stats_actor`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator



class SkipBoundError(RuntimeError):
    """Too many videos of a data set were skipped as unreadable; the message lists some of them."""


@dataclass
class SkipStats:
    """Rows seen and videos skipped (path, reason) during one pass."""

    seen: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, seen: int, skipped: list[tuple[str, str]] = ()) -> None:
        self.seen += seen
        self.skipped.extend(tuple(s) for s in skipped)

    @property
    def fraction(self) -> float:
        return len(self.skipped) / self.seen if self.seen else 0.0

    def check(self, max_fraction: float, min_rows: int, final: bool = False) -> None:
        """Raise SkipBoundError when more than ``max_fraction`` of the rows seen were skipped.

        Before ``min_rows`` rows the check is deferred (a few early failures say little about a data set)
        unless ``final``, i.e. the pass is over and the count is the whole truth.
        """
        if (final or self.seen >= min_rows) and self.fraction > max_fraction:
            examples = "; ".join(f"{p}: {r}" for p, r in self.skipped[:5])
            raise SkipBoundError(f"{len(self.skipped)} of {self.seen} videos skipped ({self.fraction:.1%} > "
                                 f"max_skip_fraction {max_fraction:.1%}), e.g. {examples}")


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
            import ray   # only with an actor, i.e. on the Ray pipeline

            ray.get(ref)
