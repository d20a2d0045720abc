"""Training checkpoints in a ``ray.train.Checkpoint`` directory, and the final encoder export.

Layout of one checkpoint directory (Ray merges the files every worker reports into it):

- ``state.pt`` (rank 0): model, optimizer and GradScaler state dicts, ``step`` (optimizer steps done),
  ``epoch`` (schedule epoch), ``data_epoch`` and ``data_offset`` (where the data stream resumes), ``meta``.
- ``rng_rank{r}.pt`` (every rank): its torch (CPU and CUDA), numpy and python RNG states.
- ``queue_rank{r}.pt`` (every rank, SIGMA with ``objective.queue_length > 0``): that rank's feature queues.

Checkpoint directories are named ``checkpoint_{step:08d}``, so the latest is the largest name; Ray's
``CheckpointConfig(num_to_keep=k)`` deletes all but the last k.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

STATE_FILE = "state.pt"
CHECKPOINT_PREFIX = "checkpoint_"


def checkpoint_dir_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


@dataclass
class TrainState:
    """Where a run stands: ``step`` optimizer steps are done; the data stream resumes at ``data_epoch``,
    ``data_offset`` rows into that epoch."""

    step: int = 0
    epoch: int = 0
    data_epoch: int = 0
    data_offset: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    scaler: torch.amp.GradScaler | None, state: TrainState, rank: int = 0) -> Path:
    """Write this rank's part of a checkpoint into ``directory``: everything on rank 0, the RNG state on all."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), directory / f"rng_rank{rank}.pt")
    inner = unwrap(model)
    queues = inner.queue_state_dict() if hasattr(inner, "queue_state_dict") else {}
    if queues:
        torch.save(queues, directory / f"queue_rank{rank}.pt")
    if rank == 0:
        torch.save({
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "step": state.step, "epoch": state.epoch, "data_epoch": state.data_epoch,
            "data_offset": state.data_offset, "meta": state.meta,
        }, directory / STATE_FILE)
    return directory


def load_checkpoint(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scaler: torch.amp.GradScaler | None = None, rank: int = 0,
                    map_location: str | torch.device = "cpu") -> TrainState:
    """Restore model/optimizer/scaler (strict) and this rank's RNG state and feature queues; returns the saved
    TrainState.

    A rank without its own RNG or queue file (the world size changed) keeps its current RNG state and starts
    with empty queues.
    """
    directory = Path(directory)
    blob = torch.load(directory / STATE_FILE, map_location=map_location, weights_only=False)
    unwrap(model).load_state_dict(blob["model"], strict=True)
    if optimizer is not None and blob.get("optimizer") is not None:
        optimizer.load_state_dict(blob["optimizer"])
    if scaler is not None and blob.get("scaler") is not None:
        scaler.load_state_dict(blob["scaler"])
    queue_file = directory / f"queue_rank{rank}.pt"
    if queue_file.is_file() and hasattr(unwrap(model), "load_queue_state_dict"):
        unwrap(model).load_queue_state_dict(torch.load(queue_file, map_location=map_location, weights_only=True),
                                            map_location)
    rng_file = directory / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return TrainState(blob["step"], blob["epoch"], blob["data_epoch"], blob.get("data_offset", 0),
                      blob.get("meta", {}))


def read_state(directory: str | Path) -> TrainState:
    """The TrainState of a checkpoint directory without building a model."""
    blob = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)
    return TrainState(blob["step"], blob["epoch"], blob["data_epoch"], blob.get("data_offset", 0),
                      blob.get("meta", {}))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories of a run (those holding ``state.pt``), oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).is_file())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None
