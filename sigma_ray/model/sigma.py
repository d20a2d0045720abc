"""The whole pretraining model: video MAE + target projection + prototypes + objective, one forward to a loss."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from sigma_ray.config import ConfigError, check_choice, check_range
from sigma_ray.losses import PixelMSELoss, SwappedPredictionLoss
from sigma_ray.model.projection import PixelTubeMLP, Prototypes, TeacherProjection, normalize_tubes, tube_pixels
from sigma_ray.model.vit import ModelConfig, VideoMAE, gather_tokens, split_indices

ObjectiveKind = Literal["sigma_mlp", "sigma_dino", "videomae"]


@dataclass(frozen=True)
class ObjectiveConfig:
    """What the decoder predicts. ``sigma_mlp`` / ``sigma_dino``: prototype codes of the pixel-tube MLP's or a
    frozen image teacher's features (SIGMA); ``videomae``: normalized pixels (the baseline)."""

    kind: ObjectiveKind = "sigma_mlp"
    num_prototypes: int = 3000
    feature_dim: int = 256
    temperature: float = 0.1
    sinkhorn_eps: float = 0.05
    sinkhorn_iterations: int = 10
    hard_codes: bool = True
    gather: bool = True
    teacher_model: str = "vit_base_patch16_224.dino"
    teacher_checkpoint: str | None = None

    def validate(self) -> None:
        check_choice("kind", self.kind, ("sigma_mlp", "sigma_dino", "videomae"))
        check_range("num_prototypes", self.num_prototypes, 2)
        check_range("feature_dim", self.feature_dim, 1)
        check_range("temperature", self.temperature, 0.0, lo_open=True)
        check_range("sinkhorn_eps", self.sinkhorn_eps, 0.0, lo_open=True)
        check_range("sinkhorn_iterations", self.sinkhorn_iterations, 1)
        if self.kind == "sigma_dino" and not self.teacher_checkpoint:
            raise ConfigError("teacher_checkpoint must name a local weights file when kind = 'sigma_dino'")


class SigmaModel(nn.Module):
    """``forward(clips, mask)`` -> dict with ``loss`` and its terms.

    ``clips``: ``B x 3 x T x H x W`` normalized float; ``mask``: ``B x N`` bool (True = masked), the same count
    in every clip. Gradients: the projection side's scores train the projection and the prototypes; the video
    side scores against detached prototypes and trains the encoder and decoder.
    """

    def __init__(self, model: ModelConfig = ModelConfig(), objective: ObjectiveConfig = ObjectiveConfig()):
        super().__init__()
        self.config, self.objective = model, objective
        if objective.kind == "videomae":
            self.projection, self.prototypes = None, None
            self.video = VideoMAE(model, model.tube_pixels)
            self.loss = PixelMSELoss()
            return
        if objective.kind == "sigma_dino":
            self.projection = TeacherProjection(objective.teacher_model, objective.teacher_checkpoint,
                                                model.img_size, model.tubelet, model.patch)
            self.video = VideoMAE(model, self.projection.out_dim)
        else:
            # The video model first: under one seed, SIGMA-MLP and the pixel baseline start from the same encoder.
            self.video = VideoMAE(model, objective.feature_dim)
            self.projection = PixelTubeMLP(model.tube_pixels, objective.feature_dim, tubelet=model.tubelet,
                                           patch=model.patch)
        self.prototypes = Prototypes(objective.num_prototypes, self.video.decoder.head.out_features)
        self.loss = SwappedPredictionLoss(objective.num_prototypes, objective.temperature, objective.sinkhorn_eps,
                                          objective.sinkhorn_iterations, objective.hard_codes, objective.gather)

    @property
    def encoder(self) -> nn.Module:
        return self.video.encoder

    def forward(self, clips: torch.Tensor, mask: torch.Tensor, num_masked: int | None = None
                ) -> dict[str, torch.Tensor]:
        visible_idx, masked_idx = split_indices(mask, num_masked)
        pred = self.video(clips, visible_idx, masked_idx)  # B x Nm x D
        if self.prototypes is None:
            target = normalize_tubes(gather_tokens(tube_pixels(clips, self.config.tubelet, self.config.patch),
                                                   masked_idx))
            return self.loss(pred, target)
        self.prototypes.normalize_()
        target = self.projection(clips, masked_idx)
        scores_video = self.prototypes(pred.flatten(0, 1), detach=True)
        scores_proj = self.prototypes(target.flatten(0, 1))
        return self.loss(scores_video, scores_proj)


def build_model(model: ModelConfig = ModelConfig(), objective: ObjectiveConfig = ObjectiveConfig()) -> SigmaModel:
    return SigmaModel(model, objective)
