"""Loading torchcodec against the FFmpeg that the PyAV wheel bundles, so that nothing but pip packages is needed.

torchcodec links FFmpeg's libraries by their standard names (``libavutil.so.60``, ``libavcodec.so.62``, ...) and
ships none of them; a machine without a system FFmpeg cannot load it. The PyAV wheel carries a full FFmpeg in
``site-packages/av.libs`` under names mangled by auditwheel (``libavutil-5809ad29.so.60.26.102``), whose sonames
and mutual references use those mangled names. The dynamic linker satisfies a library's needed entry with an
already loaded library only when the names match (the soname, or the name it was opened by), and it reads
``LD_LIBRARY_PATH`` once at process start, so neither symlinks opened with ctypes nor a path set from Python help
a running process (a Ray actor, the driver, a test).

:func:`load_torchcodec` therefore writes, once per machine and PyAV build, copies of the FFmpeg libraries whose
soname and references to each other are rewritten in place to the standard names (shorter strings, so the ELF
layout is unchanged), with symlinks to the wheel's other libraries (x264, dav1d, ...) beside them, found through
the copies' own ``$ORIGIN`` run path. It opens the copies in dependency order and then imports torchcodec, whose
libraries bind to them by soname. PyAV keeps its own copies (loaded under the mangled names): two instances of
the same FFmpeg build in one process, which share no state and need none. Decoding through the same FFmpeg build
is also why torchcodec's frames equal PyAV's pixel for pixel (tests/test_data_torchcodec.py).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import struct
import sys
import tempfile
from pathlib import Path

# the FFmpeg libraries torchcodec links, in an order where each one's FFmpeg dependencies come before it
FFMPEG_LIBS = ("avutil", "swresample", "swscale", "avcodec", "avformat", "avfilter", "avdevice")
_MANGLED = re.compile(r"^lib(" + "|".join(FFMPEG_LIBS) + r")-[0-9a-f]+\.so\.(\d+)(\.\d+)*$")
_FFMPEG_OF_AVUTIL = {56: 4, 57: 5, 58: 6, 59: 7, 60: 8}   # libavutil's major version in each FFmpeg release
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_SONAME = 0, 1, 5, 14
_PT_LOAD, _PT_DYNAMIC = 1, 2


class TorchcodecUnavailable(RuntimeError):
    """torchcodec cannot be used in this process; the message names what is missing, in one line."""


def cache_root() -> Path:
    """Where the renamed library copies are written: ``$SIGMA_RAY_CACHE`` or ``$XDG_CACHE_HOME/sigma-ray`` or
    ``~/.cache/sigma-ray``."""
    if os.environ.get("SIGMA_RAY_CACHE"):
        return Path(os.environ["SIGMA_RAY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sigma-ray"


def bundled_ffmpeg() -> tuple[Path, dict[str, str]] | None:
    """(PyAV's ``av.libs`` folder, {mangled file name: standard soname}) of the installed PyAV wheel; None for a
    PyAV built against a system FFmpeg (no bundled copy: torchcodec then finds the system's, if any)."""
    import av

    folder = Path(av.__file__).resolve().parent.parent / "av.libs"
    if not folder.is_dir():
        return None
    names = {}
    for f in os.listdir(folder):
        m = _MANGLED.match(f)
        if m:
            names[f] = f"lib{m.group(1)}.so.{m.group(2)}"
    missing = sorted(set(FFMPEG_LIBS) - {n[3:].split(".so.")[0] for n in names.values()})
    if missing:
        raise TorchcodecUnavailable(f"torchcodec needs FFmpeg's {', '.join('lib' + m for m in missing)}: "
                                    f"not in PyAV's bundled copy at {folder}")
    return folder, names


def rename_libraries(data: bytes, names: dict[str, str]) -> bytes:
    """The ELF64 little-endian shared library ``data`` with each soname / needed entry listed in ``names`` (old
    -> new, new not longer than old) overwritten in its dynamic string table; everything else byte for byte."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not an ELF64 little-endian file")
    out = bytearray(data)
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == _PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        raise ValueError("no dynamic section")
    entries = []
    for k in range(dynamic[1] // 16):
        tag, val = struct.unpack_from("<qQ", data, dynamic[0] + 16 * k)
        if tag == _DT_NULL:
            break
        entries.append((tag, val))
    addr = dict(entries)[_DT_STRTAB]   # a virtual address: the file offset is in the segment that maps it
    strtab = next((addr - vaddr + off for vaddr, off, size in loads if vaddr <= addr < vaddr + size), None)
    if strtab is None:
        raise ValueError("the dynamic string table is outside every loaded segment")
    for tag, val in entries:
        if tag in (_DT_NEEDED, _DT_SONAME):
            start = strtab + val
            old = bytes(data[start:data.index(b"\0", start)]).decode()
            if old in names:
                new = names[old].encode()
                if len(new) > len(old):
                    raise ValueError(f"{names[old]} is longer than {old}")
                out[start:start + len(old)] = new + b"\0" * (len(old) - len(new))
    return bytes(out)


def renamed_copy(folder: Path, names: dict[str, str]) -> Path:
    """The folder of renamed copies for PyAV's ``folder`` (written on first use, atomically: decode actors may
    race for it)."""
    key = hashlib.sha256(repr(sorted((f, (folder / f).stat().st_size) for f in os.listdir(folder))).encode())
    target = cache_root() / f"ffmpeg-{key.hexdigest()[:16]}"
    if (target / "complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".ffmpeg-", dir=target.parent))
    try:
        for f in os.listdir(folder):
            if f in names:
                (work / names[f]).write_bytes(rename_libraries((folder / f).read_bytes(), names))
            else:   # x264, dav1d, ...: the copies find them through their own $ORIGIN run path
                os.symlink(folder / f, work / f)
        (work / "complete").touch()
        os.rename(work, target)
    except OSError:
        if not (target / "complete").exists():   # not another process having won the race
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


@functools.cache
def load_torchcodec() -> int:
    """Make torchcodec's video decoder usable in this process; returns the FFmpeg major version it loaded.

    Opens the renamed copies of PyAV's FFmpeg (see the module docstring) before importing torchcodec, so it
    must run before anything else imports torchcodec. Raises :class:`TorchcodecUnavailable` with a one-line
    reason when it cannot."""
    imported_first = "torchcodec" in sys.modules
    bundled = bundled_ffmpeg()
    ffmpeg = None   # the FFmpeg major version PyAV bundles
    if bundled is not None:
        avutil = next(n for n in bundled[1].values() if n.startswith("libavutil.so."))   # bundled_ffmpeg checked
        ffmpeg = _FFMPEG_OF_AVUTIL.get(int(avutil.rsplit(".", 1)[1]))
    if bundled is not None and not imported_first:
        try:
            libs = renamed_copy(*bundled)
            for lib in FFMPEG_LIBS:
                ctypes.CDLL(str(next(libs.glob(f"lib{lib}.so.*"))))
        except (OSError, ValueError, StopIteration) as e:   # StopIteration: a copy missing
            raise TorchcodecUnavailable(f"torchcodec: cannot prepare PyAV's bundled FFmpeg: {e}") from None
    try:
        from torchcodec._core import ops
    except ImportError as e:
        raise TorchcodecUnavailable(f"torchcodec is not installed or does not import: {e} "
                                    f"(pip install -e '.[torchcodec]')") from None
    if not ops._FFMPEG_AVAILABLE:   # torchcodec keeps import working without FFmpeg and fails on first use
        import torch

        why = ("torchcodec was imported before sigma-ray could provide them" if imported_first else
               "PyAV has no bundled FFmpeg and the system has none" if bundled is None else
               f"PyAV's bundled FFmpeg is not one torchcodec was built for, or torchcodec does not match torch "
               f"{torch.__version__}")
        raise TorchcodecUnavailable(f"torchcodec {_version()} could not load FFmpeg's shared libraries "
                                    f"(libavutil.so.N, libavcodec.so.N, libavformat.so.N, ... of FFmpeg 4 to 9): "
                                    f"{why}; its error for FFmpeg {ffmpeg or '(newest)'}: "
                                    f"{_first_load_error(ops, ffmpeg)}")
    return int(ops.ffmpeg_major_version)


def _first_load_error(ops, ffmpeg: int | None) -> str:
    """The root cause torchcodec met loading its core library for FFmpeg ``ffmpeg`` (PyAV's; None: the newest
    it tried), e.g. ``libavutil.so.60: cannot open shared object file``, from the tracebacks it collects."""
    try:
        ops.load_core_libraries()
    except RuntimeError as e:
        parts = re.split(r"^FFmpeg version (\d+):$", str(e), flags=re.MULTILINE)   # text, version, its traceback...
        tracebacks = dict(zip(map(int, parts[1::2]), parts[2::2]))
        text = tracebacks.get(ffmpeg) or (tracebacks[max(tracebacks)] if tracebacks else str(e))
        found = re.search(r"^OSError: (.*)$", text, re.MULTILINE)
        return found.group(1) if found else " ".join(text.split())[:300]
    return "none (it loads now)"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torchcodec")
    except PackageNotFoundError:
        return "(unknown version)"
