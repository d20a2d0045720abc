"""DAVIS-2017 / YouTube-VOS readers (sigma_ray/data/vos_sets.py) on tiny fixtures written in each layout."""
import json

import numpy as np
import pytest
from PIL import Image

from sigma_ray.data.vos_sets import MaskedSequence, davis_sequences, load_sequence, youtube_vos_sequences

H, W = 24, 32
# DAVIS-like palette: index 1 dark red, 2 dark green; read as RGB or luminance these would not be 1 and 2
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9)


def object_ids(t: int) -> np.ndarray:
    """Frame t's mask: object 1 in rows 4..11, columns 8+4t..15+4t; object 2 in rows 14..21, columns 0..7 (all
    even-aligned, so a factor-2 resize maps them exactly); the move with t makes a frame shift visible."""
    mask = np.zeros((H, W), np.uint8)
    mask[4:12, 8 + 4 * t:16 + 4 * t] = 1
    mask[14:22, 0:8] = 2
    return mask


def write_frame(folder, stem, t):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), (40 * t + 20, 100, 200 - 40 * t), np.uint8)).save(folder / f"{stem}.jpg",
                                                                                         quality=95)


def write_mask(folder, stem, t):
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(object_ids(t), mode="P")
    image.putpalette(PALETTE)
    image.save(folder / f"{stem}.png")


@pytest.fixture
def davis(tmp_path):
    root = tmp_path / "DAVIS"
    for seq, n in (("bike-packing", 4), ("blackswan", 3)):
        for t in range(n):
            write_frame(root / "JPEGImages" / "480p" / seq, f"{t:05d}", t)
            write_mask(root / "Annotations" / "480p" / seq, f"{t:05d}", t)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("blackswan\n\n")
    (root / "ImageSets" / "2017" / "train.txt").write_text("blackswan\nbike-packing\n")
    return root


@pytest.fixture
def ytvos(tmp_path):
    root = tmp_path / "ytvos"
    meta = {"videos": {"0b6f9105fc": {"objects": {"1": {"category": "cat", "frames": ["00000", "00005", "00010"]},
                                                  "2": {"category": "dog", "frames": ["00005", "00010"]}}},
                       "003234408d": {"objects": {"1": {"category": "owl", "frames": ["00000", "00005"]}}}}}
    for split in ("train", "valid"):
        (root / split).mkdir(parents=True)
        (root / split / "meta.json").write_text(json.dumps(meta))
        for vid, n in (("0b6f9105fc", 3), ("003234408d", 2)):
            for t in range(n):
                write_frame(root / split / "JPEGImages" / vid, f"{5 * t:05d}", t)
                # train: every frame annotated; valid: only the first frame (and frame 1 of the first video)
                if split == "train" or t == 0 or (vid == "0b6f9105fc" and t == 1):
                    write_mask(root / split / "Annotations" / vid, f"{5 * t:05d}", t)
    return root


def test_davis_listing(davis):
    (val,) = davis_sequences(davis)
    assert val.name == "blackswan"
    assert [p.name for p in val.frames] == ["00000.jpg", "00001.jpg", "00002.jpg"]
    assert [p.name for p in val.masks] == ["00000.png", "00001.png", "00002.png"]
    train = davis_sequences(davis, split="train")
    assert [s.name for s in train] == ["bike-packing", "blackswan"]   # sorted
    assert len(train[0].frames) == 4 and all(m is not None for m in train[0].masks)

    with pytest.raises(ValueError, match=r"ImageSets/2017/test-dev\.txt: sequence list does not exist"):
        davis_sequences(davis, split="test-dev")
    with pytest.raises(ValueError, match=r"JPEGImages/1080p/blackswan: folder does not exist"):
        davis_sequences(davis, resolution="1080p")
    (davis / "Annotations" / "480p" / "blackswan" / "00007.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"blackswan: annotations 00007 have no frame"):
        davis_sequences(davis)


def test_davis_load_exact_ids(davis):
    (seq,) = davis_sequences(davis)
    # size 12: 24x32 -> 12x16 (factor 2), centre crop keeps columns 2..13 of the resized mask
    frames, masks = load_sequence(seq, [2, 0], 12)
    assert frames.shape == (2, 12, 12, 3) and frames.dtype == np.uint8
    assert masks.shape == (2, 12, 12) and masks.dtype == np.uint8
    for i, t in enumerate([2, 0]):
        expected = object_ids(t)[1::2, 1::2][:, 2:14]   # nearest at factor 2 samples the odd rows / columns
        np.testing.assert_array_equal(masks[i], expected)
        assert np.abs(frames[i].astype(int) - (40 * t + 20, 100, 200 - 40 * t)).max() <= 3
    # frame 2's object 1 sits in resized columns 8..11, i.e. crop columns 6..9, rows 2..5
    assert (masks[0, 2:6, 6:10] == 1).all() and (masks[0, 2:6, 5] == 0).all() and masks[0, 1, 6] == 0
    assert (masks[1, 7:11, 0:2] == 2).all()

    # size 48: factor 2 up (48x64), crop columns 8..55: each source pixel becomes a 2x2 block
    _, up = load_sequence(seq, [1], 48)
    np.testing.assert_array_equal(up[0], np.repeat(np.repeat(object_ids(1), 2, 0), 2, 1)[:, 8:56])


def test_masks_never_blended(davis):
    (seq,) = davis_sequences(davis)
    for size in (7, 17, 30):   # scales that put output pixels between source pixels
        frames, masks = load_sequence(seq, [0, 1, 2], size)
        assert frames.shape == (3, size, size, 3)
        assert set(np.unique(masks)) == {0, 1, 2}


def test_youtube_vos(ytvos):
    train = youtube_vos_sequences(ytvos)
    assert [s.name for s in train] == ["003234408d", "0b6f9105fc"]
    assert [p.name for p in train[1].frames] == ["00000.jpg", "00005.jpg", "00010.jpg"]
    assert all(m is not None for s in train for m in s.masks)

    valid = youtube_vos_sequences(ytvos, split="valid")
    assert [[None if m is None else m.name for m in s.masks] for s in valid] == [
        ["00000.png", None], ["00000.png", "00005.png", None]]
    _, masks = load_sequence(valid[1], [1, 0], 12)
    np.testing.assert_array_equal(masks[0], object_ids(1)[1::2, 1::2][:, 2:14])
    np.testing.assert_array_equal(masks[1], object_ids(0)[1::2, 1::2][:, 2:14])
    with pytest.raises(ValueError, match=r"0b6f9105fc: frame 2 \(00010\.jpg\) has no annotation"):
        load_sequence(valid[1], [0, 2], 12)
    with pytest.raises(ValueError, match=r"frame index 3 is not in \[0, 3\)"):
        load_sequence(valid[1], [3], 12)

    with pytest.raises(ValueError, match=r"test: folder does not exist"):
        youtube_vos_sequences(ytvos, split="test")
    (ytvos / "valid" / "meta.json").write_text(json.dumps({"videos": {"ffffffffff": {"objects": {}}}}))
    with pytest.raises(ValueError, match=r"JPEGImages/ffffffffff: folder does not exist"):
        youtube_vos_sequences(ytvos, split="valid")
    (ytvos / "valid" / "meta.json").write_text("{}")
    with pytest.raises(ValueError, match=r"meta\.json: no 'videos' mapping"):
        youtube_vos_sequences(ytvos, split="valid")
    (ytvos / "valid" / "meta.json").unlink()
    with pytest.raises(ValueError, match=r"meta\.json: meta file does not exist"):
        youtube_vos_sequences(ytvos, split="valid")


def test_bad_masks(tmp_path, davis):
    (seq,) = davis_sequences(davis)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(rgb)
    with pytest.raises(ValueError, match=r"rgb\.png: mode RGB, expected a palette"):
        load_sequence(MaskedSequence("s", seq.frames[:1], (rgb,)), [0], 12)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((H // 2, W // 2), np.uint8), mode="P").save(small)
    with pytest.raises(ValueError, match=r"small\.png: size \(16, 12\) differs from its frame's \(32, 24\)"):
        load_sequence(MaskedSequence("s", seq.frames[:1], (small,)), [0], 12)
