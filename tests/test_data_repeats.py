"""Repeated sampling: one decoded window -> num_repeats clips with their own crops and masks, counted as samples;
and the pipeline's produced-versus-consumed statistics (real videos, real PyAV, real Ray)."""
import numpy as np
import pytest

from sigma_ray.data import clips as clips_module
from sigma_ray.data.clips import ClipMaker, Row
from sigma_ray.data.config import DataConfig
from sigma_ray.data.decode import VideoReader
from sigma_ray.data.iterator import ClipIterator
from sigma_ray.data.pipeline import ClipPipeline
from sigma_ray.data.stats import ConsumerMeter, PipelineStats
from sigma_ray.infra.checks import ConfigError
from sigma_ray.infra.config import from_dict

from test_data_clips import SMALL, records


def test_repeats_cut_one_window_into_distinct_crops_and_masks(test_videos, monkeypatch):
    cfg = DataConfig(**SMALL, seed=11, num_repeats=4)
    row = Row(str(test_videos["wide"]), 2, 7, 0)
    maker = ClipMaker(cfg, "train")
    decodes, crops = [], []
    frames_fn, crop_fn = VideoReader.frames, clips_module.transforms.crop_resize
    monkeypatch.setattr(VideoReader, "frames", lambda self, *a, **k: decodes.append(1) or frames_fn(self, *a, **k))
    monkeypatch.setattr(clips_module.transforms, "crop_resize",
                        lambda frames, box, size: crops.append((frames, box)) or crop_fn(frames, box, size))
    samples = maker.make(row, epoch=3)
    assert len(samples) == 4 and len(decodes) == 1                      # one decode for four samples
    assert all(f is crops[0][0] for f, _ in crops)                        # every crop is cut from that window
    assert len({box for _, box in crops}) == 4                            # each with its own crop box
    assert [s.view for s in samples] == [0, 1, 2, 3]
    assert {(s.label, s.video_id) for s in samples} == {(2, 7)}
    for i in range(4):
        for j in range(i):
            assert not np.array_equal(samples[i].mask, samples[j].mask)
            assert not np.array_equal(samples[i].clip, samples[j].clip)
    assert all(s.clip.shape == (8, 64, 64, 3) and s.mask.sum() == 4 * int(0.9 * 16) for s in samples)
    # repeat 0 is the sample the paper's setting (num_repeats=1) makes; repeats are deterministic
    single = ClipMaker(DataConfig(**SMALL, seed=11), "train")(row, epoch=3)
    np.testing.assert_array_equal(samples[0].clip, single.clip)
    np.testing.assert_array_equal(samples[0].mask, single.mask)
    again = ClipMaker(cfg, "train").make(row, epoch=3)
    for a, b in zip(samples, again):
        np.testing.assert_array_equal(a.clip, b.clip)
        np.testing.assert_array_equal(a.mask, b.mask)


def test_repeats_config_and_eval_splits(test_videos):
    assert DataConfig().num_repeats == 1                                  # the paper's setting by default
    with pytest.raises(ConfigError, match="num_repeats"):
        from_dict(DataConfig, {"num_repeats": 0}).validate()
    cfg = DataConfig(**SMALL, num_repeats=3)
    assert cfg.samples_per_video("train") == 3 and cfg.samples_per_video("val") == 1
    assert cfg.samples_per_video("test") == cfg.test_num_clips * cfg.test_num_crops
    row = Row(str(test_videos["phone"]), 0, 0, 0)
    assert len(ClipMaker(cfg, "val").make(row)) == 1                      # eval views are not repeated


def test_iterator_counts_each_repeat_as_a_sample(test_videos):
    cfg = DataConfig(**{**SMALL, "batch_size": 4}, num_repeats=3, max_skip_fraction=1.0)
    recs = records(test_videos, ("empty.mp4",))                            # 3 good videos + 1 bad
    it = ClipIterator(cfg, "train", epoch=0, records=recs)
    assert it.num_samples == 12 and len(it) == 3
    batches = list(it)
    assert [len(b["labels"]) for b in batches] == [4, 4, 1]
    ids = [(v, r) for b in batches for v, r in zip(b["video_ids"].tolist(), b["views"].tolist())]
    assert sorted(ids) == [(v, r) for v in range(3) for r in range(3)]     # 3 samples per good video
    assert it.stats.seen == 4 and len(it.stats.skipped) == 1               # skips still count videos


def test_pipeline_repeats_match_iterator_and_report_throughput(ray_session, test_videos):
    cfg = DataConfig(**{**SMALL, "batch_size": 4}, seed=2, num_repeats=2, max_skip_fraction=1.0,
                     num_actors_min=1, num_actors_max=1, actor_num_cpus=0.5)
    recs = records(test_videos, ("not_a_video.mp4",))
    pipe = ClipPipeline(cfg, "train", recs)
    assert pipe.num_samples(0) == 8
    got = {}
    for b in pipe.iter_torch_batches(epoch=0):
        assert len(b["labels"]) <= 4
        for i, (v, r) in enumerate(zip(b["video_ids"].tolist(), b["views"].tolist())):
            got[(v, r)] = (b["clips"][i].numpy(), b["masks"][i].numpy())
    ref = {(v, r): (c, m) for b in ClipIterator(cfg, "train", epoch=0, records=recs)
           for v, r, c, m in zip(b["video_ids"].tolist(), b["views"].tolist(), b["clips"], b["masks"])}
    assert sorted(got) == sorted(ref) == [(v, r) for v in range(3) for r in range(2)]
    for k in ref:
        np.testing.assert_array_equal(got[k][0], ref[k][0])
        np.testing.assert_array_equal(got[k][1], ref[k][1])
    stats = pipe.stats(0)
    assert isinstance(stats, PipelineStats)
    assert stats.seen == 4 and len(stats.skipped) == 1
    assert stats.produced == 6 and stats.consumed == 6 and list(stats.consumers) == ["driver"]
    assert stats.produced_per_s > 0 and stats.clips_per_actor_s > 0 and stats.consumed_per_s > 0
    assert 0 < stats.wait_s and 0 < stats.wait_fraction <= 1
    assert "produced 6 clips" in stats.summary()


def test_consumer_meter_measures_waiting():
    import time

    def slow():
        for _ in range(3):
            time.sleep(0.05)
            yield {"video_ids": np.zeros(2)}

    meter = ConsumerMeter(None)
    for _ in meter.wrap(slow()):
        time.sleep(0.05)                                                  # the trainer's own work
    # sleep() waits at least as long as asked, so these bounds hold on any machine, however busy
    assert meter.clips == 6
    assert meter.wait_s >= 0.15                                           # three waits of 0.05 s in next()
    assert meter.wall_s >= meter.wait_s + 0.10                            # plus two consumer sleeps before the last
