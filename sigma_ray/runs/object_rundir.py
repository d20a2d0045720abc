"""A run directory on object storage (``s3://...``, any URI pyarrow opens): what the local code paths do with
files, done with objects.

- Before a start (:func:`resume_point`, :func:`set_aside`, :func:`register_checkpoints`): the checkpoints are
  listed; from the newest down, each is downloaded and verified (manifests, sizes, SHA-256, weights-only load, as
  :mod:`sigma_ray.runs.checkpoint` does locally) until one is valid; the older ones are registered from their
  rank-0 manifest alone, since they are verified in full only if they ever become the one to resume from. Damaged
  ones are moved to ``rejected_checkpoint_*`` (copy and delete: object stores have no rename) and Ray Train's
  snapshot is made to list the valid ones, so the run resumes past a corrupt newest checkpoint as a local one does.
- During a run (:class:`StagedFiles`): rank 0 writes ``metrics.jsonl``, ``skipped.jsonl``, TensorBoard's event
  files and the stop files into a local folder and uploads each file it changed (whole: objects cannot be
  appended to), after the rows already there have been downloaded and trimmed to the step the attempt resumes at.
- Reading (:func:`download`): an export or a checkpoint into a local folder, for evaluation.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from sigma_ray.runs.checkpoint import CheckpointError, CheckpointInfo, check_loadable, read_info, verify_checkpoint
from sigma_ray.runs.files import CHECKPOINT_PREFIX, CONFIG_FILE, ENCODER_FILE, REJECTED_PREFIX, STATE_FILE


def open_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow file system of ``uri`` and the path inside it (``s3://b/k`` -> S3FileSystem, ``b/k``)."""
    fs, path = pafs.FileSystem.from_uri(uri.rstrip("/"))
    return fs, path


def _join(uri: str, name: str) -> str:
    return f"{uri.rstrip('/')}/{name}"


def download(uri: str, local: Path) -> Path:
    """Copy the object ``uri``, or every object under the prefix ``uri``, to ``local``; returns ``local``."""
    fs, path = open_uri(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        local.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(path) as src:
            local.write_bytes(src.read())
        return local
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{uri} does not exist")
    local.mkdir(parents=True, exist_ok=True)
    for entry in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if entry.type == pafs.FileType.File:
            target = local / entry.path[len(path):].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(entry.path) as src:
                target.write_bytes(src.read())
    return local


def upload(local: Path, uri: str) -> None:
    """Write the local file ``local`` to the object ``uri`` (replacing it)."""
    fs, path = open_uri(uri)
    with fs.open_output_stream(path) as dst:
        dst.write(local.read_bytes())


def remove(uri: str) -> None:
    """Delete the object ``uri`` when it exists."""
    fs, path = open_uri(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def exists(uri: str) -> bool:
    fs, path = open_uri(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_checkpoints(run_dir: str) -> list[str]:
    """The URIs of a run's ``checkpoint_*`` prefixes (valid or not), oldest first."""
    fs, path = open_uri(run_dir)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    names = sorted(e.base_name for e in fs.get_file_info(pafs.FileSelector(path))
                   if e.type == pafs.FileType.Directory and e.base_name.startswith(CHECKPOINT_PREFIX))
    return [_join(run_dir, n) for n in names]


def _manifest_info(checkpoint: str) -> CheckpointInfo:
    """A checkpoint's step, world size and metrics from its rank-0 manifest only (no file checked)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / checkpoint.rsplit("/", 1)[1]
        try:
            download(_join(checkpoint, "manifest_rank0.json"), local / "manifest_rank0.json")
        except FileNotFoundError:
            raise CheckpointError(f"{checkpoint}: no manifest_rank0.json (an incomplete upload)") from None
        info = read_info(local, verify=False)
    return CheckpointInfo(Path(checkpoint.split("://", 1)[1]), info.step, info.world_size, info.metrics)


def resume_point(run_dir: str) -> tuple[list[CheckpointInfo], list[tuple[str, str]]]:
    """Before a run on object storage resumes, changing nothing: (valid checkpoints oldest first, ``(uri,
    reason)`` of the damaged ones). The newest valid one is downloaded, verified and loaded weights-only; newer
    damaged ones are found on the way down; older ones are read from their rank-0 manifest. Raises
    CheckpointError when checkpoints exist but none is valid, as a local run directory does."""
    uris = list_checkpoints(run_dir)
    bad: list[tuple[str, str]] = []
    for i in range(len(uris) - 1, -1, -1):
        with tempfile.TemporaryDirectory() as tmp:
            local = download(uris[i], Path(tmp) / uris[i].rsplit("/", 1)[1])
            try:
                newest = verify_checkpoint(local)
                check_loadable(newest)
            except CheckpointError as e:
                bad.append((uris[i], str(e)))
                continue
        older = []
        for uri in uris[:i]:
            try:
                older.append(_manifest_info(uri))
            except CheckpointError as e:
                bad.append((uri, str(e)))
        head = CheckpointInfo(Path(uris[i].split("://", 1)[1]), newest.step, newest.world_size, newest.metrics)
        return older + [head], bad[::-1]
    if bad:
        raise CheckpointError(f"{run_dir}: no valid checkpoint to resume from: " + "; ".join(r for _, r in bad))
    return [], []


def set_aside(bad: list[tuple[str, str]], say=print) -> None:
    """Move damaged checkpoints (``(uri, reason)``) to ``rejected_checkpoint_*`` beside them (``.2``, ``.3``...
    when that name is taken), object by object."""
    for uri, reason in bad:
        fs, path = open_uri(uri)
        parent, name = path.rsplit("/", 1)
        target, n = f"{parent}/{REJECTED_PREFIX}{name}", 1
        while fs.get_file_info(target).type != pafs.FileType.NotFound:
            n += 1
            target = f"{parent}/{REJECTED_PREFIX}{name}.{n}"
        for entry in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
            if entry.type == pafs.FileType.File:
                fs.move(entry.path, target + entry.path[len(path):])
        fs.delete_dir(path)
        say(f"[sigma-ray] skipped {name}: {reason.split(': ', 1)[-1]}; moved to {target.rsplit('/', 1)[1]}")


def register_checkpoints(run_dir: str, checkpoints: list[tuple[str, dict]]) -> None:
    """:func:`sigma_ray.infra.ray_compat.register_checkpoints` for a run directory on object storage: Ray Train's
    snapshot object is downloaded, rewritten to list exactly ``checkpoints`` and uploaded."""
    from sigma_ray.infra.ray_compat import SNAPSHOT_FILE, register_checkpoints as register_local

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / SNAPSHOT_FILE
        if exists(_join(run_dir, SNAPSHOT_FILE)):
            download(_join(run_dir, SNAPSHOT_FILE), local)
        register_local(tmp, checkpoints)
        if local.is_file():
            upload(local, _join(run_dir, SNAPSHOT_FILE))


def fetch_encoder(uri: str, local: Path) -> tuple[Path, str]:
    """Download what evaluating the encoder at ``uri`` needs into ``local``: the object itself (an
    ``encoder.pt``); a run directory's ``encoder.pt``; else a checkpoint with the run's ``config.yaml`` beside it,
    or a run directory's ``config.yaml`` and checkpoints (the newest valid one is then chosen locally, damaged
    ones skipped with a line). Returns (the local path to load, the URI that ``local`` stands for)."""
    uri = uri.rstrip("/")
    parent, name = uri.rsplit("/", 1)
    fs, path = open_uri(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        return download(uri, local / name), parent
    if exists(_join(uri, ENCODER_FILE)):
        return download(_join(uri, ENCODER_FILE), local / ENCODER_FILE), uri
    if exists(_join(uri, STATE_FILE)):   # a checkpoint: its run's config.yaml is one level up
        download(_join(parent, CONFIG_FILE), local / CONFIG_FILE)
        return download(uri, local / name), parent
    if not exists(uri):
        raise FileNotFoundError(f"encoder {uri} does not exist")
    if exists(_join(uri, CONFIG_FILE)):
        download(_join(uri, CONFIG_FILE), local / CONFIG_FILE)
    for checkpoint in list_checkpoints(uri):
        download(checkpoint, local / checkpoint.rsplit("/", 1)[1])
    return local, uri


class StagedFiles:
    """Rank 0's run-directory files for a run directory on object storage: written in ``self.local`` (a new
    temporary folder), uploaded by :meth:`push`. :meth:`pull` first downloads the named files that exist."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self._tmp = tempfile.TemporaryDirectory(prefix="sigma-ray-run-")
        self.local = Path(self._tmp.name)
        self._sent: dict[str, tuple[int, int]] = {}   # relative path -> (mtime_ns, bytes) at its last upload

    def pull(self, *names: str) -> None:
        for name in names:
            if exists(_join(self.run_dir, name)):
                download(_join(self.run_dir, name), self.local / name)

    def push(self) -> None:
        """Upload every file under ``self.local`` that changed since its last upload."""
        for path in sorted(p for p in self.local.rglob("*") if p.is_file()):
            rel = path.relative_to(self.local).as_posix()
            st = path.stat()
            if self._sent.get(rel) != (st.st_mtime_ns, st.st_size):
                upload(path, _join(self.run_dir, rel))
                self._sent[rel] = (st.st_mtime_ns, st.st_size)

    def close(self) -> None:
        self._tmp.cleanup()
