"""Which frames make a clip: frame indices (int64, in [0, num_frames)) for the paper's sampling schemes.

Training samplers draw from a numpy Generator; evaluation samplers are deterministic, so every view of a video
is the same in every run.
"""
from __future__ import annotations

import numpy as np


def dense_indices(num_frames: int, length: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """K400-style: ``length`` frames ``rate`` apart from a window at a random offset.

    A video shorter than the window (``length * rate`` frames) starts at 0 and repeats its last frame.
    """
    window = length * rate
    start = int(rng.integers(0, num_frames - window + 1)) if num_frames > window else 0
    return np.minimum(start + np.arange(length) * rate, num_frames - 1)


def dense_eval_indices(num_frames: int, length: int, rate: int, num_clips: int, clip: int) -> np.ndarray:
    """Clip ``clip`` of ``num_clips`` windows spread evenly from the first to the last possible offset."""
    window = length * rate
    last_start = max(num_frames - window, 0)
    start = round(last_start * clip / (num_clips - 1)) if num_clips > 1 else last_start // 2
    return np.minimum(start + np.arange(length) * rate, num_frames - 1)


def segment_indices(num_frames: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """SSv2/TSN-style: split the video into ``length`` equal segments and take a random frame from each.

    A video with fewer frames than segments repeats frames (each segment still maps to a frame inside it).
    """
    # segment k holds the frames i with k <= i * length / num_frames < k + 1 (disjoint, non-empty if n >= T)
    edges = np.ceil(np.arange(length + 1) * num_frames / length).astype(np.int64)
    lo = np.minimum(edges[:-1], num_frames - 1)
    hi = np.maximum(edges[1:], lo + 1)
    return np.minimum(rng.integers(lo, hi), num_frames - 1)


def segment_eval_indices(num_frames: int, length: int, num_clips: int, clip: int) -> np.ndarray:
    """Deterministic TSN view: in each segment, the frame at fraction ``(clip + 0.5) / num_clips`` of it."""
    tick = num_frames / length
    offsets = (np.arange(length) + (clip + 0.5) / num_clips) * tick
    return np.minimum(offsets.astype(np.int64), num_frames - 1)
