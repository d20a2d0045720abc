"""Sweep configuration: defaults, search-space validation with the field's name, all before Ray starts."""
from __future__ import annotations

from pathlib import Path

import pytest

from sigma_ray.infra.checks import ConfigError
from sigma_ray.infra.config import from_dict, load_config
from sigma_ray.tune.cli import main
from sigma_ray.tune.config import SearchSpace, SweepConfig, apply_params, trial_pretrain_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs"
TINY = str(CONFIGS / "local_tiny.yaml")


def sweep(**changes) -> SweepConfig:
    return from_dict(SweepConfig, {"pretrain_config": TINY, **changes})


def test_default_search_space_is_the_issue_s():
    ranges = SearchSpace().ranges()
    assert list(ranges) == ["num_prototypes", "temperature", "sinkhorn_iterations"]
    assert (ranges["num_prototypes"].low, ranges["num_prototypes"].high, ranges["num_prototypes"].log) == \
        (64, 4096, True)
    assert (ranges["temperature"].low, ranges["temperature"].high, ranges["temperature"].log) == (0.03, 0.3, True)
    assert (ranges["sinkhorn_iterations"].low, ranges["sinkhorn_iterations"].high) == (1, 10)


@pytest.mark.parametrize("field, value, message", [
    ("temperature", {"low": 0.3, "high": 0.03, "log": True}, "search.temperature.low = 0.3 must be < high = 0.03"),
    ("num_prototypes", {"low": 256, "high": 256}, "search.num_prototypes.low = 256 must be < high = 256"),
    ("sinkhorn_iterations", {"low": 0, "high": 5}, "search.sinkhorn_iterations.low = 0 is outside"),
    ("sinkhorn_eps", {"low": 0.0, "high": 0.1, "log": True}, "search.sinkhorn_eps.low = 0.0 must be > 0"),
    ("lr", {"low": 1e-3, "high": 1e-4, "log": True}, "search.lr.low = 0.001 must be < high = 0.0001"),
    ("num_prototypes", {"low": 64.5, "high": 128}, "search.num_prototypes.low must be an integer"),
])
def test_an_empty_or_inverted_range_fails_with_the_field_name(field, value, message):
    with pytest.raises(ConfigError) as e:
        sweep(search={field: value})
    assert message in str(e.value)


def test_the_cli_rejects_a_bad_range_before_ray_starts(capsys):
    import ray

    was = ray.is_initialized()
    status = main(["--config", str(CONFIGS / "sweep_local.yaml"), "--set", "search.temperature.low=0.3",
                   "--set", "search.temperature.high=0.03"])
    assert status == 2
    assert "search.temperature.low = 0.3 must be < high = 0.03" in capsys.readouterr().err
    assert ray.is_initialized() == was   # the error came before any Ray work


def test_other_sweep_fields_are_checked_with_their_names():
    with pytest.raises(ConfigError, match="trial.probe_every = 50 is outside"):
        sweep(trial={"steps": 20, "probe_every": 50})
    with pytest.raises(ConfigError, match="asha.max_t = 9 is outside"):
        sweep(trial={"steps": 20, "probe_every": 5}, asha={"max_t": 9})
    with pytest.raises(ConfigError, match="unknown key bogus in search"):
        sweep(search={"bogus": {"low": 1, "high": 2}})
    with pytest.raises(ConfigError, match="the search space is empty"):
        sweep(search={"num_prototypes": None, "temperature": None, "sinkhorn_iterations": None})
    with pytest.raises(ConfigError, match=r"pretrain \(.*local_tiny.yaml\): objective.temperature"):
        sweep(pretrain={"objective": {"temperature": -1.0}})
    with pytest.raises(ConfigError, match="set study_storage"):
        sweep(storage_path="s3://bucket/sweeps")
    with pytest.raises(ConfigError, match="probe.score = 'knn_top5' is not one of "
                                              "'knn_top1', 'linear_top1', 'mean_top1'"):
        sweep(probe={"score": "knn_top5"})
    with pytest.raises(ConfigError, match="probe.linear_epochs = 0 is outside"):
        sweep(probe={"linear_epochs": 0})


def test_a_linear_score_reaches_the_searcher_the_scheduler_and_the_probe(tmp_path, tiny_synthetic):
    """With probe.score linear_top1 (or mean_top1), Optuna and ASHA rank trials by it and the trials' probe
    computes it."""
    from sigma_ray.tune.sweep import _tune_config, prepare

    data = {"root": tiny_synthetic["root"], "train_list": tiny_synthetic["train"], "val_list": tiny_synthetic["val"]}
    base = {"synthetic": False, "data": data}
    config = sweep(storage_path=str(tmp_path), pretrain=base, probe={"score": "linear_top1", "linear_epochs": 7})
    assert prepare(config)[2].linear_epochs == 7
    Path(config.sweep_dir).mkdir()                      # the study's SQLite file goes there
    tune_config = _tune_config(config, total_steps=40)
    assert tune_config.search_alg.metric == tune_config.scheduler.metric == "linear_top1"
    both = sweep(storage_path=str(tmp_path), pretrain=base, name="both", probe={"score": "mean_top1"})
    assert prepare(both)[2].linear_epochs == 100        # the mean of kNN and linear trains the linear probe too
    Path(both.sweep_dir).mkdir()
    assert _tune_config(both, total_steps=40).scheduler.metric == "mean_top1"
    knn_only = sweep(storage_path=str(tmp_path), pretrain=base, name="knn")
    assert prepare(knn_only)[2].linear_epochs == 0     # the kNN score trains no linear probe
    Path(knn_only.sweep_dir).mkdir()
    assert _tune_config(knn_only, total_steps=40).scheduler.metric == "knn_top1"


def test_shipped_sweep_configs_load():
    local = load_config(SweepConfig, CONFIGS / "sweep_local.yaml")
    assert local.base_pretrain().data.actor_num_cpus == 0.25
    cluster = load_config(SweepConfig, CONFIGS / "sweep_k400_vitb.yaml")
    # the paper-scale sweep: SIGMA's own knobs and the lr (no queue: thousands of clips per Sinkhorn call)
    assert set(cluster.search.ranges()) == {"num_prototypes", "temperature", "sinkhorn_iterations", "sinkhorn_eps",
                                            "lr"}
    assert cluster.resources.gpus_per_worker == 1


@pytest.mark.parametrize("round_", ["", "_r2", "_r3"])
def test_the_demo_sweeps_of_a_round_give_both_methods_the_same_budget(round_):
    """The demo's settings come from a SIGMA-MLP and a VideoMAE sweep per round: the same base run (the demo's
    experiments, which differ in the objective, lr and mask ratio alone), trials, steps, schedule, probe, seed and lr
    range; they differ only in the objective and in what else each one searches."""
    import dataclasses

    sigma = load_config(SweepConfig, CONFIGS / f"sweep_demo_sigma{round_}.yaml")
    pixels = load_config(SweepConfig, CONFIGS / f"sweep_demo_pixels{round_}.yaml")
    for field in ("pretrain", "num_samples", "max_concurrent", "trial", "asha", "resources", "probe", "seed"):
        assert getattr(sigma, field) == getattr(pixels, field), field
    assert sigma.search.lr == pixels.search.lr
    s, p = sigma.base_pretrain(), pixels.base_pretrain()
    assert dataclasses.replace(p, objective=s.objective, data=dataclasses.replace(p.data, mask=s.data.mask),
                               train=dataclasses.replace(p.train, base_lr=s.train.base_lr, min_lr=s.train.min_lr)) == s
    assert sigma.base_pretrain().objective.kind == "sigma_mlp" and pixels.base_pretrain().objective.kind == "videomae"
    assert set(pixels.search.ranges()) == {"lr", "mask_ratio"}


def test_mask_ratio_and_queue_length_reach_their_nested_fields():
    cfg = sweep(search={"mask_ratio": {"low": 0.5, "high": 0.9}, "queue_length": {"low": 0, "high": 4096}})
    data = apply_params(cfg.base_pretrain(), {"mask_ratio": 0.6, "queue_length": 2048})
    assert data["data"]["mask"]["ratio"] == 0.6 and data["objective"]["queue_length"] == 2048
    with pytest.raises(ConfigError, match="mask_ratio.high"):
        sweep(search={"mask_ratio": {"low": 0.5, "high": 1.0}})


def test_a_trial_config_carries_the_params_steps_and_resources(tmp_path):
    cfg = sweep(trial={"steps": 12, "probe_every": 4},
                resources={"num_workers": 2, "cpus_per_worker": 0.25, "gpus_per_worker": 0.5},
                search={"lr": {"low": 1e-4, "high": 1e-2, "log": True}})
    params = {"num_prototypes": 100, "temperature": 0.05, "sinkhorn_iterations": 3, "lr": 0.002}
    trial = trial_pretrain_config(cfg.base_pretrain(), params, cfg, name="t1", storage_path=str(tmp_path))
    assert (trial.name, trial.storage_path) == ("t1", str(tmp_path))
    assert (trial.objective.num_prototypes, trial.objective.temperature, trial.objective.sinkhorn_iterations) == \
        (100, 0.05, 3)
    base = cfg.base_pretrain().train
    assert trial.train.base_lr == 0.002 and base.base_lr != 0.002
    assert trial.train.min_lr == pytest.approx(base.min_lr * 0.002 / base.base_lr)   # the cosine's shape is kept
    assert (trial.train.max_steps, trial.train.probe_every, trial.train.checkpoint_every) == (12, 4, 4)
    assert (trial.train.num_workers, trial.train.use_gpu, trial.train.gpus_per_worker) == (2, True, 0.5)
    with pytest.raises(ConfigError, match="unknown search parameter 'bogus'"):
        apply_params(cfg.base_pretrain(), {"bogus": 1})


def test_smoke_mode_makes_four_tiny_trials_under_their_own_name(capsys):
    assert main(["--config", str(CONFIGS / "sweep_local.yaml"), "--smoke", "--dry-run"]) == 0
    import yaml

    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["name"] == "sweep_local_smoke"
    assert printed["num_samples"] == 4
    assert printed["trial"] == {"steps": 4, "probe_every": 2}


def test_with_no_arguments_the_script_runs_the_local_sweep(capsys, monkeypatch):
    """``python experiments/sweep_prototypes.py`` (its ``main``) from the repository root is the local sweep:
    shown with --dry-run, which prints the resolved config and stops before Ray."""
    import yaml

    monkeypatch.chdir(ROOT)
    assert main(["--dry-run"]) == 0
    default = yaml.safe_load(capsys.readouterr().out)
    assert main(["--config", "experiments/configs/sweep_local.yaml", "--dry-run"]) == 0
    assert default == yaml.safe_load(capsys.readouterr().out) and default["name"] == "sweep_local"


def test_the_dashboard_finds_the_study_of_a_sweep_directory_or_says_it_holds_none(tmp_path, capsys):
    from sigma_ray.infra.config import save_yaml
    from sigma_ray.tune.dashboard import main as dashboard_main, sweep_study
    from sigma_ray.tune.sweep import SWEEP_FILE

    local = sweep(name="s1", storage_path="somewhere/relative")
    save_yaml(local, tmp_path / "s1" / SWEEP_FILE)
    # the study file beside the saved config, wherever the sweep directory was moved or is reached from
    assert sweep_study(tmp_path / "s1") == (f"sqlite:///{tmp_path / 's1' / 'study.db'}", "s1")
    shared = sweep(name="s2", study_storage="postgresql://head/optuna")
    save_yaml(shared, tmp_path / "s2" / SWEEP_FILE)
    assert sweep_study(tmp_path / "s2") == ("postgresql://head/optuna", "s2")
    assert dashboard_main([str(tmp_path)]) == 2
    assert "holds no sweep (sweep_config.yaml is missing)" in capsys.readouterr().err
    assert not (tmp_path / "study.db").exists()   # no empty study was created in the wrong place


def test_resuming_a_sweep_directory_with_another_search_fails_before_ray(tmp_path):
    import ray

    from sigma_ray.infra.config import save_yaml
    from sigma_ray.tune.sweep import SWEEP_FILE, run_sweep

    started = sweep(storage_path=str(tmp_path), num_samples=4)
    save_yaml(started, tmp_path / started.name / SWEEP_FILE)   # what the first run of the sweep wrote
    was = ray.is_initialized()
    changed = sweep(storage_path=str(tmp_path), num_samples=8,
                    search={"temperature": {"low": 0.05, "high": 0.2, "log": True}})
    with pytest.raises(ConfigError, match="started with other search, num_samples"):
        run_sweep(changed)
    assert ray.is_initialized() == was
