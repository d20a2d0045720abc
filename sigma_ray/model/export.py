"""The pretrained encoder alone, as one file loadable without Ray: ``encoder.pt`` = {"format", "model_config",
"state_dict", "meta"}. The evaluation code calls :func:`load_encoder`."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sigma_ray.config import from_dict
from sigma_ray.model.vit import ModelConfig, VideoEncoder
from sigma_ray.weights import CheckpointError, load_weights

FORMAT = "sigma-ray-encoder/1"
ENCODER_PREFIX = "video.encoder."     # where a SigmaModel's state dict keeps the encoder (SigmaModel.video.encoder)


def save_encoder(encoder: nn.Module, config: ModelConfig, path: str | Path, meta: dict[str, Any] | None = None
                 ) -> Path:
    """Write the encoder's weights with its ModelConfig (as a dict) and free-form ``meta`` (step, run name...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": FORMAT, "model_config": dataclasses.asdict(config), "state_dict": state,
                "meta": dict(meta or {})}, tmp)
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu") -> VideoEncoder:
    """A :class:`VideoEncoder` with the exported weights (strict), in eval mode. ``encoder.config`` is its
    ModelConfig and ``encoder.export_meta`` the metadata saved with it. Raises CheckpointError (a ValueError)
    naming the file when it is not such an export."""
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
