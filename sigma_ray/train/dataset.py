"""The training stream: one Ray Data dataset that yields every epoch in turn, reshuffled per epoch, resumable.

Ray Train splits the ``train`` dataset across its workers once per worker group, so per-epoch datasets cannot be
swapped in. Instead the dataset's rows are generated lazily per epoch: item ``e`` of a small ``from_items`` list
expands (``flat_map``) into epoch ``e``'s rows, shuffled by ``(data.seed, e)`` exactly as the data layer's
:func:`~sigma_ray.data.clips.epoch_rows` does, cut to ``rows_per_epoch`` (whole global batches). The clip actors
then make each row's clip with *that row's* epoch, so augmentations and masks change every epoch.

Where the stream starts comes from a small :class:`~sigma_ray.train.cursor.DataCursor` actor read when execution
begins: rank 0 sets it from the checkpoint it resumes from, before any worker pulls a batch. Epochs before the
cursor's yield nothing, the cursor's epoch starts ``offset`` rows in. So a worker group restarted by
``FailureConfig`` (which re-executes the same dataset) continues the data where the checkpoint left it instead of at
the first epoch.

Blocks: the clip actors' output blocks close after a few batches (:func:`rows_per_block`), so clips stream to the
trainer a block at a time (the first batch after one block is made, not after a whole epoch).
"""
from __future__ import annotations

import numpy as np
import ray

from sigma_ray.data.clips import epoch_rows
from sigma_ray.data.config import DataConfig
from sigma_ray.data.pipeline import ClipBatchUDF, ClipPipeline


class EpochClipBatchUDF(ClipBatchUDF):
    """The data layer's clip maker, but the epoch comes from each row's ``epoch`` column (batches may straddle
    two epochs). Adds an ``epochs`` column to the output."""

    def __init__(self, config, stats):
        # the bound is the training loop's to enforce: a failing dataset would make Ray restart the workers
        super().__init__(config, "train", 0, stats, enforce_bound=False)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        epochs = np.asarray(batch.pop("epoch"))
        parts = []
        for e in dict.fromkeys(epochs.tolist()):  # first-seen order
            sel = epochs == e
            self.epoch = int(e)
            out = super().__call__({k: np.asarray(v)[sel] for k, v in batch.items()})
            out["epochs"] = np.full(len(out["labels"]), int(e), dtype=np.int64)
            parts.append(out)
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def in_order() -> "ray.data.ExecutionOptions":
    """Ray Train's ingest options for the training stream (the driver's limits) with ``preserve_order``: blocks
    reach the workers in the stream's order, not in the order its tasks happen to finish (without it, two runs of
    one config on the same files differed from the first step), so one worker sees the same batches in every run
    of one seed. Several workers still split the stream as they ask for blocks."""
    ctx = ray.data.DataContext.get_current().execution_options
    return ray.data.ExecutionOptions(resource_limits=ctx.resource_limits, preserve_order=True,
                                     verbose_progress=ctx.verbose_progress)


def clip_bytes(config: DataConfig) -> int:
    """Bytes of one row's clips (uint8; ``num_repeats`` clips per train row)."""
    return config.num_frames * config.input_size ** 2 * 3 * config.samples_per_row("train")


def rows_per_block(config: DataConfig, min_block_bytes: int) -> int:
    """Rows per block of the training stream: whole batches, the fewest whose clips reach ``min_block_bytes``
    (Ray Data's ``target_min_block_size``, 1 MiB by default: smaller blocks cost more in scheduling than they save
    in latency). One batch for paper-size clips; six for the demo's 8 x 32 x 32."""
    return config.batch_size * max(1, -(-min_block_bytes // (config.batch_size * clip_bytes(config))))


def training_stream(pipeline: ClipPipeline, rows_per_epoch: int, num_epochs: int,
                    cursor: "ray.actor.ActorHandle") -> "ray.data.Dataset":
    """Epochs ``0 .. num_epochs-1`` of the pipeline's train records (from the cursor on), ``rows_per_epoch`` rows
    each, through the pipeline's actor pool and skip statistics."""
    config = pipeline.config
    records_ref = ray.put(pipeline.records)

    def rows_of(item: dict) -> list[dict]:
        epoch = int(item["epoch"])
        start, offset = ray.get(cursor.get.remote())
        if epoch < start:
            return []
        rows = epoch_rows(ray.get(records_ref), config, "train", epoch)[:rows_per_epoch]
        if epoch == start:
            rows = rows[offset:]
        return [{**r._asdict(), "epoch": epoch} for r in rows]

    items = ray.data.from_items([{"epoch": e} for e in range(num_epochs)], override_num_blocks=num_epochs)
    # One task at a time: each takes milliseconds, but every concurrent one started its own worker process
    # (importing torch), which on a laptop held the first batch back by ~40 s.
    rows = items.flat_map(rows_of, num_cpus=0.05, compute=ray.data.TaskPoolStrategy(size=1))
    clips = rows.map_batches(
        EpochClipBatchUDF, fn_constructor_kwargs={"config": config, "stats": pipeline.stats_actor},
        batch_size=config.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=config.num_actors_min, max_size=config.num_actors_max),
        num_cpus=config.actor_num_cpus, resources=dict(config.actor_resources) or None)
    # A map task hands its clips on a block at a time, a block closing at target_max_block_size (128 MiB): a whole
    # epoch of small clips, so the trainer waited for every epoch to be decoded. (A repartition step instead is a
    # task that asks for a whole CPU, which two sweep trials on two cores never got.)
    context = clips.context
    context.target_max_block_size = rows_per_block(config, context.target_min_block_size) * clip_bytes(config)
    return clips
