"""Checkpoints: weights-only files, per-rank state, verification against the manifest, the fallback to the newest
valid checkpoint with Ray's snapshot kept in step, and files that must be refused (a malicious pickle, random
bytes, text). No Ray Train run; real files."""
from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from sigma_ray.infra.ray_compat import register_checkpoints, registered_checkpoints
from sigma_ray.method.sigma import ObjectiveConfig, build_model
from sigma_ray.method.vit import ModelConfig
from sigma_ray.runs.checkpoint import (STATE_FILE, CheckpointError, list_checkpoints, load_checkpoint, load_model_state,
                                       newest_valid, read_info, resume_point, save_checkpoint, set_aside,
                                       verify_checkpoint)
from sigma_ray.runs.export import load_encoder, save_encoder
from sigma_ray.train.optim import build_optimizer

CFG = ModelConfig("tiny", 8, 64)


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(CFG, ObjectiveConfig(num_prototypes=16))
    opt = build_optimizer(model, 1e-3, 0.05, (0.9, 0.95))
    return model, opt


def write(run_dir: Path, step: int, world: int = 2, seed: int = 0, extra=None) -> Path:
    """A complete checkpoint of ``world`` ranks, as the trainer's workers leave it after Ray merged their files."""
    model, opt = tiny_model(seed)
    model(torch.randn(2, 3, 8, 64, 64), torch.tensor([[True] * 56 + [False] * 8] * 2))["loss"].backward()
    opt.step()
    directory = run_dir / f"checkpoint_{step:08d}"
    for rank in range(world):
        save_checkpoint(directory, step=step, rank=rank, world_size=world, model=model, optimizer=opt,
                        extra=(extra or {}).get(rank), metrics={"step": step, "loss": 1.0 / step})
    return directory


def test_roundtrip_restores_weights_optimizer_rng_and_per_rank_state(tmp_path):
    model, opt = tiny_model(0)
    model(torch.randn(2, 3, 8, 64, 64), torch.tensor([[True] * 56 + [False] * 8] * 2))["loss"].backward()
    opt.step()
    queues = {r: {"queue": torch.full((4, 3), float(r)), "filled": r + 1} for r in range(2)}
    d = tmp_path / "checkpoint_00000007"
    for rank in (1, 0):
        torch.manual_seed(100 + rank)
        np.random.seed(200 + rank)
        random.seed(300 + rank)
        save_checkpoint(d, step=7, rank=rank, world_size=2, model=model, optimizer=opt, extra=queues[rank])
    after = (torch.rand(3), np.random.rand(3), random.random())   # rank 0's streams continue with these
    info = verify_checkpoint(d)
    assert (info.step, info.world_size, info.name) == (7, 2, "checkpoint_00000007")

    other, other_opt = tiny_model(123)
    np.random.rand(5), random.random()                            # move every stream elsewhere
    restored = load_checkpoint(d, other, other_opt, rank=0)
    assert restored.step == 7 and restored.extra["filled"] == 1 and torch.equal(restored.extra["queue"],
                                                                               queues[0]["queue"])
    assert torch.equal(torch.rand(3), after[0]) and np.array_equal(np.random.rand(3), after[1])
    assert random.random() == after[2]
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert other_opt.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    assert load_checkpoint(d, other, rank=1).extra["filled"] == 2
    assert load_checkpoint(d, other, rank=5).extra == {}          # the world grew: a new rank has no state yet
    with pytest.raises(TypeError, match="extra"):                   # refused at save time, not at resume
        save_checkpoint(tmp_path / "x", step=1, model=model, extra={"rng": np.random.default_rng()})
    # every file holds tensors and plain values only
    for f in d.glob("*.pt"):
        torch.load(f, weights_only=True)


@pytest.mark.parametrize("damage, reason", [
    ("truncate", "bytes"), ("flip", "SHA-256"), ("drop_rank1", "manifest_rank1.json"), ("drop_state", "missing"),
])
def test_damaged_checkpoints_fail_verification_with_the_reason(tmp_path, damage, reason):
    d = write(tmp_path, 4)
    state = d / STATE_FILE
    if damage == "truncate":
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    elif damage == "flip":
        data = bytearray(state.read_bytes())
        data[len(data) // 2] ^= 0xFF
        state.write_bytes(bytes(data))
    elif damage == "drop_rank1":
        (d / "manifest_rank1.json").unlink()
    else:
        state.unlink()
    with pytest.raises(CheckpointError, match=reason) as e:
        verify_checkpoint(d)
    assert str(d) in str(e.value)
    with pytest.raises(CheckpointError):
        load_checkpoint(d, tiny_model()[0])


def test_resume_falls_back_to_the_newest_valid_checkpoint_and_ray_follows(tmp_path):
    """Checkpoints 4, 8 and 12, the newest truncated, Ray's snapshot listing 8 and 12 (4 was uploaded but never
    registered): the damaged one is set aside with its reason, the snapshot lists 4 and 8, the latest is 8."""
    for step in (4, 8, 12):
        write(tmp_path, step)
    state = tmp_path / "checkpoint_00000012" / STATE_FILE
    state.write_bytes(state.read_bytes()[:1000])
    register_checkpoints(tmp_path, [("checkpoint_00000008", {"step": 8}), ("checkpoint_00000012", {"step": 12})])
    snapshot = json.loads((tmp_path / "checkpoint_manager_snapshot.json").read_text())
    assert snapshot["latest_checkpoint_result"]["checkpoint_dir_name"] == "checkpoint_00000012"

    said = []
    valid, bad = resume_point(tmp_path)
    assert [p.name for p, _ in bad] == ["checkpoint_00000012"] and (tmp_path / "checkpoint_00000012").is_dir()
    set_aside(bad, said.append)
    assert [c.step for c in valid] == [4, 8]
    assert len(said) == 1 and "checkpoint_00000012" in said[0] and "bytes" in said[0]
    assert (tmp_path / "rejected_checkpoint_00000012" / STATE_FILE).is_file()     # kept, out of the way
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint_00000004", "checkpoint_00000008"]
    register_checkpoints(tmp_path, [(c.name, c.metrics) for c in valid])
    assert registered_checkpoints(tmp_path) == ["checkpoint_00000004", "checkpoint_00000008"]
    snapshot = json.loads((tmp_path / "checkpoint_manager_snapshot.json").read_text())
    assert snapshot["latest_checkpoint_result"]["checkpoint_dir_name"] == "checkpoint_00000008"
    assert snapshot["checkpoint_results"][0]["metrics"] == {"step": 4, "loss": 0.25}   # from the manifest
    indices = snapshot["checkpoint_report_indices"]
    assert indices == sorted(set(indices)) and snapshot["current_report_index"] > indices[-1]
    assert newest_valid(tmp_path).step == 8


def test_setting_aside_a_second_time_keeps_the_first_one(tmp_path):
    """A checkpoint of the same step damaged twice (two crashed attempts) leaves both copies and both reasons."""
    write(tmp_path, 4)
    said = []
    for attempt in (1, 2):
        d = write(tmp_path, 8)
        (d / STATE_FILE).write_bytes(f"attempt {attempt}".encode())
        set_aside(resume_point(tmp_path)[1], said.append)
    kept = sorted(p.name for p in tmp_path.glob("rejected_*"))
    assert kept == ["rejected_checkpoint_00000008", "rejected_checkpoint_00000008.2"]
    assert (tmp_path / kept[0] / STATE_FILE).read_bytes() == b"attempt 1"
    assert (tmp_path / kept[1] / STATE_FILE).read_bytes() == b"attempt 2"
    assert "moved to rejected_checkpoint_00000008.2" in said[-1]


def test_no_valid_checkpoint_refuses_instead_of_starting_over(tmp_path):
    d = write(tmp_path, 4)
    (d / STATE_FILE).write_bytes(b"")
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        resume_point(tmp_path)
    assert d.is_dir()                                               # nothing moved


class Evil:
    """Pickles a call of os.system: loading it with pickle (or torch.load without weights_only) runs it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_malicious_pickle_is_refused_and_never_run(tmp_path, capsys):
    """A checkpoint whose state.pt pickles os.system, with a manifest that matches it (an attacker can write both):
    training, export and evaluation refuse it, naming the file; the command never runs."""
    marker = tmp_path / "PWNED"
    d = write(tmp_path / "run", 4, world=1)
    torch.save({"model": Evil(marker)}, d / STATE_FILE)
    manifest = json.loads((d / "manifest_rank0.json").read_text())
    import hashlib

    manifest["files"][STATE_FILE] = {"bytes": (d / STATE_FILE).stat().st_size,
                                     "sha256": hashlib.sha256((d / STATE_FILE).read_bytes()).hexdigest()}
    (d / "manifest_rank0.json").write_text(json.dumps(manifest))
    assert verify_checkpoint(d).step == 4                            # intact as far as the manifest knows
    (tmp_path / "run" / "config.yaml").write_text("model: {size: tiny, num_frames: 8, img_size: 64}\n")

    with pytest.raises(CheckpointError, match=r"state\.pt: refused .* posix\.system"):
        load_checkpoint(d, tiny_model()[0])
    with pytest.raises(CheckpointError, match="refused"):
        load_model_state(d)
    from sigma_ray.eval.cli import main

    assert main(["--encoder", str(tmp_path / "run"), "--set", "protocols=[knn]", "--set", "data.num_classes=2",
                 "--out", str(tmp_path / "eval")]) == 1
    err = capsys.readouterr().err
    assert f"{d / STATE_FILE}: refused" in err and "posix.system" in err and len(err.strip().splitlines()) == 1
    # the same file through plain pickle would have run the command: the test's payload is real
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(Evil(marker)))
    assert not marker.exists()
    pickle.loads(evil.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("content", [os.urandom(4096), b"not a checkpoint\n", b""], ids=["random", "text", "empty"])
def test_an_unreadable_encoder_file_gives_one_line_naming_it(tmp_path, capsys, content):
    bad = tmp_path / "encoder.pt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"{bad}: not a torch weights file .expected a sigma-ray encoder"):
        load_encoder(bad)
    from sigma_ray.eval.cli import main

    assert main(["--encoder", str(bad), "--set", "protocols=[knn]", "--set", "data.num_classes=2",
                 "--out", str(tmp_path / "eval")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}: not a torch weights file") and len(err.splitlines()) == 1
    assert "weights_only" not in err                                 # no advice to load it unsafely


def test_encoder_export_roundtrip_and_a_torch_file_of_another_kind(tmp_path):
    model, _ = tiny_model()
    path = save_encoder(model.encoder, CFG, tmp_path / "encoder.pt", {"step": 7})
    enc = load_encoder(path)
    assert enc.export_meta == {"step": 7}
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), model.encoder.state_dict().values()))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a sigma-ray encoder export"):
        load_encoder(tmp_path / "other.pt")


def test_read_info_without_verification_reads_the_manifest_only(tmp_path):
    d = write(tmp_path, 3, world=1)
    (d / STATE_FILE).write_bytes(b"x")
    assert read_info(d, verify=False).step == 3
    with pytest.raises(CheckpointError):
        read_info(d)
