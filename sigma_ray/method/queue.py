"""SwAV's feature queue for small batches: the last batches' features join each Sinkhorn call.

Sinkhorn spreads the tokens *of one call* evenly over the K prototypes. With few clips per call, each clip can
take a few prototypes of its own and every token of a clip its clip's code, which already looks balanced; the
codes then name the clip instead of the tube. A queue makes every call see more clips (SwAV, Caron et al. 2020,
sec. 4 / appendix: "a queue of the features of previous batches" when the batch is small). Only the current
batch's codes enter the loss; the queued rows are scored against the *current* prototypes, so they carry no
gradient and stay in step with the prototypes.

Each worker keeps its own queue; Sinkhorn's all-reduce then covers every worker's queue and batch, so one
call sees ``world_size x (queue_length + batch tokens)`` rows. The queue is per-rank state: a checkpoint saves
it per rank (:meth:`FeatureQueue.state_dict`), not in the model's state dict.
"""
from __future__ import annotations

import torch


class FeatureQueue:
    """The newest ``length`` rows of unit-norm features of one side (``N x D`` float32), newest first.

    Plain tensors, not module buffers: DDP would broadcast rank 0's buffers over every rank's own queue.
    Allocated on the first :meth:`push`, on the features' device.
    """

    def __init__(self, length: int):
        if length < 1:
            raise ValueError(f"queue length must be >= 1, got {length}")
        self.length = length
        self.rows: torch.Tensor | None = None   # length x D, zero rows beyond ``filled``
        self.filled = 0

    @torch.no_grad()
    def push(self, features: torch.Tensor) -> None:
        """Add ``N x D`` unit-norm features as the newest rows; the oldest fall out (all of them if N >= length)."""
        features = features.detach().float()
        if self.rows is None:
            self.rows = features.new_zeros(self.length, features.shape[1])
        n = min(features.shape[0], self.length)
        self.rows = torch.cat([features[:n], self.rows[: self.length - n]])
        self.filled = min(self.filled + n, self.length)

    def features(self) -> torch.Tensor | None:
        """The filled rows, ``F x D`` (newest first), or None while the queue is empty."""
        return None if self.rows is None or self.filled == 0 else self.rows[: self.filled]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (loadable with ``torch.load(weights_only=True)``); empty while nothing was pushed."""
        if self.rows is None:
            return {}
        return {"rows": self.rows.cpu(), "filled": torch.tensor(self.filled)}

    def load_state_dict(self, state: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> None:
        if not state:
            self.rows, self.filled = None, 0
            return
        rows = state["rows"]
        if rows.shape[0] != self.length:
            raise ValueError(f"saved queue has {rows.shape[0]} rows, this one {self.length}")
        self.rows, self.filled = rows.to(device), int(state["filled"])
