"""Feature extraction: export round trip, eval mode, multi-view averaging against a plain per-view loop."""
from collections import defaultdict

import pytest
import torch

from sigma_ray.data.annotations import load_split
from sigma_ray.data.config import DataConfig
from sigma_ray.data.iterator import ClipIterator
from sigma_ray.eval.features import (Features, average_by_video, eval_batches, extract_features, features_for_split,
                                     pool_features)
from sigma_ray.eval.metrics import single_thread
from sigma_ray.method.vit import ModelConfig, VideoEncoder
from sigma_ray.runs.export import load_encoder, save_encoder

MODEL = ModelConfig(size="tiny", num_frames=8, img_size=64, drop_path=0.3)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors on a shared 2-core machine: one intra-op thread is several times faster than two."""
    with single_thread():
        yield


@pytest.fixture(scope="module")
def data_config(tiny_synthetic) -> DataConfig:
    """The session's tiny synthetic set (4 classes, 6 train / 1 val video each, 16 frames): clips of 8 frames at
    rate 1, so the two temporal test clips of a video differ (the 3 crops of a square video do not)."""
    return DataConfig(root=tiny_synthetic["root"], train_list=tiny_synthetic["train"],
                      val_list=tiny_synthetic["val"], num_classes=4, num_frames=8, sampling_rate=1, input_size=64,
                      decode_short_side=64, tubelet=2, patch=16, batch_size=4, test_num_clips=2, test_num_crops=3)


@pytest.fixture(scope="module")
def encoder() -> VideoEncoder:
    torch.manual_seed(0)
    return VideoEncoder(MODEL)


@pytest.fixture(scope="module")
def test_batches(data_config) -> list[dict]:
    """The multi-view test split, decoded once: 4 videos x 6 views in batches of 4 (views of a video straddle
    batches)."""
    return list(ClipIterator(data_config, "test", as_torch=True))


def test_pool_features_shape_and_no_grad(encoder, test_batches):
    feats = pool_features(encoder.eval(), test_batches[0]["clips"], "cpu")
    assert feats.shape == (4, 192) and feats.dtype == torch.float32 and not feats.requires_grad


def test_export_round_trip_same_features(encoder, data_config, tmp_path):
    path = save_encoder(encoder, MODEL, tmp_path / "encoder.pt", meta={"step": 3})
    loaded = load_encoder(path)
    a = features_for_split(encoder, data_config, "val")
    b = features_for_split(loaded, data_config, "val")
    assert torch.equal(a.feats, b.feats) and torch.equal(a.labels, b.labels) and len(a) == 4


def test_an_export_from_before_pos_embed_loads_with_the_3d_table(tmp_path):
    # Exports written before model.pos_embed existed hold no such key; they were trained with the 3-D table.
    cfg = ModelConfig(size="tiny", num_frames=8, img_size=64, pos_embed="sincos_3d")
    torch.manual_seed(0)
    path = save_encoder(VideoEncoder(cfg), cfg, tmp_path / "old.pt")
    blob = torch.load(path, weights_only=True)
    del blob["model_config"]["pos_embed"]
    torch.save(blob, path)
    assert load_encoder(path).config.pos_embed == "sincos_3d"


def test_eval_mode_used_and_mode_restored(encoder, test_batches):
    # drop path 0.3: in train mode two passes differ; extraction must switch it off (and switch back after)
    encoder.train()
    torch.manual_seed(1)
    a = extract_features(encoder, test_batches[:2])
    b = extract_features(encoder, test_batches[:2])
    assert encoder.training
    assert torch.equal(a.feats, b.feats)
    with torch.no_grad():
        noisy = pool_features(encoder, test_batches[0]["clips"], "cpu")   # still train mode: drop path is on
    assert not torch.allclose(noisy, pool_features(encoder.eval(), test_batches[0]["clips"], "cpu"))


def test_multi_view_average_matches_plain_loop(encoder, data_config, test_batches):
    views = data_config.views("test")
    assert views == 6
    encoder.eval()
    per_video, labels = defaultdict(list), {}
    for batch in test_batches:
        feats = pool_features(encoder, batch["clips"], "cpu")
        for f, vid, lab in zip(feats, batch["video_ids"].tolist(), batch["labels"].tolist()):
            per_video[vid].append(f)
            labels[vid] = lab
    out = extract_features(encoder, test_batches)
    records = load_split(data_config, "test")
    assert out.feats.shape == (len(records), 192)
    assert out.video_ids.tolist() == sorted(per_video) == [r.video_id for r in records]
    assert out.labels.tolist() == [r.label for r in records]
    for row, vid in zip(out.feats, out.video_ids.tolist()):
        assert len(per_video[vid]) == views
        assert not torch.allclose(per_video[vid][0], per_video[vid][-1])   # the views differ: averaging matters
        assert torch.allclose(row, torch.stack(per_video[vid]).mean(0), atol=1e-6)
    # views are aggregated by id, not by position: reversed batch order gives the same features
    rev = extract_features(encoder, [{k: v.flip(0) for k, v in b.items()} for b in reversed(test_batches)])
    assert torch.allclose(rev.feats, out.feats, atol=1e-6)
    # and multi-view features are not the single centred view's
    assert not torch.allclose(features_for_split(encoder, data_config, "val").feats, out.feats)


def test_train_split_uses_deterministic_views(data_config):
    first = next(iter(eval_batches(data_config, "train")))
    again = next(iter(eval_batches(data_config, "train")))
    assert torch.equal(first["clips"], again["clips"]) and first["video_ids"].tolist() == [0, 1, 2, 3]
    # augment=True is the random-crop train split (shuffled rows)
    random = next(iter(eval_batches(data_config, "train", augment=True, batch_size=24)))
    assert sorted(random["video_ids"].tolist()) == list(range(24))


def test_average_by_video_rejects_mixed_labels():
    with pytest.raises(ValueError, match="video 7"):
        average_by_video(torch.zeros(2, 3), torch.tensor([7, 7]), torch.tensor([0, 1]))


def test_features_shape_check():
    with pytest.raises(ValueError):
        Features(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long))


@pytest.mark.slow
def test_ray_pipeline_gives_the_same_features(ray_session, encoder, data_config):
    plain = features_for_split(encoder, data_config, "test")
    on_ray = features_for_split(encoder, data_config, "test", use_ray=True)
    assert torch.equal(plain.video_ids, on_ray.video_ids)
    assert torch.allclose(plain.feats, on_ray.feats, atol=1e-5)
