"""The per-worker training loop that Ray Train runs on every worker (one per GPU, or a CPU share).

``train_loop_per_worker(loop_config)`` with ``loop_config`` as built by :func:`sigma_ray.train.launch.pretrain`:
``config`` (the PretrainConfig as a dict), ``run_dir``, ``steps_per_epoch``, ``total_steps``, ``cursor`` (the
:class:`~sigma_ray.train.cursor.DataCursor`), ``skip_stats`` (the pipeline's SkipStatsActor), ``console`` (the
driver's :class:`~sigma_ray.train.console.ConsoleActor`) and an optional ``probe``: a callable
``probe(encoder) -> dict[str, float]`` that rank 0 runs on the encoder (in eval mode, no grad) every
``train.probe_every`` steps and at the end, adding its metrics to that step's report (the sweep's kNN score, so
Tune can stop weak trials early). ``wrap_batches`` is a seam for tests only (``tests/train_hooks.py`` makes a
worker fail at a given step): applied once to the batch iterator, it costs the step nothing.

Per step: ``accumulate_steps`` micro-batches from ``get_dataset_shard("train")`` through the core's
``forward_backward`` (DDP's ``no_sync`` on all but the last), then ``optimizer_step``. Sinkhorn all-reduces its
K-vectors over the default process group, the one Ray Train's TorchConfig initializes (gloo on CPU, NCCL on GPU):
equipartition over the global batch. Every ``log_every`` steps: metrics through ``ray.train.report``, and on rank 0
TensorBoard scalars, a ``metrics.jsonl`` row, new unreadable videos in ``skipped.jsonl`` and a console line. Every
``checkpoint_every`` steps and at the end: a checkpoint, and the loop waits until Ray has registered it.

Two conditions stop every worker at the same log step, cleanly (no worker-group restart, no checkpoint of the bad
state): a non-finite loss (``run_dir/nonfinite.json``) and more unreadable videos than ``data.max_skip_fraction``
(``run_dir/data_error.json``, with the reason); the driver turns each into its error.
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from sigma_ray.data.stats import SkipBoundError, SkipStats
from sigma_ray.infra.config import from_dict
from sigma_ray.infra.ray_compat import train_report_logger_name
from sigma_ray.method.sigma import build_model
from sigma_ray.method.step import amp_dtype_for, forward_backward, metrics_to_floats, optimizer_step, seed_everything
from sigma_ray.runs.checkpoint import checkpoint_dir_name, load_checkpoint, save_checkpoint, unwrap
from sigma_ray.runs.files import DATA_ERROR_FILE, METRICS_FILE, NONFINITE_FILE, SKIPPED_FILE, TENSORBOARD_DIR, is_uri
from sigma_ray.runs.object_rundir import StagedFiles
from sigma_ray.runs.rundir import trim_jsonl
from sigma_ray.train.config import PretrainConfig
from sigma_ray.train.console import line as say
from sigma_ray.train.optim import build_optimizer, make_schedule

log = logging.getLogger("sigma_ray.train")


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class _Progress:
    """Rank 0's outputs: TensorBoard scalars, ``metrics.jsonl``, ``skipped.jsonl`` and the console line.

    A resumed attempt starts at ``start_step``: rows of both files past it belong to the dead attempt and are
    dropped (those steps run again), and TensorBoard purges its events past it, so each step has one row."""

    def __init__(self, run_dir: Path, total: int, start_step: int, enabled: bool, console=None,
                 staged: StagedFiles | None = None):
        self.enabled, self.total, self.console, self.staged = enabled, total, console, staged
        self.writer = None
        self.skipped: set[tuple[int, str]] = set()
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            run_dir.mkdir(parents=True, exist_ok=True)
            if staged is not None:   # an object-store run directory: the rows so far, to trim and append to
                staged.pull(METRICS_FILE, SKIPPED_FILE)
            self.metrics_path, self.skipped_path = run_dir / METRICS_FILE, run_dir / SKIPPED_FILE
            trim_jsonl(self.metrics_path, start_step)
            self.skipped = {(r["epoch"], r["path"]) for r in trim_jsonl(self.skipped_path, start_step)}
            self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=start_step + 1)

    def record_skips(self, step: int, stats: dict[int, SkipStats], data_epoch: int) -> int:
        """Append the skips not yet recorded to ``skipped.jsonl`` (path, reason, epoch, step); returns how many
        distinct videos were skipped so far. Only epochs up to ``data_epoch`` (the newest this rank has trained on)
        count: the decode actors run ahead, and a later epoch's skip is stamped with a step of that epoch."""
        with self.skipped_path.open("a") as f:
            for epoch, st in sorted(stats.items()):
                if epoch > data_epoch:
                    continue
                for path, reason in st.skipped:
                    if (epoch, path) not in self.skipped:
                        self.skipped.add((epoch, path))
                        f.write(json.dumps({"step": step, "epoch": epoch, "path": path, "reason": reason}) + "\n")
        return len({p for _, p in self.skipped})

    def write(self, step: int, metrics: dict, eta_s: float) -> None:
        if not self.enabled:
            return
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and k != "step":
                self.writer.add_scalar(f"train/{k}", v, step)
        self.writer.flush()
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.staged is not None:
            self.staged.push()
        loss = metrics.get("loss", float("nan"))
        say(self.console,
            f"[sigma-ray] step {step}/{self.total} ({100 * step / self.total:.1f}%) epoch {metrics['epoch']} "
            f"| loss {loss:.4f} | lr {metrics['lr']:.3g} | {metrics['clips_per_s']:.1f} clips/s "
            f"| data wait {metrics['data_wait_s'] * 1e3:.0f} ms/step | {metrics.get('skipped_videos', 0)} skipped "
            f"| ETA {format_eta(eta_s)}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.staged is not None:
            self.staged.push()
            self.staged.close()


def run_probe(probe, model: torch.nn.Module) -> dict[str, float]:
    """``probe(encoder)`` with the encoder in eval mode and without gradients; the training mode is restored."""
    encoder = unwrap(model).encoder
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            return {k: float(v) for k, v in probe(encoder).items()}
    finally:
        encoder.train(was_training)


def _skip_totals(skip_stats) -> dict[int, SkipStats]:
    """Every epoch's skip statistics so far, from the pipeline's stats actor."""
    return ray.get(skip_stats.all.remote()) if skip_stats is not None else {}


def _skip_problem(stats: dict[int, SkipStats], dc, final: bool) -> str | None:
    """Why the run must stop for unreadable videos (an epoch over the skip bound), or None."""
    for epoch, st in sorted(stats.items()):
        try:
            st.check(dc.max_skip_fraction, dc.skip_min_rows, final=final)
        except SkipBoundError as e:
            return f"epoch {epoch}: {e}"
    return None


def _stop(run_dir: Path, name: str, record: dict, staged: StagedFiles | None = None) -> None:
    """Rank 0 leaves why the run stopped for the driver (Ray's result only carries the last checkpoint)."""
    (run_dir / name).write_text(json.dumps(record))
    if staged is not None:
        staged.push()


def train_loop_per_worker(loop_config: dict) -> None:
    config = from_dict(PretrainConfig, loop_config["config"])
    # Ray Train logs every report's whole metrics dict at INFO; the console line says what matters once.
    logging.getLogger(train_report_logger_name()).setLevel(logging.WARNING)
    tc, dc = config.train, config.data
    spe, total = int(loop_config["steps_per_epoch"]), int(loop_config["total_steps"])
    console = loop_config.get("console")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # rank 0's files of a run directory on object storage are written locally and uploaded (object_rundir)
    staged = StagedFiles(loop_config["run_dir"]) if rank == 0 and is_uri(loop_config["run_dir"]) else None
    run_dir = staged.local if staged is not None else Path(loop_config["run_dir"])
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("Ray Train did not initialize the torch process group: Sinkhorn cannot be gathered")
    device = ray.train.torch.get_device()
    global_batch = config.global_batch

    if tc.torch_threads is not None:
        # Ray sets OMP_NUM_THREADS to a fractional-CPU worker's share (1): a laptop's worker may use its cores
        torch.set_num_threads(tc.torch_threads)
    seed_everything(tc.seed)  # the same initial weights everywhere (DDP broadcasts rank 0's anyway)
    model = build_model(config.model, config.objective).to(device)
    schedule = make_schedule(tc, total, global_batch)
    optimizer = build_optimizer(model, schedule.peak_lr, tc.weight_decay, tc.betas, device)
    amp_dtype = amp_dtype_for(tc.precision, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

    start_step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            restored = load_checkpoint(d, model, optimizer, scaler, rank, map_location=device)
        start_step = restored.step
        model.batches_seen = start_step * tc.accumulate_steps
        model.load_queue_state_dict(restored.extra.get("queues", {}), device)
    else:
        if tc.init_from:  # a new run starting from imported weights (a resumed run has its own)
            from sigma_ray.runs.export import init_from_model_state

            init_from_model_state(model, tc.init_from, config.model, config.objective)
        seed_everything(tc.seed + 1000003 * rank)  # per-rank streams for drop path etc.

    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    forward_model = torch.compile(ddp) if tc.compile else ddp

    # The data stream resumes where the checkpoint's step left it; set before any worker pulls a batch.
    if rank == 0:
        ray.get(loop_config["cursor"].set.remote(start_step // spe, (start_step % spe) * global_batch))
    if world > 1:
        dist.barrier()
    shard = ray.train.get_dataset_shard("train")
    batches = iter(shard.iter_torch_batches(batch_size=dc.batch_size, drop_last=True, prefetch_batches=2))
    wrap = loop_config.get("wrap_batches")   # a test seam (tests/train_hooks.py); None in real runs
    if wrap is not None:
        batches = wrap(batches, {"rank": rank, "world": world, "start_step": start_step,
                                 "accumulate_steps": tc.accumulate_steps, "run_dir": loop_config["run_dir"]})

    progress = _Progress(run_dir, total, start_step, enabled=rank == 0, console=console, staged=staged)
    skip_stats = loop_config.get("skip_stats")
    probe = loop_config.get("probe")
    data_epochs: set[int] = set()
    sums: dict[str, torch.Tensor] = {}
    interval_steps, interval_wait = 0, 0.0
    # [first step with a non-finite loss, 1 when too many videos were skipped]: max-reduced at log steps
    flags = torch.tensor([-1, 0], dtype=torch.int64, device=device)
    step = start_step
    t_start = t_interval = time.perf_counter()
    if rank == 0:
        say(console, f"[sigma-ray] {'resuming at' if start_step else 'starting'} step {start_step}/{total} "
                     f"({world} workers, global batch {global_batch}, {spe} steps/epoch, device {device})")
    try:
        while step < total:
            lr = schedule.apply(optimizer, step)
            for micro in range(tc.accumulate_steps):
                t0 = time.perf_counter()
                try:
                    batch = next(batches)
                except StopIteration:
                    problem = _skip_problem(_skip_totals(skip_stats), dc, final=True)
                    if problem is None:
                        raise RuntimeError(f"the training data ran out at step {step + 1} of {total} on worker "
                                           f"{rank}") from None
                    if rank == 0:   # every worker's equal split runs dry at the same step
                        _stop(run_dir, DATA_ERROR_FILE, {"step": step, "reason": problem}, staged)
                    return
                interval_wait += time.perf_counter() - t0
                data_epochs.update(batch["epochs"].tolist())
                sync = world > 1 and micro < tc.accumulate_steps - 1
                with ddp.no_sync() if sync else nullcontext():
                    m = forward_backward(forward_model, batch, device, amp_dtype, 1.0 / tc.accumulate_steps, scaler)
                for k, v in m.items():
                    sums[k] = sums.get(k, 0) + v.float() / tc.accumulate_steps
            m_norm = optimizer_step(model, optimizer, scaler, tc.grad_clip)
            sums["grad_norm"] = sums.get("grad_norm", 0) + m_norm.float()
            bad = ~torch.isfinite(m["loss"])
            flags[0] = torch.where(bad & (flags[0] < 0), torch.full_like(flags[0], step + 1), flags[0])
            step += 1
            interval_steps += 1

            do_probe = probe is not None and (step % (tc.probe_every or total) == 0 or step == total)
            do_log = step % tc.log_every == 0 or step == total or do_probe
            do_save = step % tc.checkpoint_every == 0 or step == total
            if not (do_log or do_save):
                continue
            skips, skipped_videos, problem = {}, 0, None
            if rank == 0:
                skips = _skip_totals(skip_stats)
                skipped_videos = progress.record_skips(step, skips, max(data_epochs, default=0))
                problem = _skip_problem(skips, dc, final=step == total)
                flags[1] = int(problem is not None)
            reduced = flags.clone()
            if world > 1:
                dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
            now = time.perf_counter()
            wall = now - t_interval
            values = metrics_to_floats(sums)
            metrics = {k: v / interval_steps for k, v in values.items()}
            metrics.update(
                step=step, epoch=(step - 1) // spe, data_epoch=max(data_epochs) if data_epochs else 0, lr=lr,
                clips_per_s=global_batch * interval_steps / wall, step_time_s=wall / interval_steps,
                data_wait_s=interval_wait / interval_steps, resumed_from_step=start_step,
                steps_this_attempt=step - start_step, skipped_videos=skipped_videos)
            bad_step, data_error = int(reduced[0].item()), bool(reduced[1].item())
            if bad_step >= 0 or data_error:
                # stop every worker at this step, without a checkpoint of the bad state
                if rank == 0:
                    if bad_step >= 0:
                        say(console, f"[sigma-ray] non-finite loss at step {bad_step}: stopping; the last good "
                                     f"checkpoint is kept")
                        _stop(run_dir, NONFINITE_FILE, {"step": bad_step}, staged)
                    else:
                        _stop(run_dir, DATA_ERROR_FILE, {"step": step, "reason": problem}, staged)
                if bad_step >= 0:
                    metrics["nonfinite_step"] = bad_step
                ray.train.report(metrics)
                return
            if do_probe and rank == 0:
                metrics.update(run_probe(probe, model))
            eta = (time.perf_counter() - t_start) / max(step - start_step, 1) * (total - step)
            progress.write(step, metrics, eta)
            sums, interval_steps, interval_wait, t_interval = {}, 0, 0.0, time.perf_counter()
            if do_save:
                with tempfile.TemporaryDirectory() as tmp:
                    save_checkpoint(tmp, step=step, rank=rank, world_size=world, model=model, optimizer=optimizer,
                                    scaler=scaler, extra={"queues": model.queue_state_dict()},
                                    metrics=metrics if rank == 0 else None)
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                     checkpoint_dir_name=checkpoint_dir_name(step))
                # Ray registers a checkpoint only once the controller has polled every worker's report of it;
                # a run that died before that would resume from an older one. Train on only once it is registered.
                ray.train.get_all_reported_checkpoints(
                    consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
            elif do_probe:
                # Only what Ray needs: Tune's score here, checkpoints above. A Train V2 report waits until the
                # controller has taken the previous one, which it polls every 2 s; one per log step capped a run
                # at log_every steps per 2 s (docs/studies/patterns.md, "What holds learning back").
                ray.train.report(metrics)
    finally:
        progress.close()
