"""The private Ray Tune / Optuna attributes behind sigma_ray.tune.internals, on real OptunaSearch and ASHAScheduler
instances of the installed versions. A failure here after an upgrade means internals.py needs porting (or the
version cap in pyproject.toml stays where it is); the sweep would otherwise break mid-run."""
from __future__ import annotations

import optuna
import pytest
from optuna.distributions import IntDistribution
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from sigma_ray.tune import internals


@pytest.fixture
def search() -> OptunaSearch:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return OptunaSearch({"k": IntDistribution(16, 256, log=True)}, metric="score", mode="max",
                        sampler=optuna.samplers.RandomSampler(seed=0))


def test_optuna_search_study_trials_and_completion(search):
    params = search.suggest("a")
    study = internals.optuna_study(search)
    assert isinstance(study, optuna.Study)
    trial = internals.optuna_trial(search, "a")
    assert isinstance(trial, optuna.Trial) and trial.params == params and trial.number == 0
    search.suggest("b")
    assert internals.optuna_trial_numbers(search) == {0, 1}
    with pytest.raises(KeyError):
        internals.optuna_trial(search, "never suggested")

    # Tune ending a trial marks it completed; a trial told by hand and marked is never told again by the search
    assert not internals.is_completed(search, "a")
    search.on_trial_complete("a", {"score": 1.0})
    assert internals.is_completed(search, "a")
    study.tell(internals.optuna_trial(search, "b"), state=optuna.trial.TrialState.PRUNED)
    internals.mark_completed(search, "b")
    assert internals.is_completed(search, "b")
    search.on_trial_complete("b", {"score": 2.0})   # would raise "already finished" if the search told it again
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]


def asha() -> ASHAScheduler:
    return ASHAScheduler(time_attr="step", metric="score", mode="max", grace_period=1, max_t=4, reduction_factor=2)


def test_asha_record_puts_a_score_into_the_rung_without_deciding():
    low = {"step": 1, "score": 5.0}
    # without a recorded score the rung is empty, and the first trial there continues
    fresh = asha()
    alone = Trial("trainable", stub=True)
    fresh.on_trial_add(None, alone)
    assert fresh.on_trial_result(None, alone, low) == TrialScheduler.CONTINUE

    sched = asha()
    earlier, later = Trial("trainable", stub=True), Trial("trainable", stub=True)
    sched.on_trial_add(None, earlier)
    internals.asha_record(sched, earlier, 1, 10.0)   # the earlier trial scored 10 at the rung (step 1)
    sched.on_trial_add(None, later)
    # a score of 5 trails the recorded 10 at the rung: ASHA stops the later trial; 20 would lead, and continue
    assert sched.on_trial_result(None, later, low) == TrialScheduler.STOP
    leader = Trial("trainable", stub=True)
    sched.on_trial_add(None, leader)
    assert sched.on_trial_result(None, leader, {"step": 1, "score": 20.0}) == TrialScheduler.CONTINUE
