"""The evaluation suite end to end: run directories on real files, every task, the tables."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sigma_ray.data.synthetic import make_synthetic
from sigma_ray.eval.cli import main
from sigma_ray.eval.efficiency import LAPTOP_FINETUNE
from sigma_ray.eval.suite import read_set, run_suite
from sigma_ray.infra.config import from_dict, save_yaml, to_dict
from sigma_ray.method.sigma import build_model
from sigma_ray.runs.export import save_encoder
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
    tiny = dataclasses.replace(LAPTOP_FINETUNE, epochs=2, steps_per_epoch=2, warmup_epochs=0.0)
    run_suite([tmp_path / "runs"], [fine], out, finetune_sets=["count"], finetune_config=tiny)
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
    # fine-tuning on count only: 4 labelled videos per class and all 5 (16 would repeat "all"), then the curves
    assert on_count["finetune_4shot_steps"] == on_count["finetune_steps"] == 2   # 2 epochs of 15 // 8 steps
    assert "finetune_16shot_top1" not in on_count and "finetune_top1" not in on_fine
    assert on_count["finetune_videos_per_class"] == 5 and 0 <= on_count["finetune_4shot_top1"] <= 100
    assert (out / "curves_count.png").read_bytes()[:4] == b"\x89PNG" and "(curves_count.png)" in table


def test_suite_names_a_missing_directory(tmp_path, capsys):
    assert main(["--suite", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "neither a run directory" in capsys.readouterr().err


def write_davis(root, sequences=2, frames=10, size=32):
    """A DAVIS-2017 folder: a square (object 1) moving right over a grey background, palette masks."""
    from PIL import Image

    names = [f"seq{i}" for i in range(sequences)]
    for name in names:
        for t in range(frames):
            mask = np.zeros((size, size), np.uint8)
            mask[8:20, 2 + t:14 + t] = 1
            frame = np.full((size, size, 3), 90, np.uint8)
            frame[mask == 1] = (230, 40, 40)
            (root / "JPEGImages" / "480p" / name).mkdir(parents=True, exist_ok=True)
            (root / "Annotations" / "480p" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame).save(root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg", quality=95)
            png = Image.fromarray(mask, mode="P")
            png.putpalette([0, 0, 0, 128, 0, 0] + [0] * (256 * 3 - 6))
            png.save(root / "Annotations" / "480p" / name / f"{t:05d}.png")
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(names) + "\n")
    return root


def relisted(src, dst, suffix, field, prefix=None):
    """A set in ``dst`` holding only ``<split><suffix>.csv`` lists of ``src``'s videos, the label column replaced by
    ``field(path, label)``: what the Charades / UCFRep converters leave. Paths are relative to dst (``prefix``
    None) or to src (``prefix=""``, given to the suite as ``dst@src``)."""
    prefix = f"../{src.name}/" if prefix is None else prefix
    dst.mkdir(parents=True)
    for split in ("train", "val"):
        lines = []
        for line in (src / f"{split}.csv").read_text().splitlines():
            path, label = line.split()
            lines.append(f"{prefix}{path} {field(path, int(label))}\n")
        (dst / f"{split}{suffix}.csv").write_text("".join(lines))
    return dst


def test_suite_reads_the_multilabel_counting_and_davis_layouts(tmp_path):
    motion = Path(make_synthetic(tmp_path / "motion", num_classes=4, train_per_class=4, val_per_class=2,
                                 frames=20, size=32, seed=0, kind="motion")["root"])
    # multi-label "presence": label 0 for the slow classes, 1 for the fast, both for class 3 (a planted rule)
    multi = relisted(motion, tmp_path / "charades", "_multilabel",
                     lambda p, c: "0,1" if c == 3 else str(c % 2))
    counts = relisted(motion, tmp_path / "ucfrep", "_counts", lambda p, c: c + 1, prefix="")
    davis = write_davis(tmp_path / "DAVIS")
    layouts = {s.layout: s for s in map(read_set, (multi, f"{counts}@{motion}", davis))}
    assert layouts["counts"].videos == str(motion)
    assert set(layouts) == {"multilabel", "counts", "davis"}
    assert layouts["multilabel"].num_labels == 2 and layouts["counts"].counts == [0, 1, 2, 3, 4]
    fake_run(tmp_path, "videomae_seed0", "videomae", 0, motion)
    out = tmp_path / "suite"
    assert main(["--suite", str(tmp_path / "runs"), "--sets", str(multi), f"{counts}@{motion}", str(davis),
                 "--only-sets", "--out", str(out)]) == 0
    result = json.loads((out / "suite.json").read_text())
    by_set = {r["set"]: r["metrics"] for r in result["rows"] if r["method"] == "videomae"}
    assert {"multilabel_map", "multilabel_map_prior", "arrow_top1"} <= set(by_set["charades"])
    assert "linear_top1" not in by_set["charades"] and "count_mae" not in by_set["charades"]
    assert {"count_mae", "count_mae_median", "arrow_top1"} <= set(by_set["ucfrep"])
    assert set(by_set["DAVIS"]) == {k for k in by_set["DAVIS"] if k.startswith("vos_")}
    assert by_set["DAVIS"]["vos_clips"] == 2
    # a square on a flat background: the raw pixels segment it almost exactly at pixel resolution
    pixels = next(r["metrics"] for r in result["rows"] if r["method"] == "pixels" and r["set"] == "DAVIS")
    assert pixels["vos_greedy_patch"] > 50
    table = (out / "suite.md").read_text()
    assert "charades: classification (kNN, linear, attentive, shots, factors) skipped (multilabel layout" in table
    assert "DAVIS: arrow of time, counting and multi-label skipped" in table


def test_suite_names_a_directory_of_no_known_layout(tmp_path, capsys):
    motion = make_synthetic(tmp_path / "m", num_classes=2, train_per_class=2, val_per_class=1, frames=20,
                            size=32, seed=0, kind="motion")["root"]
    fake_run(tmp_path, "videomae_seed0", "videomae", 0, motion)
    (tmp_path / "empty").mkdir()
    assert main(["--suite", str(tmp_path / "runs"), "--sets", str(tmp_path / "empty"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "no train.csv / val.csv (VideoMAE lists), no train_multilabel.csv" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="the video folder .*nowhere does not exist"):
        read_set(f"{motion}@{tmp_path / 'nowhere'}")


def test_suite_takes_a_bare_encoder_file(tmp_path, capsys):
    motion = make_synthetic(tmp_path / "m", num_classes=2, train_per_class=3, val_per_class=2, frames=20,
                            size=32, seed=0, kind="motion")["root"]
    run = fake_run(tmp_path, "videomae_seed0", "videomae", 0, motion)
    out = tmp_path / "o"
    assert main(["--suite", str(run / "encoder.pt"), "--sets", motion, "--sampling-rate", "2", "--out",
                 str(out)]) == 0
    rows = [r for r in json.loads((out / "suite.json").read_text())["rows"] if r["method"] != "pixels"]
    # the export has no objective in its metadata: named by its file; no random baseline (nothing says which)
    assert [(r["method"], r["pretrained_on"], r["set"]) for r in rows] == [("encoder", None, "motion")]
    assert "clips of 8 frames at rate 2, 32x32" in capsys.readouterr().out
    assert "| encoder | - |" in (out / "suite.md").read_text()
