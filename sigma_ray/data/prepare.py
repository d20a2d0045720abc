"""``sigma-ray prepare``: a raw video data set -> a training-ready copy, one Ray task per video.

Input: a folder tree (``class/*.mp4``, optionally under ``train/``, ``val/``, ``test/`` split folders; files
directly in the root make an unlabeled list) or VideoMAE annotation files (``path label`` per line, one per
split), of any container PyAV reads (mp4, webm, avi, mkv, ...).

Output, under ``out``:

- ``videos/<path relative to the source root>.mp4``: H.264 (libx264, yuv420p), resized (short side 320 for
  K400-like data, height 240 for SSv2-like, never upscaled, even sides), constant frame rate at the source's
  average rate, a key frame every ``gop`` frames (so a training window decodes from a near key frame instead of
  walking from frame 0), x264's ``fastdecode`` tuning (no CABAC, no deblocking filter: ~2x faster to decode for
  ~10% larger files and ~0.3 dB PSNR), no audio;
- ``<split>.csv``: VideoMAE lists (``videos/... label``, paths relative to ``out``: set the data config's
  ``root`` to ``out``) of the videos that were prepared; failed videos are left out of the lists;
- ``classes.txt`` (folder input): class names, line ``i`` is label ``i``;
- ``prepared.json``: the frame stride (and encoding) the data layer reads: with ``--frame-stride S`` only every
  S-th source frame is kept (at 1/S of the frame rate, so frame times stay those of the source), and a
  ``data.sampling_rate`` of r on the copy takes every (r/S)-th kept frame; r must be a multiple of S;
- ``manifest.parquet``: one row per listed video: split, source, output, label, status (``ok`` / ``failed`` /
  ``pending`` if the run was interrupted), the failure's reason, frames, fps, size, duration, source size;
- ``.prepare/journal.jsonl``: one line per finished video, written as results arrive, so an interrupted run
  loses nothing.

Progress: a tqdm bar on stderr (videos done, failures so far, videos/s, ETA); ``--quiet`` turns it off.

Resumable and idempotent: a video whose journal entry matches its source file (size, mtime) and the encoding
settings is not redone (failed ones neither, unless ``retry_failed``), so a second run does no work and writes
the same lists and manifest. Every failure (unreadable, truncated, shorter than claimed, crashed worker) is
recorded with its reason instead of aborting the job. Outputs are written to a temporary name and renamed
only after they were verified to decode to the expected number of frames.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Literal

import av
from tqdm.auto import tqdm

from sigma_ray.data.annotations import PREPARED_FILE, UNLABELED, VIDEO_EXTENSIONS, load_list
from sigma_ray.data.decode import VideoDecodeError, VideoReader, resized_size
from sigma_ray.infra.checks import ConfigError, check_choice, check_range
from sigma_ray.runs.files import write_atomic, write_text_atomic

SPLIT_DIRS = ("train", "val", "test")
MANIFEST = "manifest.parquet"
JOURNAL = os.path.join(".prepare", "journal.jsonl")
VIDEO_DIR = "videos"


@dataclass(frozen=True)
class PrepareConfig:
    """What to prepare and how. Defaults are K400's (short side 320); SSv2: ``resize="height", size=240``."""

    out: str
    src: str | None = None                     # a folder tree or one annotation file (split = its stem)
    lists: dict[str, str] = field(default_factory=dict)   # split -> annotation file (train.csv, val.csv, ...)
    root: str | None = None                    # relative paths in annotation files are resolved against it
    labeled: bool = True                       # annotation files carry labels (False: path-only lists)

    resize: Literal["short_side", "height", "none"] = "short_side"
    size: int = 320                            # the short side (or height) after resizing; never upscales
    gop: int = 16                              # frames between key frames (kept frames, with frame_stride)
    frame_stride: int = 1                      # keep every this many-th frame (the training's sampling rate)
    crf: int = 23                              # x264 quality (lower = better, larger files)
    preset: str = "veryfast"                   # x264 speed preset
    tune: Literal["fastdecode", "none"] = "fastdecode"   # fastdecode: the decode actors' work roughly halves
    frame_tolerance: float = 0.05              # fail a video that decodes fewer than (1 - this) x claimed frames

    task_num_cpus: float = 1.0                 # CPUs per Ray task (one video each)
    task_resources: dict[str, float] = field(default_factory=dict)   # e.g. {"decode_node": 0.01}
    encode_threads: int = 1                    # FFmpeg threads per task (tasks already run in parallel)
    max_in_flight: int = 0                     # tasks submitted at once; 0 = 2 x what the cluster's CPUs fit
    retry_failed: bool = False                 # redo videos that failed in an earlier run
    progress: bool = True                      # a tqdm progress bar (videos/s, ETA) on stderr

    def validate(self) -> None:
        if self.src is None and not self.lists:
            raise ConfigError("src or lists must name the data set to prepare")
        for split in self.lists:
            check_choice("lists split", split, SPLIT_DIRS)
        check_choice("resize", self.resize, ("short_side", "height", "none"))
        check_range("size", self.size, 16, 8192)
        check_range("gop", self.gop, 1, 1000)
        check_range("frame_stride", self.frame_stride, 1, 64)
        check_range("crf", self.crf, 0, 51)
        check_choice("preset", self.preset, ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium",
                                             "slow", "slower", "veryslow"))
        check_choice("tune", self.tune, ("fastdecode", "none"))
        check_range("frame_tolerance", self.frame_tolerance, 0.0, 1.0)
        check_range("task_num_cpus", self.task_num_cpus, 0.0, 64.0, lo_open=True)
        for k, v in self.task_resources.items():
            check_range(f"task_resources.{k}", v, 0.0, lo_open=True)
        check_range("encode_threads", self.encode_threads, 0, 64)
        check_range("max_in_flight", self.max_in_flight, 0)

    def encoding(self) -> dict[str, Any]:
        """The settings an output depends on (a change redoes every video; a stride of 1 is left out, so copies
        made before strides existed stay done)."""
        enc = {"resize": self.resize, "size": self.size, "gop": self.gop, "crf": self.crf, "preset": self.preset,
               "tune": self.tune, "codec": "libx264", "frame_tolerance": self.frame_tolerance}
        if self.frame_stride != 1:
            enc["frame_stride"] = self.frame_stride
        return enc


# ---------------------------------------------------------------------------------------------- the work list

@dataclass(frozen=True)
class Item:
    split: str
    src: str      # absolute source path
    dst: str      # output path relative to out
    label: int
    problem: str | None = None   # why the candidate cannot be a video at all (a directory, a dangling link)


def _candidate_problem(path: Path) -> str | None:
    """Why a path with a video extension is no video file (None when it is a regular file or a link to one)."""
    if path.is_file():
        return None
    if path.is_symlink() and not path.exists():
        return f"dangling symbolic link to {os.readlink(path)}"
    if path.is_dir():
        return "a directory, not a video file"
    return "not a regular file"


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and (path == folder or folder in path.parents)


def _scan_classes(folder: Path, exclude: Path | None = None) -> tuple[list[tuple[str, int, str | None]], list[str]]:
    """(path, label, problem) of ``folder/class/**/video`` (sorted class names) plus files directly in ``folder``.
    Every name with a video extension is a candidate, whatever it is (a directory, a dangling link: ``problem``
    says so); nothing under ``exclude`` (the output folder) is."""
    def candidates(paths):
        return [p for p in paths if p.suffix.lower() in VIDEO_EXTENSIONS and not _inside(p.resolve(), exclude)]

    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")
                     and d.suffix.lower() not in VIDEO_EXTENSIONS and not _inside(d.resolve(), exclude))
    items = [(str(p), UNLABELED, _candidate_problem(p)) for p in candidates(sorted(folder.iterdir()))]
    for label, name in enumerate(classes):
        for p in candidates(sorted((folder / name).rglob("*"))):
            items.append((str(p), label, _candidate_problem(p)))
    return items, classes


def discover(config: PrepareConfig) -> tuple[list[Item], list[str] | None]:
    """The videos to prepare (in list order) and, for folder input, the class names.

    Output paths mirror the source paths relative to the source root (the folder, ``root``, or the deepest
    folder holding all listed videos), with the extension replaced by ``.mp4``; when two sources would map to
    one output (``a.webm`` and ``a.mp4``), the later keeps its extension in the name (``a.webm.mp4``). In a folder,
    every name with a video extension is an item (one that is a directory or a dangling link carries its
    ``problem`` and is listed as failed), and the output folder is never scanned, even when it lies inside.
    """
    raw: list[tuple[str, str, int, str | None]] = []   # (split, abs path, label, problem)
    classes = None
    lists = dict(config.lists)
    base: str | None = None
    out = Path(config.out).resolve()
    if config.src is not None:
        src = Path(config.src).resolve()
        if src.is_dir():
            base = str(src)
            split_dirs = [d for d in SPLIT_DIRS if (src / d).is_dir() and not _inside((src / d).resolve(), out)]
            if split_dirs:
                for split in split_dirs:
                    found, names = _scan_classes(src / split, out)
                    if split == split_dirs[0]:
                        classes = names
                    index = {n: i for i, n in enumerate(classes)}
                    for path, label, problem in found:
                        if label != UNLABELED:
                            name = Path(path).relative_to(src / split).parts[0]
                            if name not in index:
                                raise ConfigError(f"{src / split / name}: class {name!r} is not among the "
                                                  f"{split_dirs[0]} classes")
                            label = index[name]
                        raw.append((split, path, label, problem))
            else:
                found, classes = _scan_classes(src, out)
                raw += [("train", p, lab, problem) for p, lab, problem in found]
            if not raw:
                raise ConfigError(f"{src}: no videos ({', '.join(VIDEO_EXTENSIONS)}) found")
        elif src.is_file():
            split = src.stem if src.stem in SPLIT_DIRS else "train"
            if split in lists:
                raise ConfigError(f"{src}: split {split!r} is also given in lists")
            lists[split] = str(src)
        else:
            raise ConfigError(f"src {config.src} does not exist")
    for split, list_file in lists.items():
        for rec in load_list(list_file, config.root, config.labeled, check_files=False):
            raw.append((split, os.path.abspath(rec.path), rec.label, None))
    if base is None:
        if config.root is not None:
            base = os.path.abspath(config.root)
        else:
            base = os.path.commonpath([os.path.dirname(p) for _, p, _, _ in raw])
    dst_of: dict[str, str] = {}
    taken: set[str] = set()
    items = []
    for split, path, label, problem in raw:
        if path not in dst_of:
            rel = os.path.relpath(path, base) if path.startswith(base + os.sep) else os.path.basename(path)
            stem, ext = os.path.splitext(rel)
            dst = os.path.join(VIDEO_DIR, stem + ".mp4")
            if dst in taken:
                dst = os.path.join(VIDEO_DIR, rel + ".mp4")
            n = 1
            while dst in taken:
                dst = os.path.join(VIDEO_DIR, f"{rel}.{n}.mp4")
                n += 1
            taken.add(dst)
            dst_of[path] = dst
        items.append(Item(split, path, dst_of[path], label, problem))
    return items, classes


# ------------------------------------------------------------------------------------------ one video, no Ray

def output_size(width: int, height: int, resize: str, size: int) -> tuple[int, int]:
    """The encoded (width, height): resized (never upscaled) and rounded down to even sides for yuv420p."""
    if resize == "short_side":
        width, height = resized_size(width, height, size)
    elif resize == "height" and height > size:
        width, height = round(width * size / height), size
    return max(2, width - width % 2), max(2, height - height % 2)


def transcode(src: str, dst: str, encoding: dict[str, Any], threads: int = 1) -> dict[str, Any]:
    """Decode ``src`` fully, resize, encode to ``dst`` (H.264 mp4, video only) and verify the result.

    Returns a result dict with ``status`` ``ok`` and the output's frames, fps, size and duration, or ``status``
    ``failed`` and a ``reason``; never raises for a bad video.
    """
    t0 = time.perf_counter()
    result: dict[str, Any] = {"src": src, "dst": dst, "status": "failed", "reason": "",
                              "src_bytes": os.path.getsize(src) if os.path.exists(src) else -1}
    tmp = dst + ".part"
    try:
        result.update(_transcode(src, dst, tmp, encoding, threads))
        result["status"] = "ok"
    except VideoDecodeError as e:
        result["reason"] = e.reason
    except Exception as e:   # noqa: BLE001 - one bad video must not abort the data set
        result["reason"] = f"{type(e).__name__}: {e}"
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def _transcode(src: str, dst: str, tmp: str, enc: dict[str, Any], threads: int) -> dict[str, Any]:
    try:
        inp = av.open(src)
    except (av.FFmpegError, OSError) as e:
        raise VideoDecodeError(src, f"cannot open: {e}") from None
    with inp:
        if not inp.streams.video:
            raise VideoDecodeError(src, "no video stream")
        s = inp.streams.video[0]
        s.codec_context.thread_count = threads
        rate = s.average_rate or s.guessed_rate
        if not rate:
            raise VideoDecodeError(src, "unknown frame rate")
        rate = Fraction(rate).limit_denominator(1001 * 1000)
        claimed = s.frames
        if not claimed and s.duration:
            claimed = round(s.duration * Fraction(s.time_base) * rate)
        if not claimed and inp.duration:
            claimed = round(Fraction(inp.duration, 1_000_000) * rate)
        src_w, src_h = s.codec_context.width, s.codec_context.height
        if not src_w or not src_h:
            raise VideoDecodeError(src, "unknown frame size")
        width, height = output_size(src_w, src_h, enc["resize"], enc["size"])
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        stride = enc.get("frame_stride", 1)
        out_rate = rate / stride   # the kept frames keep their times: frame k of the copy is source frame k*stride
        n = decoded = 0
        with av.open(tmp, "w", format="mp4") as out:
            options = {"crf": str(enc["crf"]), "preset": enc["preset"], "g": str(enc["gop"]),
                       "keyint_min": str(enc["gop"]), "sc_threshold": "0"}   # key frames exactly every gop
            if enc["tune"] != "none":
                options["tune"] = enc["tune"]
            o = out.add_stream(enc["codec"], rate=out_rate, options=options)
            o.width, o.height, o.pix_fmt = width, height, "yuv420p"
            o.codec_context.thread_count = threads
            tb = Fraction(1) / out_rate
            o.codec_context.time_base = tb
            try:
                for frame in inp.decode(s):
                    decoded += 1
                    if (decoded - 1) % stride:
                        continue
                    f = frame.reformat(width=width, height=height, format="yuv420p")
                    f.pts, f.time_base = n, tb   # constant frame rate: frame i at i / fps
                    # a decoded frame keeps its source picture type, and x264 would make every source key frame
                    # a key frame too; the output's key frames are every gop frames, no more
                    f.pict_type = av.video.frame.PictureType.NONE
                    n += 1
                    out.mux(o.encode(f))
            except av.FFmpegError as e:
                if decoded == 0:
                    raise VideoDecodeError(src, f"decoding failed before the first frame: {e}") from None
                if not claimed or decoded < claimed * (1 - enc["frame_tolerance"]) - 1:
                    raise VideoDecodeError(src, f"decoding failed after {decoded} of {claimed or '?'} frames: "
                                                f"{e}") from None
            if n == 0:
                raise VideoDecodeError(src, "no frames decoded")
            if claimed and decoded < claimed * (1 - enc["frame_tolerance"]) - 1:
                raise VideoDecodeError(src, f"shorter than claimed: container claims {claimed} frames, "
                                            f"{decoded} decoded")
            out.mux(o.encode(None))
    with VideoReader(tmp, verify=True) as check:
        info = check.info
        last = check.frames([info.num_frames - 1])   # the last frame decodes
    if info.num_frames != n or last.shape[1:3] != (height, width):
        raise VideoDecodeError(src, f"encoded copy reads back as {info.num_frames} frames of "
                                    f"{info.width}x{info.height}, expected {n} of {width}x{height}")
    os.replace(tmp, dst)
    return {"num_frames": n, "fps": float(out_rate), "width": width, "height": height,
            "duration": float(n / out_rate), "src_num_frames": int(claimed or decoded), "src_width": src_w,
            "src_height": src_h, "bytes": os.path.getsize(dst)}


# --------------------------------------------------------------------------------------- journal and progress

def _fingerprint(src: str, encoding: dict[str, Any]) -> str:
    try:
        st = os.stat(src)
        stamp = [st.st_size, st.st_mtime_ns]
    except OSError:
        stamp = None
    return hashlib.sha1(json.dumps([src, stamp, encoding], sort_keys=True).encode()).hexdigest()[:16]


def read_journal(out: str | Path) -> dict[str, dict[str, Any]]:
    """The latest journal entry per source path (a torn last line from a killed run is ignored)."""
    path = Path(out) / JOURNAL
    entries: dict[str, dict[str, Any]] = {}
    if path.is_file():
        with path.open() as f:
            for line in f:
                try:
                    e = json.loads(line)
                except json.JSONDecodeError:
                    continue
                entries[e["src"]] = e
    return entries


# ----------------------------------------------------------------------------------------------- the Ray job

@dataclass
class PrepareResult:
    out: str
    manifest: str
    lists: dict[str, str]        # split -> written annotation file
    total: int                   # distinct videos
    transcoded: int              # transcode tasks run now (ok or failed)
    skipped: int                 # videos an earlier run did (ok or failed), not redone
    ok: int                      # ready, over all runs: ok_now of them now
    ok_now: int
    failed: list[tuple[str, str]]   # (source, reason) over all runs, paths that are no video file included
    seconds: float

    def summary(self) -> str:
        """One line whose counts add up: ready (now + already done) + failed = total."""
        return (f"{self.ok} of {self.total} videos ready in {self.out} ({self.ok_now} prepared now, "
                f"{self.ok - self.ok_now} already done), {len(self.failed)} failed, in {self.seconds:.1f} s; "
                f"manifest {self.manifest}")


def _remote_transcode():
    import ray

    @ray.remote(max_retries=1)   # system failures (a lost node) are retried; a bad video returns its reason
    def transcode_task(src: str, dst: str, encoding: dict[str, Any], threads: int) -> dict[str, Any]:
        return transcode(src, dst, encoding, threads)

    return transcode_task


def prepare(config: PrepareConfig, on_result: Callable[[dict[str, Any]], None] | None = None) -> PrepareResult:
    """Prepare the data set of ``config`` in parallel Ray tasks (connects to or starts Ray)."""
    import ray

    from sigma_ray.data.pipeline import ensure_ray

    config.validate()
    t0 = time.perf_counter()
    out = Path(config.out).resolve()
    items, classes = discover(config)
    encoding = config.encoding()
    (out / ".prepare").mkdir(parents=True, exist_ok=True)
    journal = read_journal(out)
    videos: dict[str, str] = {}                       # src -> dst, list order
    results: dict[str, dict[str, Any]] = {}
    for it in items:
        videos.setdefault(it.src, it.dst)
        if it.problem is not None:                    # no video file at all: failed without a task
            results[it.src] = {"src": it.src, "dst": it.dst, "status": "failed", "reason": it.problem}
    problems, todo = len(results), []
    for src, dst in videos.items():
        if src in results:
            continue
        e = journal.get(src)
        done = False
        if e is not None and e.get("key") == _fingerprint(src, encoding) and e.get("dst") == dst:
            if e["status"] == "ok":   # the output is still there, as written
                done = (out / dst).is_file() and (out / dst).stat().st_size == e.get("bytes")
            else:
                done = not config.retry_failed
        if done:
            results[src] = e
        else:
            todo.append((src, dst))
    already = len(results)
    progress = tqdm(total=len(videos), initial=already, unit="video", desc="prepare", disable=not config.progress,
                    mininterval=0.5 if sys.stderr.isatty() else 10.0, dynamic_ncols=True)
    # counted here (a disabled bar counts nothing); the bar's failures are the summary's: earlier ones included
    done_now = ok_now = 0
    failed_so_far = sum(r["status"] != "ok" for r in results.values())
    progress.set_postfix(failed=failed_so_far, refresh=False)
    if todo:
        ensure_ray()
        task = _remote_transcode().options(num_cpus=config.task_num_cpus,
                                           resources=dict(config.task_resources) or None)
        limit = config.max_in_flight or max(2, int(2 * ray.cluster_resources().get("CPU", 1) /
                                                   config.task_num_cpus))
        pending: dict[Any, tuple[str, str]] = {}
        queue = list(reversed(todo))
        try:
            with (out / JOURNAL).open("a") as jf:
                while queue or pending:
                    while queue and len(pending) < limit:
                        src, dst = queue.pop()
                        pending[task.remote(src, str(out / dst), encoding, config.encode_threads)] = (src, dst)
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                    for ref in ready:
                        src, dst = pending.pop(ref)
                        try:
                            r = ray.get(ref)
                        except Exception as e:  # noqa: BLE001 - a crashed worker fails this video only
                            r = {"src": src, "status": "failed", "reason": f"task failed: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''}"}
                        r.update(src=src, dst=dst, key=_fingerprint(src, encoding))
                        jf.write(json.dumps(r, sort_keys=True) + "\n")
                        jf.flush()
                        results[src] = r
                        done_now += 1
                        ok_now += r["status"] == "ok"
                        failed_so_far += r["status"] != "ok"
                        progress.set_postfix(failed=failed_so_far, refresh=False)
                        progress.update()
                        if on_result is not None:
                            on_result(r)
        finally:
            for ref in pending:
                ray.cancel(ref)
            progress.close()
            lists = _write_outputs(out, items, results, classes, config)
    else:
        progress.close()
        lists = _write_outputs(out, items, results, classes, config)
    failed = [(src, r.get("reason", "")) for src, r in results.items() if r["status"] != "ok"]
    return PrepareResult(out=str(out), manifest=str(out / MANIFEST), lists=lists, total=len(videos),
                         transcoded=done_now, skipped=already - problems,
                         ok=sum(r["status"] == "ok" for r in results.values()), ok_now=ok_now, failed=failed,
                         seconds=time.perf_counter() - t0)


MANIFEST_COLUMNS = ("split", "src", "path", "label", "status", "reason", "num_frames", "fps", "width", "height",
                    "duration", "src_num_frames", "src_width", "src_height", "src_bytes", "bytes", "seconds")


def _write_outputs(out: Path, items: list[Item], results: dict[str, dict[str, Any]], classes: list[str] | None,
                   config: PrepareConfig) -> dict[str, str]:
    """The annotation files (ok videos only) and the manifest (every listed video), both in list order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {c: [] for c in MANIFEST_COLUMNS}
    by_split: dict[str, list[str]] = {}
    for it in items:
        r = results.get(it.src, {"status": "pending", "reason": "not prepared yet (interrupted run)"})
        ok = r["status"] == "ok"
        values = {"split": it.split, "src": it.src, "path": it.dst, "label": it.label, "status": r["status"],
                  "reason": r.get("reason", "")}
        for c in MANIFEST_COLUMNS:
            rows[c].append(values[c] if c in values else r.get(c))
        lines = by_split.setdefault(it.split, [])
        if ok:
            lines.append(it.dst if it.label == UNLABELED else f"{it.dst} {it.label}")
    types = {"label": pa.int64(), "num_frames": pa.int64(), "fps": pa.float64(), "width": pa.int64(),
             "height": pa.int64(), "duration": pa.float64(), "src_num_frames": pa.int64(), "src_width": pa.int64(),
             "src_height": pa.int64(), "src_bytes": pa.int64(), "bytes": pa.int64(), "seconds": pa.float64()}
    table = pa.table({c: pa.array(rows[c], type=types.get(c, pa.string())) for c in MANIFEST_COLUMNS})
    table = table.replace_schema_metadata({"encoding": json.dumps(config.encoding(), sort_keys=True)})
    write_atomic(out / MANIFEST, lambda p: pq.write_table(table, str(p)))
    lists = {}
    for split, lines in by_split.items():
        path = out / f"{split}.csv"
        write_text_atomic(path, "".join(x + "\n" for x in lines))
        lists[split] = str(path)
    if classes is not None:
        write_text_atomic(out / "classes.txt", "".join(c + "\n" for c in classes))
    # read by the data layer (annotations.clip_rate): the sampling rate then counts the copy's frames
    meta = {"frame_stride": config.frame_stride, "encoding": config.encoding()}
    write_text_atomic(out / PREPARED_FILE, json.dumps(meta, indent=1, sort_keys=True))
    return lists


def read_manifest(out: str | Path):
    """The manifest of a prepared data set as a pyarrow Table."""
    import pyarrow.parquet as pq

    return pq.read_table(Path(out) / MANIFEST)


# ---------------------------------------------------------------------------------- command line (entry layer)
# The `sigma-ray prepare` options and their translation to a PrepareConfig; sigma_ray/cli.py mounts them. They
# live here, beside the job, so the CLI only wires them in.

def add_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``sigma-ray prepare`` arguments (for the CLI's sub-command parser)."""
    ap.add_argument("src", nargs="?", help="a folder tree (class/*.mp4, optionally under train/ val/ test/) or "
                                           "an annotation file (split = its name: train.csv, val.csv, ...)")
    ap.add_argument("out", help="output folder (videos/, <split>.csv, manifest.parquet)")
    ap.add_argument("--list", action="append", default=[], metavar="SPLIT=FILE",
                    help="an annotation file for a split (repeatable), e.g. --list train=k400/train.csv")
    ap.add_argument("--root", help="folder that relative paths in annotation files are relative to")
    ap.add_argument("--unlabeled", action="store_true", help="annotation files list paths only")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--short-side", type=int, help="resize to this short side (default 320, K400)")
    size.add_argument("--height", type=int, help="resize to this height (240 for SSv2)")
    size.add_argument("--no-resize", action="store_true", help="keep the source size")
    ap.add_argument("--gop", type=int, default=16, help="frames between key frames (default 16)")
    ap.add_argument("--frame-stride", type=int, default=1,
                    help="keep every S-th frame (default 1): a copy for one sampling rate, S times smaller and "
                         "faster to decode; data.sampling_rate must then be a multiple of S")
    ap.add_argument("--crf", type=int, default=23)
    ap.add_argument("--preset", default="veryfast", help="x264 preset (default veryfast)")
    ap.add_argument("--tune", choices=("fastdecode", "none"), default="fastdecode",
                    help="x264 tuning (default fastdecode: ~2x faster decoding, ~10%% larger files)")
    ap.add_argument("--task-cpus", type=float, default=1.0, help="CPUs per Ray task (default 1)")
    ap.add_argument("--resources", default="{}", help='extra Ray resources per task, JSON: \'{"decode_node": 0.01}\'')
    ap.add_argument("--max-in-flight", type=int, default=0)
    ap.add_argument("--retry-failed", action="store_true", help="redo videos that failed in an earlier run")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    return ap


def config_from_args(ns: argparse.Namespace) -> PrepareConfig:
    lists = {}
    for spec in ns.list:
        split, sep, path = spec.partition("=")
        if not sep:
            raise ConfigError(f"--list {spec!r}: expected SPLIT=FILE")
        lists[split] = path
    try:
        resources = {str(k): float(v) for k, v in json.loads(ns.resources).items()}
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        raise ConfigError(f"--resources {ns.resources!r}: expected a JSON object of numbers") from None
    if ns.no_resize:
        resize, size = "none", 320
    elif ns.height is not None:
        resize, size = "height", ns.height
    else:
        resize, size = "short_side", ns.short_side or 320
    cfg = PrepareConfig(out=ns.out, src=ns.src, lists=lists, root=ns.root, labeled=not ns.unlabeled,
                        resize=resize, size=size, gop=ns.gop, frame_stride=ns.frame_stride, crf=ns.crf,
                        preset=ns.preset, tune=ns.tune,
                        task_num_cpus=ns.task_cpus, task_resources=resources, max_in_flight=ns.max_in_flight,
                        retry_failed=ns.retry_failed, progress=not ns.quiet)
    cfg.validate()
    return cfg


def run_prepare(ns: argparse.Namespace) -> int:
    """Run ``sigma-ray prepare`` from parsed arguments; exit code 0 (failed videos are listed, not fatal)."""
    try:
        cfg = config_from_args(ns)
        result = prepare(cfg)
    except ConfigError as e:
        print(f"sigma-ray prepare: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    for src, reason in result.failed[:20]:
        print(f"  failed: {src}: {reason}")
    if len(result.failed) > 20:
        print(f"  ... {len(result.failed) - 20} more in {result.manifest}")
    return 0
