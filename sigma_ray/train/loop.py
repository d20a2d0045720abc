"""The per-worker training loop that Ray Train runs on every worker (one per GPU, or a CPU share).

``train_loop_per_worker(loop_config)`` with ``loop_config`` as built by :func:`sigma_ray.train.launch.pretrain`:
``config`` (the PretrainConfig as a dict), ``run_dir``, ``steps_per_epoch``, ``total_steps``, ``cursor`` (the
:class:`~sigma_ray.train.dataset.DataCursor`), ``skip_stats`` (the pipeline's SkipStatsActor) and an optional
``probe``: a callable ``probe(encoder) -> dict[str, float]`` that rank 0 runs on the encoder (in eval mode, no
grad) every ``train.probe_every`` steps and at the end, adding its metrics to that step's report (the sweep's
kNN score, so Tune can stop weak trials early).

Per step: ``accumulate_steps`` micro-batches from ``get_dataset_shard("train")`` through the core's
``forward_backward`` (DDP's ``no_sync`` on all but the last), then ``optimizer_step``. Sinkhorn all-reduces its
K-vectors over the default process group, the one Ray Train's TorchConfig initializes (gloo on CPU, NCCL on GPU):
equipartition over the global batch. Every ``log_every`` steps: metrics through ``ray.train.report`` (and
TensorBoard scalars, ``metrics.jsonl`` and a progress line on rank 0). Every ``checkpoint_every`` steps and at the
end: a checkpoint. A non-finite loss stops the run (no checkpoint of the bad state) with ``nonfinite_step`` in the
last report and in ``run_dir/nonfinite.json``.
"""
from __future__ import annotations

import json
import logging
import math
import random
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from sigma_ray.config import from_dict
from sigma_ray.model.sigma import build_model
from sigma_ray.step import forward_backward, metrics_to_floats, optimizer_step
from sigma_ray.train.checkpoint import TrainState, checkpoint_dir_name, load_checkpoint, save_checkpoint, unwrap
from sigma_ray.train.config import PretrainConfig
from sigma_ray.train.optim import build_optimizer, make_schedule

log = logging.getLogger("sigma_ray.train")
FAIL_MARKER = "fail_at_step.done"
# Written by rank 0 when the loss turns non-finite; Ray's result only carries the last checkpoint's metrics.
NONFINITE_FILE = "nonfinite.json"


def amp_dtype_for(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class _Progress:
    """Rank 0's outputs: TensorBoard scalars, ``metrics.jsonl`` and the progress line."""

    def __init__(self, run_dir: Path, total: int, enabled: bool):
        self.enabled = enabled
        self.total = total
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            run_dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            self.jsonl = (run_dir / "metrics.jsonl").open("a")

    def write(self, step: int, metrics: dict, eta_s: float) -> None:
        if not self.enabled:
            return
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and k != "step":
                self.writer.add_scalar(f"train/{k}", v, step)
        self.writer.flush()
        self.jsonl.write(json.dumps(metrics) + "\n")
        self.jsonl.flush()
        loss = metrics.get("loss", float("nan"))
        line = (f"[sigma-ray] step {step}/{self.total} ({100 * step / self.total:.1f}%) epoch {metrics['epoch']} "
                f"| loss {loss:.4f} | lr {metrics['lr']:.3g} | {metrics['clips_per_s']:.1f} clips/s "
                f"| data wait {metrics['data_wait_s'] * 1e3:.0f} ms/step | ETA {format_eta(eta_s)}")
        # Ray Train V2 patches print() to log *and* tee; the original stream prints the line once.
        print(line, file=sys.__stdout__, flush=True)

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.jsonl.close()


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


def train_loop_per_worker(loop_config: dict) -> None:
    config = from_dict(PretrainConfig, loop_config["config"])
    # Ray Train logs every report's full metrics dict at INFO; the progress line says the same once.
    logging.getLogger("ray.train.v2._internal.execution.context").setLevel(logging.WARNING)
    tc, dc = config.train, config.data
    run_dir = Path(loop_config["run_dir"])
    spe, total = int(loop_config["steps_per_epoch"]), int(loop_config["total_steps"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("Ray Train did not initialize the torch process group: Sinkhorn cannot be gathered")
    device = ray.train.torch.get_device()
    global_batch = config.global_batch

    _seed_everything(tc.seed)  # the same initial weights everywhere (DDP broadcasts rank 0's anyway)
    model = build_model(config.model, config.objective).to(device)
    schedule = make_schedule(tc, spe, global_batch)
    optimizer = build_optimizer(model, schedule.peak_lr, tc.weight_decay, tc.betas, device)
    amp_dtype = amp_dtype_for(tc.precision, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_checkpoint(d, model, optimizer, scaler, rank, map_location=device)
    else:
        if tc.init_from:  # a new run starting from imported weights (a resumed run has its own)
            from sigma_ray.model.export import init_from_model_state

            init_from_model_state(model, tc.init_from, config.model, config.objective)
        _seed_everything(tc.seed + 1000003 * rank)  # per-rank streams for drop path etc.
    start_step = state.step

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

    progress = _Progress(run_dir, total, enabled=rank == 0)
    skip_stats = loop_config.get("skip_stats")
    probe = loop_config.get("probe")
    data_epochs: set[int] = set()
    sums: dict[str, torch.Tensor] = {}
    interval_steps, interval_wait = 0, 0.0
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    step = start_step
    t_start = t_interval = time.perf_counter()
    if rank == 0:
        print(f"[sigma-ray] {'resuming at' if start_step else 'starting'} step {start_step}/{total} "
              f"({world} workers, global batch {global_batch}, {spe} steps/epoch, device {device})",
              file=sys.__stdout__, flush=True)
    try:
        while step < total:
            if tc.fail_at_step is not None and step + 1 == tc.fail_at_step and rank == world - 1:
                marker = run_dir / FAIL_MARKER
                if not marker.exists():
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.write_text(f"worker {rank} failed at step {step + 1}\n")
                    raise RuntimeError(f"fail_at_step test hook: worker {rank} raises at step {step + 1}")
            lr = schedule.apply(optimizer, step)
            for micro in range(tc.accumulate_steps):
                t0 = time.perf_counter()
                try:
                    batch = next(batches)
                except StopIteration:
                    raise RuntimeError(f"the training data ran out at step {step + 1} of {total} on worker {rank}")
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
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step + 1), first_bad)
            step += 1
            interval_steps += 1

            do_probe = probe is not None and (step % (tc.probe_every or total) == 0 or step == total)
            do_log = step % tc.log_every == 0 or step == total or do_probe
            do_save = step % tc.checkpoint_every == 0 or step == total
            if not (do_log or do_save):
                continue
            flag = first_bad.clone()
            if world > 1:
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            now = time.perf_counter()
            wall = now - t_interval
            values = metrics_to_floats(sums)
            metrics = {k: v / interval_steps for k, v in values.items()}
            metrics.update(
                step=step, epoch=(step - 1) // spe, data_epoch=max(data_epochs) if data_epochs else 0, lr=lr,
                clips_per_s=global_batch * interval_steps / wall, step_time_s=wall / interval_steps,
                data_wait_s=interval_wait / interval_steps, resumed_from_step=start_step,
                steps_this_attempt=step - start_step)
            if rank == 0 and skip_stats is not None:
                metrics["skipped_videos"] = sum(len(s.skipped) for s in ray.get(
                    [skip_stats.get.remote(e) for e in sorted(data_epochs)]))
            bad_step = int(flag.item())
            if bad_step >= 0:
                metrics["nonfinite_step"] = bad_step
                msg = f"non-finite loss at step {bad_step}: stopping; the last good checkpoint is kept"
                if rank == 0:
                    print(f"[sigma-ray] {msg}", file=sys.__stdout__, flush=True)
                    log.error(msg)
                    (run_dir / NONFINITE_FILE).write_text(json.dumps({"step": bad_step}))
                ray.train.report(metrics)
                return
            if do_probe and rank == 0:
                metrics.update(run_probe(probe, model))
            eta = (time.perf_counter() - t_start) / max(step - start_step, 1) * (total - step)
            progress.write(step, metrics, eta)
            sums, interval_steps, interval_wait, t_interval = {}, 0, 0.0, time.perf_counter()
            if do_save:
                with tempfile.TemporaryDirectory() as tmp:
                    save_checkpoint(tmp, model, optimizer, scaler, TrainState(
                        step, (step - 1) // spe, step // spe, (step % spe) * global_batch,
                        {"total_steps": total, "world_size": world}), rank)
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                     checkpoint_dir_name=checkpoint_dir_name(step))
            else:
                ray.train.report(metrics)
    finally:
        progress.close()
