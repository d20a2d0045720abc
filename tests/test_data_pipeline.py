"""The Ray Data pipeline against the plain iterator, its skip statistics and its skip bound (real Ray)."""
import numpy as np
import pytest

from sigma_ray.data.config import DataConfig
from sigma_ray.data.iterator import ClipIterator
from sigma_ray.data.pipeline import ClipPipeline, build_dataset

from test_data_clips import BAD, SMALL, records


def by_id(batches):
    out = {}
    for b in batches:
        for i, vid in enumerate(np.asarray(b["video_ids"]).tolist()):
            out[vid] = {k: np.asarray(v[i]) for k, v in b.items()}
    return out


def test_ray_matches_plain_iterator_and_skips_bad_files(ray_session, test_videos):
    cfg = DataConfig(**{**SMALL, "batch_size": 2}, seed=5, max_skip_fraction=1.0, num_actors_min=1, num_actors_max=2,
                     actor_num_cpus=0.5)
    recs = records(test_videos, BAD)
    pipe = ClipPipeline(cfg, "train", recs)
    batches = list(pipe.iter_torch_batches(epoch=1))
    b = batches[0]
    assert b["clips"].dtype.is_floating_point is False and str(b["clips"].dtype) == "torch.uint8"
    assert str(b["masks"].dtype) == "torch.bool" and str(b["labels"].dtype) == "torch.int64"
    assert tuple(b["clips"].shape[1:]) == (8, 64, 64, 3)
    ray_samples = by_id(batches)
    ref = by_id(ClipIterator(cfg, "train", epoch=1, records=recs))
    assert sorted(ray_samples) == sorted(ref) == [0, 1, 2]
    for vid in ref:
        for k in ("clips", "masks", "labels"):
            np.testing.assert_array_equal(ray_samples[vid][k], ref[vid][k], err_msg=f"{vid} {k}")
    stats = pipe.stats(1)
    assert stats.seen == 7
    assert sorted(p for p, _ in stats.skipped) == sorted(str(test_videos[n]) for n in BAD)
    assert pipe.stats(0).seen == 0                                # counted per epoch


def test_ray_skip_bound_fails_the_run(ray_session, test_videos):
    cfg = DataConfig(**{**SMALL, "batch_size": 7}, max_skip_fraction=0.05, skip_min_rows=5, actor_num_cpus=0.5,
                     num_actors_max=1)
    ds = build_dataset(cfg, "train", 0, records(test_videos, BAD))
    with pytest.raises(Exception, match="SkipBoundError|videos skipped") as e:
        ds.take_all()
    assert "max_skip_fraction" in str(e.value)
