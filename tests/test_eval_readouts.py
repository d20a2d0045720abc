"""The readouts that keep time, and the factor probes: each reads what mean pooling cannot, and the layouts are
the tokens' (time-major)."""
import json

import torch

from sigma_ray.eval.features import eval_batches
from sigma_ray.eval.linear import linear_probe
from sigma_ray.eval.readouts import (Tokens, attentive_probe, extract_tokens, factor_features, frozen_probes,
                                     read_factors)


def ordered_tokens(n: int, seed: int, grid=(4, 2, 2), dim: int = 8) -> Tokens:
    """Class 0: a bump in channel 0 in the first time slice, class 1: in the last. Every clip holds the same
    values in another order, so the mean over all tokens is the same for both classes."""
    g = torch.Generator().manual_seed(seed)
    t, h, w = grid
    labels = torch.randint(0, 2, (n,), generator=g)
    tokens = 0.1 * torch.randn(n, t, h * w, dim, generator=g)
    first = labels == 0
    tokens[first, 0, :, 0] += 3.0
    tokens[~first, -1, :, 0] += 3.0
    return Tokens(tokens.flatten(1, 2), grid, labels, torch.arange(n))


def test_time_slices_keep_the_order_that_mean_pooling_averages_away(one_thread):
    train, val = ordered_tokens(200, 0), ordered_tokens(100, 1)
    assert train.time_slices().feats.shape == (200, 4 * 8)
    # slice s of a clip is the mean of its tokens s*h*w .. (s+1)*h*w - 1 (time-major)
    assert torch.allclose(train.time_slices().feats[:, 8:16], train.tokens[:, 4:8].mean(dim=1))
    pooled = linear_probe(train.mean_pooled(), val.mean_pooled(), 2, epochs=30)["linear_top1"]
    kept = linear_probe(train.time_slices(), val.time_slices(), 2, epochs=30)["linear_top1"]
    assert pooled < 70 and kept > 95, (pooled, kept)


def test_the_attentive_probe_reads_where_a_token_is(one_thread):
    """Class = which one of 16 positions holds a marked token (the marked value is the same for all classes):
    only a readout that attends to positions can tell; the tokens carry their position as in a ViT."""
    def clips(n, seed):
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, 4, (n,), generator=g)
        position = torch.randn(16, 16, generator=torch.Generator().manual_seed(99))   # a fixed position table
        tokens = position.expand(n, -1, -1) + 0.1 * torch.randn(n, 16, 16, generator=g)
        tokens[torch.arange(n), labels * 4, 0] += 4.0        # the marked token sits at position 4 * label
        return Tokens(tokens, (1, 4, 4), labels, torch.arange(n))

    train, val = clips(400, 0), clips(200, 1)
    pooled = linear_probe(train.mean_pooled(), val.mean_pooled(), 4, epochs=30)["linear_top1"]
    out = attentive_probe(train, val, 4, epochs=60, seed=0)
    assert pooled < 50 and out["attentive_top1"] > 95, (pooled, out)
    assert attentive_probe(train, val, 4, epochs=60, seed=0) == out          # deterministic in the seed


def test_the_attentive_probe_standardizes_a_large_constant_away(one_thread):
    """Tokens that are one large constant vector plus small informative variations (as a pretrained encoder's
    can be) are read as well as the variations alone: here the time order, with a position table in the tokens."""
    position = torch.randn(16, 8, generator=torch.Generator().manual_seed(7))
    train, val = ordered_tokens(300, 0), ordered_tokens(150, 1)
    offset = 50.0 * torch.randn(8, generator=torch.Generator().manual_seed(5))
    plain = [Tokens(x.tokens + position, x.grid, x.labels, x.video_ids) for x in (train, val)]
    shifted = [Tokens(x.tokens * 0.05 + offset, x.grid, x.labels, x.video_ids) for x in plain]
    assert attentive_probe(*plain, 2, epochs=60)["attentive_top1"] > 95
    assert attentive_probe(*shifted, 2, epochs=60)["attentive_top1"] > 95


def test_factor_labels_and_factors_file(tmp_path):
    train = ordered_tokens(10, 0).mean_pooled()
    relabelled = factor_features(train, [1, 0])
    assert torch.equal(relabelled.labels, 1 - train.labels) and relabelled.feats is train.feats
    assert read_factors(tmp_path) == {} and read_factors(None) == {}
    (tmp_path / "factors.json").write_text(json.dumps(
        {"factors": {"speed": {"values": ["slow", "fast"], "of_class": [0, 1, 0, 1]}}}))
    assert read_factors(tmp_path) == {"speed": [0, 1, 0, 1]}


def test_tokens_and_probes_of_an_encoder_on_real_clips(tiny_synthetic, tiny_encoder, one_thread):
    from sigma_ray.data.config import DataConfig
    from sigma_ray.eval.features import extract_features
    from sigma_ray.infra.config import from_dict

    data = from_dict(DataConfig, {"train_list": tiny_synthetic["train"], "val_list": tiny_synthetic["val"],
                                  "root": tiny_synthetic["root"], "num_frames": 8, "sampling_rate": 2,
                                  "input_size": 64, "decode_short_side": 64, "batch_size": 4, "num_classes": 4})
    train = list(eval_batches(data, "train"))
    tokens = extract_tokens(tiny_encoder, train)
    assert tokens.tokens.shape == (24, 4 * 4 * 4, 192) and tokens.grid == (4, 4, 4)
    # mean pooling of the tokens is the standard pooled feature
    assert torch.allclose(tokens.mean_pooled().feats, extract_features(tiny_encoder, train).feats, atol=1e-5)
    out = frozen_probes(tiny_encoder, train, list(eval_batches(data, "val")), 4, {"half": [0, 0, 1, 1]},
                        linear_epochs=5, attentive_epochs=2)
    assert {"knn20_top1", "linear_top1", "time_linear_top1", "attentive_top1", "half_linear_top1",
            "time_half_linear_top1", "effective_rank"} <= set(out)
    assert all(0 <= v <= 100 for k, v in out.items() if k.endswith("top1"))
