"""Run (or resume) a sweep: Ray Tune trials of short SIGMA pretraining runs, searched by Optuna, stopped by ASHA.

Each trial is a function (:func:`run_trial`) that builds its :class:`PretrainConfig` from the base run and the
sampled parameters and runs it with :func:`sigma_ray.train.launch.pretrain` (a Ray Train V2 ``TorchTrainer`` with
its own workers; with Train V2 a ``Tuner(trainer)`` no longer works). The rank-0 worker runs the probe every
``trial.probe_every`` steps; :class:`ScoreReportCallback` forwards those reports to Tune, so every result Tune,
ASHA and Optuna see carries the score (``probe.score``: ``knn_top1``, ``linear_top1`` or their mean ``mean_top1``),
and ASHA (its time attribute is the optimizer step) can stop weak trials at its rungs.

Resume: the sweep directory holds Tune's experiment state and the Optuna study (an RDB storage). Running the same
sweep again calls ``Tuner.restore``: finished trials keep their results and never run again, trials cut off with
the driver start over under the same name, so their pretraining run resumes from its last checkpoint (one per
probe), and the searcher reloads the same study. Its TPE sampler is re-seeded with ``seed + trials in the study``:
a sampler with the original seed would propose the first trials' configs again.

Needs a Ray with the dashboard running (``run_sweep`` starts one when none runs): Train V2 frees a finished
trial's worker placement group through it, and without it the next trial waits forever on a small machine.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from sigma_ray.data.synthetic import ensure_synthetic
from sigma_ray.eval.knn import KnnProbe
from sigma_ray.infra.checks import ConfigError
from sigma_ray.infra.config import save_yaml, to_dict
from sigma_ray.infra.ray_session import init_ray
from sigma_ray.runs.files import SWEEP_FILE, TRIALS_DIR, is_uri
from sigma_ray.train.config import PretrainConfig, run_length
from sigma_ray.train.launch import check_cluster, pretrain, resolve_paths
from sigma_ray.tune import internals
from sigma_ray.tune.config import (COLLAPSE_METRICS, RUN_DIR_ATTR, TUNE_ID_ATTR, IntRange, SweepConfig,
                                   trial_pretrain_config)
from sigma_ray.tune.report import SweepReport, TrialRow, write_report

log = logging.getLogger("sigma_ray.tune")

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


@dataclass
class SweepResult:
    sweep_dir: str
    rows: list[TrialRow]               # ranked, best first
    best_config_path: str | None
    finished: bool                     # False: interrupted (run again to resume)
    study_url: str
    study_name: str
    result_grid: Any                   # ray.tune.ResultGrid


class ScoreReportCallback(TuneReportCallback):
    """Forward to Tune only the Train reports that carry the score (the probe steps). The trainer reports at
    checkpoints too; Tune's searcher and scheduler need the score in every result."""

    def __init__(self, metric: str):
        super().__init__()
        self.metric = metric

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if metrics and self.metric in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


def make_sampler(seed: int) -> optuna.samplers.TPESampler:
    """Multivariate TPE (models the parameters jointly: the prototype count and the temperature interact)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def optuna_space(config: SweepConfig) -> dict[str, optuna.distributions.BaseDistribution]:
    space: dict[str, optuna.distributions.BaseDistribution] = {}
    for name, rng in config.search.ranges().items():
        cls = optuna.distributions.IntDistribution if isinstance(rng, IntRange) else \
            optuna.distributions.FloatDistribution
        space[name] = cls(rng.low, rng.high, log=rng.log)
    return space


class SweepSearch(OptunaSearch):
    """Ray's OptunaSearch on a persistent study, with these changes:

    - intermediate scores are reported to Optuna at the optimizer step (not Tune's iteration count, which restarts
      when a cut-off trial resumes);
    - a trial ASHA stopped before ``total_steps`` is told PRUNED (its value: its last score), not COMPLETE, so TPE
      does not take a short run's score as final;
    - at the start and on restore (``Tuner.restore``) the sampler is re-seeded with ``seed + trials so far``, and
      trials the study holds as running but Tune's state does not know (lost with a crashed driver) are marked
      failed;
    - each study trial records user attributes for the dashboard: its Tune trial id (``tune_trial_id``), its
      pretraining run directory (``run_dir``) and, at every probe, the trainer's collapse diagnostic
      (:data:`COLLAPSE_METRICS` present in the result), so the last values are those of the trial's last probe.
    """

    def __init__(self, config: SweepConfig, total_steps: int):
        self._sweep_dir = config.sweep_dir
        self._base_seed = config.seed
        self._total_steps = total_steps
        self._reported_steps: dict[str, set[int]] = {}
        super().__init__(optuna_space(config), metric=config.probe.score, mode="max", sampler=make_sampler(config.seed),
                         study_name=config.name, storage=optuna.storages.RDBStorage(config.study_url))
        self._continue_study()

    def _continue_study(self) -> None:
        """Re-seed the sampler past the trials already in the study; fail running trials nobody owns."""
        study = internals.optuna_study(self)
        study.sampler = make_sampler(self._base_seed + len(study.get_trials(deepcopy=False)))
        fail_orphans(study, known=internals.optuna_trial_numbers(self))

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        ot_trial = internals.optuna_trial(self, trial_id)
        ot_trial.set_user_attr(TUNE_ID_ATTR, trial_id)
        ot_trial.set_user_attr(RUN_DIR_ATTR, trial_run_dir(self._sweep_dir, trial_id))
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not internals.is_completed(self, trial_id) and self.metric in result:
            self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict) -> None:
        """The result's score as the Optuna trial's intermediate value at its step (once per step), and its
        collapse diagnostic as user attributes."""
        step = int(result["step"])
        ot_trial = internals.optuna_trial(self, trial_id)
        if step not in self._reported_steps.setdefault(trial_id, set()):
            ot_trial.report(float(result[self.metric]), step)
            self._reported_steps[trial_id].add(step)
        for key in COLLAPSE_METRICS:
            if key in result:
                ot_trial.set_user_attr(key, float(result[key]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if not internals.is_completed(self, trial_id) and result is not None and not error \
                and self.metric in result:
            # Tune hands a result that ends a trial (an ASHA stop) to on_trial_complete only: record it first
            self._report(trial_id, result)
            if int(result["step"]) < self._total_steps:
                internals.optuna_study(self).tell(internals.optuna_trial(self, trial_id),
                                                  state=optuna.trial.TrialState.PRUNED)
                internals.mark_completed(self, trial_id)
                return
        super().on_trial_complete(trial_id, result, error)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._continue_study()


def fail_orphans(study: optuna.Study, known: set[int]) -> int:
    """Mark the study's RUNNING trials whose numbers are not in ``known`` (no live Tune trial owns them: they were
    lost with an earlier driver) as FAIL; returns how many."""
    orphans = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
               if t.number not in known]
    for number in orphans:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    if orphans:
        log.warning("marked study trial(s) %s, left running by an earlier driver, as failed", orphans)
    return len(orphans)


def run_trial(params: dict[str, Any], base: PretrainConfig, sweep: SweepConfig, probe: KnnProbe) -> None:
    """One trial (runs in Tune's trial actor): the base run with ``params`` for ``sweep.trial.steps`` steps,
    named by the Tune trial id, so a trial that starts over resumes its own pretraining run."""
    trial_id = tune.get_context().get_trial_id()
    config = trial_pretrain_config(base, params, sweep, name=trial_id,
                                   storage_path=f"{sweep.sweep_dir}/{TRIALS_DIR}")   # run dir: trial_run_dir
    pretrain(config, callbacks=[ScoreReportCallback(sweep.probe.score)], probe=probe)


def trial_run_dir(sweep_dir: str, trial_id: str) -> str:
    """The pretraining run directory of Tune trial ``trial_id``: ``<sweep dir>/trials/<trial id>`` (run_trial's
    storage path and name)."""
    return f"{sweep_dir}/{TRIALS_DIR}/{trial_id}"


def _check_resume(config: SweepConfig) -> None:
    """A sweep directory holds one sweep: refuse to resume it with a different search, budget or schedule."""
    path = Path(config.sweep_dir) / SWEEP_FILE
    if is_uri(config.sweep_dir) or not path.is_file():
        return
    from sigma_ray.infra.config import load_yaml

    saved, now = load_yaml(path), to_dict(config)
    keys = ("search", "num_samples", "trial", "asha", "seed", "pretrain_config", "pretrain", "overrides")
    changed = [k for k in keys if saved.get(k) != now.get(k)]
    if changed:
        raise ConfigError(f"{config.sweep_dir} holds a sweep started with other {', '.join(changed)}: resuming "
                          "would mix two searches; give the new sweep another name")


def prepare(config: SweepConfig) -> tuple[PretrainConfig, int, KnnProbe]:
    """Driver-side work before Ray: the resolved base run (the synthetic set is written once, here, not by
    concurrent trials), a full trial's length in steps, and the trials' probe."""
    from sigma_ray.data.annotations import load_split

    _check_resume(config)
    base = resolve_paths(config.base_pretrain())
    ensure_synthetic(base.synthetic, base.data)
    one_trial = trial_pretrain_config(base, {}, config, name="check", storage_path=base.storage_path)
    train, val = load_split(base.data, "train"), load_split(base.data, "val")
    num_classes = config.probe.num_classes or base.data.num_classes or max(r.label for r in train + val) + 1
    pc = config.probe
    data = base.data
    if pc.train_per_class or pc.val_per_class:
        folder = Path(config.sweep_dir) / "probe"
        data = dataclasses.replace(
            data, root=None,
            train_list=write_list(first_per_class(train, pc.train_per_class), folder / "train.csv"),
            val_list=write_list(first_per_class(val, pc.val_per_class), folder / "val.csv"))
    probe = KnnProbe(data, num_classes, k=pc.k, temperature=pc.temperature,
                     linear_epochs=0 if pc.score == "knn_top1" else pc.linear_epochs)
    return base, run_length(one_trial, len(train))[1], probe


def first_per_class(records: list, per_class: int | None) -> list:
    """The first ``per_class`` records of each label, in list order (all of them for None)."""
    if per_class is None:
        return records
    taken: dict[int, int] = {}
    out = []
    for r in records:
        if taken.get(r.label, 0) < per_class:
            taken[r.label] = taken.get(r.label, 0) + 1
            out.append(r)
    return out


def write_list(records: list, path: Path) -> str:
    """A VideoMAE list (``path label`` per line, absolute paths) of ``records``; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{os.path.abspath(r.path)} {r.label}\n" for r in records))
    return str(path)


def run_sweep(config: SweepConfig, fit: Callable[[tune.Tuner], Any] = tune.Tuner.fit) -> SweepResult:
    """Run the sweep ``config``, or resume it when its directory holds an interrupted one; write the report.

    ``fit(tuner)`` runs the prepared Tuner and returns its ResultGrid (a seam for tests, which interrupt the
    driver from there). Raises ConfigError before Ray starts for a config that cannot run.
    """
    config.validate()
    if not is_uri(config.storage_path):
        # trials run in Tune's per-trial working directories: a relative path would land each trial's run there
        config = dataclasses.replace(config, storage_path=str(Path(config.storage_path).expanduser().resolve()))
    base, total_steps, probe = prepare(config)
    sweep_dir = config.sweep_dir
    if not is_uri(sweep_dir) and not (Path(sweep_dir) / SWEEP_FILE).is_file():
        save_yaml(config, Path(sweep_dir) / SWEEP_FILE)

    init_ray(include_dashboard=True)       # Train V2 frees finished trials' placement groups through it
    one_trial = trial_pretrain_config(base, {}, config, name="check", storage_path=base.storage_path)
    check_cluster(one_trial)               # a trial that cannot be placed fails here, before any trial starts

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, sweep=config, probe=probe),
        tune.PlacementGroupFactory([{"CPU": config.resources.driver_cpus, **config.resources.driver_resources}]))
    if tune.Tuner.can_restore(sweep_dir):
        log.info("resuming the sweep in %s", sweep_dir)
        tuner = tune.Tuner.restore(sweep_dir, trainable, resume_unfinished=True, resume_errored=False)
    else:
        tuner = tune.Tuner(trainable, tune_config=_tune_config(config, total_steps), run_config=_run_config(config))
    with tune_console_off():
        grid = fit(tuner)

    study = optuna.load_study(study_name=config.name, storage=config.study_url)
    finished = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False)) >= config.num_samples
    report = SweepReport(config, base, total_steps, finished)
    best_path = write_report(report)
    return SweepResult(sweep_dir, report.rows, best_path, finished, config.study_url, config.name, grid)


class SweepASHA(ASHAScheduler):
    """ASHA on the optimizer step whose rungs, when a sweep resumes, hold the scores the earlier driver's trials
    had there: ``Tuner.restore`` brings the scheduler back as it was created, with empty rungs, so without this
    the trials after a resume would only be compared with each other. The scores come from the study."""

    def __init__(self, study_url: str, study_name: str, metric: str, **kwargs: Any):
        super().__init__(time_attr="step", metric=metric, mode="max", **kwargs)
        self._study_url, self._study_name = study_url, study_name

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        study = optuna.load_study(study_name=self._study_name, storage=self._study_url)
        scores = next((t.intermediate_values for t in study.get_trials(deepcopy=False)
                       if t.user_attrs.get(TUNE_ID_ATTR) == trial.trial_id), {})
        for step, score in sorted(scores.items()):
            internals.asha_record(self, trial, step, score)   # records; a decision was taken back then


def _tune_config(config: SweepConfig, total_steps: int) -> tune.TuneConfig:
    grace, max_t = config.rung_steps
    max_t = max(min(max_t, total_steps - 1), grace)   # no rung at a trial's last step: it ends there anyway
    scheduler = SweepASHA(config.study_url, config.name, config.probe.score, grace_period=grace, max_t=max_t,
                          reduction_factor=config.asha.reduction_factor,
                          stop_last_trials=False)   # trials end at trial.steps by themselves
    return tune.TuneConfig(search_alg=SweepSearch(config, total_steps), scheduler=scheduler,
                           num_samples=config.num_samples, max_concurrent_trials=config.max_concurrent)


@contextlib.contextmanager
def tune_console_off():
    """Ray Tune's own console output off while the sweep runs: its current output engine prints a boxed summary
    of the experiment and where its results go whatever ``verbose`` says; the older engine, which
    ``RAY_AIR_NEW_OUTPUT=0`` selects, prints nothing at ``verbose=0``. The sweep prints its own lines and summary."""
    before = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = before


def _run_config(config: SweepConfig) -> tune.RunConfig:
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    storage = config.storage_path if is_uri(config.storage_path) else str(Path(config.sweep_dir).parent)
    return tune.RunConfig(name=config.name, storage_path=storage, verbose=0,
                          callbacks=[CSVLoggerCallback(), JsonLoggerCallback(), TBXLoggerCallback()])
