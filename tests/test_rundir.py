"""The run directory before any worker starts: one owner at a time (a live holder refuses a second start, a killed
one does not block the next), a changed config compared with the saved one, annotation errors as config errors.
Each refusal happens in ``pretrain`` itself, without a Ray Train run; those that must come before Ray starts (an
unwritable storage path, a held lock, a refused checkpoint to resume from) run the command in a subprocess and check
that no Ray session was made. And Ctrl-C: one line saying where the run stands, exit 130."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sigma_ray.infra.checks import ConfigError
from sigma_ray.infra.config import save_yaml
from sigma_ray.runs.rundir import (RunLock, RunLockedError, check_resumable, config_changes, flatten, read_jsonl,
                                   trim_jsonl)
from sigma_ray.train.config import load_pretrain_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "configs" / "local_tiny.yaml"


def tiny(synthetic: dict, storage: Path, *overrides: str):
    base = ["synthetic=false", f"data.train_list={synthetic['train']}", f"data.val_list={synthetic['val']}",
            f"data.root={synthetic['root']}", "data.batch_size=2", "objective.num_prototypes=32",
            "train.cpus_per_worker=0.25", "data.actor_num_cpus=0.25"]
    return load_pretrain_config(TINY, base + list(overrides), name="twin", storage_path=str(storage))


HOLDER = textwrap.dedent("""
    import sys, time
    from sigma_ray.runs.rundir import RunLock
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


def pretrain_command(synthetic: dict, storage: Path, *overrides: str) -> list[str]:
    """``experiments/pretrain.py`` on the tiny config and set, run directory ``storage/twin``."""
    args = [sys.executable, str(ROOT / "experiments" / "pretrain.py"), "--config", str(TINY), "--name", "twin",
            "--storage-path", str(storage)]
    for s in ("synthetic=false", f"data.train_list={synthetic['train']}", f"data.val_list={synthetic['val']}",
              f"data.root={synthetic['root']}", "data.batch_size=2", "objective.num_prototypes=32",
              "train.cpus_per_worker=0.25", "data.actor_num_cpus=0.25", *overrides):
        args += ["--set", s]
    return args


def without_ray(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """Run a command in which Ray must not start: a Ray started there would leave a session in tmp_path/ray."""
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray")}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert not (tmp_path / "ray").exists(), "Ray was started"
    return out


def test_an_unwritable_storage_path_is_refused_before_ray_starts(tiny_synthetic, tmp_path):
    out = without_ray(pretrain_command(tiny_synthetic, Path("/proc/sigma-runs")), tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip() == ("config error: storage_path: the run directory /proc/sigma-runs/twin cannot be "
                                  "created or written (No such file or directory); choose a writable --storage-path")


def test_the_lock_is_taken_before_ray_starts(tiny_synthetic, tmp_path, holder):
    out = without_ray(pretrain_command(tiny_synthetic, tmp_path), tmp_path)
    assert out.returncode == 1, out.stderr[-2000:]
    err = out.stderr.strip()
    assert err.startswith(f"error: {tmp_path / 'twin'} is in use by another run (host {socket.gethostname()}, "
                          f"pid {holder.pid}") and "\n" not in err
    assert sorted(p.name for p in (tmp_path / "twin").iterdir()) == ["LOCK"]


def test_a_refused_resume_checkpoint_stops_the_start_before_ray_and_leaves_the_run_dir_as_it_was(tiny_synthetic,
                                                                                                tmp_path):
    """The newest checkpoint's state.pt pickles os.system behind a manifest that matches it: the driver refuses it
    (weights-only) before Ray starts, and config.yaml, the checkpoint and everything else stay as they were."""
    import hashlib
    import json

    import torch

    from sigma_ray.runs.checkpoint import STATE_FILE, save_checkpoint
    from sigma_ray.train.launch import resolve_paths
    from test_checkpoint import Evil

    run_dir, marker = tmp_path / "twin", tmp_path / "PWNED"
    save_yaml(resolve_paths(tiny(tiny_synthetic, tmp_path)), run_dir / "config.yaml")
    for step in (2, 4):
        save_checkpoint(run_dir / f"checkpoint_{step:08d}", step=step, model=torch.nn.Linear(2, 2))
    newest = run_dir / "checkpoint_00000004"
    torch.save({"model": Evil(marker)}, newest / STATE_FILE)
    manifest = json.loads((newest / "manifest_rank0.json").read_text())
    manifest["files"][STATE_FILE] = {"bytes": (newest / STATE_FILE).stat().st_size,
                                     "sha256": hashlib.sha256((newest / STATE_FILE).read_bytes()).hexdigest()}
    (newest / "manifest_rank0.json").write_text(json.dumps(manifest))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    out = without_ray(pretrain_command(tiny_synthetic, tmp_path), tmp_path)
    assert out.returncode == 1, out.stderr[-2000:]
    err = out.stderr.strip()
    assert err.startswith(f"error: {newest / STATE_FILE}: refused to load") and "posix.system" in err, err
    assert "\n" not in err and not marker.exists()
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != "LOCK"}
    assert after == {p: b for p, b in before.items()}                        # config.yaml included, byte for byte


def test_ctrl_c_says_where_the_run_stands_and_exits_130(tiny_synthetic, tmp_path):
    """SIGINT to the whole process group (what a terminal's Ctrl-C sends) mid-run: one line naming the last
    logged step and the last checkpoint, exit 130, the lock released. The console holds no raylet warning."""
    args = pretrain_command(tiny_synthetic, tmp_path, "train.num_workers=1", "train.epochs=50", "train.log_every=1",
                            "train.checkpoint_every=2")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[sigma-ray] step 5/"):
                break
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    found = re.fullmatch(r"\[sigma-ray\] interrupted at step (\d+) of 600; the last checkpoint is step (\d+); "
                         r"start the same command again to resume", last)
    assert found, last
    step, saved = map(int, found.groups())
    assert 5 <= step and 4 <= saved <= step and saved % 2 == 0
    with RunLock(tmp_path / "twin", wait_s=0):                               # nobody holds it any more
        pass
    # the raylet's startup-concurrency warning stays off the console (sigma_ray.infra.ray_session.init_ray)
    assert "worker processes have been started" not in "".join(lines) + out + err
