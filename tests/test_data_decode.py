"""PyAV decoding against independent references: full decodes, the frames' own index stamps, seeking past irregular
key frames, resizing, odd sizes, VP9, and the broken files (all made by tests/videos.py)."""
import av
import numpy as np
import pytest

from sigma_ray.data.decode import VideoDecodeError, VideoReader, read_frames, resized_size

from videos import SPECS, read_stamp



def full_decode(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.mark.parametrize("key", sorted(SPECS))
def test_metadata_and_frames_match_a_full_decode(test_videos, key):
    spec = SPECS[key]
    n = spec.frames
    with VideoReader(test_videos[key]) as r:
        assert (r.info.width, r.info.height, r.info.num_frames) == (spec.width, spec.height, n)
        assert r.info.fps == pytest.approx(float(spec.fps))
        idx = [0, 1, n // 2, n - 1, n - 1]
        clip = r.frames(idx)
    assert clip.dtype == np.uint8 and clip.shape == (5, spec.height, spec.width, 3)
    ref = full_decode(test_videos[key])
    assert len(ref) == n
    np.testing.assert_array_equal(clip, ref[idx])
    assert [read_stamp(f[spec.letterbox:]) for f in clip] == idx              # frame i is the i-th written
    if spec.letterbox:                                                        # the bars are decoded as they are
        assert clip[:, : spec.letterbox - 2].max() < 40 and clip[:, -(spec.letterbox - 2):].max() < 40


def test_seeking_past_irregular_key_frames_matches_decoding_from_the_start(test_videos):
    ref = full_decode(test_videos["wide"])                    # key frames at 0, 17 and 40 only
    with VideoReader(test_videos["wide"]) as r:
        for start in (15, 16, 17, 18, 30, 39, 40, 41, 44):
            idx = list(range(start, start + 16))
            np.testing.assert_array_equal(r.frames(idx), ref[idx], err_msg=f"start {start}")
        idx = [50, 20, 20, 5]   # any order, repeats
        np.testing.assert_array_equal(r.frames(idx), ref[idx])
        assert [read_stamp(f) for f in r.frames(idx)] == idx


def test_resize_in_decoder_keeps_aspect(test_videos):
    clip = read_frames(test_videos["wide"], [10, 20], short_side=180)     # 640x360 -> 320x180
    assert clip.shape == (2, 180, 320, 3)
    assert [read_stamp(f) for f in clip] == [10, 20]
    assert read_frames(test_videos["odd"], [3], short_side=64).shape == (1, 64, 86, 3)   # 131x97: even sides
    assert resized_size(640, 272, 320) == (640, 272)        # never upscales
    assert resized_size(272, 640, 136) == (136, 320)


def write_index_video(path, n=90, gop=12, size=64):
    """Frame i shows i in binary as 8 black/white stripes; x264 with B-frames and a key frame every `gop`."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=25)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.options = {"g": str(gop), "bf": "2"} if s.codec_context.name == "libx264" else {"g": str(gop)}
        for i in range(n):
            bits = (i >> np.arange(8)) & 1
            img = np.repeat(bits * 255, size // 8).astype(np.uint8)[None, :, None].repeat(size, 0).repeat(3, 2)
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")))
        c.mux(s.encode())


def read_index(frame):
    stripes = frame[:, :, 0].reshape(frame.shape[0], 8, -1).mean(axis=(0, 2))
    return int(((stripes > 128) * (1 << np.arange(8))).sum())


def test_decoded_frames_carry_their_index(tmp_path):
    path = tmp_path / "index.mp4"
    write_index_video(path)
    rng = np.random.default_rng(0)
    with VideoReader(path) as r:
        assert r.info.num_frames == 90
        for _ in range(10):
            idx = np.sort(rng.choice(90, 8, replace=False))
            assert [read_index(f) for f in r.frames(idx)] == idx.tolist()


@pytest.mark.parametrize("name,reason", [
    ("empty.mp4", "cannot open"), ("not_a_video.mp4", "cannot open"),
    ("truncated.mp4", "cannot open"), ("half.mp4", "shorter than claimed"),
])
def test_bad_files_raise_typed_error(test_videos, name, reason):
    path = test_videos[name]
    with pytest.raises(VideoDecodeError) as e:
        read_frames(path, [0])
    assert e.value.path == str(path) and reason in e.value.reason


def test_a_file_shorter_than_it_claims_fails_while_decoding_without_verify(test_videos):
    with VideoReader(test_videos["half.mp4"], verify=False) as r:
        assert r.info.num_frames == 120                         # what the container claims
        assert [read_stamp(f) for f in r.frames([0, 10, 30])] == [0, 10, 30]
        with pytest.raises(VideoDecodeError, match="could not be decoded|decoding failed"):
            r.frames([100, 110])
