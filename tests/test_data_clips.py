"""The per-video function, the plain iterator, skip statistics and the skip bound; config validation."""
import numpy as np
import pytest

from sigma_ray.data.annotations import VideoRecord
from sigma_ray.data.clips import ClipMaker, Row
from sigma_ray.data.config import DataConfig
from sigma_ray.data.iterator import ClipIterator
from sigma_ray.data.stats import SkipBoundError, SkipStats
from sigma_ray.infra.checks import ConfigError
from sigma_ray.infra.config import from_dict

SMALL = dict(num_frames=8, sampling_rate=2, input_size=64, decode_short_side=96, batch_size=3)
BAD = ("empty.mp4", "not_a_video.mp4", "truncated.mp4", "half.mp4")
GOOD = ("phone", "vp9", "wide")


def records(test_videos, bad=()):
    """The three good test videos (labels 0, 1, 2) then the named broken ones."""
    paths = [test_videos[n] for n in GOOD] + [test_videos[n] for n in bad]
    return [VideoRecord(str(p), i % 3, i) for i, p in enumerate(paths)]


def test_iterator_batches_shapes_dtypes_and_seeding(test_videos):
    cfg = DataConfig(**SMALL, seed=3)
    recs = records(test_videos)
    batches = list(ClipIterator(cfg, "train", epoch=0, records=recs))
    assert [len(b["labels"]) for b in batches] == [3]
    b = batches[0]
    assert b["clips"].shape == (3, 8, 64, 64, 3) and b["clips"].dtype == np.uint8
    assert b["masks"].shape == (3, 4 * 4 * 4) and b["masks"].dtype == bool
    assert (b["masks"].sum(1) == 4 * int(0.9 * 16)).all()
    assert b["labels"].dtype == np.int64 and sorted(b["video_ids"].tolist()) == [0, 1, 2]
    again = next(iter(ClipIterator(cfg, "train", epoch=0, records=recs, as_torch=True)))
    for k in b:
        np.testing.assert_array_equal(again[k].numpy(), b[k])
    other = next(iter(ClipIterator(cfg, "train", epoch=1, records=recs)))
    by_id = lambda x: x["clips"][np.argsort(x["video_ids"])]
    assert not np.array_equal(by_id(other), by_id(b))          # a new epoch draws new windows/crops


def test_sample_depends_only_on_seed_epoch_and_id(test_videos):
    cfg = DataConfig(**SMALL)
    row = Row(str(test_videos["wide"]), 1, 7, 0)
    a, b = ClipMaker(cfg, "train")(row, 2), ClipMaker(cfg, "train")(row, 2)
    np.testing.assert_array_equal(a.clip, b.clip)
    np.testing.assert_array_equal(a.mask, b.mask)
    c = ClipMaker(cfg, "train")(row._replace(video_id=8), 2)
    assert not np.array_equal(a.mask, c.mask)


def test_test_split_views(test_videos):
    cfg = DataConfig(**SMALL, test_num_clips=2, test_num_crops=3)
    recs = records(test_videos)[2:]                             # wide: 640x360, 3 crops left/centre/right
    (b, *rest) = list(ClipIterator(cfg, "test", records=recs))
    views = np.concatenate([b["views"]] + [r["views"] for r in rest])
    assert sorted(views.tolist()) == list(range(6))
    clips = np.concatenate([b["clips"]] + [r["clips"] for r in rest])
    assert len({c.tobytes() for c in clips}) == 6


def test_bad_files_skipped_and_counted_with_reason(test_videos):
    cfg = DataConfig(**SMALL, max_skip_fraction=1.0)
    it = ClipIterator(cfg, "train", records=records(test_videos, BAD))
    ids = sorted(i for b in it for i in b["video_ids"].tolist())
    assert ids == [0, 1, 2]                                     # never replaced by another video
    assert it.stats.seen == 7
    reasons = dict(it.stats.skipped)
    assert sorted(reasons) == sorted(str(test_videos[n]) for n in BAD)
    assert "shorter than claimed" in reasons[str(test_videos["half.mp4"])]
    assert all("cannot open" in reasons[str(test_videos[n])] for n in BAD[:3])


def test_skip_bound(test_videos):
    cfg = DataConfig(**SMALL, max_skip_fraction=0.05, skip_min_rows=20)
    with pytest.raises(SkipBoundError, match=r"4 of 7 videos skipped .*max_skip_fraction 5.0%"):
        list(ClipIterator(cfg, "train", records=records(test_videos, BAD)))   # final check at the end
    stats = SkipStats()
    stats.add(19, [("a", "x")] * 2)
    stats.check(0.05, 20)                                       # below min rows: deferred
    stats.add(1)
    with pytest.raises(SkipBoundError):
        stats.check(0.05, 20)
    stats.add(30)
    stats.check(0.05, 20)                                       # 2 of 50 = 4%


@pytest.mark.parametrize("bad,field", [
    ({"num_frames": 0}, "num_frames"), ({"sampling": "sparse"}, "sampling"),
    ({"input_size": 100}, "input_size"), ({"max_skip_fraction": 1.5}, "max_skip_fraction"),
    ({"num_actors_min": 3, "num_actors_max": 2}, "num_actors_max"), ({"actor_num_cpus": 0}, "actor_num_cpus"),
    ({"scales": [1.2]}, "scales"), ({"test_num_crops": 2}, "test_num_crops"), ({"mask": {"ratio": 1.0}}, "ratio"),
    ({"bogus": 1}, "bogus"),
])
def test_config_validation_names_field(bad, field):
    with pytest.raises(ConfigError, match=field):
        from_dict(DataConfig, bad)
    assert DataConfig().grid == (8, 14, 14)


def test_clips_cut_from_cached_whole_videos_equal_clips_decoded_alone(test_videos):
    """The decode cache (irregular key frames, a 29.97 fps clip, VP9, the broken files) changes no clip, no mask
    and no error, whether every video fits its budget or only the first."""
    import dataclasses

    from sigma_ray.data import frame_cache
    from sigma_ray.data.clips import epoch_rows
    from sigma_ray.data.decode import VideoDecodeError

    recs = records(test_videos, BAD)
    plain = DataConfig(**SMALL, seed=3)

    def make(maker, row, epoch):
        try:
            return maker(row, epoch)
        except VideoDecodeError as e:
            return e.reason

    for budget, videos in ((1024.0, len(GOOD)), (1e-3, 1)):
        frame_cache.clear()
        cached = dataclasses.replace(plain, decode_cache_mb=budget)
        for split, epochs in (("train", (0, 1)), ("val", (0,))):
            a, b = ClipMaker(plain, split), ClipMaker(cached, split)
            for epoch in epochs:
                for row in epoch_rows(recs, plain, split, epoch):
                    x, y = make(a, row, epoch), make(b, row, epoch)
                    if isinstance(x, str):
                        assert x == y, row.path
                    else:
                        np.testing.assert_array_equal(x.clip, y.clip, err_msg=row.path)
                        np.testing.assert_array_equal(x.mask, y.mask, err_msg=row.path)
        assert len(frame_cache._videos) == videos                     # the broken files are never cached
    frame_cache.clear()
    assert frame_cache.cached_bytes() == 0
