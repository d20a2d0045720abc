"""The torchcodec decoder (``data.decoder: torchcodec``) against the PyAV reader on real files: the same frames
(pixel for pixel without a resize, close with one), the same clips from a prepared copy and its stride copy, the
same errors for broken files, the config choice, the clip actors using it, and its FFmpeg loading in a fresh
process with nothing set by hand (sigma_ray/data/ffmpeg_libs.py)."""
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sigma_ray.data.annotations import VideoRecord
from sigma_ray.data.clips import ClipMaker, Row
from sigma_ray.data.config import DataConfig
from sigma_ray.data.decode import VideoDecodeError, VideoReader, open_video, read_frames
from sigma_ray.data.ffmpeg_libs import bundled_ffmpeg, rename_libraries
from sigma_ray.data.iterator import ClipIterator
from sigma_ray.data.prepare import PrepareConfig, transcode
from sigma_ray.infra.checks import ConfigError
from sigma_ray.infra.config import from_dict

from videos import SPECS, read_stamp


@pytest.mark.parametrize("key", sorted(SPECS))
def test_frames_equal_pyav_pixel_for_pixel(test_videos, key):
    """H.264 (irregular key frames, letterbox, 29.97 fps, 4:4:4 odd size) and VP9: the same metadata and, for
    windows, scattered indices, repeats and any order, the same bytes."""
    n = SPECS[key].frames
    with VideoReader(test_videos[key]) as a, open_video(test_videos[key], "torchcodec") as b:
        assert b.info == a.info
        for idx in (list(range(n)), [n - 1, 0, n // 2, n // 2, 1], list(range(n // 3, n, 3))):
            np.testing.assert_array_equal(b.frames(idx), a.frames(idx), err_msg=f"{key} {idx[:5]}")


def test_a_resize_in_the_decoder_gives_the_same_frames_closely(test_videos):
    """With a resize PyAV scales from YUV in one swscale pass, torchcodec converts to RGB and then scales: the
    same frames and sizes, pixels within 1.5 levels of 255 on average (0.1-0.9 measured; the synthetic frames' sharp
    edges differ most)."""
    for key, short_side in (("wide", 180), ("letterbox", 120), ("odd", 64)):
        idx = [0, 7, SPECS[key].frames - 1]
        a, b = (read_frames(test_videos[key], idx, short_side, decoder=d) for d in ("pyav", "torchcodec"))
        assert a.shape == b.shape and a.shape[1:3] == {"wide": (180, 320), "letterbox": (120, 160),
                                                        "odd": (64, 86)}[key]
        top = SPECS[key].letterbox * short_side // SPECS[key].height
        assert [read_stamp(f[top:]) for f in b] == idx
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.5, key


@pytest.fixture(scope="module")
def copies(tmp_path_factory, test_videos):
    """The phone clip (90 frames, 176x144) prepared as ``sigma-ray prepare`` does, in full and with stride 3."""
    out = tmp_path_factory.mktemp("copies")
    paths = {}
    for stride in (1, 3):
        dst = str(out / f"stride{stride}.mp4")
        enc = PrepareConfig(out=str(out), src=str(out), size=144, gop=8, frame_stride=stride).encoding()
        result = transcode(str(test_videos["phone"]), dst, enc)
        assert result["status"] == "ok", result
        paths[stride] = dst
    return paths


@pytest.mark.parametrize("stride", [1, 3])
def test_clips_from_prepared_copies_are_identical(copies, stride):
    """ClipMaker with either decoder: the same train clips (window, crop, flip, repeats) and masks, bit for bit,
    from the full prepared copy (rate 3) and from its stride copy (consecutive frames)."""
    base = dict(num_frames=8, sampling_rate=3, input_size=64, decode_short_side=144, frame_stride=stride,
                num_repeats=2, flip=True)
    makers = {d: ClipMaker(DataConfig(decoder=d, **base), "train") for d in ("pyav", "torchcodec")}
    for video_id in range(4):
        row = Row(copies[stride], 0, video_id, 0)
        a, b = (makers[d].make(row, epoch=1) for d in ("pyav", "torchcodec"))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(y.clip, x.clip)
            np.testing.assert_array_equal(y.mask, x.mask)


@pytest.mark.parametrize("name", ["empty.mp4", "not_a_video.mp4", "truncated.mp4", "half.mp4"])
def test_broken_files_raise_the_same_errors(test_videos, name):
    path = test_videos[name]
    errors = []
    for decoder in ("pyav", "torchcodec"):
        with pytest.raises(VideoDecodeError) as e:
            read_frames(path, [0], decoder=decoder)
        errors.append(e.value)
    pyav, tc = errors
    assert tc.path == pyav.path == str(path)
    assert tc.reason.split(":")[0] == pyav.reason.split(":")[0]     # "cannot open" / "shorter than claimed"
    assert "\n" not in tc.reason and ".cpp" not in tc.reason


def test_a_file_shorter_than_it_claims_fails_while_decoding_without_verify(test_videos):
    with open_video(test_videos["half.mp4"], "torchcodec", verify=False) as r:
        assert r.info.num_frames == 120                              # what the container claims
        with pytest.raises(VideoDecodeError, match="could not be decoded|decoding failed"):
            r.frames([100, 110])


def test_broken_files_are_skipped_and_counted(test_videos):
    records = [VideoRecord(str(test_videos[k]), 0, i) for i, k in
               enumerate(["wide", "half.mp4", "phone", "empty.mp4", "letterbox"])]
    counts = {}
    for decoder in ("pyav", "torchcodec"):
        cfg = DataConfig(decoder=decoder, num_frames=4, sampling_rate=2, input_size=64, decode_short_side=96,
                         batch_size=2, max_skip_fraction=0.5, skip_min_rows=100)
        it = ClipIterator(cfg, "train", records=records)
        got = sorted(int(v) for b in it for v in b["video_ids"])
        counts[decoder] = (got, it.stats.seen, sorted(p for p, _ in it.stats.skipped))
    assert counts["torchcodec"] == counts["pyav"]
    assert counts["pyav"] == ([0, 2, 4], 5, sorted(str(test_videos[k]) for k in ("half.mp4", "empty.mp4")))


def test_the_decoder_choice_is_validated():
    assert from_dict(DataConfig, {"decoder": "torchcodec"}).decoder == "torchcodec"
    with pytest.raises(ConfigError, match=r"data.decoder = 'decord' is not one of 'pyav', 'torchcodec'"):
        from_dict(DataConfig, {"decoder": "decord"}, prefix="data")
    with pytest.raises(ConfigError, match=r"decoder = 'nvdec' is not one of 'pyav', 'torchcodec'"):
        DataConfig(decoder="nvdec").validate()


def test_the_ray_clip_actors_decode_with_torchcodec(test_videos, ray_session):
    """The decode actors are new processes: each loads torchcodec itself and makes the plain iterator's clips."""
    from sigma_ray.data.pipeline import ClipPipeline

    records = [VideoRecord(str(test_videos[k]), 0, i) for i, k in enumerate(["wide", "phone", "letterbox"] * 2)]
    cfg = DataConfig(decoder="torchcodec", num_frames=4, sampling_rate=2, input_size=64, decode_short_side=96,
                     batch_size=2, num_actors_min=1, num_actors_max=1)
    pipe = {int(v): c for b in ClipPipeline(cfg, "train", records).iter_torch_batches(0)
            for v, c in zip(b["video_ids"], b["clips"].numpy())}
    plain = {int(v): c for b in ClipIterator(cfg, "train", records=records) for v, c in zip(b["video_ids"], b["clips"])}
    assert sorted(pipe) == sorted(plain) == list(range(6))
    for v in plain:
        np.testing.assert_array_equal(pipe[v], plain[v])


def run_fresh(code: str, tmp_path) -> subprocess.CompletedProcess:
    """``code`` in a new interpreter whose environment has no library path and a cache of its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD")}
    env["SIGMA_RAY_CACHE"] = str(tmp_path / "cache")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=120)


def test_torchcodec_loads_in_a_fresh_process_from_pip_packages_alone(tmp_path, test_videos):
    """The renamed copies of PyAV's FFmpeg are written to the cache and serve torchcodec; PyAV keeps its own."""
    out = run_fresh(f"""
        import av
        from sigma_ray.data.decode import read_frames
        clip = read_frames({str(test_videos["phone"])!r}, [0, 45], decoder="torchcodec")
        ref = read_frames({str(test_videos["phone"])!r}, [0, 45])
        maps = open("/proc/self/maps").read()
        print(clip.shape, (clip == ref).all(), "libavcodec.so.62" in maps, "av.libs/libavcodec-" in maps)
        """, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(2,", "144,", "176,", "3)", "True", "True", "True"]
    assert len(list((tmp_path / "cache").glob("ffmpeg-*/libavcodec.so.*"))) == 1


def test_torchcodec_imported_first_fails_with_one_line_naming_the_libraries(tmp_path):
    out = run_fresh("""
        import torchcodec
        from sigma_ray.data.ffmpeg_libs import TorchcodecUnavailable, load_torchcodec
        try:
            load_torchcodec()
        except TorchcodecUnavailable as e:
            print(e)
        """, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and "imported before" in lines[0], lines
    assert re.search(r"its error for FFmpeg \d: libavutil\.so\.\d+: cannot open shared object file", lines[0])


def test_the_renamed_copies_differ_only_in_the_library_names():
    """The copy of PyAV's libavcodec: its soname and its references to the other FFmpeg libraries take the standard
    names, padded in place; every other byte is the wheel's."""
    bundled = bundled_ffmpeg()
    if bundled is None:
        pytest.skip("PyAV is built against a system FFmpeg: nothing to rename")
    folder, names = bundled
    mangled = next(f for f, n in names.items() if n.startswith("libavcodec."))
    data = (folder / mangled).read_bytes()
    out = rename_libraries(data, names)
    assert len(out) == len(data)
    present = [old for old in names if old.encode() in data]   # its own soname, libavutil's, libswresample's
    assert len(present) >= 3
    for old in present:
        assert old.encode() not in out and names[old].encode() + b"\0" in out
    changed = sum(a != b for a, b in zip(data, out))
    assert 0 < changed <= sum(len(o) for o in present)
    with pytest.raises(ValueError, match="longer"):
        rename_libraries(data, {mangled: "x" * 100})
    with pytest.raises(ValueError, match="ELF64"):
        rename_libraries(b"#!/bin/sh\n" * 8, names)
