"""Launch a pretraining run: ``pretrain(PretrainConfig) -> PretrainResult``.

Before Ray starts: the config and the annotation lists are checked (ConfigError), the run directory is made and
written to (an unwritable storage path is a ConfigError), taken (:mod:`~sigma_ray.runs.rundir`: one owner at a
time) and inspected without changing it (the checkpoint to resume from verified and loaded weights-only, the config
compared with the saved one). Then Ray is started or joined (:mod:`sigma_ray.infra.ray_session`; inside ``ray job
submit`` it is the job's cluster), a fixed-size cluster is checked for room for the training workers and the
decode actors, and the run directory is opened (damaged checkpoints set aside, config.yaml written). Then the
training stream (:mod:`sigma_ray.train.dataset`) feeds ``TorchTrainer`` (Ray Train V2), rank 0's console lines are
relayed to this process (:mod:`sigma_ray.train.console`), and the encoder is exported. Ctrl-C: RunInterrupted,
whose message names the last logged step and the last checkpoint.

Run directory ``storage_path/name``: ``config.yaml`` (the resolved config; ``config_changes.jsonl`` when a resumed
run changed it), ``checkpoint_XXXXXXXX/`` (the last ``keep_checkpoints``), ``tensorboard/``, ``metrics.jsonl``,
``skipped.jsonl`` (unreadable videos: path, reason, epoch, step), ``encoder.pt`` and ``LOCK``. Running again with
the same name and storage path resumes from the newest valid checkpoint: damaged ones are set aside first and Ray
Train V2's checkpoint snapshot is made to list the valid ones, so Ray hands the newest to the workers'
``ray.train.get_checkpoint()``; the same holds for a worker group restarted by ``FailureConfig(max_failures)``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from sigma_ray.data.stats import SkipBoundError
from sigma_ray.data.synthetic import ensure_synthetic
from sigma_ray.infra.checks import ConfigError
from sigma_ray.infra.config import save_yaml, to_dict, yaml_problem
from sigma_ray.infra.ray_compat import autoscaling_enabled
from sigma_ray.infra.ray_session import init_ray
from sigma_ray.runs.checkpoint import load_model_state, read_info, resume_point, set_aside
from sigma_ray.runs.files import (CONFIG_FILE, DATA_ERROR_FILE, ENCODER_FILE, METRICS_FILE, NONFINITE_FILE,
                                  SKIPPED_FILE, copy_to, is_uri, read_text)
from sigma_ray.runs import object_rundir
from sigma_ray.runs.object_lock import run_lock
from sigma_ray.runs.rundir import check_resumable, check_writable, config_changes, read_jsonl, record_changes
from sigma_ray.train.config import PretrainConfig, run_length

log = logging.getLogger("sigma_ray.train")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class RunInterrupted(RuntimeError):
    """Ctrl-C (SIGINT) stopped the run; the message says where it stands and how to resume it."""


class PlacementError(ConfigError):
    """The cluster cannot place the run's training workers and decode actors."""


@dataclass
class PretrainResult:
    run_dir: str
    steps: int                     # optimizer steps done (the latest checkpoint's step)
    total_steps: int
    checkpoint: Any                # ray.train.Checkpoint of the latest checkpoint, or None
    encoder_path: str | None
    metrics: dict
    ray_result: Any


def resolve_paths(config: PretrainConfig) -> PretrainConfig:
    """Absolute local paths for the storage path and the data lists (Ray workers may run elsewhere)."""
    def absolute(p: str | None) -> str | None:
        return p if p is None or is_uri(p) else str(Path(p).expanduser().resolve())

    data = dataclasses.replace(config.data, train_list=absolute(config.data.train_list),
                               val_list=absolute(config.data.val_list), root=absolute(config.data.root))
    train = dataclasses.replace(config.train, init_from=absolute(config.train.init_from))
    return dataclasses.replace(config, storage_path=absolute(config.storage_path), data=data, train=train)


def _autoscaling() -> bool:
    """True when an autoscaler may add nodes (then the current resources say nothing about placement)."""
    try:
        return autoscaling_enabled()
    except Exception:  # noqa: BLE001 - an unknown setup: do not block the run on a guess
        return True


def placement_problems(config: PretrainConfig, nodes: list[dict] | None = None) -> list[str]:
    """Why the live (fixed-size) cluster cannot hold ``num_workers`` training bundles and ``num_actors_min``
    decode actors; empty when it can. ``nodes`` are ``ray.nodes()`` entries (the live ones by default).
    Uses the cluster helper's per-node packing, so a bundle must fit on one node."""
    from sigma_ray.cluster import check_placement

    nodes = [n for n in (nodes if nodes is not None else ray.nodes()) if n.get("Alive", True)]
    types = {f"node{i}": {"resources": {k: v for k, v in n["Resources"].items() if not k.startswith("node:")},
                          "max_workers": 0 if i == 0 else 1} for i, n in enumerate(nodes)}
    cluster = {"max_workers": max(len(nodes) - 1, 0), "head_node_type": "node0", "available_node_types": types}
    tc, dc = config.train, config.data
    problems = check_placement(cluster, tc.num_workers, tc.cpus_per_worker, tc.worker_gpus,
                               dc.num_actors_min, dc.actor_num_cpus, dict(dc.actor_resources))
    if problems:
        total = ray.cluster_resources() if nodes is None or ray.is_initialized() else {}
        problems.append(f"the cluster has {len(nodes)} node(s) with {total} in all and no autoscaler; lower "
                        f"train.num_workers / train.cpus_per_worker / train.gpus_per_worker / data.num_actors_min / "
                        f"data.actor_num_cpus, or set train.check_placement=false if nodes are on their way")
    return problems


def check_cluster(config: PretrainConfig) -> None:
    """Raise PlacementError when a cluster without autoscaler cannot place the run (before any worker starts)."""
    if not config.train.check_placement or _autoscaling():
        return
    problems = placement_problems(config)
    if problems:
        raise PlacementError("the run does not fit the cluster: " + "; ".join(problems))


def run_dir_of(config: PretrainConfig) -> str:
    return f"{config.storage_path.rstrip('/')}/{config.name}"


def export_encoder(checkpoint, config: PretrainConfig, dest: str) -> str:
    """Write the encoder of a training checkpoint (``ray.train.Checkpoint`` or a directory) to ``dest``."""
    import tempfile

    from sigma_ray.runs.export import encoder_from_model_state, save_encoder

    def export_from(directory: str) -> str:
        state, info = load_model_state(directory)
        encoder = encoder_from_model_state(state, config.model)
        meta = {"step": info.step, "run": config.name, "objective": config.objective.kind}
        with tempfile.TemporaryDirectory() as tmp:
            local = save_encoder(encoder, config.model, Path(tmp) / ENCODER_FILE, meta)
            copy_to(local, dest)
        return dest

    if hasattr(checkpoint, "as_directory"):
        with checkpoint.as_directory() as d:
            return export_from(d)
    return export_from(str(checkpoint))


@dataclass(frozen=True)
class RunDirState:
    """What a run directory holds before a start, found without changing it (:func:`inspect_run_dir`)."""

    valid: list                    # CheckpointInfo of the valid checkpoints, oldest first
    damaged: list                  # (path or URI, reason) of the checkpoints that failed verification
    changes: dict                  # {field: (saved, new)} against the saved config.yaml (none in a new run)

    @property
    def step(self) -> int:
        """The step the run resumes from (0 for a new run)."""
        return self.valid[-1].step if self.valid else 0


def inspect_run_dir(config: PretrainConfig, run_dir: str) -> RunDirState:
    """Check ``run_dir`` for this start, writing nothing (call it holding the run's lock, before Ray starts).

    Verify the checkpoints and load the newest valid one's files weights-only (CheckpointError when checkpoints
    exist but none is valid, or when the one to resume from is refused); on object storage from the newest down
    until one is valid (:func:`sigma_ray.runs.object_rundir.resume_point`). Then
    compare ``config`` with the saved ``config.yaml``: a change to the network raises ConfigError naming the fields.
    """
    import yaml

    if is_uri(run_dir):
        valid, damaged = object_rundir.resume_point(run_dir)
    else:
        valid, damaged = resume_point(run_dir)
    changes = {}
    saved = read_text(f"{run_dir}/{CONFIG_FILE}")
    if saved is not None:
        try:
            saved_tree = yaml.safe_load(saved) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{run_dir}/{CONFIG_FILE} of the run to resume: {yaml_problem(e)}") from None
        changes = config_changes(saved_tree, to_dict(config))
        changes.pop("name", None)
        changes.pop("storage_path", None)
        check_resumable(changes, run_dir)
    return RunDirState(valid, damaged, changes)


def open_run_dir(config: PretrainConfig, run_dir: str, state: RunDirState) -> None:
    """Make ``run_dir`` ready for the start :func:`inspect_run_dir` checked: set damaged checkpoints aside (saying
    which and why) and make Ray Train's snapshot list exactly the valid ones, so the run resumes from the newest
    valid checkpoint; record config changes in ``config_changes.jsonl``; write ``config.yaml``."""
    from sigma_ray.infra.ray_compat import register_checkpoints

    if is_uri(run_dir):
        object_rundir.set_aside(state.damaged)
        object_rundir.register_checkpoints(run_dir, [(c.name, c.metrics) for c in state.valid])
    else:
        set_aside(state.damaged)
        register_checkpoints(run_dir, [(c.name, c.metrics) for c in state.valid])
    if state.changes:
        if not is_uri(run_dir):
            record_changes(run_dir, state.changes, state.step)
        print(f"[sigma-ray] {run_dir} continues with a changed config: " + ", ".join(
            f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(state.changes.items())), flush=True)
    if is_uri(run_dir):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            save_yaml(config, Path(tmp) / CONFIG_FILE)
            copy_to(Path(tmp) / CONFIG_FILE, f"{run_dir}/{CONFIG_FILE}")
    else:
        save_yaml(config, Path(run_dir) / CONFIG_FILE)


def _skip_summary(run_dir: str, limit: int = 5) -> list[str]:
    """The driver's closing lines about unreadable videos, from ``skipped.jsonl``."""

    rows = {}
    for r in read_jsonl(Path(run_dir) / SKIPPED_FILE):
        rows.setdefault(r["path"], r["reason"])
    if not rows:
        return []
    lines = [f"{len(rows)} unreadable video(s) skipped (all in {Path(run_dir) / SKIPPED_FILE}):"]
    lines += [f"  {p}: {reason}" for p, reason in list(rows.items())[:limit]]
    if len(rows) > limit:
        lines.append(f"  ... and {len(rows) - limit} more")
    return lines


def interrupted_message(run_dir: str, total: int) -> str:
    """Where an interrupted run stands: its last logged step and its newest valid checkpoint."""
    from sigma_ray.runs.checkpoint import newest_valid

    if is_uri(run_dir):
        return f"interrupted; its checkpoints are in {run_dir}; start the same command again to resume"
    rows = list(read_jsonl(Path(run_dir) / METRICS_FILE))
    last = newest_valid(run_dir)
    saved = (f"the last checkpoint is step {last.step}" if last is not None else
             "no checkpoint was saved yet, so it starts at step 0 again")
    return (f"interrupted at step {rows[-1]['step'] if rows else 0} of {total}; {saved}; start the same command "
            f"again to resume")


def _fit(config: PretrainConfig, run_dir: str, records: list, spe: int, total: int, callbacks, probe,
         wrap_batches):
    """Ray Train's fit of the run (Ray is up, the run directory open); returns its ``ray.train.Result``."""
    import ray.train
    from ray.train.constants import RAY_TRAIN_ENABLE_STATE_TRACKING
    from ray.train.torch import TorchTrainer

    from sigma_ray.data.pipeline import ClipPipeline
    from sigma_ray.infra.driver_node import on_driver_node
    from sigma_ray.train.console import ConsoleRelay
    from sigma_ray.train.cursor import DataCursor
    from sigma_ray.train.dataset import in_order, training_stream
    from sigma_ray.train.loop import train_loop_per_worker

    ray.data.DataContext.get_current().enable_progress_bars = False  # the trainer prints its own progress
    # Ray Train records the run (its name, status, attempts, workers and their log files) for the dashboard's
    # Train API only with this set, read when the trainer is built; RAY_TRAIN_ENABLE_STATE_TRACKING=0 opts out.
    os.environ.setdefault(RAY_TRAIN_ENABLE_STATE_TRACKING, "1")
    for name in (NONFINITE_FILE, DATA_ERROR_FILE):   # left by an earlier attempt of this run
        if is_uri(run_dir):
            object_rundir.remove(f"{run_dir}/{name}")
        else:
            (Path(run_dir) / name).unlink(missing_ok=True)
    pipeline = ClipPipeline(config.data, "train", records)
    cursor = DataCursor.options(**on_driver_node()).remote()
    # one spare epoch at the end: skipped videos shorten epochs, and no worker may run dry before the last step
    dataset = training_stream(pipeline, spe * config.global_batch, config.train.epochs + 1, cursor)
    tc = config.train
    with ConsoleRelay() as console:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"config": to_dict(config), "run_dir": run_dir, "steps_per_epoch": spe,
                               "total_steps": total, "cursor": cursor, "skip_stats": pipeline.stats_actor,
                               "console": console.actor, "probe": probe, "wrap_batches": wrap_batches},
            scaling_config=ray.train.ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                                   resources_per_worker=tc.resources_per_worker()),
            run_config=ray.train.RunConfig(
                name=config.name, storage_path=config.storage_path,
                failure_config=ray.train.FailureConfig(max_failures=tc.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=tc.keep_checkpoints),
                callbacks=callbacks),
            datasets={"train": dataset},
            dataset_config=ray.train.DataConfig(execution_options=in_order()),
        )
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGINT) if main_thread else None
        try:
            return trainer.fit()
        except SystemExit:
            # Ray Train replaces the SIGINT handler during fit: Ctrl-C aborts the run, and the handler exits once
            # the aborted controller is gone. To the caller that is a Ctrl-C.
            raise KeyboardInterrupt from None
        finally:
            if main_thread:   # Ray's handler would outlive the run (and abort a controller that is gone)
                signal.signal(signal.SIGINT, previous)


def _finish(config: PretrainConfig, run_dir: str, result, total: int) -> PretrainResult:
    """The driver's side of a finished fit: the stop conditions as errors, the encoder exported."""

    checkpoint = result.checkpoint
    steps = 0
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            steps = read_info(d, verify=False).step
    where = checkpoint.path if checkpoint is not None else "none (no checkpoint was saved before it)"
    stopped = {n: read_text(f"{run_dir}/{n}") for n in (NONFINITE_FILE, DATA_ERROR_FILE)}
    if steps < total and all(v is None for v in stopped.values()):
        # a run stops short of its last step only for the two reasons above, or when Ctrl-C aborted it (Ray
        # Train's SIGINT handler may end the fit without an error)
        raise RunInterrupted(interrupted_message(run_dir, total))
    if stopped[NONFINITE_FILE] is not None:
        bad_step = json.loads(stopped[NONFINITE_FILE])["step"]
        raise NonFiniteLossError(f"non-finite loss at step {bad_step}; the run stopped. Last good checkpoint: {where}")
    skipped = [] if is_uri(run_dir) else _skip_summary(run_dir)
    if stopped[DATA_ERROR_FILE] is not None:
        reason = json.loads(stopped[DATA_ERROR_FILE])["reason"]
        raise SkipBoundError("\n".join([f"{reason}; the run stopped, last checkpoint: {where}"] + skipped))
    encoder_path = None
    if checkpoint is not None:
        encoder_path = export_encoder(checkpoint, config, f"{run_dir}/{ENCODER_FILE}")
    for text in skipped:
        print(f"[sigma-ray] {text}", flush=True)
    return PretrainResult(run_dir, steps, total, checkpoint, encoder_path, dict(result.metrics or {}), result)


def pretrain(config: PretrainConfig, callbacks: list | None = None, probe=None,
             wrap_batches=None) -> PretrainResult:
    """Run (or resume) the pretraining run ``config`` on the current Ray cluster; returns where it ended.

    ``callbacks`` go to Ray Train's RunConfig (the sweep passes Tune's report callback). ``probe``: an optional
    picklable ``probe(encoder) -> dict[str, float]`` run by rank 0 every ``train.probe_every`` steps and at the
    end; its metrics join that step's report. ``wrap_batches`` is a seam for tests (see the loop).

    Before Ray starts, raises ConfigError (annotation lists, an unwritable storage path, a network change on
    resume), RunLockedError when another run owns the run directory, and CheckpointError when it holds
    checkpoints but none is valid or the one to resume from is refused; before any worker starts, PlacementError.
    Afterwards: NonFiniteLossError when the loss became non-finite (the last good checkpoint is kept),
    SkipBoundError when too many videos were unreadable (no worker-group restart), and Ray Train's
    TrainingFailedError when workers failed more than ``train.max_failures`` times. Ctrl-C: RunInterrupted.
    """
    from sigma_ray.data.annotations import load_split

    config = resolve_paths(config)
    config.validate()
    teacher = config.objective.teacher_checkpoint
    if config.objective.kind == "sigma_dino" and not (is_uri(teacher) or Path(teacher).is_file()):
        raise ConfigError(f"objective.teacher_checkpoint = {teacher!r} is not a file: point it at the local "
                          "weights of the frozen image teacher (e.g. DINO ViT-B/16)")
    if config.train.init_from:  # a file written for another model fails here, not on every worker
        from sigma_ray.runs.export import load_model_file

        load_model_file(config.train.init_from, config.model, config.objective)
    ensure_synthetic(config.synthetic, config.data)
    records = load_split(config.data, "train")          # annotation errors surface here, before Ray starts
    spe, total = run_length(config, len(records))
    run_dir = run_dir_of(config)
    check_writable(run_dir)
    # the run's name near the top of the driver's log (a Ray job's log in the dashboard)
    print(f"[sigma-ray] run {config.name}: {total} steps on {config.train.num_workers} worker(s); run directory "
          f"{run_dir}", flush=True)
    try:
        # The lock and the checks of the run directory come before Ray starts: a second start is refused at
        # once, and a refused resume leaves the directory as it was.
        with run_lock(run_dir):
            state = inspect_run_dir(config, run_dir)
            init_ray()
            check_cluster(config)
            open_run_dir(config, run_dir, state)
            result = _finish(config, run_dir, _fit(config, run_dir, records, spe, total, callbacks, probe,
                                                   wrap_batches), total)
    except KeyboardInterrupt:
        raise RunInterrupted(interrupted_message(run_dir, total)) from None
    print(f"[sigma-ray] run {config.name}: {result.steps}/{total} steps; run directory {run_dir}"
          + (f"; encoder {result.encoder_path}" if result.encoder_path else ""), flush=True)
    return result
