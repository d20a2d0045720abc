"""Where a pretraining run's data stream starts: a small actor holding (epoch, row offset), set by rank 0 from the
checkpoint it resumes from and read by :func:`~sigma_ray.train.dataset.training_stream` when execution begins.

It imports only Ray, so its process (one per run) starts without loading torch.
"""
from __future__ import annotations

import ray


@ray.remote(num_cpus=0)
class DataCursor:
    """(epoch, row offset) where the next execution of the training stream starts."""

    def __init__(self, epoch: int = 0, offset: int = 0):
        self.position = (epoch, offset)

    def set(self, epoch: int, offset: int) -> None:
        self.position = (int(epoch), int(offset))

    def get(self) -> tuple[int, int]:
        return self.position
