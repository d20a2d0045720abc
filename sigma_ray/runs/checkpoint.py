"""Training checkpoints: writing, verifying, choosing and reading them. Every read or write of a checkpoint
directory goes through this module (the trainer, the encoder export, evaluation, the demo); it imports no Ray.

Layout of ``checkpoint_{step:08d}/`` (Ray Train merges the files every worker reports into it):

- ``state.pt`` (rank 0): the ``model``, ``optimizer`` and ``scaler`` state dicts;
- ``rank{r}.pt`` (every rank): ``{"rng": ..., "extra": {...}}``, the rank's torch/CUDA/numpy/python RNG states
  and whatever per-rank state the caller passes as ``extra`` (a per-worker feature queue, say);
- ``manifest_rank{r}.json`` (every rank, written last): the step, the world size, the size and SHA-256 of each
  file the rank wrote and (rank 0) the step's metrics.

Every ``.pt`` file holds tensors and plain values only and is read weights-only (:mod:`sigma_ray.runs.weights`); the
RNG states numpy and Python keep in their own types are stored as tensors and numbers. A checkpoint is *valid*
when rank 0's manifest names a world size W, ranks 0..W-1 each left a manifest and every listed file has its
recorded size and hash, so a truncated or half-uploaded checkpoint is never loaded. The step lives in the
manifest only: the data position and the schedule are recomputed from it.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from sigma_ray.runs.files import CHECKPOINT_PREFIX, REJECTED_PREFIX, STATE_FILE, write_atomic, write_text_atomic
from sigma_ray.runs.weights import CheckpointError, load_weights

FORMAT = "sigma-ray-checkpoint/2"

__all__ = ["CheckpointError", "CheckpointInfo", "Restored", "checkpoint_dir_name", "list_checkpoints",
           "check_loadable", "load_checkpoint", "load_model_state", "newest_valid", "read_info",
           "resume_point", "save_checkpoint", "set_aside", "unwrap", "verify_checkpoint"]


def checkpoint_dir_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def _rank_file(rank: int) -> str:
    return f"rank{rank}.pt"


def _manifest_file(rank: int) -> str:
    return f"manifest_rank{rank}.json"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


# ------------------------------------------------------------------------------------------------- RNG states

def rng_state() -> dict[str, Any]:
    """This process's torch (CPU, CUDA), numpy and python RNG states as tensors and plain numbers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------------- writing

def _check_plain(value: Any, where: str) -> None:
    """Refuse at save time what a weights-only load would refuse at resume time."""
    if value is None or isinstance(value, (torch.Tensor, bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(k, f"{where} key")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"checkpoint {where} is a {type(value).__name__}: store tensors and plain values only")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_atomic(obj: Any, path: Path) -> dict[str, Any]:
    """torch.save, atomically; returns the file's size and hash for the manifest."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _write_json_atomic(obj: Any, path: Path) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


def save_checkpoint(directory: str | Path, *, step: int, rank: int = 0, world_size: int = 1,
                    model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                    scaler: torch.amp.GradScaler | None = None, extra: dict[str, Any] | None = None,
                    metrics: dict[str, float] | None = None) -> Path:
    """Write this rank's part of the checkpoint of optimizer step ``step`` into ``directory``.

    Rank 0 writes the model (required), optimizer and scaler; every rank writes its RNG state and ``extra``
    (tensors and plain values only, checked here), then its manifest. ``metrics`` (rank 0) are kept in the
    manifest so the checkpoint can be registered again without the run's logs.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    extra = dict(extra or {})
    _check_plain(extra, "extra")
    files = {_rank_file(rank): _save_atomic({"rng": rng_state(), "extra": extra}, directory / _rank_file(rank))}
    manifest: dict[str, Any] = {"format": FORMAT, "step": int(step), "rank": rank, "world_size": int(world_size)}
    if rank == 0:
        if model is None:
            raise ValueError("rank 0 writes the model: pass model=")
        state = {"model": unwrap(model).state_dict(),
                 "optimizer": optimizer.state_dict() if optimizer is not None else None,
                 "scaler": scaler.state_dict() if scaler is not None else None}
        files[STATE_FILE] = _save_atomic(state, directory / STATE_FILE)
        manifest["metrics"] = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str))}
    manifest["files"] = files
    _write_json_atomic(manifest, directory / _manifest_file(rank))
    return directory


# -------------------------------------------------------------------------------------------------- verifying

@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint directory whose manifests were read: ``step`` optimizer steps were done when it was written
    by ``world_size`` workers; ``metrics`` are that step's."""

    path: Path
    step: int
    world_size: int
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


def _read_manifest(directory: Path, rank: int) -> dict[str, Any]:
    path = directory / _manifest_file(rank)
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {path.name} (an incomplete upload, or a checkpoint from before "
                              f"checkpoints were verified)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} manifest")
    return manifest


def read_info(directory: str | Path, verify: bool = True) -> CheckpointInfo:
    """The checkpoint's step, world size and metrics from its manifests; with ``verify`` (default) every rank's
    manifest must be there and every listed file must have its recorded size and SHA-256. Raises
    CheckpointError naming the directory and what is wrong."""
    directory = Path(directory)
    head = _read_manifest(directory, 0)
    world = int(head["world_size"])
    if verify:
        for rank in range(world):
            manifest = head if rank == 0 else _read_manifest(directory, rank)
            if int(manifest["step"]) != int(head["step"]):
                raise CheckpointError(f"{directory}: rank {rank} wrote step {manifest['step']}, rank 0 step "
                                      f"{head['step']} (two attempts' files mixed)")
            for name, rec in manifest["files"].items():
                path = directory / name
                if not path.is_file():
                    raise CheckpointError(f"{directory}: {name} is missing")
                size = path.stat().st_size
                if size != rec["bytes"]:
                    raise CheckpointError(f"{directory}: {name} has {size} bytes, {rec['bytes']} were written "
                                          f"(truncated or replaced)")
                if _sha256(path) != rec["sha256"]:
                    raise CheckpointError(f"{directory}: {name} does not match the SHA-256 recorded when it was "
                                          f"written (corrupted)")
    return CheckpointInfo(directory, int(head["step"]), world, dict(head.get("metrics") or {}))


def verify_checkpoint(directory: str | Path) -> CheckpointInfo:
    """:func:`read_info` with verification: the checkpoint's info, or CheckpointError saying why it is unusable."""
    return read_info(directory, verify=True)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories of a run (``checkpoint_*``, valid or not), oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir())


def newest_valid(run_dir: str | Path, on_skip: Callable[[Path, str], None] | None = None) -> CheckpointInfo | None:
    """The newest checkpoint of a run that verifies (None when there is none); ``on_skip(path, reason)`` hears of
    each newer one that did not."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return verify_checkpoint(path)
        except CheckpointError as e:
            if on_skip is not None:
                on_skip(path, str(e))
    return None


def check_loadable(info: CheckpointInfo) -> None:
    """Load every ``.pt`` file of a verified checkpoint weights-only (tensors mapped, not read), as a resume will:
    a pickle behind a manifest that matches it (an attacker can write both) is refused here, naming the file."""
    load_weights(info.path / STATE_FILE, "a sigma-ray training checkpoint", mmap=True)
    for rank in range(info.world_size):
        load_weights(info.path / _rank_file(rank), "a sigma-ray per-rank checkpoint file", mmap=True)


def resume_point(run_dir: str | Path) -> tuple[list[CheckpointInfo], list[tuple[Path, str]]]:
    """Before a run resumes, without changing anything: verify every checkpoint of ``run_dir`` and load the newest
    valid one's files weights-only (:func:`check_loadable`). Returns (valid checkpoints oldest first, ``(path,
    reason)`` of the damaged ones). Raises CheckpointError when checkpoints exist but none is valid (starting over
    silently would throw the run away) or when the one to resume from is refused."""
    valid, bad = [], []
    for path in list_checkpoints(run_dir):
        try:
            valid.append(verify_checkpoint(path))
        except CheckpointError as e:
            bad.append((path, str(e)))
    if bad and not valid:
        raise CheckpointError(f"{run_dir}: no valid checkpoint to resume from: " + "; ".join(r for _, r in bad))
    if valid:
        check_loadable(valid[-1])
    return valid, bad


def set_aside(bad: list[tuple[Path, str]], say: Callable[[str], None] = print) -> None:
    """Move damaged checkpoints (``(path, reason)``) to ``rejected_checkpoint_*``, out of Ray's and the run's view
    and kept; one set aside before under the same name keeps its name (the new one gets ``.2``, ``.3``...)."""
    for path, reason in bad:
        target, n = path.with_name(REJECTED_PREFIX + path.name), 1
        while target.exists():
            n += 1
            target = path.with_name(f"{REJECTED_PREFIX}{path.name}.{n}")
        path.rename(target)
        say(f"[sigma-ray] skipped {path.name}: {reason.split(': ', 1)[-1]}; moved to {target.name}")


# ---------------------------------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class Restored:
    """What :func:`load_checkpoint` restored besides the modules: the step and this rank's ``extra`` state."""

    step: int
    extra: dict[str, Any]


def load_model_state(directory: str | Path, map_location: str | torch.device = "cpu", verify: bool = True
                     ) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """The whole model's state dict of a checkpoint (verified, weights-only) and the checkpoint's info."""
    info = read_info(directory, verify)
    blob = load_weights(Path(directory) / STATE_FILE, "a sigma-ray training checkpoint", map_location)
    if not isinstance(blob, dict) or not isinstance(blob.get("model"), dict):
        raise CheckpointError(f"{Path(directory) / STATE_FILE}: holds no model state dict")
    return blob["model"], info


def load_checkpoint(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scaler: torch.amp.GradScaler | None = None, rank: int = 0,
                    map_location: str | torch.device = "cpu", verify: bool = True) -> Restored:
    """Verify the checkpoint, restore model/optimizer/scaler (strict) and this rank's RNG state; returns the step
    and this rank's ``extra`` state (on the CPU). A rank without its own file (the world grew) keeps its RNG
    state and gets an empty ``extra``."""
    directory = Path(directory)
    info = read_info(directory, verify)
    blob = load_weights(directory / STATE_FILE, "a sigma-ray training checkpoint", map_location)
    try:
        unwrap(model).load_state_dict(blob["model"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{directory / STATE_FILE}: does not fit the model: "
                              f"{str(e).splitlines()[0]}") from None
    if optimizer is not None and blob.get("optimizer") is not None:
        optimizer.load_state_dict(blob["optimizer"])
    if scaler is not None and blob.get("scaler") is not None:
        scaler.load_state_dict(blob["scaler"])
    extra: dict[str, Any] = {}
    rank_file = directory / _rank_file(rank)
    if rank_file.is_file():
        mine = load_weights(rank_file, "a sigma-ray per-rank checkpoint file", "cpu")   # RNG states live on the CPU
        set_rng_state(mine["rng"])
        extra = mine.get("extra") or {}
    return Restored(info.step, extra)
