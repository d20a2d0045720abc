"""The private parts of Ray Tune's ``OptunaSearch`` and ``ASHAScheduler`` that the sweep relies on, one function each.

Neither class has a public way to reach the Optuna study it drives, to end a trial as PRUNED, or to put a score
into ASHA's rungs without a stop decision, so the sweep (:mod:`sigma_ray.tune.sweep`) reads their attributes. They
live here alone: ``tests/test_tune_internals.py`` drives real instances of both classes through these functions,
so an upgrade that renames or reshapes one fails there, by name, before a sweep runs. pyproject.toml caps Ray and
Optuna at the versions that test passed with (Ray 2.60, Optuna 5.0).
"""
from __future__ import annotations

import optuna
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch


def optuna_study(search: OptunaSearch) -> optuna.Study:
    """The study ``search`` asks and tells."""
    return search._ot_study


def optuna_trial(search: OptunaSearch, trial_id: str) -> optuna.Trial:
    """The live (not yet told) study trial behind Tune trial ``trial_id``; KeyError for an unknown one."""
    return search._ot_trials[trial_id]


def optuna_trial_numbers(search: OptunaSearch) -> set[int]:
    """The study numbers of every trial ``search`` has suggested for (in this driver or restored from its state)."""
    return {t.number for t in search._ot_trials.values()}


def is_completed(search: OptunaSearch, trial_id: str) -> bool:
    """True once ``search`` has told the study how trial ``trial_id`` ended."""
    return trial_id in search._completed_trials


def mark_completed(search: OptunaSearch, trial_id: str) -> None:
    """Record that trial ``trial_id`` was told to the study by hand, so ``search`` never tells it again."""
    search._completed_trials.add(trial_id)


def asha_record(scheduler: ASHAScheduler, trial, step: int, score: float) -> None:
    """Put ``score`` (in the metric's own sense; max or min as configured) at ``step`` into the rungs of the
    bracket that ``trial`` was added to, as a result seen then would have been; no stop decision is taken.
    The trial must have been added (``on_trial_add``) first."""
    bracket = scheduler._trial_info[trial.trial_id]
    bracket.on_result(trial, step, scheduler._metric_op * score)
