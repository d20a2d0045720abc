"""Fine-tuning: lr-decay groups per layer, drop path, frame-consistent augmentation, a few steps end to end."""
import math

import pytest
import torch
from timm.layers import DropPath

from sigma_ray.data.config import DataConfig
from sigma_ray.eval.config import FinetuneConfig
from sigma_ray.eval.finetune import (ClipAugment, VideoClassifier, finetune, layer_id, make_mixup, mix_clips,
                                     param_groups, with_drop_path)
from sigma_ray.infra.schedule import warmup_cosine
from sigma_ray.method.vit import ModelConfig

MODEL = ModelConfig(size="tiny", num_frames=8, img_size=64)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoder(tiny_encoder):
    return tiny_encoder


def test_layer_decay_groups(encoder):
    model = VideoClassifier(encoder, num_classes=5)
    depth = len(model.encoder.blocks)                # 6 for tiny
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.75)
    names = [n for g in groups for n in g["names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())     # every parameter exactly once
    expected_layer = {"encoder.patch_embed.weight": 0, "encoder.blocks.0.attn.qkv.weight": 1,
                      "encoder.blocks.5.mlp.fc2.weight": 6, "encoder.norm.weight": 7, "head.weight": 7,
                      "fc_norm.bias": 7}
    for g in groups:
        assert g["lr_scale"] == pytest.approx(0.75 ** (depth + 1 - g["layer"]))
        for n, p in zip(g["names"], g["params"]):
            assert g["layer"] == layer_id(n, depth)
            assert g["weight_decay"] == (0.05 if p.ndim > 1 else 0.0)
            if n in expected_layer:
                assert g["layer"] == expected_layer[n], n
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["head.weight"] == 1.0
    assert scale["encoder.blocks.5.attn.proj.weight"] == pytest.approx(0.75)
    assert scale["encoder.blocks.0.norm1.weight"] == pytest.approx(0.75 ** 6)
    assert scale["encoder.patch_embed.bias"] == pytest.approx(0.75 ** 7)


def test_with_drop_path_copies_weights(encoder):
    copy = with_drop_path(encoder, 0.1)
    rates = [b.drop_path1.drop_prob if isinstance(b.drop_path1, DropPath) else 0.0 for b in copy.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1) and rates == sorted(rates)
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), copy.state_dict().values()))
    assert encoder.config.drop_path == 0.0        # the original is untouched


def test_lr_schedule():
    assert warmup_cosine(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, 1.0, 0.01) == pytest.approx(0.01)


def test_augmentation_is_the_same_for_every_frame():
    # a clip of 8 identical frames stays a clip of identical frames through RandAugment, erasing and cutmix
    torch.manual_seed(0)
    frame = torch.randint(0, 256, (1, 1, 64, 64, 3), dtype=torch.uint8)
    clips = frame.expand(4, 8, 64, 64, 3).clone()
    config = FinetuneConfig(random_erasing=1.0)
    x = ClipAugment(config)(clips)
    assert x.shape == (4, 3, 8, 64, 64) and x.dtype == torch.float32
    assert torch.equal(x, x[:, :, :1].expand_as(x))
    assert not torch.equal(x[0], x[1])                 # but clips get their own draws
    mixup = make_mixup(FinetuneConfig(mixup=0.0, cutmix=1.0), num_classes=3)
    mixed, targets = mix_clips(mixup, x, torch.tensor([0, 1, 2, 0]))
    assert torch.equal(mixed, mixed[:, :, :1].expand_as(mixed))
    assert targets.shape == (4, 3) and torch.allclose(targets.sum(1), torch.ones(4))


def test_finetune_few_steps_multi_view(encoder, tiny_synthetic):
    data = DataConfig(root=tiny_synthetic["root"], train_list=tiny_synthetic["train"],
                      val_list=tiny_synthetic["val"], num_classes=4, num_frames=8, sampling_rate=2, input_size=64,
                      decode_short_side=64, batch_size=4, test_num_clips=2, test_num_crops=3)
    config = FinetuneConfig(epochs=2, warmup_epochs=1, steps_per_epoch=2, base_lr=0.05, test_split="test")
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    out = finetune(encoder, config, data, num_classes=4, seed=0)
    assert out["steps"] == 4 and len(out["history"]) == 2
    assert all(math.isfinite(h["loss"]) and h["loss"] > 0 for h in out["history"])
    assert len(out["predictions"]) == len(out["targets"]) == 4      # one prediction per video, 6 views each
    assert 0.0 <= out["finetune_top1"] <= out["finetune_top5"] <= 100.0
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())   # fine-tuned a copy


def test_finetune_starts_from_an_imported_classifier_head(encoder, tiny_synthetic):
    # an imported fine-tuned classifier whose head says "class 2" for everything: kept when the class count fits
    data = DataConfig(root=tiny_synthetic["root"], train_list=tiny_synthetic["train"],
                      val_list=tiny_synthetic["val"], num_classes=4, num_frames=8, sampling_rate=2, input_size=64,
                      decode_short_side=64, batch_size=4)
    imported = with_drop_path(encoder, 0.0)
    dim = encoder.embed_dim
    imported.classifier_head = {"fc_norm.weight": torch.ones(dim), "fc_norm.bias": torch.zeros(dim),
                                "head.weight": torch.zeros(4, dim), "head.bias": torch.tensor([0.0, 0.0, 50.0, 0.0])}
    config = FinetuneConfig(epochs=1, warmup_epochs=0, steps_per_epoch=1, base_lr=1e-9, test_split="test")
    assert finetune(imported, config, data, num_classes=4, seed=0)["predictions"] == [2, 2, 2, 2]
