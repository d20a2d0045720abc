"""PyAV decoding of just the frames a clip needs, resized in the decoder when the source is large; :func:`open_video`
picks it or the torchcodec reader (:mod:`sigma_ray.data.decode_torchcodec`) by the data config's ``decoder``.

Frame ``i`` is the i-th frame in presentation order; it is located by its timestamp
(``i = round((pts - start) * time_base * fps)``), which lets a reader seek to the key frame before the first
needed frame and stop after the last one instead of decoding the whole video.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np


class VideoDecodeError(Exception):
    """A video that cannot be used: unreadable, empty, truncated, or shorter than its container claims."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # keep (path, reason) when the error crosses a process boundary
        return type(self), (self.path, self.reason)


@dataclass(frozen=True)
class VideoInfo:
    path: str
    num_frames: int   # as claimed by the container (verified against its last packets on open)
    fps: float
    width: int        # source size in pixels
    height: int


def resized_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the short side brought down to ``short_side``, aspect kept; never upscales.

    Both sides are rounded to even numbers, which the YUV->RGB scaler handles fastest.
    """
    if short_side is None or min(width, height) <= short_side:
        return width, height
    scale = short_side / min(width, height)
    w, h = (short_side, round(height * scale)) if width <= height else (round(width * scale), short_side)
    return max(2, w - w % 2), max(2, h - h % 2)


class VideoReader:
    """An open video. ``frames(indices, short_side)`` -> uint8 ``(len(indices), H, W, 3)``.

    Raises :class:`VideoDecodeError` for files that cannot be opened or have no video stream, and on open checks
    that the container's last packets reach the frame count it claims, so a cut file (index intact, data
    missing) fails before any clip is made from it, whichever window a sampler picks.
    """

    def __init__(self, path: str, threads: int = 1, verify: bool = True):
        self.path = str(path)
        try:
            self._container = av.open(self.path)
        except (av.FFmpegError, OSError) as e:
            raise VideoDecodeError(self.path, f"cannot open: {e}") from None
        try:
            if not self._container.streams.video:
                raise VideoDecodeError(self.path, "no video stream")
            self._stream = s = self._container.streams.video[0]
            s.codec_context.thread_count = threads
            if threads != 1:
                s.thread_type = "AUTO"
            rate = s.average_rate or s.guessed_rate
            if not rate:
                raise VideoDecodeError(self.path, "unknown frame rate")
            self._rate = Fraction(rate)
            self._tb = Fraction(s.time_base)
            self._start = s.start_time or 0
            n = s.frames
            if not n and s.duration:
                n = round(s.duration * self._tb * self._rate)
            if not n and self._container.duration:
                n = round(Fraction(self._container.duration, 1_000_000) * self._rate)
            if not n:
                raise VideoDecodeError(self.path, "container reports no frames")
            self.info = VideoInfo(self.path, int(n), float(self._rate), s.codec_context.width,
                                  s.codec_context.height)
            if verify:
                self._verify_length()
        except VideoDecodeError:
            self.close()
            raise
        except av.FFmpegError as e:
            self.close()
            raise VideoDecodeError(self.path, f"cannot read: {e}") from None

    def _index(self, pts: int) -> int:
        return round((pts - self._start) * self._tb * self._rate)

    def _pts(self, index: int) -> int:
        return self._start + int(index / (self._tb * self._rate))

    def _verify_length(self) -> None:
        """Demux (no decoding) from the key frame before the claimed last frame; its packets must reach it."""
        last = self.info.num_frames - 1
        self._container.seek(self._pts(last), stream=self._stream, backward=True, any_frame=False)
        reached = -1
        for packet in self._container.demux(self._stream):
            if packet.pts is not None:
                reached = max(reached, self._index(packet.pts))
        if reached < last - 1:  # one frame of slack for rounding of variable timestamps
            got = "no packets" if reached < 0 else f"packets end at frame {reached}"
            raise VideoDecodeError(self.path, f"shorter than claimed: container claims {self.info.num_frames} "
                                              f"frames, {got}")

    def frames(self, indices, short_side: int | None = None) -> np.ndarray:
        """Decode the frames at ``indices`` (any order, repeats allowed, each in [0, num_frames)).

        Seeks to the key frame at or before the first needed frame and stops after the last one. Frames are
        converted to RGB only when needed, and resized during that conversion so the short side is at most
        ``short_side``. Returns uint8 ``(len(indices), H, W, 3)``.
        """
        indices = [int(i) for i in indices]
        if not indices or min(indices) < 0 or max(indices) >= self.info.num_frames:
            raise ValueError(f"frame indices must lie in [0, {self.info.num_frames}), got {indices}")
        width, height = resized_size(self.info.width, self.info.height, short_side)
        wanted = set(indices)
        got = self._decode(wanted, width, height, from_start=False)
        if len(got) < len(wanted) and min(wanted) > 0:
            # a seek that landed after the first needed frame (a bad key frame index): decode from the start
            got = self._decode(wanted, width, height, from_start=True)
        if len(got) < len(wanted):
            missing = sorted(wanted - set(got))
            raise VideoDecodeError(self.path, f"shorter than claimed: frames {missing[:5]}"
                                              f"{'...' if len(missing) > 5 else ''} of "
                                              f"{self.info.num_frames} could not be decoded")
        return np.stack([got[i] for i in indices])

    def _decode(self, wanted: set[int], width: int, height: int, from_start: bool) -> dict[int, np.ndarray]:
        first, last = min(wanted), max(wanted)
        out: dict[int, np.ndarray] = {}
        try:
            self._container.seek(self._start if from_start else self._pts(first), stream=self._stream,
                                 backward=True, any_frame=False)
            for frame in self._container.decode(self._stream):
                if frame.pts is None:
                    continue
                i = self._index(frame.pts)
                if i in wanted and i not in out:
                    out[i] = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
                if i >= last:
                    break
        except av.FFmpegError as e:
            if len(out) < len(wanted):
                raise VideoDecodeError(self.path, f"decoding failed after {len(out)} of {len(wanted)} needed "
                                                  f"frames: {e}") from None
        return out

    def close(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()
            self._container = None

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_video(path: str, decoder: str = "pyav", threads: int = 1, verify: bool = True):
    """A reader of ``path`` by the data config's ``decoder``: :class:`VideoReader` (``"pyav"``) or
    :class:`~sigma_ray.data.decode_torchcodec.TorchcodecReader` (``"torchcodec"``), both with ``info``,
    ``frames(indices, short_side)`` and ``close()``, and raising :class:`VideoDecodeError` alike."""
    if decoder == "pyav":
        return VideoReader(path, threads, verify)
    if decoder == "torchcodec":
        from sigma_ray.data.decode_torchcodec import TorchcodecReader   # imports torch and torchcodec

        return TorchcodecReader(path, threads, verify)
    raise ValueError(f"decoder = {decoder!r} is not one of 'pyav', 'torchcodec'")


def read_frames(path: str, indices, short_side: int | None = None, threads: int = 1,
                decoder: str = "pyav") -> np.ndarray:
    """Open ``path``, decode the frames at ``indices`` and close it: uint8 ``(len(indices), H, W, 3)``."""
    with open_video(path, decoder, threads) as reader:
        return reader.frames(indices, short_side)
