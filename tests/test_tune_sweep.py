"""A real sweep on the local Ray: tiny SIGMA trials (Ray Train V2 inside Tune trials), Optuna TPE on an SQLite
study, ASHA early stopping, an interrupted driver resumed with ``Tuner.restore``, and the best config trained;
then what a person watching it sees: the study the dashboard reads, optuna-dashboard rendered in headless
Chromium, and the HParams data TensorBoard reads from Tune's event files.

One sweep serves all tests (each trial costs a Train start-up, about a minute on 2 cores): 6 trials, 2 at a time;
the driver is interrupted once 2 trials have finished, then the same sweep runs again and finishes the other 4.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest

from sigma_ray.infra.config import from_dict
from sigma_ray.tune.config import COLLAPSE_METRICS, RUN_DIR_ATTR, TUNE_ID_ATTR, SweepConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "experiments" / "configs" / "local_tiny.yaml")
# ASHA never stops the first trial at a rung, nor one that ties or beats the top 1/reduction_factor of the scores
# before it, so whether a trial stops is chance. A simulation of ASHA's rule on scores spread like these trials'
# (sd ~4 points, 1-point steps, 400,000 sweeps) gives a sweep with no stop 12% of the time for 4 trials on 40 probe
# queries and reduction factor 4 (a CI run failed so); on 100 queries 0.14% for 8 trials and factor 4, 1.2% for 6
# trials and factor 4, 0.5% for 6 trials and factor 8 (this sweep: a round of 2 trials fewer saves ~95 s of CI).
N_TRIALS = 6

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_with_dashboard():
    """Tune over Train V2 needs the dashboard (Train frees stopped trials' placement groups through it), which the
    shared session runs without: swap it for one with the dashboard, and bring the shared one back afterwards."""
    import ray

    shared = ray.is_initialized()
    if shared:
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
    if shared:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)


@pytest.fixture(scope="module")
def sweep_data(tmp_path_factory) -> dict:
    """4 classes x 6 train and 25 val videos: a 24-video bank and 100 queries for the probe (1% steps, so
    trials seldom tie at ASHA's rung)."""
    from sigma_ray.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("sweep_data"), num_classes=4, train_per_class=6,
                          val_per_class=25, frames=16, size=64)


def sweep_config(data: dict, storage: Path) -> SweepConfig:
    """Trials of 4 steps (batch 2) probed at steps 2 and 4; ASHA's only rung is step 2. A large lr makes 2 steps
    move the encoder enough for the configs' probe scores to differ."""
    return from_dict(SweepConfig, {
        "name": "sweep_test", "storage_path": str(storage), "pretrain_config": TINY,
        "pretrain": {
            "synthetic": False, "storage_path": str(storage / "best_runs"),
            "data": {"root": data["root"], "train_list": data["train"], "val_list": data["val"], "batch_size": 2,
                     "num_actors_max": 1, "actor_num_cpus": 0.25},
            "train": {"base_lr": 2.0, "min_lr": 0.01, "warmup_epochs": 0, "log_every": 1},
        },
        "num_samples": N_TRIALS, "max_concurrent": 2, "seed": 3,
        "trial": {"steps": 4, "probe_every": 2},
        "asha": {"grace_period": 1, "reduction_factor": 8},
        "resources": {"num_workers": 1, "cpus_per_worker": 0.25, "driver_cpus": 0.1},
        "search": {"num_prototypes": {"low": 16, "high": 256, "log": True}},
        "probe": {"k": 10},
    })


class StopAfterTrials(threading.Thread):
    """Interrupt this process once ``n`` more trials have finished in the study, as Ctrl+C would (Tune handles
    SIGUSR1 like SIGINT: it saves the experiment state and returns; trials still running are cut off)."""

    def __init__(self, study_url: str, study_name: str, n: int):
        super().__init__(daemon=True, name="sweep-stop-after-trials")
        self.storage = optuna.storages.RDBStorage(study_url)
        self.study_name, self.n = study_name, n
        self.start_count = self.finished()
        self.done = threading.Event()

    def finished(self) -> int:
        from sigma_ray.tune.sweep import FINISHED

        try:
            study_id = self.storage.get_study_id_from_name(self.study_name)
        except KeyError:   # the sweep has not created its study yet
            return 0
        return sum(t.state in FINISHED for t in self.storage.get_all_trials(study_id, deepcopy=False))

    def run(self) -> None:
        while not self.done.wait(0.5):
            if self.finished() - self.start_count >= self.n:
                os.kill(os.getpid(), signal.SIGUSR1)
                return


def interrupt_after(config: SweepConfig, n: int):
    """A ``fit`` for run_sweep that interrupts the driver once ``n`` trials finished (needs the main thread,
    where Tune's signal handler lives)."""
    assert threading.current_thread() is threading.main_thread()

    def fit(tuner):
        stopper = StopAfterTrials(config.study_url, config.name, n)
        stopper.start()
        try:
            return tuner.fit()
        finally:
            stopper.done.set()
            stopper.join()
    return fit


@pytest.fixture(scope="module")
def interrupted_then_resumed(ray_with_dashboard, sweep_data, tmp_path_factory):
    """(first result, second result, config, trial dir snapshots after the first run)."""
    from sigma_ray.tune.sweep import run_sweep

    config = sweep_config(sweep_data, tmp_path_factory.mktemp("sweeps"))
    first = run_sweep(config, fit=interrupt_after(config, 2))
    snapshot = {p.parent.name: p.read_text() for p in Path(config.sweep_dir, "trials").glob("*/metrics.jsonl")}
    with contextlib.redirect_stdout(io.StringIO()) as console:   # what the console shows of the resumed sweep
        second = run_sweep(config)
    print(console.getvalue(), end="")
    Path(config.sweep_dir, "console.txt").write_text(console.getvalue())
    return first, second, config, snapshot


def study_of(config: SweepConfig) -> optuna.Study:
    return optuna.load_study(study_name=config.name, storage=config.study_url)


def test_the_interrupted_sweep_resumes_and_finishes_without_repeating_a_trial(interrupted_then_resumed):
    first, second, config, snapshot = interrupted_then_resumed
    assert not first.finished
    assert sum(r.state in ("complete", "stopped early") for r in first.rows) >= 2
    assert second.finished
    # Tune: every trial, each once
    ids = [r.metrics.get("trial_id") for r in second.result_grid]
    assert len(ids) == len(set(ids)) == N_TRIALS
    # the study: every trial, all finished, each linked to one Tune trial, no config proposed twice
    trials = study_of(config).get_trials()
    assert len(trials) == N_TRIALS
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    assert sorted(t.user_attrs[TUNE_ID_ATTR] for t in trials) == sorted(ids)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == N_TRIALS
    # trials finished before the interruption did not run again: their pretraining logs are untouched
    done_before = {r.tune_id for r in first.rows if r.state in ("complete", "stopped early")}
    for tid in done_before:
        assert (Path(config.sweep_dir, "trials", tid, "metrics.jsonl")).read_text() == snapshot[tid]


def test_asha_stopped_a_trial_early_and_the_study_says_so(interrupted_then_resumed):
    _, second, config, _ = interrupted_then_resumed
    rows = second.rows
    stopped = [r for r in rows if r.stopped_early]
    assert stopped, "ASHA stopped no trial: " + "; ".join(f"{r.number}: {r.scores}" for r in rows)
    for r in stopped:   # stopped at the rung (step 2) with the score that stopped it, PRUNED in the study
        assert r.steps == 2 and list(r.scores) == [2] and r.score == r.scores[2]
    assert all(r.steps == 4 and list(r.scores) == [2, 4] for r in rows if r.state == "complete")
    # ASHA's rule at its rung: a trial stops when its score is below the 87.5th percentile (reduction factor 8)
    # of the scores recorded there before it, so a stopped trial is below some other trial's rung score
    for r in stopped:
        assert r.scores[2] < max(o.scores[2] for o in rows if o is not r)
    # early-stopped trials rank below the full-length ones
    assert [r.state for r in rows] == sorted((r.state for r in rows), key=lambda s: s != "complete")


def test_outputs_tune_results_tensorboard_plots_and_summary(interrupted_then_resumed, capsys):
    _, second, config, _ = interrupted_then_resumed
    sweep_dir = Path(config.sweep_dir)
    trial_dirs = [p for p in sweep_dir.iterdir() if p.is_dir() and p.name.startswith("run_trial_")]
    assert len(trial_dirs) == N_TRIALS
    for d in trial_dirs:
        assert (d / "progress.csv").is_file() and (d / "result.json").is_file()
        assert list(d.glob("events.out.tfevents.*"))
        results = [json.loads(line) for line in (d / "result.json").read_text().splitlines()]
        assert results and all("knn_top1" in r for r in results)   # every result Tune saw has the score
    for name in ("optimization_history.png", "param_importances.png", "params.png"):
        assert (sweep_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    console = (sweep_dir / "console.txt").read_text()
    assert "[sigma-ray]" in console and "Trial status" not in console and "╭" not in console   # no Tune table
    summary = (sweep_dir / "summary.csv").read_text().splitlines()
    assert len(summary) == N_TRIALS + 1 and summary[0].startswith("rank,number,tune_id,num_prototypes,temperature,sinkhorn_iterations,knn_top1")


def test_best_config_loads_and_trains_one_step(interrupted_then_resumed):
    from sigma_ray.train.config import load_pretrain_config
    from sigma_ray.train.launch import pretrain

    _, second, config, _ = interrupted_then_resumed
    best = second.rows[0]
    assert best.state == "complete"
    cfg = load_pretrain_config(second.best_config_path)   # as experiments/pretrain.py loads it
    assert cfg.name == "sweep_test_best"
    assert cfg.objective.num_prototypes == best.params["num_prototypes"]
    result = pretrain(load_pretrain_config(second.best_config_path, ["train.max_steps=1"]))
    assert result.steps == 1 and Path(result.encoder_path).is_file()


def probe_lines(run_dir: Path) -> dict[int, dict]:
    """The trainer's own metrics.jsonl lines that carry a probe score, by step (a resumed run's later line wins)."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m for m in lines if "knn_top1" in m}


def test_the_study_holds_each_trials_scores_run_directory_and_collapse_diagnostic(interrupted_then_resumed):
    """What the dashboard shows comes from the study: compared here with each trial's own metrics.jsonl."""
    _, _, config, _ = interrupted_then_resumed
    for t in study_of(config).get_trials():
        run_dir = Path(t.user_attrs[RUN_DIR_ATTR])
        assert run_dir == Path(config.sweep_dir, "trials", t.user_attrs[TUNE_ID_ATTR])
        probes = probe_lines(run_dir)
        # every probe score at its optimizer step: all probes of a full trial, up to the rung of a stopped one
        assert t.intermediate_values == {step: m["knn_top1"] for step, m in probes.items()
                                         if step <= max(t.intermediate_values)}
        assert max(t.intermediate_values) == (4 if t.state == optuna.trial.TrialState.COMPLETE else 2)
        last = probes[max(t.intermediate_values)]
        shown = {k: t.user_attrs[k] for k in COLLAPSE_METRICS if k in t.user_attrs}
        assert {"perplexity_video", "perplexity_proj"} <= set(shown)
        assert shown == {k: last[k] for k in COLLAPSE_METRICS if k in last}


def test_tensorboard_hparams_lists_the_swept_parameters_and_the_probe_score(interrupted_then_resumed):
    """TensorBoard's own reader and hparams plugin over Tune's event files: one HParams session per trial, with
    the three swept parameters at the study's values and the probe score as a metric with the trial's last
    score in its scalar series."""
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import metadata
    from tensorboard.util import tensor_util

    _, _, config, _ = interrupted_then_resumed
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(config.sweep_dir)
    mux.Reload()
    hparams = mux.PluginRunToTagToContent(metadata.PLUGIN_NAME)
    sessions = {run: tags for run, tags in hparams.items() if metadata.SESSION_START_INFO_TAG in tags}
    trials = {t.user_attrs[TUNE_ID_ATTR]: t for t in study_of(config).get_trials()}
    assert len(sessions) == len(trials) == N_TRIALS
    swept = {"num_prototypes", "temperature", "sinkhorn_iterations"}
    metric_tag = "ray/tune/knn_top1"
    for run, tags in sessions.items():
        experiment = metadata.parse_experiment_plugin_data(tags[metadata.EXPERIMENT_TAG])
        assert {h.name for h in experiment.hparam_infos} == swept
        assert metric_tag in {m.name.tag for m in experiment.metric_infos}
        start = metadata.parse_session_start_info_plugin_data(tags[metadata.SESSION_START_INFO_TAG])
        trial = trials[run.split("_")[2]]   # run_trial_<tune id>_<n>_<params>_<time>
        assert {k: v.number_value for k, v in start.hparams.items()} == pytest.approx(trial.params)
        scores = [tensor_util.make_ndarray(e.tensor_proto).item() for e in mux.Tensors(run, metric_tag)]
        assert scores[-1] == pytest.approx(trial.intermediate_values[max(trial.intermediate_values)], rel=1e-6)


@pytest.fixture(scope="module")
def dashboard(interrupted_then_resumed):
    """``sigma-ray dashboard SWEEP_DIR --port 0`` as a user starts it; yields its address."""
    _, _, config, _ = interrupted_then_resumed
    proc = subprocess.Popen([sys.executable, "-m", "sigma_ray.cli", "dashboard", config.sweep_dir, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()   # "[sigma-ray] optuna-dashboard of study ... at http://127.0.0.1:PORT/dashboard/"
    if "http://" not in line:
        proc.kill()
        pytest.fail(f"the dashboard did not start: {line}{proc.stderr.read()[-3000:]}")
    url = line.split(" at ")[1].split()[0]
    assert url.startswith("http://127.0.0.1:")   # loopback unless --host says otherwise
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_the_dashboard_renders_every_trial_with_its_state_parameters_scores_and_attributes(
        interrupted_then_resumed, dashboard, chromium):
    """optuna-dashboard in headless Chromium, read from the rendered page: the study, then every trial with its
    state, parameters, intermediate probe scores and user attributes as the study holds them."""
    _, _, config, _ = interrupted_then_resumed
    home = chromium.dom(dashboard, expect=config.name)
    study_path = next(h for h in home.split('href="')[1:] if h.startswith("/dashboard/studies/")).split('"')[0]
    trials = study_of(config).get_trials()
    numbers = ",".join(str(t.number) for t in trials)
    text = chromium.text(f"{dashboard.split('/dashboard/')[0]}{study_path}/trials?numbers={numbers}",
                         expect="User Attributes")
    cards = {int(c.split()[1]): c for c in re.split(r"(?=Trial \d+ \(trial_id=)", text)[1:]}
    assert sorted(cards) == sorted(t.number for t in trials)
    states = {optuna.trial.TrialState.COMPLETE: "Complete", optuna.trial.TrialState.PRUNED: "Pruned"}
    for t in trials:
        card = cards[t.number]
        assert states[t.state] in card[:card.index("Value")]
        scores = card[card.index("Intermediate Values"):card.index("Parameter")].split()[2:]
        assert scores == [js_number(x) for step, v in sorted(t.intermediate_values.items()) for x in (step, v)]
        params = card[card.index("Parameter"):card.index("Started At")]
        for name, value in t.params.items():
            assert f"{name} {js_number(value)}" in params, (name, value, params)
        attrs = card[card.index("User Attributes"):]
        assert f"{RUN_DIR_ATTR} {t.user_attrs[RUN_DIR_ATTR]}" in attrs and t.user_attrs[TUNE_ID_ATTR] in attrs


def js_number(x: float) -> str:
    """``x`` as JavaScript prints a number (shortest round-trip digits, like Python's repr; no ``.0``)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))
