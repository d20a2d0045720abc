"""``sigma-ray prepare`` on the suite's real videos and the broken ones (real PyAV, real Ray tasks), and the edge cases
of a folder: a directory named like a video, a dangling link, the output folder inside the input."""
import os
from pathlib import Path

import re

import av
import pytest

from sigma_ray.data.annotations import load_list
from sigma_ray.data.config import DataConfig
from sigma_ray.data.decode import VideoReader
from sigma_ray.data.iterator import ClipIterator
from sigma_ray.data.prepare import PrepareConfig, add_arguments, config_from_args, prepare, read_manifest
from sigma_ray.infra.checks import ConfigError

from videos import read_stamp

# class folder -> test videos in it (tests/videos.py): "wide" has an audio track, "odd" is 131x97, "vp9" a webm
GOOD = {"box": ["letterbox", "vp9"], "phone": ["odd", "phone"], "wide": ["wide"]}
BAD = ("empty.mp4", "half.mp4", "not_a_video.mp4", "truncated.mp4")


def frames_of(path):
    """Decoded frame count and key frame indices (presentation order) of a video, audio streams."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        pts = sorted((p.pts, p.is_keyframe) for p in c.demux(s) if p.pts is not None)
        audio = len(c.streams.audio)
    return n, [i for i, (_, k) in enumerate(pts) if k], audio


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, test_videos, ray_session):
    src = tmp_path_factory.mktemp("raw")
    for cls, names in GOOD.items():
        (src / cls).mkdir()
        for n in names:
            os.symlink(test_videos[n], src / cls / test_videos[n].name)
    for n in BAD:                                     # broken files inside a class folder, beside good ones
        os.symlink(test_videos[n], src / "box" / f"bad_{n}")
    out = tmp_path_factory.mktemp("prepared")
    cfg = PrepareConfig(out=str(out), src=str(src), size=160, task_num_cpus=0.5, progress=False)
    return cfg, prepare(cfg), src, out


def test_outputs_decode_and_match_the_manifest(prepared, test_videos):
    cfg, result, src, out = prepared
    m = read_manifest(out).to_pylist()
    assert len(m) == result.total == 9 and result.transcoded == 9 and result.ok == 5
    ok = [r for r in m if r["status"] == "ok"]
    assert sorted(Path(r["src"]).name for r in ok) == sorted(test_videos[n].name for ns in GOOD.values() for n in ns)
    for r in ok:
        path = out / r["path"]
        n_src, _, _ = frames_of(r["src"])
        n_out, keys, audio = frames_of(path)
        assert n_out == n_src == r["num_frames"] == r["src_num_frames"], r
        assert audio == 0                                                  # "wide" has audio: dropped
        assert keys == list(range(0, n_out, cfg.gop))                      # key frames every 16 frames, only
        x264_settings = path.read_bytes()                                  # x264 writes them into the stream
        assert b"cabac=0" in x264_settings and b"deblock=0:" in x264_settings   # tune=fastdecode
        with VideoReader(str(path)) as v:
            assert (v.info.num_frames, v.info.width, v.info.height) == (r["num_frames"], r["width"], r["height"])
            assert abs(v.info.fps - r["fps"]) < 1e-3 and r["duration"] == pytest.approx(r["num_frames"] / r["fps"])
            last = v.frames(range(r["num_frames"] - 16, r["num_frames"]))   # a late window decodes
            assert last.shape == (16, r["height"], r["width"], 3)
        box = 52 * r["height"] // r["src_height"] if "letterbox" in r["src"] else 0
        assert [read_stamp(f[box:]) for f in last] == list(range(r["num_frames"] - 16, r["num_frames"]))
        short = min(r["src_width"], r["src_height"])
        assert min(r["width"], r["height"]) == min(160, short - short % 2)   # short side 160, never upscaled
        aspect = r["src_width"] / r["src_height"]
        assert abs(r["width"] / r["height"] - aspect) < 0.02
    wide = next(r for r in ok if r["src"].endswith("wide.mp4"))
    assert (wide["width"], wide["height"]) == (284, 160)
    odd = next(r for r in ok if r["src"].endswith("odd.mp4"))
    assert (odd["width"], odd["height"]) == (130, 96)                     # odd sides rounded down to even


def test_broken_inputs_are_listed_with_reasons_and_nothing_else_is_lost(prepared):
    cfg, result, src, out = prepared
    failed = dict(result.failed)
    assert sorted(Path(p).name for p in failed) == sorted(f"bad_{n}" for n in BAD)
    assert all(reason for reason in failed.values())
    assert re.search(r"after \d+ of 120 frames", failed[str(src / "box" / "bad_half.mp4")])   # names the shortfall
    m = {Path(r["src"]).name: r for r in read_manifest(out).to_pylist()}
    for n in BAD:
        r = m[f"bad_{n}"]
        assert r["status"] == "failed" and r["reason"] == failed[r["src"]] and r["num_frames"] is None
        assert not (out / r["path"]).exists() and not (out / (r["path"] + ".part")).exists()
    assert (out / "classes.txt").read_text().split() == ["box", "phone", "wide"]
    recs = load_list(out / "train.csv", root=str(out))                   # VideoMAE format, ok videos only
    assert sorted((Path(r.path).name, r.label) for r in recs) == [
        ("letterbox.mp4", 0), ("odd.mp4", 1), ("phone.mp4", 1), ("vp9.mp4", 0), ("wide.mp4", 2)]
    data = DataConfig(train_list=str(out / "train.csv"), root=str(out), num_frames=8, sampling_rate=2,
                      input_size=64, decode_short_side=96, batch_size=5, max_skip_fraction=0.0)
    batches = list(ClipIterator(data, "train"))
    assert len(batches) == 1 and batches[0]["clips"].shape == (5, 8, 64, 64, 3)


def test_second_run_does_no_work(prepared):
    cfg, first, src, out = prepared
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.suffix in (".mp4", ".csv", ".txt"))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    manifest = read_manifest(out)
    again = prepare(cfg)
    assert again.transcoded == 0 and again.skipped == 9
    assert sorted(again.failed) == sorted(first.failed) and again.ok == 5
    for p in files:
        if p.suffix == ".mp4":
            assert p.stat().st_mtime_ns == before[p][0], p                # not rewritten
        assert p.read_bytes() == before[p][1], p                           # lists identical
    assert read_manifest(out).equals(manifest)


def test_annotation_lists_webm_height_resize_and_resume(tmp_path, test_videos, ray_session):
    raw = tmp_path / "raw"
    (raw / "clips").mkdir(parents=True)
    with av.open(str(test_videos["phone"])) as c, \
            av.open(str(raw / "clips" / "a.webm"), "w") as w:              # an SSv2-like webm (VP8), 40 frames
        s = w.add_stream("libvpx", rate=25)
        s.width, s.height, s.pix_fmt = 176, 144, "yuv420p"
        for i, f in enumerate(c.decode(video=0)):
            if i == 40:
                break
            w.mux(s.encode(f.reformat(format="yuv420p")))
        w.mux(s.encode(None))
    os.symlink(test_videos["odd"], raw / "clips" / "b.mp4")
    (raw / "train.csv").write_text("clips/a.webm 3\nclips/b.mp4 5\n")
    (raw / "val.csv").write_text("clips/a.webm 3\nclips/missing.mp4 1\n")
    out = tmp_path / "out"
    cfg = PrepareConfig(out=str(out), lists={"train": str(raw / "train.csv"), "val": str(raw / "val.csv")},
                        root=str(raw), resize="height", size=96, gop=8, task_num_cpus=0.5, progress=False)
    r = prepare(cfg)
    assert r.total == 3 and r.transcoded == 3 and r.ok == 2                # a.webm is prepared once
    assert [Path(p).name for p, _ in r.failed] == ["missing.mp4"] and "cannot open" in r.failed[0][1]
    assert (out / "train.csv").read_text() == "videos/clips/a.mp4 3\nvideos/clips/b.mp4 5\n"
    assert (out / "val.csv").read_text() == "videos/clips/a.mp4 3\n"
    m = read_manifest(out).to_pylist()
    assert [(x["split"], x["status"]) for x in m] == [("train", "ok"), ("train", "ok"), ("val", "ok"),
                                                      ("val", "failed")]
    n, keys, _ = frames_of(out / "videos/clips/a.mp4")
    assert n == m[0]["num_frames"] == 40 and keys == [0, 8, 16, 24, 32]
    assert (m[0]["width"], m[0]["height"]) == (116, 96)                   # height 96, even width
    # resume: an output lost (or a run killed before it) is redone, nothing else; failures are kept ...
    (out / "videos/clips/a.mp4").unlink()
    r2 = prepare(cfg)
    assert r2.transcoded == 1 and r2.skipped == 2 and r2.ok == 2
    drop_time = lambda rows: [{k: v for k, v in x.items() if k != "seconds"} for x in rows]
    assert drop_time(read_manifest(out).to_pylist()) == drop_time(m)
    # ... unless asked to retry them
    r3 = prepare(PrepareConfig(**{**cfg.__dict__, "retry_failed": True}))
    assert r3.transcoded == 1 and len(r3.failed) == 1
    # changed encoding settings redo everything
    r4 = prepare(PrepareConfig(**{**cfg.__dict__, "gop": 4}))
    assert r4.transcoded == 3


def test_a_stride_copy_keeps_every_sth_frame_and_its_windows_are_the_full_copys(tmp_path, test_videos, ray_session):
    """``--frame-stride 4``: every 4th source frame (stamps 0, 4, 8, ...) at a quarter of the frame rate, the
    stride in prepared.json; the data layer then reads ``sampling_rate: 4`` as consecutive frames, so a window of
    the stride copy at rate 1 is the full copy's window at rate 4 (the same stamps); a rate the copy cannot give
    fails before any work, naming the stride."""
    import numpy as np

    from sigma_ray.data.annotations import AnnotationError, frame_stride, load_split
    from sigma_ray.data.clips import ClipMaker, epoch_rows

    src = tmp_path / "raw"
    (src / "a").mkdir(parents=True)
    os.symlink(test_videos["phone"], src / "a" / "phone.mp4")                 # 90 stamped frames at 29.97 fps
    copies = {}
    for stride in (1, 4):
        out = tmp_path / f"stride{stride}"
        prepare(PrepareConfig(out=str(out), src=str(src), size=96, gop=8, frame_stride=stride, task_num_cpus=0.5,
                              progress=False))
        copies[stride] = out
        assert frame_stride(out / "train.csv") == stride
    full, strided = (read_manifest(copies[s]).to_pylist()[0] for s in (1, 4))
    assert full["num_frames"] == 90 and strided["num_frames"] == 23 and strided["src_num_frames"] == 90
    assert strided["fps"] == pytest.approx(full["fps"] / 4)
    assert strided["duration"] == pytest.approx(23 * 4 / full["fps"])
    with VideoReader(copies[4] / strided["path"]) as r:
        assert [read_stamp(f) for f in r.frames(range(23))] == list(range(0, 90, 4))

    def data(stride: int, rate: int) -> DataConfig:
        out = copies[stride]
        return DataConfig(train_list=str(out / "train.csv"), val_list=str(out / "train.csv"), root=str(out),
                          num_frames=8, sampling_rate=rate, input_size=64, decode_short_side=96, batch_size=1)

    for start in (0, 4, 28, 60):                                       # the same window from both copies
        with VideoReader(copies[1] / full["path"]) as a, VideoReader(copies[4] / strided["path"]) as b:
            x, y = a.frames(range(start, start + 32, 4)), b.frames(range(start // 4, start // 4 + 8))
        assert [read_stamp(f) for f in x] == [read_stamp(f) for f in y] == list(range(start, start + 32, 4))
        assert np.abs(x.astype(int) - y.astype(int)).mean() < 3          # the same pictures (two encodes of them)
    maker = ClipMaker(data(4, 4), "train")
    assert maker.rate == 1 and ClipMaker(data(1, 4), "train").rate == 4
    for seed in range(5):                                              # random train windows: 4 source frames apart
        row = epoch_rows(load_split(data(4, 4), "train"), data(4, 4), "train", seed)[0]
        stamps = [read_stamp(f) for f in maker.window(row, np.random.default_rng(seed))]
        assert stamps == list(range(stamps[0], stamps[0] + 32, 4)) and stamps[0] % 4 == 0
    with pytest.raises(AnnotationError, match=r"data.sampling_rate = 2 is not a multiple of the frame stride 4"):
        load_split(data(4, 2), "train")
    # the Ray pipeline reads the stride in the driver: its decode actors need not see the list's folder
    from sigma_ray.data.pipeline import ClipPipeline

    assert ClipPipeline(data(4, 4), "train").config.frame_stride == 4
    assert ClipPipeline(data(1, 4), "train").config.frame_stride == 1


def test_cli_arguments():
    import argparse

    ns = add_arguments(argparse.ArgumentParser()).parse_args(
        ["raw/", "out/", "--height", "240", "--resources", '{"decode_node": 0.01}', "--task-cpus", "2",
         "--frame-stride", "4"])
    cfg = config_from_args(ns)
    assert (cfg.resize, cfg.size, cfg.task_resources, cfg.task_num_cpus) == ("height", 240, {"decode_node": 0.01}, 2)
    assert cfg.frame_stride == 4 and cfg.encoding()["frame_stride"] == 4
    assert "frame_stride" not in PrepareConfig(out="o", src="s").encoding()   # earlier copies stay done
    assert config_from_args(add_arguments(argparse.ArgumentParser()).parse_args(["a", "b"])).size == 320
    with pytest.raises(ConfigError, match="SPLIT=FILE"):
        config_from_args(add_arguments(argparse.ArgumentParser()).parse_args(["a", "b", "--list", "x.csv"]))
    with pytest.raises(ConfigError, match="gop"):
        PrepareConfig(out="o", src="s", gop=0).validate()
    with pytest.raises(ConfigError, match="frame_stride"):
        PrepareConfig(out="o", src="s", frame_stride=0).validate()


def test_every_candidate_is_listed_and_the_output_inside_the_input_is_never_ingested(tmp_path, test_videos,
                                                                                     ray_session):
    """A directory named x.mp4 and a dangling link appear in the manifest as failed, with the reason; with OUT
    inside RAW, running three times prepares the same two videos and never makes a class of OUT."""
    src = tmp_path / "raw"
    (src / "a" / "x.mp4").mkdir(parents=True)                             # a directory with a video's name
    os.symlink(test_videos["phone"], src / "a" / "phone.mp4")
    os.symlink(tmp_path / "gone.mp4", src / "a" / "gone.mp4")             # dangling
    (src / "b").mkdir()
    os.symlink(test_videos["odd"], src / "b" / "odd.mp4")
    out = src / "prepared"
    cfg = PrepareConfig(out=str(out), src=str(src), size=96, task_num_cpus=0.5, progress=False)
    for _ in range(3):
        result = prepare(cfg)
        rows = {Path(r["src"]).name: r for r in read_manifest(out).to_pylist()}
        assert sorted(rows) == ["gone.mp4", "odd.mp4", "phone.mp4", "x.mp4"] and result.total == 4
        assert rows["x.mp4"]["status"] == "failed" and "directory" in rows["x.mp4"]["reason"]
        assert rows["gone.mp4"]["status"] == "failed" and "dangling" in rows["gone.mp4"]["reason"]
        assert str(tmp_path / "gone.mp4") in rows["gone.mp4"]["reason"]
        assert result.ok == 2 and (out / "classes.txt").read_text().split() == ["a", "b"]
    assert result.transcoded == 0                                          # the third run redid nothing


def test_sigma_ray_prepare_command(tmp_path, test_videos, ray_session, capsys):
    from sigma_ray.cli import main

    src, out = tmp_path / "raw", tmp_path / "out"
    for cls, video in (("a", test_videos["phone"]), ("b", test_videos["empty.mp4"])):
        (src / cls).mkdir(parents=True)
        os.symlink(video, src / cls / video.name)
    (src / "c" / "folder.mp4").mkdir(parents=True)                      # no video file: failed without a task
    args = ["prepare", str(src), str(out), "--short-side", "96", "--gop", "8", "--tune", "none", "--task-cpus", "0.5"]
    assert main(args) == 0                                                 # a failed video is listed, not fatal
    captured = capsys.readouterr()
    printed = captured.out
    # the counts add up (1 ready + 2 failed = 3), and the bar's failures are the summary's
    assert "1 of 3 videos ready" in printed and "(1 prepared now, 0 already done), 2 failed," in printed
    assert f"failed: {src / 'b' / 'empty.mp4'}: cannot open" in printed
    assert re.search(r"prepare: 100%.* 3/3 .*failed=2", captured.err)    # tqdm's bar on stderr
    assert (out / "train.csv").read_text() == "videos/a/phone.mp4 0\n"
    assert b"cabac=1" in (out / "videos/a/phone.mp4").read_bytes()         # x264's defaults, as asked
    assert [(r["status"], r["width"], r["height"]) for r in read_manifest(out).to_pylist()] == [
        ("ok", 116, 96), ("failed", None, None), ("failed", None, None)]     # 176x144 -> 117x96 -> even
    assert main(args + ["--quiet"]) == 0
    captured = capsys.readouterr()
    assert "1 of 3 videos ready" in captured.out and "(0 prepared now, 1 already done), 2 failed," in captured.out
    assert "prepare:" not in captured.err                                  # nothing to redo
    assert main(["prepare", str(src), str(out), "--gop", "0"]) == 2        # a bad option names its field
    assert "gop" in capsys.readouterr().err
