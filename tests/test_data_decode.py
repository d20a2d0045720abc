"""PyAV decoding against independent references: full decodes, a frame-index pattern, the shared bad files."""
import av
import numpy as np
import pytest

from sigma_ray.data.decode import VideoDecodeError, VideoReader, read_frames, resized_size

REAL = {  # name: (width, height, frames)
    "bigbuckbunny.mp4": (1280, 720, 132),
    "bikes.mp4": (640, 272, 250),
    "carphone_pristine.mp4": (176, 144, 120),
    "carphone_distorted.mp4": (176, 144, 120),
}


def full_decode(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_video_metadata_and_frames(shared_data, name):
    w, h, n = REAL[name]
    with VideoReader(shared_data / "videos" / name) as r:
        assert (r.info.width, r.info.height, r.info.num_frames) == (w, h, n)
        idx = [0, 1, n // 2, n - 1, n - 1]
        clip = r.frames(idx)
    assert clip.dtype == np.uint8 and clip.shape == (5, h, w, 3)
    if name != "bigbuckbunny.mp4":  # the 720p reference decode is the slow one; bikes covers seeking
        ref = full_decode(shared_data / "videos" / name)
        assert len(ref) == n
        np.testing.assert_array_equal(clip, ref[idx])


def test_seek_in_middle_of_bikes_matches_decode_from_start(shared_data):
    ref = full_decode(shared_data / "videos" / "bikes.mp4")   # key frames at 0, 30, 76, 137, 187, 242
    with VideoReader(shared_data / "videos" / "bikes.mp4") as r:
        for start in (29, 30, 31, 100, 140, 200, 234):
            idx = list(range(start, start + 16))
            np.testing.assert_array_equal(r.frames(idx), ref[idx], err_msg=f"start {start}")
        idx = [200, 100, 100, 5]   # any order, repeats
        np.testing.assert_array_equal(r.frames(idx), ref[idx])


def test_resize_in_decoder_keeps_aspect(shared_data):
    clip = read_frames(shared_data / "videos" / "bigbuckbunny.mp4", [10, 20], short_side=320)
    assert clip.shape == (2, 320, 568, 3)
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
    ("truncated_bikes.mp4", "cannot open"), ("half_bikes.mp4", "shorter than claimed"),
])
def test_bad_files_raise_typed_error(shared_data, name, reason):
    path = shared_data / "bad" / name
    with pytest.raises(VideoDecodeError) as e:
        read_frames(path, [0])
    assert e.value.path == str(path) and reason in e.value.reason


def test_half_bikes_detected_while_decoding_without_verify(shared_data):
    with VideoReader(shared_data / "bad" / "half_bikes.mp4", verify=False) as r:
        assert r.info.num_frames == 250
        assert r.frames([0, 50, 113]).shape == (3, 272, 640, 3)
        with pytest.raises(VideoDecodeError, match="113|could not be decoded|decoding failed"):
            r.frames([100, 120])
