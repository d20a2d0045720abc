"""The test videos, made by the suite itself with PyAV (nothing is read from outside the repository).

Every frame shows a moving square over a slowly changing background and, in a band at its top, its own frame index
as 8 black/white blocks (:func:`read_stamp` reads it back through lossy compression), so a test can check that
frame ``i`` decoded is frame ``i`` written. :func:`make_videos` writes the set the decode, clip, pipeline and
prepare tests share; :func:`make_broken` derives the broken files from a good one.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

STAMP_BITS = 8


@dataclass(frozen=True)
class Spec:
    """One test video: ``size`` is (width, height) of the stored frames; ``letterbox`` rows of black at the top
    and the bottom; ``keyframes`` forces key frames there (and only there, with ``gop`` 0)."""

    name: str
    width: int
    height: int
    frames: int
    fps: Fraction = Fraction(25)
    codec: str = "libx264"
    pix_fmt: str = "yuv420p"
    gop: int = 12
    keyframes: tuple[int, ...] = ()
    letterbox: int = 0
    audio: bool = False
    faststart: bool = False


# The shared set: sizes and lengths that exercise seeking, resizing, fractional rates, odd sizes and containers.
SPECS = {
    "wide": Spec("wide.mp4", 640, 360, 60, gop=0, keyframes=(0, 17, 40), audio=True),   # irregular key frames
    "letterbox": Spec("letterbox.mp4", 320, 240, 40, letterbox=52),                      # 320x136 picture inside
    "phone": Spec("phone.mp4", 176, 144, 90, fps=Fraction(30000, 1001)),
    "odd": Spec("odd.mp4", 131, 97, 30, pix_fmt="yuv444p"),                              # odd width and height
    "vp9": Spec("vp9.webm", 160, 120, 30, codec="libvpx-vp9"),
}


def stamp(frame: np.ndarray, index: int, top: int = 0) -> None:
    """Write ``index`` into the frame's top band (from row ``top``): 8 blocks, white = 1, least bit first."""
    h, w, _ = frame.shape
    band = max(8, (h - 2 * top) // 6)
    block = w // STAMP_BITS
    for bit in range(STAMP_BITS):
        frame[top:top + band, bit * block:(bit + 1) * block] = 255 * ((index >> bit) & 1)


def read_stamp(frame: np.ndarray, top: int = 0) -> int:
    """The index :func:`stamp` wrote into an RGB frame (any size it was resized to, as long as the band and the
    blocks keep a few pixels each)."""
    h, w, _ = frame.shape
    band = max(8, (h - 2 * top) // 6)
    block = w // STAMP_BITS
    inner = frame[top + band // 4: top + 3 * band // 4].mean(axis=2)
    bits = [inner[:, b * block + block // 4: (b + 1) * block - block // 4].mean() > 128 for b in range(STAMP_BITS)]
    return int(sum(1 << b for b, on in enumerate(bits) if on))


def picture(spec: Spec, index: int) -> np.ndarray:
    """Frame ``index`` of ``spec`` as RGB uint8 ``(height, width, 3)``."""
    h, w = spec.height, spec.width
    inner = h - 2 * spec.letterbox
    y, x = np.mgrid[0:inner, 0:w]
    img = np.empty((inner, w, 3), np.uint8)
    img[..., 0] = (x * 255 // max(w - 1, 1) + 3 * index) % 256
    img[..., 1] = (y * 255 // max(inner - 1, 1)) % 256
    img[..., 2] = 96
    side = max(4, min(w, inner) // 5)
    cx = (index * 5) % max(w - side, 1)
    cy = inner // 2 + int((inner // 4) * np.sin(index / 5))
    img[max(cy - side // 2, 0):cy + side // 2, cx:cx + side] = (240, 200, 30)
    stamp(img, index)
    frame = np.zeros((h, w, 3), np.uint8)
    frame[spec.letterbox:spec.letterbox + inner] = img
    return frame


def write_video(spec: Spec, folder: Path) -> Path:
    """Encode ``spec`` into ``folder``; returns the path."""
    path = Path(folder) / spec.name
    options = {"movflags": "faststart"} if spec.faststart else {}
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream(spec.codec, rate=spec.fps)
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, spec.pix_fmt
        if spec.codec == "libx264":
            stream.options = ({"g": "1000", "keyint_min": "1000", "sc_threshold": "0", "bf": "2"} if not spec.gop
                              else {"g": str(spec.gop), "bf": "2"})
        else:
            stream.options = {"g": str(spec.gop or 1000), "deadline": "realtime", "cpu-used": "8"}
        audio = out.add_stream("aac", rate=16000) if spec.audio else None
        samples = 0
        for i in range(spec.frames):
            frame = av.VideoFrame.from_ndarray(picture(spec, i), format="rgb24").reformat(format=spec.pix_fmt)
            if i in spec.keyframes:
                frame.pict_type = av.video.frame.PictureType.I
            out.mux(stream.encode(frame))
            if audio is not None:
                while samples < (i + 1) * 16000 / spec.fps:   # a quiet tone, as long as the video
                    chunk = np.sin(np.arange(samples, samples + 1024) / 20).astype(np.float32)[None] * 0.1
                    a = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                    a.sample_rate, a.pts = 16000, samples
                    out.mux(audio.encode(a))
                    samples += 1024
        out.mux(stream.encode())
        if audio is not None:
            out.mux(audio.encode())
    return path


BROKEN = ("empty.mp4", "not_a_video.mp4", "truncated.mp4", "half.mp4")


def make_broken(good: Spec, folder: Path) -> dict[str, Path]:
    """Files a loader must survive, made from ``good`` (an mp4 spec): ``empty.mp4`` (0 bytes), ``not_a_video.mp4``
    (a line of text), ``truncated.mp4`` (the first third of the file: the index is at the end, nothing is
    readable) and ``half.mp4`` (the index first, the data cut in half: the container claims every frame, only
    about half decode)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "not_a_video.mp4").write_text("this is not a video\n")
    whole = write_video(Spec(**{**good.__dict__, "name": "_whole.mp4"}), folder).read_bytes()
    (folder / "truncated.mp4").write_bytes(whole[: len(whole) // 3])
    first = write_video(Spec(**{**good.__dict__, "name": "_faststart.mp4", "faststart": True}), folder).read_bytes()
    (folder / "half.mp4").write_bytes(first[: len(first) // 2])
    for tmp in ("_whole.mp4", "_faststart.mp4"):
        (folder / tmp).unlink()
    return {name: folder / name for name in BROKEN}


def make_videos(folder: Path) -> dict[str, Path]:
    """The shared set (:data:`SPECS`) plus the broken files under ``folder/bad``: name -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {key: write_video(spec, folder) for key, spec in SPECS.items()}
    paths.update(make_broken(Spec("long.mp4", 160, 96, 120, gop=12), folder / "bad"))
    return paths
