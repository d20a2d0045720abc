"""The names of the files a run, an export and a sweep leave on disk (each defined here once), and the one way
the package writes them: atomically, so a reader never sees half a file.

A run directory ``storage_path/name/``::

    LOCK                     the owner's host, pid and command (rundir.RunLock; on s3:// object_lock)
    config.yaml              the resolved config; config_changes.jsonl: accepted changes on resume
    metrics.jsonl            one row per logged step; skipped.jsonl: videos skipped, with the reason
    nonfinite.json           written when a step's loss or gradient is not finite (the run stops)
    data_error.json          written when the data pipeline fails for good (the run stops)
    checkpoint_<step>/       state.pt per rank and its manifest (checkpoint.py); rejected_* = failed verification
    encoder.pt               the encoder alone (export.py); model.pt: a whole imported pretraining model
    tensorboard/             scalars

A sweep directory holds ``sweep_config.yaml``, the Optuna study ``study.db`` and ``trials/<trial id>/`` (one run
directory per trial).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

LOCK_FILE = "LOCK"
CONFIG_FILE = "config.yaml"
CHANGES_FILE = "config_changes.jsonl"
METRICS_FILE = "metrics.jsonl"
SKIPPED_FILE = "skipped.jsonl"
NONFINITE_FILE = "nonfinite.json"
DATA_ERROR_FILE = "data_error.json"
CHECKPOINT_PREFIX = "checkpoint_"
REJECTED_PREFIX = "rejected_"            # a checkpoint that failed verification, moved out of Ray's and our view
STATE_FILE = "state.pt"
ENCODER_FILE = "encoder.pt"
MODEL_FILE = "model.pt"
TENSORBOARD_DIR = "tensorboard"

SWEEP_FILE = "sweep_config.yaml"         # the config a sweep started with; a resume must match it
STUDY_FILE = "study.db"
TRIALS_DIR = "trials"                    # each trial's pretraining run: <sweep dir>/trials/<trial id>


def is_uri(path: str) -> bool:
    """Whether a configured path is a URI (``s3://...``, ``gs://...``) rather than a local or NFS path."""
    return "://" in str(path)


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` to write ``path``'s content to a temporary sibling, then rename it over ``path``
    (atomic on a POSIX filesystem: a reader sees the old file or the new one, never a part). Makes the parent
    directory; a failed ``write`` leaves ``path`` as it was and no temporary file. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``path.write_text(text)``, atomically (:func:`write_atomic`)."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def copy_to(local: Path, dest: str) -> None:
    """Copy the local file ``local`` to ``dest``: a local path (atomically) or a pyarrow-supported URI (object
    stores write an object whole)."""
    if not is_uri(dest):
        if Path(dest).resolve() != local.resolve():
            write_atomic(dest, lambda tmp: tmp.write_bytes(local.read_bytes()))
        return
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(dest)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(local.read_bytes())


def read_text(dest: str) -> str | None:
    """A small file's text at a local path or a pyarrow-supported URI; None when it does not exist."""
    if not is_uri(dest):
        return Path(dest).read_text() if Path(dest).is_file() else None
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(dest)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()
