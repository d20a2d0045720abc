"""The demo end to end at its smallest size: both pretraining runs, the evaluation, the table and the report."""
from __future__ import annotations

import dataclasses
import json

import pytest

from sigma_ray.demo import METHODS, DemoConfig, format_table, pretrain_config, run_demo

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_pretrain_configs_differ_only_in_the_objective(tmp_path):
    demo = DemoConfig(out_dir=str(tmp_path))
    sigma, pixels = pretrain_config(demo, "sigma_mlp"), pretrain_config(demo, "videomae")
    assert sigma.objective.kind == "sigma_mlp" and pixels.objective.kind == "videomae"
    assert sigma.data == pixels.data and sigma.train == pixels.train and sigma.model == pixels.model
    assert sigma.train.max_steps == demo.steps and sigma.global_batch == demo.batch_size


def test_table_lists_every_method_and_chance():
    row = {"knn20_top1": 50.0, "knn200_top1": 40.0, "linear_top1": 60.0, "linear_top5": 90.0}
    table = format_table({k: row for k in METHODS}, 12.5, {"sigma_mlp": 100.0})
    assert all(name in table for name in METHODS.values()) and "| chance | 12.5 |" in table


def test_bad_demo_config_names_the_field(tmp_path):
    from sigma_ray.config import ConfigError

    with pytest.raises(ConfigError, match="mask_ratio"):
        run_demo(DemoConfig(out_dir=str(tmp_path), mask_ratio=1.0))


@pytest.mark.slow
def test_quick_demo_end_to_end(ray_session, tmp_path):
    demo = dataclasses.replace(DemoConfig(out_dir=str(tmp_path)), num_classes=4, train_per_class=4,
                               val_per_class=2, batch_size=4, steps=4, warmup_steps=1, probe_every=2,
                               num_prototypes=16, linear_epochs=5)
    summary = run_demo(demo)
    assert set(summary["results"]) == set(METHODS)
    for r in summary["results"].values():
        assert 0 <= r["linear_top1"] <= 100 and 0 <= r["knn20_top1"] <= 100
    assert json.loads((tmp_path / "results.json").read_text())["results"] == summary["results"]
    report = (tmp_path / "report.md").read_text()
    for png in ("loss.png", "usage.png", "knn.png", "strip.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG_MAGIC
        assert f"({png})" in report
    knn_steps = [json.loads(line)["step"] for line in (tmp_path / "sigma_mlp" / "metrics.jsonl").read_text()
                 .splitlines() if "knn_top1" in json.loads(line)]
    assert knn_steps == [2, 4]
