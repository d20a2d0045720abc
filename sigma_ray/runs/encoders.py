"""Loading what a run left: the encoder of an export, a run directory or a checkpoint, and a run's whole
pretraining model. No Ray.

A checkpoint is read (verified, weights-only) through :mod:`sigma_ray.runs.checkpoint`: its model state holds the
encoder under ``video.encoder.``, and the encoder's ModelConfig is the ``model`` section of ``config.yaml`` in the
run directory above the checkpoint. Any of them may be on object storage (``s3://...``).
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from sigma_ray.infra.config import from_dict, load_yaml
from sigma_ray.method.vit import ModelConfig, VideoEncoder
from sigma_ray.runs.checkpoint import CheckpointError, load_model_state, newest_valid
from sigma_ray.runs.export import encoder_from_model_state, load_encoder
from sigma_ray.runs.files import CHECKPOINT_PREFIX, CONFIG_FILE, ENCODER_FILE, STATE_FILE, is_uri


def load_checkpoint_encoder(checkpoint_dir: str | Path) -> VideoEncoder:
    """The encoder of a training checkpoint directory (its model state + ``../config.yaml``), in eval mode."""
    checkpoint_dir = Path(checkpoint_dir)
    run_config = checkpoint_dir.parent / CONFIG_FILE
    if not run_config.is_file():
        raise FileNotFoundError(f"{checkpoint_dir} is a checkpoint, but its run directory has no {CONFIG_FILE} "
                                f"(needed for the model shape): expected {run_config}")
    model_config = from_dict(ModelConfig, load_yaml(run_config).get("model", {}), prefix="model")
    state, info = load_model_state(checkpoint_dir)
    try:
        encoder = encoder_from_model_state(state, model_config)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{checkpoint_dir / STATE_FILE}: {str(e).splitlines()[0]}") from None
    encoder.export_meta = {"step": info.step, "checkpoint": str(checkpoint_dir)}
    return encoder


def resolve_encoder(path: str | Path) -> tuple[str, Path]:
    """What ``path`` names: ``("export", file)`` or ``("checkpoint", directory)``.

    A run directory resolves to its ``encoder.pt`` when there is one, else to its newest valid checkpoint
    (damaged ones are skipped, and a line says which and why).
    """
    path = Path(path)
    if path.is_file():
        return "export", path
    if not path.is_dir():
        raise FileNotFoundError(f"encoder {path} does not exist")
    if (path / STATE_FILE).is_file():
        return "checkpoint", path
    if (path / ENCODER_FILE).is_file():
        return "export", path / ENCODER_FILE
    newest = newest_valid(path, on_skip=lambda p, why: print(f"[sigma-ray] skipping {p.name}: {why}", flush=True))
    if newest is not None:
        return "checkpoint", newest.path
    raise FileNotFoundError(f"{path} holds neither {ENCODER_FILE}, {STATE_FILE} nor a valid "
                            f"{CHECKPOINT_PREFIX}*/ checkpoint")


def load_any_encoder(path: str | Path) -> tuple[VideoEncoder, Path | str]:
    """Load the encoder ``path`` names (see :func:`resolve_encoder`); returns it (eval mode, CPU) and the file or
    checkpoint directory it came from. On object storage (``s3://...``) what it needs is downloaded first
    (:func:`sigma_ray.runs.object_rundir.fetch_encoder`) and the source is named by its URI."""
    if is_uri(str(path)):
        import tempfile

        from sigma_ray.runs.object_rundir import fetch_encoder

        with tempfile.TemporaryDirectory() as tmp:
            local, remote = fetch_encoder(str(path), Path(tmp))
            encoder, where = load_any_encoder(local)
        source = f"{remote}/{Path(where).relative_to(tmp).as_posix()}"
        if "checkpoint" in getattr(encoder, "export_meta", {}):
            encoder.export_meta["checkpoint"] = source
        return encoder, source
    kind, where = resolve_encoder(path)
    return (load_encoder(where) if kind == "export" else load_checkpoint_encoder(where)), where


def load_model(run_dir: str | Path, model_config: ModelConfig, objective) -> nn.Module:
    """The whole pretraining model (encoder, decoder, projection, prototypes) from the run's newest valid
    checkpoint, in eval mode. ``objective``: the run's :class:`~sigma_ray.method.sigma.ObjectiveConfig`."""
    from sigma_ray.method.sigma import build_model

    model = build_model(model_config, objective)
    model.load_state_dict(load_model_state(newest_valid(run_dir).path)[0])
    return model.eval()
