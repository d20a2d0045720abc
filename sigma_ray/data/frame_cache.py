"""Whole decoded videos kept in memory, for data sets small enough to hold: the laptop demo's 1,600 videos of 32
frames at 32x32 take 157 MB and are then decoded once per process instead of once per clip. A clip cut from a
cached video is exactly the clip decoded on its own (the same frames, the same random draws).

One cache per process (a Ray clip actor, or the driver's plain iterator across epochs), bounded by the config's
``decode_cache_mb``: videos are added until the budget is spent and then kept (no eviction: with clips drawn in
a random order any fixed subset hits as often as an LRU would); the rest are decoded per clip as without a cache.
A video is keyed by its path, size and modification time, so a rewritten file is decoded afresh.
"""
from __future__ import annotations

import os

import numpy as np

from sigma_ray.data.decode import VideoDecodeError, open_video

_videos: dict[tuple, np.ndarray] = {}
_bytes = 0


def whole_video(path: str, short_side: int, threads: int, budget_mb: float,
                decoder: str = "pyav") -> np.ndarray | None:
    """Every frame of ``path`` at ``short_side`` decoded by ``decoder``, uint8 ``(num_frames, H, W, 3)``, from this
    process's cache, or decoded and added while the cache holds under ``budget_mb`` MiB. None when the budget is
    spent, or when the whole video does not decode (the caller then decodes just its clip's frames, which may still
    succeed or raise the reader's error, as without a cache)."""
    global _bytes
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (str(path), short_side, decoder, st.st_size, st.st_mtime_ns)
    frames = _videos.get(key)
    if frames is not None or _bytes >= budget_mb * 2**20:
        return frames
    try:
        with open_video(path, decoder, threads) as reader:
            frames = reader.frames(range(reader.info.num_frames), short_side)
    except VideoDecodeError:
        return None
    frames.setflags(write=False)   # shared by every clip cut from it
    _videos[key] = frames
    _bytes += frames.nbytes
    return frames


def cached_bytes() -> int:
    """Bytes of decoded frames this process holds."""
    return _bytes


def clear() -> None:
    """Drop every cached video of this process."""
    global _bytes
    _videos.clear()
    _bytes = 0
