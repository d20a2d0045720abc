"""The demo: its configs, its arithmetic (mean +- std, the verdict) and, at its smallest size, the whole loop."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from sigma_ray.demo import (COLUMNS, METHODS, DemoConfig, format_table, pretrain_config, quick_config, run_demo,
                            step_seconds, summarize, verdict, with_overrides)
from sigma_ray.infra.checks import ConfigError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_pretrain_configs_share_everything_but_the_objective_and_its_tuned_settings(tmp_path):
    demo = DemoConfig(out_dir=str(tmp_path), sigma=("train.base_lr=0.01", "data.mask.ratio=0.8"),
                      pixels=("train.base_lr=0.02", "data.mask.ratio=0.6"))
    sigma, pixels = pretrain_config(demo, "sigma_mlp", 3), pretrain_config(demo, "videomae", 3)
    assert sigma.objective.kind == "sigma_mlp" and pixels.objective.kind == "videomae"
    assert sigma.model == pixels.model and sigma.model.patch == 8
    assert (sigma.train.base_lr, pixels.train.base_lr) == (0.01, 0.02)
    assert (sigma.data.mask.ratio, pixels.data.mask.ratio) == (0.8, 0.6)
    same_data = dataclasses.replace(pixels.data, mask=sigma.data.mask)
    same_train = dataclasses.replace(pixels.train, base_lr=0.01, min_lr=sigma.train.min_lr)
    assert same_data == sigma.data and same_train == sigma.train
    assert sigma.train.max_steps == demo.total_steps == 2400 and sigma.global_batch == demo.batch_size == 8
    assert sigma.train.warmup_epochs / sigma.train.epochs * 2400 == pytest.approx(demo.warmup) and demo.warmup == 120
    # a seed sets the initial weights and the data order, crops and masks; the set itself is the data seed's
    other = pretrain_config(demo, "sigma_mlp", 4)
    assert (other.train.seed, other.data.seed) == (4, 4) and other.data.train_list == sigma.data.train_list


def test_summary_is_mean_and_sample_std_over_seeds():
    per_seed = {0: {"random": {"linear_top1": 10.0}}, 1: {"random": {"linear_top1": 20.0}},
                2: {"random": {"linear_top1": 30.0}}}
    assert summarize(per_seed) == {"random": {"linear_top1": (20.0, 10.0)}}
    assert summarize({5: per_seed[0]}) == {"random": {"linear_top1": (10.0, 0.0)}}


def _summary(sigma: float, pixels: float, random: float) -> dict:
    row = lambda v: {m: (5.0, 0.5) if m == "effective_rank" else (v, 1.0) for m in COLUMNS}  # noqa: E731
    return {"sigma_mlp": row(sigma), "videomae": row(pixels), "random": row(random), "supervised": row(90.0)}


def test_table_lists_every_method_with_mean_and_std_and_chance():
    table = format_table(_summary(50.0, 40.0, 30.0), 12.5, 3, {"sigma_mlp": 100.0})
    assert all(name in table for name in METHODS.values()) and "| chance | 12.5 |" in table
    assert "50.0 +- 1.0" in table and "| 100 |" in table


def test_step_seconds_weights_each_rows_mean_step_time_by_its_steps():
    rows = [{"step": 10, "step_time_s": 0.5}, {"step": 20, "step_time_s": 1.0}, {"step": 25, "step_time_s": 2.0}]
    assert step_seconds(rows) == pytest.approx(10 * 0.5 + 10 * 1.0 + 5 * 2.0)


def test_verdict_says_whether_the_ordering_holds():
    assert verdict(_summary(50.0, 40.0, 30.0)).startswith("The ordering SIGMA-MLP > VideoMAE > random init holds")
    no = verdict(_summary(50.0, 20.0, 30.0))
    assert "does NOT hold" in no and "VideoMAE 20.0 <= random 30.0" in no


def test_bad_demo_config_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"demo_videomae.yaml: data.mask.ratio = 1.0 is outside"):
        run_demo(DemoConfig(out_dir=str(tmp_path), pixels=("data.mask.ratio=1.0",)))
    with pytest.raises(ConfigError, match="seeds"):
        run_demo(DemoConfig(out_dir=str(tmp_path), seeds=0))
    with pytest.raises(ConfigError, match="suite_kinds"):
        run_demo(DemoConfig(out_dir=str(tmp_path), suite=True, suite_kinds=("patterns", "nope")))
    with pytest.raises(ConfigError, match="suite_data_seed = 2 is the demo's own data seed"):
        run_demo(DemoConfig(out_dir=str(tmp_path), suite=True, suite_data_seed=2))


def test_demo_overrides_reach_nested_settings_and_bad_keys_are_named(tmp_path, capsys):
    from sigma_ray.cli import main

    demo = with_overrides(DemoConfig(), ["sigma.objective.queue_length=64", "pixels.objective.normalize_target=false",
                                         "runs.data.sampling_rate=1", "steps=1200", "supervised=false"])
    assert (demo.sigma, demo.pixels, demo.runs) == (("objective.queue_length=64",),
                                                    ("objective.normalize_target=false",), ("data.sampling_rate=1",))
    assert (demo.steps, demo.supervised) == (1200, False)
    sigma, pixels = pretrain_config(demo, "sigma_mlp"), pretrain_config(demo, "videomae")
    assert sigma.objective.queue_length == 64 and pixels.objective.queue_length == 0
    assert pixels.objective.normalize_target is False and sigma.objective.normalize_target is True
    assert sigma.data.sampling_rate == pixels.data.sampling_rate == 1 and sigma.train.max_steps == 1200
    assert sigma.objective.projection_hidden == (1024, 1024, 512)     # the experiment's, untouched
    with pytest.raises(ConfigError, match=r"demo_sigma_mlp.yaml: unknown key queue_lenght in objective "
                                          r"\(did you mean queue_length\?\)"):
        with_overrides(DemoConfig(), ["sigma.objective.queue_lenght=0"])
    with pytest.raises(ConfigError, match="unknown key bogus"):
        with_overrides(DemoConfig(), ["bogus=1"])
    # the command refuses it before writing anything
    assert main(["demo", "--out", str(tmp_path / "demo"), "--set", "pixels.data.mask.ratio=1.5"]) == 2
    assert "data.mask.ratio = 1.5" in capsys.readouterr().err and not (tmp_path / "demo").exists()


def test_the_demos_runs_are_the_experiments_that_pretrain_runs_alone(tmp_path):
    """experiments/configs/demo_sigma_mlp.yaml and demo_videomae.yaml are the demo's runs: what
    ``experiments/pretrain.py --config`` trains from them is the demo's seed-0 run but for its name, storage,
    threads and the set's location (the demo writes its set under its out_dir)."""
    from sigma_ray.demo import CONFIGS
    from sigma_ray.train.config import load_pretrain_config

    demo = DemoConfig()
    for kind in ("sigma_mlp", "videomae"):
        alone = load_pretrain_config(CONFIGS / f"demo_{kind}.yaml")
        run = pretrain_config(demo, kind, 0)
        assert (alone.model, alone.objective) == (run.model, run.objective)
        keep = dict(root=None, train_list="", val_list=None)
        assert dataclasses.replace(alone.data, **keep) == dataclasses.replace(run.data, **keep)
        assert dataclasses.replace(alone.train, torch_threads=None) == dataclasses.replace(run.train, torch_threads=None)
        assert alone.synthetic == demo.synthetic and alone.synthetic.seed == 2
        assert alone.data.train_list == "runs/demo/synthetic/train.csv" and alone.name == f"demo_{kind}"


@pytest.mark.slow
def test_quick_demo_end_to_end_with_two_seeds(ray_session, tmp_path):
    demo = with_overrides(dataclasses.replace(quick_config(str(tmp_path)), seeds=2, steps=8, suite=True),
                          ["runs.train.probe_every=4"])
    out = run_demo(demo)
    assert sorted(out["per_seed"]) == [0, 1] and all(set(r) == set(METHODS) for r in out["per_seed"].values())
    for r in out["per_seed"].values():
        assert all(0 <= m["linear_top1"] <= 100 and m["effective_rank"] >= 1 for m in r.values())
    # the runs trained: the encoders moved away from their shared initial weights, the pixel loss fell
    from sigma_ray.demo import run_name
    from sigma_ray.runs.encoders import load_model
    for seed in (0, 1):
        torch.manual_seed(seed)
        cfg = pretrain_config(demo, "sigma_mlp", seed)
        from sigma_ray.method.sigma import build_model
        init = build_model(cfg.model, cfg.objective).encoder.state_dict()
        for kind in ("sigma_mlp", "videomae"):
            run = pretrain_config(demo, kind, seed)
            trained = load_model(tmp_path / run_name(kind, seed), run.model, run.objective).encoder
            moved = max((trained.state_dict()[k] - v).abs().max().item() for k, v in init.items())
            assert moved > 1e-4, (kind, seed)
        rows = [json.loads(line) for line in (tmp_path / run_name("videomae", seed) / "metrics.jsonl")
                .read_text().splitlines()]
        assert rows[-1]["loss"] < rows[0]["loss"]
        sigma_rows = [json.loads(line) for line in (tmp_path / run_name("sigma_mlp", seed) / "metrics.jsonl")
                      .read_text().splitlines()]
        assert [r["step"] for r in sigma_rows if "knn_top1" in r] == [4, 8]
        assert all(1 <= r["codes_per_clip_proj"] <= 16 for r in sigma_rows)   # at most K = 16 codes
    # a run's training time is its steps' time, from its metrics (so a reused run keeps its own)
    from sigma_ray.demo import read_metrics
    assert out["seconds"]["videomae"] == pytest.approx(
        [step_seconds(read_metrics(tmp_path / run_name("videomae", s))) for s in (0, 1)])
    assert all(t > 0 for t in out["seconds"]["sigma_mlp"])
    # the table's means are the seeds' means, every run is in the report with the plots
    s = out["summary"]["sigma_mlp"]["linear_top1"]
    assert s[0] == pytest.approx(np.mean([out["per_seed"][k]["sigma_mlp"]["linear_top1"] for k in (0, 1)]))
    assert json.loads((tmp_path / "results.json").read_text())["summary"] == out["summary"]
    report = (tmp_path / "report.md").read_text()
    main_part, suite_part = report.split("## The evaluation suite")
    assert main_part.count("| SIGMA-MLP |") == 4    # the summary row, the factor table's and one row per seed
    assert suite_part.count("| SIGMA-MLP | patterns") == 3    # one row on each held-back set
    # the readouts that keep time and the probes of each factor of the class, for every method and seed
    for r in out["per_seed"].values():
        assert all({"time_linear_top1", "attentive_top1", "pattern_linear_top1", "time_direction_linear_top1"}
                   <= set(m) for m in r.values())
    assert "pattern: linear" in report and "direction: time-slice linear" in report
    for png in ("loss.png", "usage.png", "codes_per_clip.png", "knn.png", "strip.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG_MAGIC
        assert f"({png})" in report
    assert 0 < out["trivial_pixel_loss"] <= 1.0
    # the supervised bound is kept as a run directory the evaluation suite reads
    from sigma_ray.eval.suite import describe_run
    from sigma_ray.runs.encoders import load_any_encoder
    for seed in (0, 1):
        entry, _ = describe_run(tmp_path / f"supervised_seed{seed}")
        assert (entry.method, entry.seed, entry.pretrained_on) == ("supervised", seed, "patterns")
        assert load_any_encoder(entry.run_dir)[0].config == pretrain_config(demo, "sigma_mlp", seed).model
    # the evaluation suite on held-back copies (data seed 3), its tables in the report, the curves
    suite = json.loads((tmp_path / "suite" / "suite.json").read_text())
    assert {s["name"] for s in suite["sets"]} == {"patterns", "count", "arrow"}
    assert all((tmp_path / "suite_sets" / k / "val.csv").is_file() for k in ("patterns", "count", "arrow"))
    methods = {(r["method"], r["seed"]) for r in suite["rows"] if r["method"] != "pixels"}
    assert methods == {(m, s) for m in ("sigma_mlp", "videomae", "supervised", "random") for s in (0, 1)}
    tuned = {r["method"] for r in suite["rows"] if r["set"] == "patterns" and "finetune_top1" in r["metrics"]}
    assert tuned == {"sigma_mlp", "videomae", "random"}
    assert "## The evaluation suite" in report and "### `arrow` (4 classes)" in report
    assert "(suite/curves_patterns.png)" in report and (tmp_path / "suite" / "curves_patterns.png").is_file()
    # a second run reuses the runs and the supervised bounds: same numbers
    again = run_demo(dataclasses.replace(demo, suite=False))
    assert again["per_seed"] == out["per_seed"]


@pytest.mark.parametrize("sweep, kind", [("sweep_demo_sigma", "sigma_mlp"), ("sweep_demo_sigma_r3", "sigma_mlp"),
                                         ("sweep_demo_pixels", "videomae"), ("sweep_demo_pixels_r2", "videomae")])
def test_the_demo_sweeps_start_from_the_demos_run_on_a_tuning_copy(sweep, kind):
    """The demo's sweeps tune the demo's own run (its experiment file, no copy of it): the same model, objective,
    clips, batch, masks and schedule shape, on the same generator's set with another seed, at 1,200 steps."""
    from sigma_ray.demo import CONFIGS
    from sigma_ray.infra.config import load_config
    from sigma_ray.tune.config import SweepConfig

    demo = DemoConfig()
    base = load_config(SweepConfig, CONFIGS / f"{sweep}.yaml").base_pretrain()
    run = pretrain_config(demo, kind, 0)
    assert (base.model, base.objective) == (run.model, run.objective)
    keep = dict(root=None, train_list="", val_list=None)
    assert dataclasses.replace(base.data, **keep) == dataclasses.replace(run.data, **keep)
    assert base.data.root == "runs/demo_tuning/synthetic"
    assert base.synthetic == dataclasses.replace(demo.synthetic, seed=1)
    assert base.synthetic.seed != demo.synthetic.seed            # never tuned on the set the demo reports
    t, r = base.train, run.train
    # the demo trains twice the tuning runs' 1,200 steps (docs/studies/patterns.md), with the same 120 warm-up steps
    assert (r.epochs, r.max_steps, t.epochs, t.max_steps) == (12, 2400, 6, 1200)
    assert t.warmup_epochs / t.epochs * t.max_steps == pytest.approx(r.warmup_epochs / r.epochs * r.max_steps)
    assert (t.base_lr, t.min_lr, t.betas, t.weight_decay, t.num_workers) == \
        (r.base_lr, r.min_lr, r.betas, r.weight_decay, r.num_workers)


def test_the_step_budget_is_the_demos_whatever_the_sets_size(tmp_path):
    """The demo's steps are ``steps`` on any set: epochs come from the set's own lists (a set of another size than
    the generator's settings once trained 480 steps instead of 2,400), for a directory of one's own too."""
    from sigma_ray.data.synthetic import make_synthetic
    from sigma_ray.demo import demo_data
    from sigma_ray.train.config import run_length

    own = tmp_path / "own"
    make_synthetic(own, num_classes=4, train_per_class=5, val_per_class=2, frames=16, size=32, seed=3, kind="motion")
    demo = DemoConfig(out_dir=str(tmp_path / "out"), data_dir=str(own), steps=30, warmup_steps=3,
                      runs=("data.batch_size=4",))
    data = demo_data(demo)
    assert (data.num_classes, data.num_train, data.num_val, data.name) == (4, 20, 8, "own")
    assert data.factors == {"speed": [0, 1, 0, 1], "direction": [0, 0, 1, 1]}      # from its factors.json
    config = pretrain_config(demo, "sigma_mlp", data=data)
    assert run_length(config, data.num_train) == (5, 30) and config.data.num_classes == 4
    assert config.data.train_list == f"{own.resolve()}/train.csv"
    # the synthetic set in out_dir is read from disk once written, whatever the generator's settings say
    generated = DemoConfig(out_dir=str(tmp_path / "gen"), steps=30, warmup_steps=3, runs=("data.batch_size=4",))
    assert demo_data(generated).num_train == 1600                   # not written yet: the generator's size
    make_synthetic(tmp_path / "gen" / "synthetic", num_classes=4, train_per_class=3, val_per_class=1, frames=16,
                   size=32, seed=3)
    written = demo_data(generated)
    assert (written.num_train, written.num_classes) == (12, 4)
    assert run_length(pretrain_config(generated, "videomae", data=written), 12) == (3, 30)
    with pytest.raises(ConfigError, match="data_dir"):
        demo_data(DemoConfig(data_dir=str(tmp_path)))


def test_each_data_set_gets_its_own_output_directory(tmp_path):
    """``sigma-ray demo --data``: a family or a directory of one's own, each in runs/demo_NAME unless --out says."""
    from sigma_ray.demo import with_data

    base = DemoConfig()
    assert with_data(base, "patterns") == base
    motion = with_data(base, "motion")
    assert (motion.data_kind, motion.data_dir, motion.out_dir) == ("motion", None, "runs/demo_motion")
    own = with_data(base, str(tmp_path / "myset"))
    assert (own.data_dir, own.out_dir) == (str(tmp_path / "myset"), "runs/demo_myset")
    kept = with_data(dataclasses.replace(base, out_dir="elsewhere"), "shapes", keep_out_dir=True)
    assert (kept.data_kind, kept.out_dir) == ("shapes", "elsewhere")
