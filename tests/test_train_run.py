"""Real Ray Train runs on CPU (gloo): gathered Sinkhorn across workers, crash recovery, restart, non-finite loss.

All runs share the session's Ray and the tiny synthetic set (24 train videos of 16 frames at 64x64).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sigma_ray.train.checkpoint import STATE_FILE, list_checkpoints, read_state
from sigma_ray.train.config import load_pretrain_config
from sigma_ray.train.loop import FAIL_MARKER

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
    blob = torch.load(checkpoint_dir / STATE_FILE, map_location="cpu", weights_only=False)
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
    from sigma_ray.model.sigma import build_model

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

    from sigma_ray.masking import MaskConfig, MaskGenerator
    from sigma_ray.model.sigma import ObjectiveConfig
    from sigma_ray.model.vit import ModelConfig

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
    parts = [torch.load(tmp_path / f"codes_rank{r}.pt") for r in range(2)]
    for side in ("video", "proj"):
        gathered = torch.cat([p[side] for p in parts])
        assert gathered.shape == single[side].shape
        torch.testing.assert_close(gathered, single[side], atol=2e-5, rtol=1e-4)
        # Not a coincidence of near-uniform codes: each worker alone gets different codes.
        alone = model.loss.codes(scores[side][: len(gathered) // 2])
        assert (alone - single[side][: len(gathered) // 2]).abs().max() > 1e-3


def test_a_crashed_worker_resumes_from_the_last_checkpoint(ray_session, tiny_synthetic, tmp_path):
    """Worker 1 raises at the start of step 7; the group restarts from checkpoint 4 and ends at step 12 with
    exactly 12 optimizer steps applied, and every checkpoint kept."""
    from sigma_ray.train.launch import pretrain

    cfg = tiny_run(tiny_synthetic, tmp_path, "crash", "train.fail_at_step=7", "train.max_failures=1")
    result = pretrain(cfg)
    run_dir = Path(result.run_dir)
    assert (run_dir / FAIL_MARKER).is_file()  # the hook did fire
    assert result.steps == result.total_steps == 12
    assert result.metrics["resumed_from_step"] == 4
    assert [p.name for p in list_checkpoints(run_dir)] == ["checkpoint_00000004", "checkpoint_00000008",
                                                          "checkpoint_00000012"]
    assert adamw_steps(run_dir / "checkpoint_00000012") == {12}
    # Steps 2 and 4 were logged before the crash, 6 was lost with it and logged again after the resume.
    assert logged_steps(run_dir) == [2, 4, 6, 6, 8, 10, 12]
    assert Path(result.encoder_path).is_file()


def test_a_stopped_run_started_again_continues(ray_session, tiny_synthetic, tmp_path):
    from ray.train import TrainingFailedError

    from sigma_ray.train.launch import pretrain

    stopping = tiny_run(tiny_synthetic, tmp_path, "again", "train.fail_at_step=7", "train.max_failures=0")
    with pytest.raises(TrainingFailedError):
        pretrain(stopping)
    run_dir = tmp_path / "again"
    assert read_state(list_checkpoints(run_dir)[-1]).step == 4

    result = pretrain(tiny_run(tiny_synthetic, tmp_path, "again"))  # the same name: resumes
    assert result.metrics["resumed_from_step"] == 4
    assert result.steps == 12
    assert adamw_steps(run_dir / "checkpoint_00000012") == {12}
    assert logged_steps(run_dir)[-4:] == [6, 8, 10, 12]


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
    assert kept and read_state(kept[-1]).step == bad_step - 1
    assert not (tmp_path / "nan" / "encoder.pt").exists()
