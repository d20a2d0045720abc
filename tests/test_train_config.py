"""Trainer configuration, optimizer groups and schedules, checkpoints and the encoder export (no Ray Train run)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sigma_ray.infra.checks import ConfigError
from sigma_ray.method.sigma import ObjectiveConfig, build_model
from sigma_ray.method.vit import ModelConfig
from sigma_ray.runs.export import load_encoder, save_encoder
from sigma_ray.train.cli import build_parser, config_from_args, main
from sigma_ray.train.config import TrainConfig, load_pretrain_config
from sigma_ray.train.optim import build_optimizer, make_schedule, no_weight_decay, param_groups

ROOT = Path(__file__).resolve().parents[1]
# Pretraining configs: every YAML there except the evaluation (eval_*) and sweep (sweep_*) ones.
CONFIGS = sorted(p for p in (ROOT / "experiments" / "configs").glob("*.yaml")
                 if not p.name.startswith(("eval_", "sweep_")))
TINY = ROOT / "experiments" / "configs" / "local_tiny.yaml"


def test_paper_defaults():
    t = TrainConfig()
    assert (t.epochs, t.warmup_epochs, t.base_lr, t.min_lr, t.weight_decay, t.betas) == \
        (800, 40, 1.5e-4, 1e-5, 0.05, (0.9, 0.95))
    assert t.precision == "auto" and t.accumulate_steps == 1 and t.grad_clip is None


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_pretrain_config(path)
    assert cfg.data.num_frames == cfg.model.num_frames
    if path.name not in ("local_tiny.yaml", "demo.yaml", "demo_sigma_mlp.yaml", "demo_videomae.yaml"):   # laptop
        assert cfg.train.use_gpu and cfg.train.gpus_per_worker == 1 and cfg.train.epochs == 800
        assert cfg.model.num_frames == 16 and cfg.model.img_size == 224 and cfg.data.mask.ratio == 0.9
        assert cfg.data.actor_resources == {"decode_node": 0.01}


def test_paper_hyperparameters_per_config():
    by = {p.name: load_pretrain_config(p) for p in CONFIGS}
    assert by["k400_vitb.yaml"].objective.sinkhorn_eps == 0.05 and by["k400_vitb.yaml"].data.sampling_rate == 4
    for name in ("ssv2_vitb.yaml", "ssv2_vits_mlp.yaml", "ssv2_vits_dino.yaml"):
        assert by[name].objective.sinkhorn_eps == 0.03 and by[name].data.sampling_rate == 2, name
    assert by["ssv2_vits_mlp.yaml"].model.size == "small" and by["ssv2_vitb.yaml"].model.size == "base"
    assert by["ssv2_vits_dino.yaml"].objective.kind == "sigma_dino"
    assert by["ssv2_vits_dino.yaml"].objective.teacher_checkpoint
    assert by["videomae_k400_vitb.yaml"].objective.kind == "videomae"


@pytest.mark.parametrize("override, match", [
    ("train.epochz=3", r"unknown key epochz in train \(did you mean epochs\?\); allowed: accumulate_steps"),
    ("bogus=1", "unknown key bogus"),
    ("train.epochs=ten", "train.epochs must be an integer"),
    ("train.use_gpu=maybe", "train.use_gpu must be true or false"),
    ("data.mask.ratio=1.0", r"data.mask.ratio = 1.0 is outside the allowed range \(0.0, 1.0\)"),
    ("data.mask.ratio=0", r"data.mask.ratio = 0.0 is outside"),
    ("train.base_lr=-1", "train.base_lr"),
    ("train.precision=fp8", "train.precision"),
    ("train.num_workers=0", "train.num_workers = 0 is outside"),
])
def test_bad_values_name_the_field(override, match):
    with pytest.raises(ConfigError, match=match):
        load_pretrain_config(TINY, [override])


def test_frames_not_divisible_by_tubelet():
    with pytest.raises(ConfigError, match="model.frames = 7 must be a positive multiple of 2"):
        load_pretrain_config(TINY, ["model.num_frames=7", "data.num_frames=7"])


def test_data_and_model_shapes_must_agree():
    with pytest.raises(ConfigError, match="data.num_frames = 16 differs from model.num_frames = 8"):
        load_pretrain_config(TINY, ["data.num_frames=16"])
    with pytest.raises(ConfigError, match="data.input_size = 96 differs from model.img_size = 64"):
        load_pretrain_config(TINY, ["data.input_size=96", "data.decode_short_side=96"])


def test_clip_sizes_are_stated_once_in_the_model():
    """The shipped configs state the clip sizes in ``model`` alone; the data section takes them from there, also
    when an override changes the model's, and a config that states both with the same values is accepted."""
    from sigma_ray.infra.config import from_dict, load_yaml
    from sigma_ray.train.config import PretrainConfig

    assert not {"num_frames", "input_size", "tubelet", "patch"} & set(load_yaml(TINY)["data"])
    small = load_pretrain_config(TINY, ["model.num_frames=4", "model.img_size=32", "data.decode_short_side=32"])
    assert (small.data.num_frames, small.data.input_size, small.data.tubelet, small.data.patch) == (4, 32, 2, 16)
    raw = {"model": {"num_frames": 4, "img_size": 32}, "data": {"num_frames": 4, "decode_short_side": 32}}
    both = from_dict(PretrainConfig, raw)
    assert (both.data.num_frames, both.data.input_size) == (4, 32)
    assert raw == {"model": {"num_frames": 4, "img_size": 32}, "data": {"num_frames": 4, "decode_short_side": 32}}
    assert from_dict(PretrainConfig, {}).data.num_frames == ModelConfig().num_frames


def test_a_config_file_states_only_what_it_changes_over_its_base(tmp_path):
    """``base: OTHER.yaml`` (relative to the file): mappings merge key by key, other values replace, bases chain,
    and a missing base or a cycle is an error naming the files."""
    from sigma_ray.infra.config import load_yaml

    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text("name: root\nmodel: {size: tiny, num_frames: 8}\ndata: {scales: [1.0, 0.5]}\n")
    (tmp_path / "sub" / "mid.yaml").write_text("base: ../root.yaml\nmodel: {num_frames: 4}\n")
    (tmp_path / "leaf.yaml").write_text("base: sub/mid.yaml\nname: leaf\ndata: {scales: [1.0]}\n")
    assert load_yaml(tmp_path / "leaf.yaml") == {"name": "leaf", "model": {"size": "tiny", "num_frames": 4},
                                                 "data": {"scales": [1.0]}}
    assert load_yaml(tmp_path / "root.yaml")["data"] == {"scales": [1.0, 0.5]}     # the base is left as it was
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"b.yaml: base a.yaml leads back to itself"):
        load_yaml(tmp_path / "a.yaml")
    (tmp_path / "lost.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere.yaml does not exist \(the base of .*lost.yaml\)"):
        load_yaml(tmp_path / "lost.yaml")
    (tmp_path / "odd.yaml").write_text("base: [1]\n")
    with pytest.raises(ConfigError, match=r"odd.yaml: base must be the path of another config file"):
        load_yaml(tmp_path / "odd.yaml")


def test_cli_overrides_and_booleans(capsys):
    args = build_parser().parse_args(["--config", str(TINY), "--set", "train.compile=False", "--set",
                                      "train.use_gpu=false", "--set", "train.betas=[0.8, 0.9]",
                                      "--num-workers", "3", "--name", "x", "--storage-path", "/tmp/s"])
    cfg = config_from_args(args)
    assert cfg.train.compile is False and cfg.train.use_gpu is False and cfg.train.betas == (0.8, 0.9)
    assert cfg.train.num_workers == 3 and cfg.name == "x" and cfg.storage_path == "/tmp/s"
    assert config_from_args(build_parser().parse_args(["--config", str(TINY), "--set", "train.compile=true"])
                            ).train.compile is True
    assert main(["--config", str(TINY), "--set", "train.epochz=1"]) == 2
    assert "unknown key epochz" in capsys.readouterr().err
    assert main(["--config", str(TINY), "--set", "train.use_gpu=true", "--dry-run"]) == 0
    assert "use_gpu: true" in capsys.readouterr().out


@pytest.mark.parametrize("text, where", [
    ("model:\n  size: tiny\n   bad_indent: 1\n", ":3: mapping values are not allowed here (line 3, column 14)"),
    ("train: {epochs: 3\n", ":2: expected ',' or '}'"),
])
def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys, text, where):
    from sigma_ray.train.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert main(["--config", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"config error: {bad}{where}") and "\n" not in err, err


def test_a_yaml_syntax_error_in_an_override_names_the_override(capsys):
    from sigma_ray.train.cli import main

    assert main(["--config", str(TINY), "--set", "train.betas=[0.9", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("config error: override 'train.betas=[0.9': the value is not valid YAML") and "\n" not in err


def test_param_groups_skip_norms_biases_and_tokens():
    model = build_model(ModelConfig("tiny", 8, 64), ObjectiveConfig(num_prototypes=16))
    decay, skip = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in skip["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "video.decoder.mask_token" in skipped and "video.encoder.norm.weight" in skipped
    assert "video.encoder.blocks.0.attn.qkv.bias" in skipped and "video.encoder.patch_embed.bias" in skipped
    assert "video.encoder.blocks.0.attn.qkv.weight" in decayed and "video.encoder.patch_embed.weight" in decayed
    assert all(p.ndim >= 2 for p in decay["params"])
    assert skip["weight_decay"] == 0 and decay["weight_decay"] == 0.05
    assert len(decayed) + len(skipped) == sum(1 for p in model.parameters() if p.requires_grad)
    assert no_weight_decay("pos_embed", torch.zeros(1, 4, 8))


def test_schedule_warmup_cosine_and_scaling():
    t = TrainConfig(epochs=10, warmup_epochs=2, base_lr=1.5e-4, min_lr=1e-5, weight_decay=0.04,
                    weight_decay_end=0.4)
    s = make_schedule(t, total=50, global_batch=512)
    assert s.total_steps == 50 and s.warmup_steps == 10
    assert s.peak_lr == pytest.approx(3e-4) and s.min_lr == pytest.approx(2e-5)
    assert s.lr(0) == pytest.approx(3e-5) and s.lr(9) == pytest.approx(3e-4)
    assert s.lr(10) == pytest.approx(3e-4)
    assert s.lr(30) == pytest.approx(2e-5 + (3e-4 - 2e-5) * 0.5)
    assert s.lr(50) == pytest.approx(2e-5) and s.lr(49) > 2e-5
    assert all(s.lr(i + 1) <= s.lr(i) + 1e-12 for i in range(10, 50))
    assert s.wd(0) == pytest.approx(0.04) and s.wd(50) == pytest.approx(0.4)
    capped = make_schedule(TrainConfig(epochs=800, warmup_epochs=40), 100, 256)
    assert capped.total_steps == 100 and capped.warmup_steps == 5     # warm-up keeps its 5% of the run
    model = torch.nn.Linear(3, 3)
    opt = build_optimizer(model, 1.0, 0.05, (0.9, 0.95))
    assert s.apply(opt, 30) == pytest.approx(s.lr(30))
    assert [g["weight_decay"] for g in opt.param_groups] == [pytest.approx(s.wd(30)), 0.0]


def test_run_length_counts_whole_global_batches_and_caps():
    from sigma_ray.train.config import run_length

    cfg = load_pretrain_config(TINY, ["train.epochs=3", "train.steps_per_epoch=null", "data.batch_size=4",
                                      "train.num_workers=2"])
    assert run_length(cfg, 50) == (6, 18)                              # 50 // 8 whole global batches per epoch
    assert run_length(load_pretrain_config(TINY, ["train.epochs=3", "train.steps_per_epoch=2"]), 50) == (2, 6)
    assert run_length(load_pretrain_config(TINY, ["train.epochs=800", "train.max_steps=100",
                                                  "train.steps_per_epoch=null"]), 4000) == (1000, 100)
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        run_length(cfg, 7)


def test_encoder_export_loads_without_ray(tmp_path):
    cfg = ModelConfig("tiny", 8, 64)
    torch.manual_seed(0)
    model = build_model(cfg, ObjectiveConfig(num_prototypes=16))
    path = save_encoder(model.encoder, cfg, tmp_path / "encoder.pt", {"step": 7})
    code = (f"import sys, torch; from sigma_ray.runs.export import load_encoder; "
            f"e = load_encoder({str(path)!r}); assert 'ray' not in sys.modules; "
            f"print(e.config.size, e.export_meta['step'], e.forward_features(torch.zeros(1, 3, 8, 64, 64)).shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["tiny", "7", "torch.Size([1,", "64,", "192])"]
    enc = load_encoder(path)
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), model.encoder.state_dict().values()))


def test_placement_error_before_any_worker_starts(ray_session, tiny_synthetic, tmp_path):
    from sigma_ray.train.launch import PlacementError, placement_problems, pretrain

    cfg = load_pretrain_config(TINY, ["train.num_workers=8", "train.cpus_per_worker=1", "synthetic=false",
                                      "data.batch_size=1", f"data.train_list={tiny_synthetic['train']}",
                                      f"data.root={tiny_synthetic['root']}"],
                               name="too_big", storage_path=str(tmp_path))
    assert placement_problems(cfg)
    with pytest.raises(PlacementError, match="8 training workers"):
        pretrain(cfg)
    assert [p.name for p in (tmp_path / "too_big").iterdir()] == ["LOCK"]   # taken before Ray, nothing written
    gpu = load_pretrain_config(TINY, ["train.use_gpu=true"])
    assert any("GPU" in p for p in placement_problems(gpu))
    actors = load_pretrain_config(TINY, ["data.actor_resources={decode_node: 0.01}"])
    assert any("decode_node" in p for p in placement_problems(actors))
    assert placement_problems(load_pretrain_config(TINY)) == []


def test_the_core_imports_no_ray():
    """The method core runs in a notebook, a unit test or on a machine without Ray (README's layer table)."""
    core = ["sigma_ray.method.sigma", "sigma_ray.runs.release", "sigma_ray.method.masking", "sigma_ray.method.sinkhorn",
            "sigma_ray.method.losses", "sigma_ray.method.step", "sigma_ray.infra.schedule", "sigma_ray.method.queue", "sigma_ray.runs.weights",
            "sigma_ray.runs.checkpoint", "sigma_ray.data.synthetic", "sigma_ray.data.leakage",
            "sigma_ray.train.local", "sigma_ray.eval.readouts"]
    code = f"import importlib, sys; [importlib.import_module(m) for m in {core!r}]; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
