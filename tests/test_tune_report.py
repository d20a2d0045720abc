"""The sweep report from a study (no Ray): ranking, the summary table, importances and their fallback, plots."""
from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from sigma_ray.tune import report
from sigma_ray.tune.config import TUNE_ID_ATTR, SweepConfig

SPACE = {"num_prototypes": IntDistribution(16, 256, log=True), "temperature": FloatDistribution(0.03, 0.3, log=True)}


def add(study: optuna.Study, state: TrialState, protos: int, temp: float, scores: dict[int, float]) -> None:
    value = scores[max(scores)] if state == TrialState.COMPLETE else None
    study.add_trial(create_trial(state=state, value=value, params={"num_prototypes": protos, "temperature": temp},
                                 distributions=SPACE, intermediate_values=scores,
                                 user_attrs={TUNE_ID_ATTR: f"id{len(study.trials)}"}))


@pytest.fixture
def study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.create_study(direction="maximize")
    add(s, TrialState.COMPLETE, 32, 0.1, {2: 30.0, 4: 40.0})
    add(s, TrialState.PRUNED, 200, 0.05, {2: 45.0})          # stopped early with a higher partial score
    add(s, TrialState.COMPLETE, 64, 0.2, {2: 35.0, 4: 50.0})
    add(s, TrialState.FAIL, 20, 0.03, {})
    return s


def test_rows_rank_full_length_trials_first_then_stopped_then_unscored(study):
    rows = report.trial_rows(study)
    assert [(r.number, r.state) for r in rows] == [(2, "complete"), (0, "complete"), (1, "stopped early"),
                                                  (3, "failed")]
    assert [(r.score, r.steps) for r in rows] == [(50.0, 4), (40.0, 4), (45.0, 2), (None, 0)]
    assert rows[2].stopped_early and rows[0].tune_id == "id2"
    table = report.format_table(rows, ["num_prototypes", "temperature"]).splitlines()
    assert table[0].split() == ["rank", "trial", "num_prototypes", "temperature", "knn_top1", "steps", "stopped",
                                "early", "state"]
    assert table[2].split()[:7] == ["1", "2", "(id2)", "64", "0.2", "50.00", "4"]
    assert table[4].split()[-4:] == ["2", "yes", "stopped", "early"]


def test_importances_fall_back_to_rank_correlation_with_few_trials(study):
    rows = report.trial_rows(study)
    values, method = report.importances(study, rows, ["num_prototypes", "temperature"])
    assert "Spearman" in method and "3 scored trials" in method
    # scores 50, 40, 45 against num_prototypes 64, 32, 200 -> ranks (1, 0, 2) vs (2, 0, 1): rho = 0.5
    assert values["num_prototypes"] == pytest.approx(0.5)


def test_importances_are_the_named_evaluators(study):
    """With enough complete trials the importances are PED-ANOVA's, the evaluator the label names, and not
    whatever Optuna's default evaluator is: the same values come from PedAnovaImportanceEvaluator directly."""
    evaluator, name = report.importance_evaluator()
    assert isinstance(evaluator, optuna.importance.PedAnovaImportanceEvaluator) and name == "PED-ANOVA"
    for i in range(4):
        add(study, TrialState.COMPLETE, 16 + 20 * i, (0.05, 0.25, 0.1, 0.2)[i], {4: 10.0 * i})
    params = ["num_prototypes", "temperature"]
    values, method = report.importances(study, report.trial_rows(study), params)
    assert method == "Optuna importance (PED-ANOVA), 6 complete trials"
    expected = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), params=params)
    assert values == pytest.approx(dict(expected))


def test_plots_are_pngs(study, tmp_path):
    rows = report.trial_rows(study)
    config = SweepConfig()   # its default space also has sinkhorn_iterations, which these trials lack
    paths = [report.plot_history(rows, tmp_path / "h.png"),
             report.plot_importances(*report.importances(study, rows, ["num_prototypes", "temperature"]),
                                     tmp_path / "i.png"),
             report.plot_importances({}, "1 scored trial(s): too few for importances", tmp_path / "e.png"),
             report.plot_params(rows, config, tmp_path / "p.png")]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
