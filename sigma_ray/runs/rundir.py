"""The run directory's own files, apart from checkpoints: who owns it, which config it holds, its logs.

- ``LOCK``: one run owns the directory at a time. The owner holds an exclusive ``flock`` on the file for its
  whole life and writes its host, pid, start time and command into it; the kernel drops the lock when the process
  ends, however it ends, so a crashed run never leaves it stuck. (``flock`` works across NFS clients on Linux;
  an ``s3://`` run directory has a lock object instead, :mod:`sigma_ray.runs.object_lock`; other URIs are not
  locked.)
- ``config.yaml``: the resolved config. A run started again with another config is compared with it before any
  worker starts: a change to the network (:data:`FIXED_FIELDS`) is refused, naming the fields, and the file is left
  as it was; any other change (more steps, another lr) is accepted and appended to ``config_changes.jsonl``.
- ``metrics.jsonl`` and ``skipped.jsonl``: one JSON object per line with a ``step``; :func:`trim_jsonl` drops the
  rows past the step a resumed attempt restarts from, so each step has one row, the latest attempt's.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from sigma_ray.infra.checks import ConfigError
from sigma_ray.runs.files import CHANGES_FILE, LOCK_FILE, is_uri, write_text_atomic

# Fields whose change makes the saved weights mean something else (or not load at all): never changed on resume.
FIXED_FIELDS = ("model.size", "model.num_frames", "model.img_size", "model.tubelet", "model.patch",
                "model.pos_embed", "objective.kind", "objective.num_prototypes", "objective.feature_dim",
                "objective.teacher_model", "data.num_frames", "data.input_size", "data.tubelet", "data.patch")


class RunLockedError(RuntimeError):
    """Another live run owns the run directory; the message names it."""


class RunLock:
    """Exclusive ownership of a local run directory while the ``with`` block runs. A lock still held after
    ``wait_s`` seconds (time for an owner that is just ending, e.g. a sweep trial being restarted) is refused."""

    def __init__(self, run_dir: str | Path, wait_s: float = 10.0):
        self.path = Path(run_dir) / LOCK_FILE
        self.wait_s = wait_s
        self._file = None

    def __enter__(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = self.path.open("a+")
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                f.seek(0)
                holder = f.read().strip()
                f.close()
                try:
                    who = json.loads(holder)
                    who = (f"host {who['host']}, pid {who['pid']}, started {who['started']}: "
                           f"{' '.join(who.get('argv', []))}")
                except (ValueError, KeyError, TypeError):
                    who = "a process that has not written its name yet"
                raise RunLockedError(f"{self.path.parent} is in use by another run ({who}); wait for it to end "
                                     f"or give this run another name") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "argv": sys.argv,
                            "started": datetime.datetime.now().isoformat(timespec="seconds")}) + "\n")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()   # closing the last descriptor drops the flock
            self._file = None


def check_writable(run_dir: str) -> None:
    """Make the local run directory ``run_dir`` and write a file in it, or raise ConfigError saying why (a path
    under /proc, a read-only mount, no permission): before Ray starts, not from a worker. URIs are not checked."""
    if is_uri(run_dir):
        return
    probe = Path(run_dir) / f".write_check.{os.getpid()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"storage_path: the run directory {run_dir} cannot be created or written "
                          f"({e.strerror or e}); choose a writable --storage-path") from None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v):
            sub = flatten(v, key + ".")
            out.update(sub if sub else {key: v})
        else:
            out[key] = v
    return out


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{field: (saved value, new value)}`` for every field of ``new`` (a nested config dict) that differs from
    ``saved``; fields that only ``saved`` has (removed from the schema since) are ignored."""
    old, now = flatten(saved), flatten(new)
    missing = object()
    changes = {}
    for key, value in now.items():
        before = old.get(key, missing)
        if before is missing and any(k.startswith(key + ".") for k in old):
            continue   # a mapping field that is empty now and was written out key by key before
        if before is missing or before != value:
            changes[key] = (None if before is missing else before, value)
    return changes


def check_resumable(changes: dict[str, tuple[Any, Any]], run_dir: str) -> None:
    """Raise ConfigError naming every fixed field among ``changes``."""
    fixed = {k: v for k, v in changes.items() if k in FIXED_FIELDS}
    if fixed:
        listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(fixed.items()))
        raise ConfigError(f"{run_dir} holds a run of another network ({listed}): its checkpoints cannot continue "
                          f"with this config; give the run another name (config.yaml is left as it was)")


def record_changes(run_dir: str | Path, changes: dict[str, tuple[Any, Any]], from_step: int) -> None:
    """Append one line to ``config_changes.jsonl``: when, from which step, and each field's old and new value."""
    with (Path(run_dir) / CHANGES_FILE).open("a") as f:
        f.write(json.dumps({"time": datetime.datetime.now().isoformat(timespec="seconds"), "from_step": from_step,
                            "changes": {k: list(v) for k, v in sorted(changes.items())}}) + "\n")


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` file; a torn last line (a killed writer) is skipped."""
    path = Path(path)
    if not path.is_file():
        return
    with path.open() as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                yield row


def trim_jsonl(path: str | Path, max_step: int) -> list[dict[str, Any]]:
    """Keep the rows of ``path`` whose ``step`` is at most ``max_step`` (rewritten atomically); returns them."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = [r for r in read_jsonl(path) if r.get("step", 0) <= max_step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows
