"""Released weights in and out: transformers' VideoMAE models (built from tiny configs, random weights; nothing is
downloaded) and checkpoints in the SIGMA/VideoMAE release's layout give the same features in sigma-ray, and back.

Every parameter is randomized (LayerNorm gains and biases, q/v biases and sigma-ray's k bias too), so a mapping that
drops or swaps any tensor shows in the outputs.
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import pytest
import torch
from transformers import VideoMAEConfig, VideoMAEForPreTraining, VideoMAEForVideoClassification, VideoMAEModel

from sigma_ray.cli import main
from sigma_ray.eval.finetune import VideoClassifier
from sigma_ray.infra.checks import ConfigError
from sigma_ray.method.sigma import ObjectiveConfig, SigmaModel
from sigma_ray.method.vit import ModelConfig, VideoEncoder, split_indices
from sigma_ray.runs.encoders import load_any_encoder
from sigma_ray.runs.export import init_from_model_state, load_encoder, load_model_file, save_encoder
from sigma_ray.runs.release import ReleaseFormatError, export_release, import_released, read_released, read_state_file
from sigma_ray.train.config import load_pretrain_config

# sigma-ray's tiny model (192 wide, 6 blocks, 3 heads; decoder 96 wide, 2 blocks) on 4 frames of 32 x 32: 8 tokens
TINY = ModelConfig(size="tiny", num_frames=4, img_size=32)
HF_TINY = dict(hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768,
               decoder_hidden_size=96, decoder_num_hidden_layers=2, decoder_num_attention_heads=3,
               decoder_intermediate_size=384, image_size=32, num_frames=4, patch_size=16, tubelet_size=2)
TOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter ~ N(0, 0.1^2), 1-d weights (LayerNorm gains) around 1; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            gain = name.endswith("weight") and p.ndim == 1
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if gain else 0.0))
    return module.eval()


def clips(seed: int = 1) -> torch.Tensor:
    """Two normalized clips in transformers' order, B x T x C x H x W (sigma-ray's is B x C x T x H x W)."""
    return torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def ours(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 1, 3, 4)


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal to TOL, relative to the outputs' scale where it exceeds 1 (float32 rounding of values ~20 is ~1e-6)."""
    assert a.shape == b.shape
    err = (a - b).abs().max().item() / max(1.0, b.abs().max().item())
    assert err < TOL, err


def hub_names(state: dict) -> dict:
    """transformers 5 saves the q/v biases as query.bias / value.bias; the hub's files (transformers 4) hold them as
    q_bias / v_bias."""
    return {k.replace("attention.query.bias", "attention.q_bias").replace("attention.value.bias", "attention.v_bias"): v
            for k, v in state.items()}


def release_from_sigma(state: dict) -> dict:
    """A SigmaModel / encoder state dict renamed to the release's layout, by hand (independent of the importer)."""
    out = {}
    for k, v in state.items():
        for ours_, theirs in (("video.encoder.", "encoder."), ("video.decoder.embed.", "encoder_to_decoder."),
                              ("video.decoder.mask_token", "mask_token"), ("video.decoder.", "decoder."),
                              ("projection.mlp.", "head."), ("prototypes.weight", "prototypes")):
            if k.startswith(ours_):
                k = theirs + k[len(ours_):]
                break
        k = k.replace("patch_embed.", "patch_embed.proj.")
        if k.endswith("attn.qkv.bias"):
            q, _, vb = v.chunk(3)
            out[k.replace("qkv.bias", "q_bias")], out[k.replace("qkv.bias", "v_bias")] = q, vb
        else:
            out[k] = v
    return out


def release_from_transformers(state: dict) -> dict:
    """transformers' VideoMAEForPreTraining state renamed to the release's layout, by hand."""
    out = {}
    for k, v in hub_names(state).items():
        k = k.replace("videomae.embeddings.patch_embeddings.projection.", "encoder.patch_embed.proj.")
        k = k.replace("videomae.encoder.layer.", "encoder.blocks.").replace("videomae.layernorm.", "encoder.norm.")
        k = k.replace("decoder.decoder_layers.", "decoder.blocks.")
        for theirs, release in (("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
                                ("attention.output.dense", "attn.proj"), ("intermediate.dense", "mlp.fc1"),
                                ("output.dense", "mlp.fc2"), ("attention.attention.q_bias", "attn.q_bias"),
                                ("attention.attention.v_bias", "attn.v_bias")):
            k = k.replace(theirs, release)
        out[k] = v
    for k in [k for k in out if k.endswith("attention.attention.query.weight")]:
        block = k[: -len("attention.attention.query.weight")]
        out[block + "attn.qkv.weight"] = torch.cat([out.pop(block + f"attention.attention.{n}.weight")
                                                    for n in ("query", "key", "value")])
    return out


def zero_k_bias(module: torch.nn.Module) -> None:
    """The release has no k bias: a model that stands for a release checkpoint has it at 0."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("attn.qkv.bias"):
                p[p.shape[0] // 3: 2 * p.shape[0] // 3] = 0


# ---------------------------------------------------------------------------------------------------------------
# transformers -> sigma-ray


@pytest.mark.parametrize("mean_pooling", [False, True])
@pytest.mark.parametrize("files", ["safetensors", "bin with the hub's q_bias names"])
def test_a_transformers_model_imports_with_the_same_features(tmp_path, capsys, mean_pooling, files):
    hf = randomize(VideoMAEModel(VideoMAEConfig(**HF_TINY, use_mean_pooling=mean_pooling)))
    if files == "safetensors":
        hf.save_pretrained(tmp_path)
    else:
        torch.save(hub_names(hf.state_dict()), tmp_path / "pytorch_model.bin")
        hf.config.to_json_file(tmp_path / "config.json")
    released = read_released(tmp_path)
    # transformers' configs say LayerNorm eps 1e-12; with mean pooling VideoMAEModel has no final LayerNorm
    assert released.kind == "encoder" and released.model_config == ModelConfig(
        size="tiny", num_frames=4, img_size=32, norm_eps=1e-12, final_norm=not mean_pooling, decoder_norm_eps=1e-5,
        fc_norm_eps=1e-5)
    x = clips()
    with torch.no_grad():
        assert_close(released.encoder.forward_features(ours(x)), hf(x).last_hidden_state)
    assert main(["import", str(tmp_path), str(tmp_path / "out")]) == 0
    assert f"{tmp_path}: an encoder checkpoint in transformers' VideoMAE's layout" in capsys.readouterr().out


def test_a_transformers_pretraining_model_imports_with_the_same_features_and_predictions(tmp_path):
    hf = randomize(VideoMAEForPreTraining(VideoMAEConfig(**HF_TINY, use_mean_pooling=False)))
    hf.save_pretrained(tmp_path / "hf")
    assert main(["import", str(tmp_path / "hf"), str(tmp_path / "out")]) == 0
    config = load_encoder(tmp_path / "out" / "encoder.pt").config
    objective = ObjectiveConfig(kind="videomae")
    model = SigmaModel(config, objective).eval()
    init_from_model_state(model, tmp_path / "out" / "model.pt", config, objective)

    x, mask = clips(), torch.zeros(2, 8, dtype=torch.bool)
    mask[0, [1, 4, 6, 7]] = mask[1, [0, 2, 3, 5]] = True
    visible, masked = split_indices(mask)
    with torch.no_grad():
        assert_close(model.encoder.forward_features(ours(x)), hf.videomae(x).last_hidden_state)
        # transformers' decoder.norm keeps LayerNorm's default eps 1e-5 (the release: 1e-6), and so does the import
        assert torch.equal(model.video(ours(x), visible, masked), hf(x, bool_masked_pos=mask).logits)


def test_a_transformers_classifier_imports_with_the_same_logits(tmp_path):
    hf = randomize(VideoMAEForVideoClassification(VideoMAEConfig(**HF_TINY, num_labels=5)))
    hf.save_pretrained(tmp_path / "hf")
    _, written = import_released(tmp_path / "hf", tmp_path / "out")
    assert set(written) == {"encoder"}
    encoder, source = load_any_encoder(tmp_path / "out")      # what `sigma-ray eval --encoder OUT` loads
    assert source == written["encoder"] and not encoder.config.final_norm   # fc_norm replaces the final norm
    classifier = VideoClassifier(encoder, 5).eval()
    classifier.load_head(encoder.classifier_head)
    x = clips()
    with torch.no_grad():
        assert torch.equal(classifier(ours(x)), hf(x).logits)     # fc_norm with transformers' eps 1e-5, exactly


# ---------------------------------------------------------------------------------------------------------------
# sigma-ray -> transformers


@pytest.mark.parametrize("final_norm,norm_eps", [(True, 1e-6), (False, 1e-12)])
def test_an_exported_encoder_gives_the_same_features_in_transformers(tmp_path, final_norm, norm_eps):
    config = ModelConfig(size="tiny", num_frames=4, img_size=32, norm_eps=norm_eps, final_norm=final_norm)
    encoder = randomize(VideoEncoder(config))
    k_bias = encoder.blocks[0].attn.qkv.bias[192:384]
    assert k_bias.abs().min() > 0        # dropped by the export: exact only because softmax ignores it
    save_encoder(encoder, config, tmp_path / "encoder.pt")
    assert main(["export", str(tmp_path / "encoder.pt"), str(tmp_path / "hf")]) == 0
    hf, info = VideoMAEModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info.values()), info             # no missing, unexpected or mismatched key
    x = clips()
    with torch.no_grad():
        assert_close(hf.eval()(x).last_hidden_state, encoder.forward_features(ours(x)))


def test_a_3d_position_table_cannot_be_exported(tmp_path, capsys):
    config = ModelConfig(size="tiny", num_frames=4, img_size=32, pos_embed="sincos_3d")
    save_encoder(VideoEncoder(config), config, tmp_path / "encoder.pt")
    assert main(["export", str(tmp_path / "encoder.pt"), str(tmp_path / "hf")]) == 2
    assert "pos_embed = 'sincos_3d'" in capsys.readouterr().err and not (tmp_path / "hf").exists()


def test_files_that_are_no_encoder_or_no_safetensors_end_in_one_line(tmp_path, capsys):
    """export of random bytes and import of a truncated .safetensors: exit 2 with one line naming the file, no
    traceback, nothing written."""
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 4)
    assert main(["export", str(tmp_path / "noise.pt"), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sigma-ray export: ") and "noise.pt" in err and "\n" not in err
    (tmp_path / "cut.safetensors").write_bytes(b"\x08\x00\x00")
    assert main(["import", str(tmp_path / "cut.safetensors"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sigma-ray import: ") and "not a readable safetensors file" in err and "\n" not in err
    assert not (tmp_path / "hf").exists() and not (tmp_path / "out").exists()


def _truncated(path: Path) -> None:
    torch.save({"patch_embed.proj.weight": torch.zeros(8, 3, 2, 16, 16)}, path)
    path.write_bytes(path.read_bytes()[:300])


@pytest.mark.parametrize("make, says", [
    (lambda p: torch.save({"patch_embed.proj.weight": torch.zeros(192, 3, 16, 16)}, p),
     r"patch embedding of shape \(192, 3, 16, 16\) \(4-D\): an image model's, not a video model's"),
    (lambda p: p.write_text("a note, not weights\n" * 4), r"not a torch weights file .*: a text file \(it starts 'a note"),
    (lambda p: p.write_bytes(b""), r"not a torch weights file .*: the file is empty \(0 bytes\)"),
    (_truncated, r"not a torch weights file .*: a zip archive, as torch.save writes, but truncated or damaged"),
    (lambda p: p.write_bytes(bytes(range(7, 200))), r"not a torch weights file .*: neither a zip archive nor a pickle"),
], ids=["image ViT", "text", "empty", "truncated", "random"])
def test_an_unimportable_file_says_what_it_is_in_one_line(tmp_path, capsys, make, says):
    """Exit 2, one line naming the file and what it holds instead; the hint to re-save a state dict is only for a
    refused pickle, where it helps."""
    src = tmp_path / "checkpoint.pth"
    make(src)
    assert main(["import", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sigma-ray import: {src}: ") and "\n" not in err, err
    assert re.search(says, err) and "state dict alone" not in err, err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------
# the release's layout


@pytest.mark.parametrize("kind", ["sigma_mlp", "videomae"])
def test_a_release_pretraining_checkpoint_round_trips(tmp_path, kind):
    torch.manual_seed(0)
    objective = ObjectiveConfig(kind=kind, num_prototypes=16, feature_dim=32)
    model = randomize(SigmaModel(TINY, objective))
    zero_k_bias(model)
    release = release_from_sigma(model.state_dict())
    # as the VideoMAE code base saves it: beside the optimizer, the epoch and its argparse arguments
    torch.save({"model": release, "optimizer": {"state": {}, "param_groups": []}, "epoch": 799,
                "args": argparse.Namespace(num_frames=4, input_size=32, tubelet_size=2, model="pretrain_tiny")},
               tmp_path / "checkpoint-799.pth")
    released, written = import_released(tmp_path / "checkpoint-799.pth", tmp_path / "out")
    assert released.kind == "pretraining" and released.model_config == TINY
    assert released.objective.kind == kind
    if kind == "sigma_mlp":
        assert (released.objective.num_prototypes, released.objective.feature_dim) == (16, 32)

    fresh = SigmaModel(TINY, objective)
    init_from_model_state(fresh, written["model"], TINY, objective)
    assert fresh.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())

    back = torch.load(export_release(load_encoder(written["encoder"]), tmp_path / "back.pth"), weights_only=True)
    encoder_part = {k: v for k, v in release.items() if k.startswith("encoder.")}
    assert back["model"].keys() == encoder_part.keys()
    assert all(torch.equal(back["model"][k], v) for k, v in encoder_part.items())


def test_a_sigma_dino_checkpoint_is_read_without_its_teacher(tmp_path):
    # SIGMA-DINO: prototypes over the teacher's 384-d features, no tube MLP, no teacher weights in the file
    model = randomize(SigmaModel(TINY, ObjectiveConfig(kind="sigma_mlp", num_prototypes=16, feature_dim=384)))
    zero_k_bias(model)
    release = {k: v for k, v in release_from_sigma(model.state_dict()).items() if not k.startswith("head.")}
    torch.save({"module": release}, tmp_path / "dino.pth")
    released = read_released(tmp_path / "dino.pth", num_frames=4, img_size=32)
    assert (released.objective.kind, released.objective.teacher_model) == ("sigma_dino", "vit_small_patch16_224.dino")
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("projection.")}
    assert released.model_state.keys() == expected.keys()
    assert all(torch.equal(released.model_state[k], v) for k, v in expected.items())


def test_the_release_layout_gives_transformers_features_and_predictions(tmp_path):
    # the release's layout made from transformers' port of the same model: an implementation that is not ours
    hf = randomize(VideoMAEForPreTraining(VideoMAEConfig(**HF_TINY, use_mean_pooling=False, layer_norm_eps=1e-6)))
    torch.save({"module": release_from_transformers(hf.state_dict())}, tmp_path / "videomae.pth")
    released = read_released(tmp_path / "videomae.pth", num_frames=4, img_size=32)
    assert released.source_format == "release" and released.objective.kind == "videomae"
    model = SigmaModel(released.model_config, released.objective).eval()
    model.load_state_dict(released.model_state, strict=True)
    x, mask = clips(), torch.zeros(2, 8, dtype=torch.bool)
    mask[:, 2:] = True
    with torch.no_grad():
        assert_close(released.encoder.forward_features(ours(x)), hf.videomae(x).last_hidden_state)
        assert_close(model.video(ours(x), *split_indices(mask)), hf(x, bool_masked_pos=mask).logits)


# ---------------------------------------------------------------------------------------------------------------
# refusals


def _release_checkpoint() -> dict:
    model = randomize(SigmaModel(TINY, ObjectiveConfig(kind="videomae")))
    return release_from_sigma(model.state_dict())


def test_an_extra_or_a_missing_key_is_refused_with_its_name(tmp_path, capsys):
    state = _release_checkpoint()
    torch.save({"model": {**state, "memory_pred_head.0.weight": torch.zeros(3)}}, tmp_path / "extra.pth")
    with pytest.raises(ReleaseFormatError, match=r"does not map: memory_pred_head\.0\.weight"):
        read_released(tmp_path / "extra.pth")
    del state["encoder.blocks.1.attn.v_bias"]
    torch.save({"model": state}, tmp_path / "missing.pth")
    assert main(["import", str(tmp_path / "missing.pth"), str(tmp_path / "out")]) == 2
    assert r"missing keys: encoder.blocks.1.attn.v_bias" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()                  # nothing written

    hf = VideoMAEModel(VideoMAEConfig(**HF_TINY)).state_dict()
    del hf["encoder.layer.5.output.dense.bias"]
    torch.save(hf, tmp_path / "hf.bin")
    with pytest.raises(ReleaseFormatError, match=r"missing keys: encoder\.layer\.5\.output\.dense\.bias"):
        read_released(tmp_path / "hf.bin")


def test_a_model_of_no_known_size_is_refused(tmp_path):
    hf = VideoMAEModel(VideoMAEConfig(**{**HF_TINY, "num_hidden_layers": 5}))
    hf.save_pretrained(tmp_path)
    with pytest.raises(ReleaseFormatError, match="no sigma-ray model size has width 192, depth 5"):
        read_released(tmp_path)


class _RunsCode:
    """Unpickling this calls os.makedirs(path): what a malicious checkpoint could do instead."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.makedirs, (self.path,)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"model": _release_checkpoint(), "args": _RunsCode(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(ReleaseFormatError, match="weights only"):
        read_state_file(tmp_path / "evil.pth")
    assert not marker.exists()
    # the same refusal for a model state given to pretraining (train.init_from), named by its field
    torch.save({"format": "sigma-ray", "state": _RunsCode(str(marker))}, tmp_path / "model.pt")
    with pytest.raises(ConfigError, match=r"train\.init_from: .*model\.pt: refused to load"):
        load_model_file(tmp_path / "model.pt", TINY, ObjectiveConfig())
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------------
# pretraining from an imported model


def test_init_from_must_fit_the_run(tmp_path):
    with pytest.raises(ConfigError, match="train.init_from"):
        load_pretrain_config(None, ["train.init_from=s3://bucket/model.pt"])
    torch.save({"model": _release_checkpoint()}, tmp_path / "ckpt.pth")
    _, written = import_released(tmp_path / "ckpt.pth", tmp_path / "out", num_frames=4, img_size=32)
    with pytest.raises(ConfigError, match="model.size = 'tiny'; this run has model.size = 'small'"):
        load_model_file(written["model"], ModelConfig(size="small", num_frames=4, img_size=32),
                        ObjectiveConfig(kind="videomae"))
    with pytest.raises(ConfigError, match="objective.kind = 'videomae'; this run has objective.kind = 'sigma_mlp'"):
        load_model_file(written["model"], TINY, ObjectiveConfig())


@pytest.mark.slow
def test_pretraining_starts_from_an_imported_model(ray_session, tiny_synthetic, tmp_path):
    """A real Ray Train run with train.init_from: one step at a negligible lr ends where the imported model was."""
    import dataclasses

    from test_train_run import tiny_run

    from sigma_ray.method.sigma import build_model
    from sigma_ray.train.launch import pretrain

    cfg = tiny_run(tiny_synthetic, tmp_path / "runs", "from_import", "train.num_workers=1", "train.max_steps=1",
                   "train.base_lr=1.0e-9", "train.min_lr=0")
    model = randomize(SigmaModel(cfg.model, cfg.objective), seed=3)
    zero_k_bias(model)
    torch.save({"model": release_from_sigma(model.state_dict())}, tmp_path / "release.pth")
    _, written = import_released(tmp_path / "release.pth", tmp_path / "imported", num_frames=8, img_size=64)

    def run(config):
        return pretrain(dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                              init_from=str(written["model"]))))

    with pytest.raises(ConfigError, match="objective.num_prototypes = 32; this run has objective.num_prototypes = 64"):
        run(dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, num_prototypes=64)))
    trained = load_encoder(run(cfg).encoder_path).state_dict()

    def distance(state: dict) -> float:
        return max((trained[k] - v).abs().max().item() for k, v in state.items())

    assert distance(load_encoder(written["encoder"]).state_dict()) < 1e-5
    torch.manual_seed(cfg.train.seed)     # what the run would have started from without init_from
    assert distance(build_model(cfg.model, cfg.objective).encoder.state_dict()) > 0.1
