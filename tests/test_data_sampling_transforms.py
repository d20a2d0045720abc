"""Frame index sampling and spatial transforms against hand-computed expectations."""
import numpy as np

from sigma_ray.data import sampling, transforms


def test_dense_window_and_short_video_repeat():
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = sampling.dense_indices(250, 16, 4, rng)
        assert np.all(np.diff(idx) == 4) and 0 <= idx[0] and idx[-1] < 250
    starts = {int(sampling.dense_indices(70, 16, 4, rng)[0]) for _ in range(200)}
    assert starts == set(range(7))                       # offsets 0..70-64 all reachable
    np.testing.assert_array_equal(sampling.dense_indices(30, 8, 4, rng), [0, 4, 8, 12, 16, 20, 24, 28])
    np.testing.assert_array_equal(sampling.dense_indices(20, 8, 4, rng), [0, 4, 8, 12, 16, 19, 19, 19])


def test_dense_eval_clips_span_the_video():
    clips = [sampling.dense_eval_indices(250, 16, 4, 5, c) for c in range(5)]
    assert clips[0][0] == 0 and clips[-1][-1] == 246
    assert [int(c[0]) for c in clips] == [0, 46, 93, 140, 186]
    np.testing.assert_array_equal(sampling.dense_eval_indices(250, 16, 4, 1, 0), 93 + np.arange(16) * 4)


def test_segment_sampling_one_frame_per_segment():
    rng = np.random.default_rng(0)
    for n in (16, 17, 100, 250):
        idx = sampling.segment_indices(n, 16, rng)
        seg = np.floor(idx * 16 / n)
        np.testing.assert_array_equal(seg, np.arange(16))
    short = sampling.segment_indices(8, 16, rng)
    assert short.min() >= 0 and short.max() <= 7 and np.all(np.diff(short) >= 0)
    a, b = sampling.segment_eval_indices(160, 16, 2, 0), sampling.segment_eval_indices(160, 16, 2, 1)
    np.testing.assert_array_equal(a, np.arange(16) * 10 + 2)
    np.testing.assert_array_equal(b, np.arange(16) * 10 + 7)


def test_multi_scale_crop_boxes():
    rng = np.random.default_rng(0)
    allowed = {320, 280, 240, 211}
    for _ in range(200):
        top, left, h, w = transforms.multi_scale_crop_box(320, 568, 224, (1, .875, .75, .66), 1, rng)
        assert h in allowed and w in allowed and top + h <= 320 and left + w <= 568
        assert top % ((320 - h) // 4 or 1) == 0 and left % ((568 - w) // 4 or 1) == 0
    # a scale within 3 px of the output size snaps to it
    assert {transforms.multi_scale_crop_box(256, 256, 224, (0.875,), 0, rng)[2] for _ in range(5)} == {224}


def test_random_resized_crop_in_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = transforms.random_resized_crop_box(240, 320, (0.08, 1.0), (0.75, 4 / 3), rng)
        assert 0 <= top and top + h <= 240 and 0 <= left and left + w <= 320
        assert 0.08 * 240 * 320 * 0.9 <= h * w <= 240 * 320


def test_crop_resize_flip_and_eval_crops():
    clip = np.zeros((2, 100, 200, 3), np.uint8)
    clip[:, :, 100:] = 200                                    # right half bright
    out = transforms.crop_resize(clip, (0, 0, 100, 200), 50)
    assert out.shape == (2, 50, 50, 3) and out.dtype == np.uint8
    assert out[:, :, :20].max() == 0 and out[:, :, 30:].min() == 200
    np.testing.assert_array_equal(transforms.hflip(out)[:, :, ::-1], out)
    boxes = [transforms.eval_crop_box(100, 200, 100, 3, i) for i in range(3)]
    assert boxes == [(0, 0, 100, 100), (0, 50, 100, 100), (0, 100, 100, 100)]
    assert transforms.eval_crop_box(200, 100, 100, 3, 2) == (100, 0, 100, 100)
    assert transforms.eval_crop_box(100, 200, 100, 1, 0) == (0, 50, 100, 100)
    assert transforms.resize_short_side(clip, 50).shape == (2, 50, 100, 3)


def test_crop_resize_matches_a_float_antialiased_resize():
    """The uint8 fast path is the float bilinear antialiased resize, rounded (to within 1 grey level)."""
    import torch
    import torch.nn.functional as F

    clip = np.random.default_rng(0).integers(0, 256, (3, 90, 130, 3), dtype=np.uint8)
    for box, size in (((5, 10, 80, 100), 32), ((0, 0, 90, 130), (120, 140))):   # down- and upscaling
        top, left, h, w = box
        x = torch.from_numpy(clip[:, top:top + h, left:left + w].astype(np.float32)).permute(0, 3, 1, 2)
        out_hw = (size, size) if isinstance(size, int) else size
        ref = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False, antialias=True)
        ref = ref.round().clamp(0, 255).permute(0, 2, 3, 1).numpy()
        got = transforms.crop_resize(clip, box, size)
        assert got.dtype == np.uint8 and got.shape == (3, *out_hw, 3)
        assert np.abs(got.astype(np.float32) - ref).max() <= 1
