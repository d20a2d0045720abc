"""A pretraining run in this process, without Ray: one worker's arithmetic of :mod:`sigma_ray.train.loop`.

The same initial weights (seeded as the worker seeds them), optimizer, schedule and step, and the same batches:
epoch ``e``'s rows and clips are the plain :class:`~sigma_ray.data.iterator.ClipIterator`'s, cut to whole batches,
in the order the Ray training stream hands them to a single worker (``tests/test_train_local.py`` compares the
losses with a Ray Train run's). No run directory, checkpoints or resume: for notebooks and for studies that train many small models on one machine
(``experiments/ablate.py``), where Ray's start-up would cost more than a run.
"""
from __future__ import annotations

import itertools
import time
from typing import Callable, Iterator

import torch

from sigma_ray.data.annotations import VideoRecord, load_split
from sigma_ray.data.clips import Sample
from sigma_ray.data.config import DataConfig
from sigma_ray.data.iterator import ClipIterator, collate
from sigma_ray.method.sigma import SigmaModel, build_model
from sigma_ray.method.step import amp_dtype_for, forward_backward, metrics_to_floats, optimizer_step, seed_everything
from sigma_ray.train.config import PretrainConfig, run_length
from sigma_ray.train.optim import build_optimizer, make_schedule


def training_batches(config: DataConfig, records: list[VideoRecord], rows_per_epoch: int) -> Iterator[dict]:
    """Endless training batches (torch tensors, ``config.batch_size`` clips each, with ``epochs``): epoch after
    epoch of the plain iterator's shuffled rows cut to ``rows_per_epoch``, the buffer carried over epoch ends as in
    one stream. Unreadable videos are skipped and counted, with the skip bound per epoch, by the plain iterator."""
    buf: list[tuple[Sample, int]] = []
    for epoch in itertools.count():
        clips = ClipIterator(config, "train", epoch, records)
        clips.rows = clips.rows[:rows_per_epoch]
        for sample in clips.samples():
            buf.append((sample, epoch))
            while len(buf) >= config.batch_size:
                chunk, buf = buf[:config.batch_size], buf[config.batch_size:]
                batch = {k: torch.from_numpy(v) for k, v in collate([s for s, _ in chunk]).items()}
                batch["epochs"] = torch.tensor([e for _, e in chunk])
                yield batch


def pretrain_local(config: PretrainConfig, probe: Callable[[torch.nn.Module], dict] | None = None,
                   device: torch.device | str = "cpu", log: Callable[[dict], None] | None = None
                   ) -> tuple[SigmaModel, list[dict]]:
    """Train ``config`` for its whole length on one process (``train.num_workers`` must be 1) and return the model
    (eval mode) and one metrics row per ``train.log_every`` steps: the loss terms and perplexities averaged over
    the interval, ``lr``, ``step_time_s``, and at every ``train.probe_every`` steps and at the end
    ``probe(encoder)``'s numbers (encoder in eval mode, no grad). ``log`` gets each row as it is made."""
    config.validate()
    tc, dc = config.train, config.data
    if tc.num_workers != 1:
        raise ValueError(f"pretrain_local runs one worker, not train.num_workers = {tc.num_workers}")
    device = torch.device(device)
    if tc.torch_threads is not None:
        torch.set_num_threads(tc.torch_threads)
    records = load_split(dc, "train")
    spe, total = run_length(config, len(records))
    seed_everything(tc.seed)
    model = build_model(config.model, config.objective).to(device)
    schedule = make_schedule(tc, total, config.global_batch)
    optimizer = build_optimizer(model, schedule.peak_lr, tc.weight_decay, tc.betas, device)
    amp_dtype = amp_dtype_for(tc.precision, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    seed_everything(tc.seed)                 # the worker's per-rank stream (rank 0)
    batches = training_batches(dc, records, spe * config.global_batch)
    rows, sums, interval, t0 = [], {}, 0, time.perf_counter()
    model.train()
    for step in range(1, total + 1):
        lr = schedule.apply(optimizer, step - 1)
        for _ in range(tc.accumulate_steps):
            m = forward_backward(model, next(batches), device, amp_dtype, 1.0 / tc.accumulate_steps, scaler)
            for k, v in m.items():
                sums[k] = sums.get(k, 0) + v.float() / tc.accumulate_steps
        sums["grad_norm"] = sums.get("grad_norm", 0) + optimizer_step(model, optimizer, scaler, tc.grad_clip).float()
        interval += 1
        do_probe = probe is not None and (step % (tc.probe_every or total) == 0 or step == total)
        if not (step % tc.log_every == 0 or step == total or do_probe):
            continue
        row = {k: v / interval for k, v in metrics_to_floats(sums).items()}
        row.update(step=step, epoch=(step - 1) // spe, lr=lr, step_time_s=(time.perf_counter() - t0) / interval)
        if do_probe:
            model.encoder.eval()
            with torch.no_grad():
                row.update({k: float(v) for k, v in probe(model.encoder).items()})
            model.encoder.train()
        rows.append(row)
        if log is not None:
            log(row)
        sums, interval, t0 = {}, 0, time.perf_counter()
    return model.eval(), rows
