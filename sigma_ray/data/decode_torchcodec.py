"""torchcodec decoding of just the frames a clip needs, with the contract of
:class:`~sigma_ray.data.decode.VideoReader`.

The data config's ``decoder: torchcodec`` selects it. torchcodec's ``seek_mode="exact"`` scans the container's
packets on open (demuxing, no decoding), so frame ``i`` is the i-th frame in presentation order, and the scan
doubles as the length check: a file whose packets stop before the frame count its header claims fails on open.
``get_frames_at`` then decodes the needed frames (any order, repeats allowed) in one call, seeking to key frames.

The PyAV reader numbers a frame by its timestamp instead (``round((pts - start) * time_base * fps)``): the same
numbers at a constant frame rate (every prepared copy, and every file the tests make), not on a variable-rate
source, where the i-th frame need not be the one whose timestamp rounds to i.

Frames are those of the PyAV reader pixel for pixel when no resize is needed: both run the same FFmpeg build
(:mod:`sigma_ray.data.ffmpeg_libs`) and the same swscale YUV -> RGB conversion. With a resize (source short side
above ``short_side``) they differ: PyAV converts and scales in one swscale pass from YUV, torchcodec converts to RGB
and then scales (tests/test_data_torchcodec.py bounds the difference). Prepared copies are stored at the decode
size, so their clips never resize in the decoder.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from sigma_ray.data.decode import VideoDecodeError, VideoInfo, resized_size
from sigma_ray.data.ffmpeg_libs import load_torchcodec

if TYPE_CHECKING:   # imported for real only after load_torchcodec() has provided FFmpeg
    from torchcodec.decoders import VideoDecoder

_SOURCE_PREFIX = re.compile(r"^.*?\.cpp:\d+, ")   # torchcodec prefixes errors with its C++ function and file


def _reason(e: Exception) -> str:
    """torchcodec's message, one line, without the C++ source location."""
    return " ".join(_SOURCE_PREFIX.sub("", str(e)).split())


class TorchcodecReader:
    """An open video. ``frames(indices, short_side)`` -> uint8 ``(len(indices), H, W, 3)``.

    Raises :class:`~sigma_ray.data.decode.VideoDecodeError` for files that cannot be opened, have no video stream,
    or (with ``verify``) whose packets stop before the frame count the container claims; ``threads`` is
    torchcodec's ``num_ffmpeg_threads`` (0 = FFmpeg's choice).
    """

    def __init__(self, path: str, threads: int = 1, verify: bool = True):
        load_torchcodec()
        self.path = str(path)
        self.threads = threads
        self._decoders: dict[tuple[int, int], VideoDecoder] = {}   # per output size: a decoder's resize is fixed
        decoder = self._open(None)
        m = decoder.metadata
        fps = m.average_fps_from_header or m.average_fps
        if not fps:
            raise VideoDecodeError(self.path, "unknown frame rate")
        # the count the container claims, as the PyAV reader takes it; the scan's count is what the packets hold
        claimed = m.num_frames_from_header
        if not claimed and m.duration_seconds_from_header:
            claimed = round(m.duration_seconds_from_header * fps)
        claimed = claimed or m.num_frames_from_content
        if not claimed:
            raise VideoDecodeError(self.path, "container reports no frames")
        found = m.num_frames_from_content or 0
        if verify and found < claimed - 1:   # one frame of slack, as the PyAV reader allows
            got = "no packets" if found == 0 else f"packets end at frame {found - 1}"
            raise VideoDecodeError(self.path, f"shorter than claimed: container claims {claimed} frames, {got}")
        self.info = VideoInfo(self.path, int(claimed), float(fps), int(m.width), int(m.height))
        self._decoders[(self.info.width, self.info.height)] = decoder

    def _open(self, size: tuple[int, int] | None) -> "VideoDecoder":
        """A torchcodec VideoDecoder giving NHWC uint8 RGB, resized to ``size`` = (width, height) when given."""
        from torchcodec.decoders import VideoDecoder
        from torchcodec.transforms import Resize

        try:
            return VideoDecoder(self.path, seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=self.threads,
                                transforms=None if size is None else [Resize((size[1], size[0]))])
        except ValueError as e:   # torchcodec's words for a file without a video stream
            if "best video stream" in str(e):
                raise VideoDecodeError(self.path, "no video stream") from None
            raise VideoDecodeError(self.path, f"cannot open: {_reason(e)}") from None
        except RuntimeError as e:
            raise VideoDecodeError(self.path, f"cannot open: {_reason(e)}") from None

    def frames(self, indices, short_side: int | None = None) -> np.ndarray:
        """Decode the frames at ``indices`` (any order, repeats allowed, each in [0, num_frames)), resized so the
        short side is at most ``short_side``. Returns uint8 ``(len(indices), H, W, 3)``."""
        indices = [int(i) for i in indices]
        if not indices or min(indices) < 0 or max(indices) >= self.info.num_frames:
            raise ValueError(f"frame indices must lie in [0, {self.info.num_frames}), got {indices}")
        size = resized_size(self.info.width, self.info.height, short_side)
        if size not in self._decoders:
            self._decoders[size] = self._open(size)
        decoder = self._decoders[size]
        if max(indices) >= len(decoder):   # inside the claimed count (the one-frame slack) but not in the file
            missing = sorted({i for i in indices if i >= len(decoder)})
            raise VideoDecodeError(self.path, f"shorter than claimed: frames {missing[:5]} of "
                                              f"{self.info.num_frames} could not be decoded")
        try:
            return decoder.get_frames_at(indices).data.numpy()
        except RuntimeError as e:
            raise VideoDecodeError(self.path, f"decoding failed: {_reason(e)}") from None

    def close(self) -> None:
        self._decoders.clear()   # torchcodec closes the file when its decoder is collected

    def __enter__(self) -> "TorchcodecReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
