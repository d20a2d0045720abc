"""Real Ray Train runs on CPU (gloo): gathered Sinkhorn across workers, crash recovery, restart from a damaged
run directory, non-finite loss, unreadable videos (counted, named, and the skip bound).

All runs share the session's Ray and the tiny synthetic set (24 train videos of 16 frames at 64x64). A worker
fails through the test seam of tests/train_hooks.py; the tests check that the failure they see is the hook's, so
a run that dies of something else on a busy machine fails the test instead of passing for the wrong reason.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sigma_ray.runs.checkpoint import STATE_FILE, list_checkpoints, read_info
from sigma_ray.train.config import load_pretrain_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "configs" / "local_tiny.yaml"

pytestmark = pytest.mark.slow


def tiny_run(synthetic: dict, storage: Path, name: str, *overrides: str):
    """The tiny config on the test's synthetic set: 2 workers x batch 2 -> 6 steps per epoch, 12 steps."""
    base = ["synthetic=false", f"data.train_list={synthetic['train']}", f"data.val_list={synthetic['val']}",
            f"data.root={synthetic['root']}", "data.batch_size=2", "data.num_actors_max=1",
            "data.actor_num_cpus=0.25", "train.num_workers=2", "train.cpus_per_worker=0.25", "train.epochs=2",
            "train.steps_per_epoch=null", "train.warmup_epochs=0.5", "train.log_every=2",
            "train.checkpoint_every=4", "train.keep_checkpoints=3", "objective.num_prototypes=32"]
    return load_pretrain_config(TINY, base + list(overrides), name=name, storage_path=str(storage))


def adamw_steps(checkpoint_dir: Path) -> set[int]:
    """The optimizer-step counters AdamW keeps per parameter: the optimizer steps actually applied."""
    blob = torch.load(checkpoint_dir / STATE_FILE, map_location="cpu", weights_only=True)
    return {int(s["step"]) for s in blob["optimizer"]["state"].values()}


def logged_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def soft_codes(model, clips: torch.Tensor, mask: torch.Tensor) -> tuple[dict, dict]:
    """(soft Sinkhorn codes, prototype scores) of both sides, {"video", "proj"}, for one forward of ``model``;
    Sinkhorn gathers over the process group when one is initialized."""
    scores = {}
    model.loss.register_forward_hook(lambda m, args, out: scores.update(video=args[0], proj=args[1]))
    with torch.no_grad():
        model(clips, mask)
        return {side: model.loss.codes(s) for side, s in scores.items()}, scores


def seeded_model(cfg: dict):
    from sigma_ray.method.sigma import build_model

    torch.manual_seed(0)
    return build_model(cfg["model"], cfg["objective"])


def _codes_loop(cfg: dict) -> None:
    """Each worker: the same model, its half of the batch; saves the soft Sinkhorn codes of both sides."""
    import ray.train

    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    n = cfg["clips"].shape[0] // world
    shard = slice(rank * n, (rank + 1) * n)
    codes, _ = soft_codes(seeded_model(cfg), cfg["clips"][shard], cfg["mask"][shard])
    torch.save(codes, Path(cfg["out"]) / f"codes_rank{rank}.pt")


def test_two_workers_get_the_codes_of_one_process_on_the_whole_batch(ray_session, tmp_path):
    """Sinkhorn gathered over Ray Train's process group: equipartition over the global batch."""
    import ray.cloudpickle
    import ray.train
    from ray.train.torch import TorchTrainer

    from sigma_ray.method.masking import MaskConfig, MaskGenerator
    from sigma_ray.method.sigma import ObjectiveConfig
    from sigma_ray.method.vit import ModelConfig

    mc = ModelConfig(size="tiny", num_frames=8, img_size=64)
    oc = ObjectiveConfig(num_prototypes=16)
    gen = torch.Generator().manual_seed(1)
    clips = torch.randn(4, 3, 8, 64, 64, generator=gen)
    mask = torch.from_numpy(MaskGenerator(mc.grid, MaskConfig(ratio=0.75)).batch(4, np.random.default_rng(0)))

    cfg = {"model": mc, "objective": oc, "clips": clips, "mask": mask, "out": str(tmp_path)}
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    TorchTrainer(_codes_loop, train_loop_config=cfg,
                 scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.25}),
                 run_config=ray.train.RunConfig(name="codes", storage_path=str(tmp_path / "ray"))).fit()

    model = seeded_model(cfg)
    single, scores = soft_codes(model, clips, mask)
    parts = [torch.load(tmp_path / f"codes_rank{r}.pt", weights_only=True) for r in range(2)]
    for side in ("video", "proj"):
        gathered = torch.cat([p[side] for p in parts])
        assert gathered.shape == single[side].shape
        torch.testing.assert_close(gathered, single[side], atol=2e-5, rtol=1e-4)
        # Not a coincidence of near-uniform codes: each worker alone gets different codes.
        alone = model.loss.codes(scores[side][: len(gathered) // 2])
        assert (alone - single[side][: len(gathered) // 2]).abs().max() > 1e-3


def with_unreadable(synthetic: dict, directory: Path, bad: int) -> dict:
    """The synthetic set's lists with the first ``bad`` train videos replaced by unreadable files (text)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = Path(synthetic["train"]).read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        path, label = line.rsplit(None, 1)
        if i < bad:
            path = str(directory / f"broken_{i}.mp4")
            Path(path).write_text("not a video\n")
        out.append(f"{path} {label}")
    (directory / "train.csv").write_text("\n".join(out) + "\n")
    return {**synthetic, "train": str(directory / "train.csv")}


def fail_hook(step: int):
    """The test seam that makes the last worker raise at ``step`` (pickled by value: workers cannot import tests)."""
    import ray.cloudpickle

    import train_hooks

    ray.cloudpickle.register_pickle_by_value(train_hooks)
    return train_hooks.FailAtStep(step)


def test_a_crashed_worker_resumes_from_the_last_checkpoint(ray_session, tiny_synthetic, tmp_path, capsys):
    """Worker 1 raises at the start of step 7; the group restarts from checkpoint 4 and ends at step 12 with
    exactly 12 optimizer steps applied, every checkpoint kept, one metrics row per step, and the one unreadable
    video of the set recorded once per epoch in skipped.jsonl and summed up at the end."""
    from sigma_ray.train.launch import pretrain

    data = with_unreadable(tiny_synthetic, tmp_path / "data", bad=1)
    cfg = tiny_run(data, tmp_path, "crash", "train.max_failures=1")
    result = pretrain(cfg, wrap_batches=fail_hook(7))
    run_dir = Path(result.run_dir)
    assert json.loads((run_dir / "fail_hook.json").read_text())["step"] == 7   # the hook did fire
    assert result.steps == result.total_steps == 12
    assert result.metrics["resumed_from_step"] == 4
    assert [p.name for p in list_checkpoints(run_dir)] == ["checkpoint_00000004", "checkpoint_00000008",
                                                          "checkpoint_00000012"]
    assert adamw_steps(run_dir / "checkpoint_00000012") == {12}
    # Steps 2, 4 and 6 were logged before the crash; 6 is dropped on the resume from 4 and logged again.
    assert logged_steps(run_dir) == [2, 4, 6, 8, 10, 12]
    assert Path(result.encoder_path).is_file()
    skipped = [json.loads(line) for line in (run_dir / "skipped.jsonl").read_text().splitlines()]
    bad = str(tmp_path / "data" / "broken_0.mp4")
    assert skipped and {r["path"] for r in skipped} == {bad} and all("cannot open" in r["reason"] for r in skipped)
    assert len({r["epoch"] for r in skipped}) == len(skipped)           # once per epoch, the restart included
    # each stamped with a step of its own epoch (6 steps each), not of the decoders' head start
    steps = {r["epoch"]: r["step"] for r in skipped}
    assert sorted(steps) == [0, 1] and steps[0] <= 6 <= steps[1] <= 12, steps
    out = capsys.readouterr().out
    assert re.search(r"\[sigma-ray\] step 12/12 .* \| 1 skipped \|", out)
    assert f"[sigma-ray] 1 unreadable video(s) skipped (all in {run_dir / 'skipped.jsonl'}):" in out
    assert f"  {bad}: cannot open" in out


def test_a_stopped_run_continues_and_a_damaged_checkpoint_is_set_aside(ray_session, tiny_synthetic, tmp_path,
                                                                        capsys):
    """The last worker dies right after checkpoint 4: Ray had registered it before training went on, and the
    next start resumes from it. Then the newest checkpoint is truncated and the run started again with more
    epochs: it resumes from the newest valid one, sets the damaged one aside, records the config change, and
    Ray keeps its three newest checkpoints as usual."""
    from ray.train import TrainingFailedError

    from sigma_ray.train.launch import pretrain

    with pytest.raises(TrainingFailedError, match="test hook: worker 1 fails at step 5"):
        pretrain(tiny_run(tiny_synthetic, tmp_path, "again", "train.max_failures=0"), wrap_batches=fail_hook(5))
    run_dir = tmp_path / "again"
    assert "checkpoint_00000004" in json.loads((run_dir / "fail_hook.json").read_text())["registered"]
    assert read_info(list_checkpoints(run_dir)[-1]).step == 4

    result = pretrain(tiny_run(tiny_synthetic, tmp_path, "again"))      # the same name: resumes
    assert result.metrics["resumed_from_step"] == 4
    assert result.steps == 12
    assert adamw_steps(run_dir / "checkpoint_00000012") == {12}
    assert logged_steps(run_dir) == [2, 4, 6, 8, 10, 12]

    state = run_dir / "checkpoint_00000012" / STATE_FILE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    capsys.readouterr()
    result = pretrain(tiny_run(tiny_synthetic, tmp_path, "again", "train.epochs=3"))
    out = capsys.readouterr().out
    assert "[sigma-ray] skipped checkpoint_00000012:" in out and "truncated" in out
    assert result.metrics["resumed_from_step"] == 8 and result.steps == result.total_steps == 18
    assert (run_dir / "rejected_checkpoint_00000012" / STATE_FILE).is_file()
    assert [p.name for p in list_checkpoints(run_dir)] == ["checkpoint_00000012", "checkpoint_00000016",
                                                          "checkpoint_00000018"]
    assert adamw_steps(run_dir / "checkpoint_00000018") == {18}
    change = json.loads((run_dir / "config_changes.jsonl").read_text().splitlines()[-1])
    assert change["from_step"] == 8 and change["changes"]["train.epochs"] == [2, 3]
    assert logged_steps(run_dir) == [2, 4, 6, 8, 10, 12, 14, 16, 18]


def test_the_trainer_reports_to_ray_only_its_checkpoints(ray_session, tiny_synthetic, tmp_path):
    """A Train V2 report waits until the controller has taken the previous one (it polls every 2 s), so reports
    at every log step would cap the step rate: every step is logged to metrics.jsonl, only checkpoints (and, in a
    sweep, probe scores: tests/test_tune_sweep.py) go to Ray."""
    import ray.cloudpickle

    import train_hooks
    from sigma_ray.train.launch import pretrain

    ray.cloudpickle.register_pickle_by_value(train_hooks)
    cfg = tiny_run(tiny_synthetic, tmp_path, "reports", "objective.kind=videomae", "train.num_workers=1",
                   "train.epochs=1", "train.log_every=1", "train.checkpoint_every=4")
    log = tmp_path / "reports.jsonl"
    pretrain(cfg, callbacks=[train_hooks.ReportLog(str(log))])
    reports = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["step"], r["checkpoint"]) for r in reports] == [(4, True), (8, True), (12, True)]
    assert logged_steps(tmp_path / "reports") == list(range(1, 13))


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(ray_session, tiny_synthetic, tmp_path):
    """An absurd learning rate overflows the pixel baseline's weights after one step."""
    from sigma_ray.train.launch import NonFiniteLossError, pretrain

    cfg = tiny_run(tiny_synthetic, tmp_path, "nan", "objective.kind=videomae", "train.base_lr=1.0e+30",
                   "train.warmup_epochs=0", "train.num_workers=1", "train.log_every=1", "train.checkpoint_every=1")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step (\d+).*checkpoint_0000000") as info:
        pretrain(cfg)
    bad_step = int(re.search(r"step (\d+)", str(info.value)).group(1))
    assert bad_step >= 2
    kept = list_checkpoints(tmp_path / "nan")
    assert kept and read_info(kept[-1]).step == bad_step - 1
    assert not (tmp_path / "nan" / "encoder.pt").exists()


def test_too_many_unreadable_videos_stop_the_run_with_their_names(ray_session, tiny_synthetic, tmp_path, capsys):
    """3 of 24 videos unreadable (12.5% > 5%): the command exits 2 with the reason and the paths as its last lines,
    and the worker group is not restarted although train.max_failures allows it."""
    from sigma_ray.train.cli import main

    data = with_unreadable(tiny_synthetic, tmp_path / "data", bad=3)
    args = ["--config", str(TINY), "--name", "bad_data", "--storage-path", str(tmp_path)]
    for s in ("synthetic=false", f"data.train_list={data['train']}", f"data.root={data['root']}",
              "data.batch_size=2", "data.num_actors_max=1", "data.actor_num_cpus=0.25", "train.num_workers=2",
              "train.cpus_per_worker=0.25", "train.epochs=2", "train.steps_per_epoch=null", "train.log_every=2",
              "train.checkpoint_every=4", "objective.num_prototypes=32", "train.max_failures=2"):
        args += ["--set", s]
    assert main(args) == 2
    captured = capsys.readouterr()
    last = captured.err.strip().splitlines()
    reason = re.match(r"error: epoch \d: (\d) of (\d+) videos skipped \([\d.]+% > max_skip_fraction 5\.0%\)", last[0])
    assert reason, last[0]
    skipped, seen = int(reason.group(1)), int(reason.group(2))   # the bound trips once 20 rows were seen
    assert skipped <= 3 and 20 <= seen <= 24 and skipped / seen > 0.05
    assert "3 unreadable video(s) skipped" in last[1]
    assert sorted(line.split(": ")[0].strip() for line in last[2:]) == [
        str(tmp_path / "data" / f"broken_{i}.mp4") for i in range(3)]
    assert len(re.findall(r"\[sigma-ray\] (starting|resuming at) step", captured.out)) == 1   # no restart


BURNER = "import os\nos.nice(15)\nwhile True:\n    pass\n"   # at Ray's worker niceness, so it competes with them


def test_a_one_worker_run_repeats_exactly_on_a_busy_machine(ray_session, tiny_synthetic, tmp_path):
    """The same one-worker run (two decode actors, hard codes, a queue) twice, the second beside two CPU-burning
    processes: the same loss of both sides at every step, to the last bit. Clips and masks come from per-sample
    seeds and the stream keeps its order, so neither the actors' timing nor the machine's load reaches the numbers."""
    import subprocess

    def losses(name: str) -> list[tuple]:
        cfg = tiny_run(tiny_synthetic, tmp_path, name, "train.num_workers=1", "train.epochs=1", "train.log_every=1",
                       "data.num_actors_min=2", "data.num_actors_max=2", "data.actor_num_cpus=0.25",
                       "objective.hard_codes=true", "objective.queue_length=64", "objective.queue_start=3")
        run_dir = Path(pretrain(cfg).run_dir)
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r["loss_video"], r["loss_proj"], r["grad_norm"]) for r in rows]

    from sigma_ray.train.launch import pretrain

    idle = losses("idle")
    burners = [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(2)]
    try:
        busy = losses("busy")
    finally:
        for b in burners:
            b.kill()
            b.wait()
    assert [r[0] for r in idle] == list(range(1, 13))
    assert busy == idle
