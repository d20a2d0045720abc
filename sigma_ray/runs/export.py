"""sigma-ray's own weight files, loadable without Ray.

- ``encoder.pt`` = {"format", "model_config", "state_dict", "meta"[, "classifier_head"]}: the pretrained encoder
  alone (the evaluation code calls :func:`load_encoder`); an imported fine-tuned classifier keeps its ``fc_norm``
  and linear head beside it.
- ``model.pt`` = {"format", "model_config", "objective", "state_dict", "meta"}: a whole pretraining model's state
  (written by ``sigma-ray import`` from a released pretraining checkpoint) that ``train.init_from`` starts a run
  from (:func:`init_from_model_state`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sigma_ray.infra.checks import ConfigError
from sigma_ray.infra.config import from_dict
from sigma_ray.method.vit import ModelConfig, VideoEncoder
from sigma_ray.runs.files import write_atomic
from sigma_ray.runs.weights import CheckpointError, load_weights

FORMAT = "sigma-ray-encoder/1"
MODEL_FORMAT = "sigma-ray-model/1"
# The objective fields that shape a pretraining model's weights (what a model.pt must agree with).
OBJECTIVE_SHAPE_FIELDS = ("kind", "num_prototypes", "feature_dim", "teacher_model")
ENCODER_PREFIX = "video.encoder."     # where a SigmaModel's state dict keeps the encoder (SigmaModel.video.encoder)


def _atomic_save(blob: dict[str, Any], path: str | Path) -> Path:
    return write_atomic(path, lambda tmp: torch.save(blob, tmp))


def save_encoder(encoder: nn.Module, config: ModelConfig, path: str | Path, meta: dict[str, Any] | None = None,
                 classifier_head: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the encoder's weights with its ModelConfig (as a dict) and free-form ``meta`` (step, run name...).
    ``classifier_head``: a fine-tuned classifier's ``fc_norm.*`` and ``head.*`` tensors (VideoClassifier names)."""
    blob = {"format": FORMAT, "model_config": dataclasses.asdict(config),
            "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()}, "meta": dict(meta or {})}
    if classifier_head is not None:
        blob["classifier_head"] = {k: v.detach().cpu() for k, v in classifier_head.items()}
    return _atomic_save(blob, path)


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu") -> VideoEncoder:
    """A :class:`VideoEncoder` with the exported weights (strict), in eval mode. ``encoder.config`` is its
    ModelConfig, ``encoder.export_meta`` the metadata saved with it and ``encoder.classifier_head`` the classifier
    head saved with it (None for a pretrained encoder). Raises CheckpointError (a ValueError) naming the file when
    it is not such an export."""
    blob = load_weights(path, f"a sigma-ray encoder export ({FORMAT})", map_location)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a torch file, but not a sigma-ray encoder export ({FORMAT})")
    cfg = dict(blob["model_config"])
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    # Exports written before ``pos_embed`` existed were trained with the 3-D table (the default then).
    cfg.setdefault("pos_embed", "sincos_3d")
    encoder = VideoEncoder(from_dict(ModelConfig, cfg))
    encoder.load_state_dict(blob["state_dict"], strict=True)
    encoder.export_meta = blob.get("meta", {})
    encoder.classifier_head = blob.get("classifier_head")
    return encoder.eval()


def encoder_from_model_state(model_state: dict[str, torch.Tensor], config: ModelConfig) -> VideoEncoder:
    """The encoder inside a whole SigmaModel's state dict (a training checkpoint's ``"model"``), loaded strictly,
    in eval mode. Raises ValueError when the state holds no encoder weights."""
    state = {k[len(ENCODER_PREFIX):]: v for k, v in model_state.items() if k.startswith(ENCODER_PREFIX)}
    if not state:
        raise ValueError(f"the model state has no '{ENCODER_PREFIX}*' weights")
    encoder = VideoEncoder(config)
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


def save_model_state(state: dict[str, torch.Tensor], config: ModelConfig, objective: Any, path: str | Path,
                     meta: dict[str, Any] | None = None) -> Path:
    """Write a pretraining model's state dict (SigmaModel keys) with its ModelConfig and the shape-giving fields of
    its ObjectiveConfig ``objective``."""
    return _atomic_save({"format": MODEL_FORMAT, "model_config": dataclasses.asdict(config),
                         "objective": {f: getattr(objective, f) for f in OBJECTIVE_SHAPE_FIELDS},
                         "state_dict": {k: v.detach().cpu() for k, v in state.items()}, "meta": dict(meta or {})},
                        path)


def load_model_file(path: str | Path, model_config: ModelConfig, objective: Any, field: str = "train.init_from"
                    ) -> dict[str, torch.Tensor]:
    """The state dict of a ``model.pt`` (weights only, memory-mapped), after checking that it was written for this
    model: every ModelConfig field but ``drop_path`` and the objective's shape-giving fields must agree (ConfigError
    naming ``field`` and the disagreeing field otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{field} = {str(path)!r} is not a file")
    try:
        blob = load_weights(path, "a sigma-ray model state", mmap=True)
    except CheckpointError as e:
        raise ConfigError(f"{field}: {e}") from None
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise ConfigError(f"{field} = {str(path)!r} is not a sigma-ray model state ({MODEL_FORMAT}; "
                          "`sigma-ray import` writes one)")
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in blob["model_config"].items()}
    for name, value in dataclasses.asdict(model_config).items():
        if name != "drop_path" and saved.get(name) != value:
            raise ConfigError(f"{field} = {str(path)!r} holds a model with model.{name} = {saved.get(name)!r}; "
                              f"this run has model.{name} = {value!r}")
    kind = blob["objective"]["kind"]
    relevant = {"kind": True, "num_prototypes": kind != "videomae", "feature_dim": kind == "sigma_mlp",
                "teacher_model": kind == "sigma_dino"}
    for name, check in relevant.items():
        if check and blob["objective"][name] != getattr(objective, name):
            raise ConfigError(f"{field} = {str(path)!r} holds a model with objective.{name} = "
                              f"{blob['objective'][name]!r}; this run has objective.{name} = "
                              f"{getattr(objective, name)!r}")
    return blob["state_dict"]


def init_from_model_state(model: nn.Module, path: str | Path, model_config: ModelConfig, objective: Any) -> None:
    """Load a ``model.pt`` into a freshly built SigmaModel (:func:`load_model_file` checks it was written for this
    model). Every parameter must be in the file and every tensor of the file must be used, except SIGMA-DINO's
    frozen teacher (``projection.teacher.*``, loaded from ``objective.teacher_checkpoint`` as in the release);
    buffers the file lacks (run state such as a feature queue) keep their initial values."""
    state = load_model_file(path, model_config, objective)
    missing, unexpected = model.load_state_dict(state, strict=False)
    params = {name for name, _ in model.named_parameters()}
    missing = [k for k in missing if k in params and not k.startswith("projection.teacher.")]
    if missing or unexpected:
        raise ValueError(f"{path}: does not fit the model"
                         + (f"; missing: {', '.join(missing)}" if missing else "")
                         + (f"; unexpected: {', '.join(unexpected)}" if unexpected else ""))
