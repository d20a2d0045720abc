"""The run directory before any worker starts: one owner at a time (a live holder refuses a second start, a killed
one does not block the next), a changed config compared with the saved one, annotation errors as config errors.
Each refusal happens in ``pretrain`` itself, on the session's Ray, without a Ray Train run."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sigma_ray.config import ConfigError, save_yaml
from sigma_ray.train.config import load_pretrain_config
from sigma_ray.train.rundir import (RunLock, RunLockedError, check_resumable, config_changes, flatten, read_jsonl,
                                    trim_jsonl)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "configs" / "local_tiny.yaml"


def tiny(synthetic: dict, storage: Path, *overrides: str):
    base = ["synthetic=false", f"data.train_list={synthetic['train']}", f"data.val_list={synthetic['val']}",
            f"data.root={synthetic['root']}", "data.batch_size=2", "objective.num_prototypes=32",
            "train.cpus_per_worker=0.25", "data.actor_num_cpus=0.25"]
    return load_pretrain_config(TINY, base + list(overrides), name="twin", storage_path=str(storage))


HOLDER = textwrap.dedent("""
    import sys, time
    from sigma_ray.train.rundir import RunLock
    with RunLock(sys.argv[1]):
        print("holding", flush=True)
        time.sleep(600)
""")


@pytest.fixture
def holder(tmp_path):
    """Another process that owns ``tmp_path/twin`` (as a run with the same name would); yields its Popen."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "twin")], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "holding"
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_second_run_with_the_same_name_is_refused_naming_the_first(ray_session, tiny_synthetic, tmp_path,
                                                                    holder, capsys):
    from sigma_ray.train.cli import main
    from sigma_ray.train.launch import pretrain

    with pytest.raises(RunLockedError) as e:
        pretrain(tiny(tiny_synthetic, tmp_path))
    message = str(e.value)
    assert f"pid {holder.pid}" in message and f"host {socket.gethostname()}" in message and "-c" in message
    assert sorted(p.name for p in (tmp_path / "twin").iterdir()) == ["LOCK"]   # nothing written, no config.yaml
    args = ["--config", str(TINY), "--name", "twin", "--storage-path", str(tmp_path)]
    for s in ("synthetic=false", f"data.train_list={tiny_synthetic['train']}", f"data.root={tiny_synthetic['root']}",
              "train.cpus_per_worker=0.25", "data.actor_num_cpus=0.25"):
        args += ["--set", s]
    assert main(args) == 1
    assert f"is in use by another run (host {socket.gethostname()}, pid {holder.pid}" in capsys.readouterr().err


def test_a_killed_owner_leaves_no_stuck_lock(tmp_path, holder):
    with pytest.raises(RunLockedError):
        with RunLock(tmp_path / "twin", wait_s=1.0):
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with RunLock(tmp_path / "twin") as lock:                     # the kernel dropped the dead owner's lock
        assert f'"pid": {os.getpid()}' in lock.path.read_text()
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            with RunLock(tmp_path / "twin", wait_s=0):           # a second owner in this very process is refused
                pass


def test_a_network_change_is_refused_before_any_worker_and_config_yaml_is_kept(ray_session, tiny_synthetic,
                                                                              tmp_path, capsys):
    from sigma_ray.train.cli import main
    from sigma_ray.train.launch import pretrain, resolve_paths

    saved = tmp_path / "twin" / "config.yaml"
    save_yaml(resolve_paths(tiny(tiny_synthetic, tmp_path)), saved)
    before = saved.read_bytes()
    changed = tiny(tiny_synthetic, tmp_path, "objective.num_prototypes=64", "model.size=small", "train.epochs=9")
    with pytest.raises(ConfigError) as e:
        pretrain(changed)
    assert "objective.num_prototypes 32 -> 64" in str(e.value) and "model.size 'tiny' -> 'small'" in str(e.value)
    assert "train.epochs" not in str(e.value)                    # allowed, so not named as a problem
    assert saved.read_bytes() == before and not (tmp_path / "twin" / "config_changes.jsonl").exists()
    args = ["--config", str(TINY), "--name", "twin", "--storage-path", str(tmp_path),
            "--set", "objective.num_prototypes=64"]
    for s in ("synthetic=false", f"data.train_list={tiny_synthetic['train']}", f"data.val_list={tiny_synthetic['val']}",
              f"data.root={tiny_synthetic['root']}", "data.batch_size=2", "train.cpus_per_worker=0.25",
              "data.actor_num_cpus=0.25"):
        args += ["--set", s]
    assert main(args) == 2
    assert "config error:" in capsys.readouterr().err and saved.read_bytes() == before


def test_config_changes_name_every_field_and_only_network_ones_are_fixed():
    old = {"train": {"epochs": 2, "betas": [0.9, 0.95], "fail_at_step": None}, "model": {"size": "tiny"},
           "data": {"actor_resources": {}}}
    new = {"train": {"epochs": 5, "betas": [0.9, 0.95]}, "model": {"size": "tiny", "drop_path": 0.1},
           "data": {"actor_resources": {}}}
    changes = config_changes(old, new)
    assert changes == {"train.epochs": (2, 5), "model.drop_path": (None, 0.1)}   # a removed field is ignored
    check_resumable(changes, "run")                               # more epochs and drop path: resumable
    with pytest.raises(ConfigError, match="objective.kind 'sigma_mlp' -> 'videomae'"):
        check_resumable({"objective.kind": ("sigma_mlp", "videomae"), "train.lr": (1, 2)}, "run")
    assert flatten({"a": {"b": {"c": 1}}, "d": [1, 2]}) == {"a.b.c": 1, "d": [1, 2]}


def test_trim_keeps_one_row_per_step_and_survives_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2}\n{"step": 4}\n{"step": 6}\n{"step": 8, "lo')   # the dead attempt's last write
    assert [r["step"] for r in trim_jsonl(path, 4)] == [2, 4]
    assert [r["step"] for r in read_jsonl(path)] == [2, 4]


@pytest.mark.parametrize("content, message", [
    ("missing.mp4 0\n", "missing.mp4 does not exist"),
    ("", "no videos listed"),
    ("{video} 9\n", "unknown label 9"),
])
def test_annotation_errors_are_config_errors_before_ray_starts(tiny_synthetic, tmp_path, capsys, content, message):
    """A subprocess without Ray: the command exits 2 with one config error line, and no Ray session was made."""
    video = Path(tiny_synthetic["train"]).read_text().split()[0]
    video = video if Path(video).is_absolute() else str(Path(tiny_synthetic["root"]) / video)
    listing = tmp_path / "train.csv"
    listing.write_text(content.format(video=video))
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray")}    # a Ray started here would leave a session there
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "pretrain.py"), "--config", str(TINY),
                          "--storage-path", str(tmp_path / "runs"), "--set", "synthetic=false",
                          "--set", f"data.train_list={listing}", "--set", f"data.root={tmp_path}",
                          "--set", "data.num_classes=4"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith(f"config error: {listing}:") and message in lines[-1]
    assert not (tmp_path / "ray").exists() and not (tmp_path / "runs").exists()
