"""evaluate() end to end on an exported encoder, encoder resolution (export, run dir, checkpoint), the CLI."""
import dataclasses
import json

import pytest
import torch
import yaml

from sigma_ray.data.config import DataConfig
from sigma_ray.eval.cli import main
from sigma_ray.eval.config import EvalConfig, FinetuneConfig, KnnConfig, LinearConfig
from sigma_ray.eval.run import check_shapes, confusion_matrix, evaluate, plot_confusion
from sigma_ray.infra.checks import ConfigError
from sigma_ray.method.sigma import ObjectiveConfig, build_model
from sigma_ray.method.vit import ModelConfig
from sigma_ray.runs.checkpoint import save_checkpoint
from sigma_ray.runs.encoders import load_any_encoder, resolve_encoder
from sigma_ray.runs.export import save_encoder

MODEL = ModelConfig(size="tiny", num_frames=8, img_size=64)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoder(tiny_encoder):
    return tiny_encoder


@pytest.fixture(scope="module")
def data_config(tiny_synthetic) -> DataConfig:
    return DataConfig(root=tiny_synthetic["root"], train_list=tiny_synthetic["train"],
                      val_list=tiny_synthetic["val"], num_classes=4, num_frames=8, sampling_rate=2, input_size=64,
                      decode_short_side=64, batch_size=8, test_num_clips=1, test_num_crops=3)


def test_evaluate_end_to_end(encoder, data_config, tmp_path):
    run_dir = tmp_path / "run"
    save_encoder(encoder, MODEL, run_dir / "encoder.pt", meta={"step": 7})
    config = EvalConfig(encoder=str(run_dir), protocols=("knn", "linear", "finetune"), out_dir=str(tmp_path / "out"),
                        device="cpu", knn=KnnConfig(ks=(3, 200)), linear=LinearConfig(epochs=20),
                        finetune=FinetuneConfig(epochs=1, warmup_epochs=0, steps_per_epoch=2, test_split="test"),
                        data=data_config)
    results = evaluate(config)
    assert set(results["metrics"]) >= {"knn3_top1", "knn3_top5", "knn200_top1", "knn200_top5", "linear_top1",
                                       "linear_top5", "finetune_top1", "finetune_top5"}
    assert all(0.0 <= v <= 100.0 for k, v in results["metrics"].items() if k.endswith(("top1", "top5")))
    assert results["num_train"] == 24 and results["num_query"] == 4
    assert results["encoder_meta"] == {"step": 7}
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk["metrics"] == results["metrics"]
    for name in ("knn", "linear", "finetune"):
        png = tmp_path / "out" / f"confusion_{name}.png"
        assert results["confusion"][name] == str(png) and png.read_bytes()[:8] == PNG_MAGIC


def test_resolve_export_run_dir_and_checkpoints(encoder, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError):
        resolve_encoder(run)
    # a trainer-shaped run: config.yaml with the model section, checkpoints holding the whole training model
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "r", "model": dataclasses.asdict(MODEL)}))
    for step, scale in ((5, 0.0), (10, 1.0), (15, 2.0)):
        model = build_model(MODEL, ObjectiveConfig(num_prototypes=16))
        model.video.encoder.load_state_dict({k: v * scale for k, v in encoder.state_dict().items()})
        save_checkpoint(run / f"checkpoint_{step:08d}", step=step, model=model)
    damaged = run / "checkpoint_00000015" / "state.pt"
    damaged.write_bytes(damaged.read_bytes()[:-10])
    kind, where = resolve_encoder(run)
    assert (kind, where.name) == ("checkpoint", "checkpoint_00000010")       # the newest valid one
    loaded, _ = load_any_encoder(run)
    assert not loaded.training and loaded.export_meta["step"] == 10
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), loaded.state_dict().values()))
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        assert torch.allclose(encoder.forward_features(x), loaded.forward_features(x))
    # an exported encoder.pt in the run directory wins over the checkpoints
    save_encoder(encoder, MODEL, run / "encoder.pt")
    assert resolve_encoder(run) == ("export", run / "encoder.pt")
    # a checkpoint without the run's config.yaml cannot know the model shape
    (run / "config.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        load_any_encoder(run / "checkpoint_00000005")


def test_shape_mismatch_is_a_config_error(data_config):
    with pytest.raises(ConfigError, match="data.input_size"):
        check_shapes(MODEL, dataclasses.replace(data_config, input_size=96, decode_short_side=96))


def test_confusion_matrix_and_plot(tmp_path):
    cm = confusion_matrix([0, 0, 1, 2, 2], [0, 1, 1, 2, 0], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    path = plot_confusion([0, 0, 1, 2, 2], [0, 1, 1, 2, 0], ["a", "b", "c"], tmp_path / "cm.png", title="knn")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="protocols"):
        EvalConfig(encoder="x", protocols=("knn", "svm"), data=DataConfig(num_classes=3)).validate()
    with pytest.raises(ConfigError, match="layer_decay"):
        FinetuneConfig(layer_decay=1.5).validate()
    with pytest.raises(ConfigError, match="num_classes"):
        EvalConfig(encoder="x").validate()


def test_cli_dry_run_and_errors(tmp_path, capsys):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(yaml.safe_dump({"protocols": ["knn"], "data": {"num_classes": 5}}))
    assert main(["--config", str(cfg), "--encoder", "/x/encoder.pt", "--out", "/tmp/o", "--dry-run",
                 "--set", "knn.ks=[5]"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["encoder"] == "/x/encoder.pt" and printed["out_dir"] == "/tmp/o" and printed["knn"]["ks"] == [5]
    assert main(["--config", str(cfg), "--encoder", "e", "--set", "knn.temperature=-1"]) == 2
    assert "knn.temperature" in capsys.readouterr().err
    assert main(["--config", str(cfg), "--encoder", str(tmp_path / "missing.pt")]) == 1


def test_official_split_conversion(tmp_path):
    from sigma_ray.data.annotations import load_list
    from sigma_ray.eval.splits import hmdb51_lists, ucf101_lists

    ucf = tmp_path / "ucfTrainTestlist"
    ucf.mkdir()
    (ucf / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (ucf / "trainlist01.txt").write_text("Archery/v_Archery_g08_c01.avi 2\nApplyEyeMakeup/v_A_g08_c01.avi 1\n")
    (ucf / "testlist01.txt").write_text("ApplyEyeMakeup/v_A_g01_c01.avi\n")
    paths = ucf101_lists(ucf, tmp_path / "ucf_lists", split=1)
    train = load_list(paths["train"], root="/videos", num_classes=2, check_files=False)
    assert [(r.path, r.label) for r in train] == [("/videos/Archery/v_Archery_g08_c01.avi", 1),
                                                  ("/videos/ApplyEyeMakeup/v_A_g08_c01.avi", 0)]
    assert [r.label for r in load_list(paths["val"], num_classes=2, check_files=False)] == [0]

    hmdb = tmp_path / "splits"
    hmdb.mkdir()
    (hmdb / "wave_test_split1.txt").write_text("w1.avi 1\nw2.avi 2\nw3.avi 0\n")
    (hmdb / "brush_hair_test_split1.txt").write_text("b1.avi 2 \nb2.avi 1\n")
    (hmdb / "wave_test_split2.txt").write_text("w1.avi 2\n")
    paths = hmdb51_lists(hmdb, tmp_path / "hmdb_lists", split=1)
    assert open(paths["classes"]).read().split() == ["brush_hair", "wave"]
    assert open(paths["train"]).read().splitlines() == ["brush_hair/b2.avi 0", "wave/w1.avi 1"]
    assert open(paths["val"]).read().splitlines() == ["brush_hair/b1.avi 0", "wave/w2.avi 1"]


@pytest.mark.parametrize("name", ["eval_local", "eval_ucf101", "eval_hmdb51", "eval_ssv2", "eval_k400"])
def test_example_configs_load(name):
    from pathlib import Path

    from sigma_ray.infra.config import load_config

    path = Path(__file__).resolve().parents[1] / "experiments" / "configs" / f"{name}.yaml"
    config = load_config(EvalConfig, path)
    assert config.data.num_classes and config.protocols


def test_knn_probe_matches_the_evaluation_path_and_pickles_light(encoder, data_config):
    import pickle

    from sigma_ray.eval.features import features_for_split
    from sigma_ray.eval.knn import KnnProbe, knn_eval
    from sigma_ray.eval.metrics import effective_rank

    probe = KnnProbe(data_config, num_classes=4, k=5)
    got = probe(encoder)
    bank, queries = (features_for_split(encoder, data_config, split) for split in ("train", "val"))
    direct = knn_eval(bank, queries, 4, (5,))
    assert got == {"knn_top1": direct["knn5_top1"], "knn_top5": direct["knn5_top5"],
                   "effective_rank": effective_rank(bank.feats)}
    assert probe(encoder) == got  # the cached clips give the same answer
    assert len(pickle.dumps(probe)) < 10_000  # the decoded clips stay behind


def test_the_probe_adds_a_linear_score_trained_on_the_bank(encoder, data_config):
    from sigma_ray.eval.features import features_for_split
    from sigma_ray.eval.knn import KnnProbe
    from sigma_ray.eval.linear import linear_probe

    with torch.no_grad():    # as the trainer calls it
        got = KnnProbe(data_config, num_classes=4, k=5, linear_epochs=30)(encoder)
    bank, queries = (features_for_split(encoder, data_config, split) for split in ("train", "val"))
    direct = linear_probe(bank, queries, 4, epochs=30)
    assert got["linear_top1"] == direct["linear_top1"] and got["linear_top5"] == direct["linear_top5"]
    assert got["mean_top1"] == pytest.approx((got["knn_top1"] + got["linear_top1"]) / 2)
