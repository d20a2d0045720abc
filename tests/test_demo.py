"""The demo: its configs, its arithmetic (mean +- std, the verdict) and, at its smallest size, the whole loop."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from sigma_ray.config import ConfigError
from sigma_ray.demo import (COLUMNS, METHODS, DemoConfig, PixelSettings, SigmaSettings, format_table, pretrain_config,
                            quick_config, run_demo, step_seconds, summarize, verdict, with_overrides)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_pretrain_configs_share_everything_but_the_objective_and_its_tuned_settings(tmp_path):
    demo = DemoConfig(out_dir=str(tmp_path), sigma=SigmaSettings(lr=0.01, mask_ratio=0.8),
                      pixels=PixelSettings(lr=0.02, mask_ratio=0.6))
    sigma, pixels = pretrain_config(demo, "sigma_mlp", 3), pretrain_config(demo, "videomae", 3)
    assert sigma.objective.kind == "sigma_mlp" and pixels.objective.kind == "videomae"
    assert sigma.model == pixels.model and sigma.model.patch == demo.patch
    assert (sigma.train.base_lr, pixels.train.base_lr) == (0.01, 0.02)
    assert (sigma.data.mask.ratio, pixels.data.mask.ratio) == (0.8, 0.6)
    same_data = dataclasses.replace(pixels.data, mask=sigma.data.mask)
    same_train = dataclasses.replace(pixels.train, base_lr=0.01, min_lr=sigma.train.min_lr)
    assert same_data == sigma.data and same_train == sigma.train
    assert sigma.train.max_steps == demo.steps and sigma.global_batch == demo.batch_size
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
    with pytest.raises(ConfigError, match="mask_ratio"):
        run_demo(DemoConfig(out_dir=str(tmp_path), pixels=PixelSettings(mask_ratio=1.0)))
    with pytest.raises(ConfigError, match="seeds"):
        run_demo(DemoConfig(out_dir=str(tmp_path), seeds=0))
    with pytest.raises(ConfigError, match="suite_kinds"):
        run_demo(DemoConfig(out_dir=str(tmp_path), suite=True, suite_kinds=("patterns", "nope")))
    with pytest.raises(ConfigError, match="suite_data_seed = 2 is the demo's own data_seed"):
        run_demo(DemoConfig(out_dir=str(tmp_path), suite=True, suite_data_seed=2))


def test_demo_overrides_reach_nested_settings_and_bad_keys_are_named(tmp_path, capsys):
    from sigma_ray.cli import main

    demo = with_overrides(DemoConfig(), ["sigma.queue_length=0", "pixels.normalize_target=false", "steps=1200",
                                         "supervised=false"])
    assert (demo.sigma.queue_length, demo.pixels.normalize_target, demo.steps, demo.supervised) == (0, False, 1200,
                                                                                                   False)
    assert demo.sigma.projection_hidden == DemoConfig().sigma.projection_hidden
    assert pretrain_config(demo, "videomae").objective.normalize_target is False
    with pytest.raises(ConfigError, match="queue_lenght"):
        with_overrides(DemoConfig(), ["sigma.queue_lenght=0"])
    # the command refuses it before writing anything
    assert main(["demo", "--out", str(tmp_path / "demo"), "--set", "pixels.mask_ratio=1.5"]) == 2
    assert "mask_ratio" in capsys.readouterr().err and not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_quick_demo_end_to_end_with_two_seeds(ray_session, tmp_path):
    demo = dataclasses.replace(quick_config(str(tmp_path)), seeds=2, steps=8, probe_every=4, suite=True)
    out = run_demo(demo)
    assert sorted(out["per_seed"]) == [0, 1] and all(set(r) == set(METHODS) for r in out["per_seed"].values())
    for r in out["per_seed"].values():
        assert all(0 <= m["linear_top1"] <= 100 and m["effective_rank"] >= 1 for m in r.values())
    # the runs trained: the encoders moved away from their shared initial weights, the pixel loss fell
    from sigma_ray.demo import load_model, run_name
    for seed in (0, 1):
        torch.manual_seed(seed)
        cfg = pretrain_config(demo, "sigma_mlp", seed)
        from sigma_ray.model.sigma import build_model
        init = build_model(cfg.model, cfg.objective).encoder.state_dict()
        for kind in ("sigma_mlp", "videomae"):
            trained = load_model(tmp_path / run_name(kind, seed), pretrain_config(demo, kind, seed)).encoder
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
    from sigma_ray.eval.run import load_any_encoder
    from sigma_ray.eval.suite import describe_run
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


def test_the_tuning_config_is_the_demos_run_on_another_data_set():
    """experiments/configs/demo_tuning.yaml (what both demo sweeps start from) must stay the demo's run: the same
    model, clips, batch, masks and schedule shape, on the same generator's set with another seed."""
    from pathlib import Path

    from sigma_ray.data.synthetic import SyntheticConfig
    from sigma_ray.train.config import load_pretrain_config

    demo = DemoConfig()
    tuning = load_pretrain_config(Path(__file__).parents[1] / "experiments/configs/demo_tuning.yaml")
    run = pretrain_config(demo, "sigma_mlp")
    assert tuning.model == run.model
    keep = dict(root=None, train_list="", val_list=None, seed=0)
    mask = dataclasses.replace(run.data.mask, ratio=tuning.data.mask.ratio)     # both sweeps search the ratio
    assert dataclasses.replace(tuning.data, **keep) == dataclasses.replace(run.data, mask=mask, **keep)
    assert tuning.synthetic == dataclasses.replace(demo.synthetic, seed=1)
    assert demo.synthetic == SyntheticConfig(kind=demo.data_kind, num_classes=demo.num_classes,
                                             train_per_class=demo.train_per_class, val_per_class=demo.val_per_class,
                                             frames=demo.video_frames, size=demo.size, seed=demo.data_seed)
    assert tuning.synthetic.seed != demo.data_seed            # never tuned on the set the demo reports
    t, r = tuning.train, run.train
    # the demo trains twice the tuning runs' 1,200 steps (docs/studies/patterns.md), with the same 120 warm-up steps
    assert (r.epochs, r.max_steps, t.epochs) == (12, 2400, 6)
    assert t.warmup_epochs == pytest.approx(r.warmup_epochs)
    assert t.min_lr / t.base_lr == pytest.approx(r.min_lr / r.base_lr)
    assert (t.betas, t.weight_decay, t.num_workers) == (r.betas, r.weight_decay, r.num_workers)
    assert tuning.objective.kind == "sigma_mlp"


def test_the_step_budget_is_the_demos_whatever_the_sets_size(tmp_path):
    """The demo's steps are ``steps`` on any set: epochs come from the set's own lists (a set of another size than
    the generator's settings once trained 480 steps instead of 2,400), for a directory of one's own too."""
    from sigma_ray.data.synthetic import make_synthetic
    from sigma_ray.demo import demo_data
    from sigma_ray.train.config import run_length

    own = tmp_path / "own"
    make_synthetic(own, num_classes=4, train_per_class=5, val_per_class=2, frames=16, size=32, seed=3, kind="motion")
    demo = DemoConfig(out_dir=str(tmp_path / "out"), data_dir=str(own), steps=30, warmup_steps=3, batch_size=4)
    data = demo_data(demo)
    assert (data.num_classes, data.num_train, data.num_val, data.name) == (4, 20, 8, "own")
    assert data.factors == {"speed": [0, 1, 0, 1], "direction": [0, 0, 1, 1]}      # from its factors.json
    config = pretrain_config(demo, "sigma_mlp", data=data)
    assert run_length(config, data.num_train) == (5, 30) and config.data.num_classes == 4
    assert config.data.train_list == f"{own.resolve()}/train.csv"
    # the synthetic set in out_dir is read from disk once written, whatever the generator's settings say
    generated = DemoConfig(out_dir=str(tmp_path / "gen"), steps=30, warmup_steps=3, batch_size=4, num_classes=8,
                           train_per_class=200)
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
