"""The evaluation suite end to end: run directories on real files, every task, the tables."""

import json

import torch

from sigma_ray.config import from_dict, save_yaml, to_dict
from sigma_ray.data.synthetic import make_synthetic
from sigma_ray.eval.cli import main
from sigma_ray.eval.suite import read_set
from sigma_ray.model.export import save_encoder
from sigma_ray.model.sigma import build_model
from sigma_ray.train.config import PretrainConfig


def fake_run(tmp_path, name, kind, seed, root):
    """A run directory as pretraining leaves it (config.yaml + encoder.pt), with an untrained encoder."""
    config = from_dict(PretrainConfig, {
        "name": name, "model": {"size": "micro", "num_frames": 8, "img_size": 32, "tubelet": 2, "patch": 8},
        "objective": {"kind": kind},
        "data": {"root": str(root), "train_list": f"{root}/train.csv", "val_list": f"{root}/val.csv",
                 "num_classes": 3, "num_frames": 8, "sampling_rate": 2, "input_size": 32, "decode_short_side": 32,
                 "tubelet": 2, "patch": 8, "batch_size": 4},
        "train": {"seed": seed}})
    run = tmp_path / "runs" / name
    run.mkdir(parents=True)
    save_yaml(to_dict(config), run / "config.yaml")
    torch.manual_seed(100 + seed)
    save_encoder(build_model(config.model, config.objective).encoder, config.model, run / "encoder.pt")
    return run


def test_suite_runs_every_task_and_writes_the_tables(tmp_path):
    count = make_synthetic(tmp_path / "count", num_classes=3, train_per_class=5, val_per_class=2, frames=20,
                           size=32, seed=0, kind="count")["root"]
    fine = make_synthetic(tmp_path / "fine", num_classes=8, train_per_class=2, val_per_class=1, frames=20,
                          size=32, seed=0, kind="fine")["root"]
    assert read_set(count).counts == [1, 2, 3] and read_set(count).has_masks
    assert set(read_set(fine).factors) == {"diagonal", "sector"}
    for seed in (0, 1):
        fake_run(tmp_path, f"sigma_mlp_seed{seed}", "sigma_mlp", seed, count)
    fake_run(tmp_path, "supervised_seed0", "sigma_mlp", 0, count)      # as the demo keeps its supervised bound
    out = tmp_path / "suite"
    assert main(["--suite", str(tmp_path / "runs"), "--sets", fine, "--out", str(out)]) == 0
    result = json.loads((out / "suite.json").read_text())
    rows = [r for r in result["rows"] if r["method"] != "pixels"]
    # 2 runs, the supervised one and the random weights of each of the 2 seeds, on 2 sets
    assert len(rows) == 10 and {r["set"] for r in rows} == {"count", "fine"}
    assert sum(r["method"] == "supervised" for r in rows) == 2 and sum(r["method"] == "random" for r in rows) == 4
    on_count = next(r for r in rows if r["set"] == "count")["metrics"]
    for key in ("linear_top1", "knn20_top1", "attentive_top1", "linear_4shot_top1", "arrow_top1", "count_mae",
                "vos_hungarian_patch", "vos_greedy_pixel"):
        assert key in on_count
    assert 0 <= on_count["vos_hungarian_pixel"] <= 100 and on_count["count_mae"] >= 0
    on_fine = next(r for r in rows if r["set"] == "fine")["metrics"]
    assert "sector_linear_top1" in on_fine and "count_mae" not in on_fine
    assert any(r["method"] == "pixels" and r["set"] == "count" for r in result["rows"])
    summary = result["summary"]["sigma_mlp|count|count"]["linear_top1"]
    assert summary[2] == 2                              # mean, std over the two seeds
    table = (out / "suite.md").read_text()
    assert "| SIGMA-MLP | count (domain shift) |" in table or "| SIGMA-MLP | count |" in table
    assert "| SIGMA-MLP | count (domain shift) |" in table.split("## `fine`")[1]
    assert "fine: counting skipped" in table


def test_suite_names_a_missing_directory(tmp_path, capsys):
    assert main(["--suite", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "neither a run directory" in capsys.readouterr().err
