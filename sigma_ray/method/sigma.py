"""The whole pretraining model: video MAE + target projection + prototypes + objective, one forward to a loss."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from sigma_ray.infra.checks import ConfigError, check_choice, check_range
from sigma_ray.method.losses import PixelMSELoss, SwappedPredictionLoss
from sigma_ray.method.projection import PixelTubeMLP, Prototypes, TeacherProjection, tube_pixels, tube_target
from sigma_ray.method.queue import FeatureQueue
from sigma_ray.method.sinkhorn import codes_per_clip
from sigma_ray.method.vit import ModelConfig, VideoMAE, gather_tokens, split_indices

ObjectiveKind = Literal["sigma_mlp", "sigma_dino", "videomae"]


@dataclass(frozen=True)
class ObjectiveConfig:
    """What the decoder predicts. ``sigma_mlp`` / ``sigma_dino``: prototype codes of the pixel-tube MLP's or a
    frozen image teacher's features (SIGMA); ``videomae``: pixels (the baseline), each tube's channels standardized
    (``normalize_target``, VideoMAE's default) or, with ``normalize_target: false``, raw [0, 1] pixels (VideoMAE's
    other setting; for SIGMA-MLP the projection always reads standardized tubes, so the switch is refused there).

    Levers for small batches, all off by default (the paper's runs need none): ``queue_length`` keeps that many
    of the last batches' features per side and worker in each Sinkhorn call (SwAV's queue, see
    :mod:`sigma_ray.method.queue`), from training batch ``queue_start`` on; ``freeze_prototypes`` keeps the prototypes
    fixed for that many training batches (SwAV's ``freeze_prototypes_niters``). Training batches are forward
    passes in training mode (optimizer steps x ``train.accumulate_steps``). ``projection_hidden``: the widths of
    SIGMA-MLP's hidden layers (the paper's 1024, 1024, 512 for ViT-S/B). ``target_motion`` adds the differences
    between a masked tube's consecutive frames (:func:`~sigma_ray.method.projection.tube_motion`) to what the target
    side reads: SIGMA-MLP's projection input, or VideoMAE's pixel target (then the decoder predicts them too). Off
    in the paper (the tube alone); needs a tubelet of 2 or more and standardized tubes. ``freeze_projection`` keeps
    SIGMA-MLP's projection at its random initial weights (only the prototypes learn on the target side, as with
    SIGMA-DINO's frozen teacher): its codes then cluster fixed random features of the tubes, which keep what the
    tube holds (its motion included), instead of features trained to be predictable from the visible tubes.
    """

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
    projection_hidden: tuple[int, ...] = (1024, 1024, 512)
    target_motion: bool = False
    freeze_projection: bool = False
    queue_length: int = 0
    queue_start: int = 0
    freeze_prototypes: int = 0
    normalize_target: bool = True

    def validate(self) -> None:
        check_choice("kind", self.kind, ("sigma_mlp", "sigma_dino", "videomae"))
        check_range("num_prototypes", self.num_prototypes, 2)
        check_range("feature_dim", self.feature_dim, 1)
        check_range("temperature", self.temperature, 0.0, lo_open=True)
        check_range("sinkhorn_eps", self.sinkhorn_eps, 0.0, lo_open=True)
        check_range("sinkhorn_iterations", self.sinkhorn_iterations, 1)
        for i, width in enumerate(self.projection_hidden):
            check_range(f"projection_hidden[{i}]", width, 1)
        check_range("queue_length", self.queue_length, 0)
        check_range("queue_start", self.queue_start, 0)
        check_range("freeze_prototypes", self.freeze_prototypes, 0)
        if not self.normalize_target and self.kind != "videomae":
            raise ConfigError(f"normalize_target = False applies to kind = 'videomae' only, not {self.kind!r} "
                              "(SIGMA-MLP's projection reads standardized tubes)")
        if self.target_motion and (self.kind == "sigma_dino" or not self.normalize_target):
            raise ConfigError("target_motion applies to SIGMA-MLP's projection and to VideoMAE's standardized pixel "
                              f"target, not to kind = {self.kind!r} with normalize_target = {self.normalize_target}")
        if self.freeze_projection and self.kind != "sigma_mlp":
            raise ConfigError(f"freeze_projection applies to kind = 'sigma_mlp' only, not {self.kind!r}")
        if self.kind == "sigma_dino" and not self.teacher_checkpoint:
            raise ConfigError("teacher_checkpoint must name a local weights file when kind = 'sigma_dino'")


class SigmaModel(nn.Module):
    """``forward(clips, mask)`` -> dict with ``loss`` and its terms.

    ``clips``: ``B x 3 x T x H x W`` normalized float; ``mask``: ``B x N`` bool (True = masked), the same count
    in every clip. Gradients: the projection side's scores train the projection and the prototypes; the video
    side scores against detached prototypes and trains the encoder and decoder.

    With a queue or a prototype freeze on, the model counts its training batches (``batches_seen``) for the queue's
    start and the freeze; a resumed trainer sets it from the step (it is ``step x accumulate_steps``), so the state
    dict stays tensors only, as the release's. Each side's :class:`FeatureQueue` is per-process state, saved by
    :meth:`queue_state_dict` (a checkpoint keeps one per rank).
    """

    def __init__(self, model: ModelConfig = ModelConfig(), objective: ObjectiveConfig = ObjectiveConfig()):
        super().__init__()
        self.config, self.objective = model, objective
        self.batches_seen = 0
        self.queues = ({"video": FeatureQueue(objective.queue_length), "proj": FeatureQueue(objective.queue_length)}
                       if objective.queue_length and objective.kind != "videomae" else {})
        if objective.kind == "videomae":
            self.projection, self.prototypes = None, None
            self.video = VideoMAE(model, target_width(model, objective.target_motion))
            self.loss = PixelMSELoss()
            return
        if objective.kind == "sigma_dino":
            self.projection = TeacherProjection(objective.teacher_model, objective.teacher_checkpoint,
                                                model.img_size, model.tubelet, model.patch)
            self.video = VideoMAE(model, self.projection.out_dim)
        else:
            # The video model first: under one seed, SIGMA-MLP and the pixel baseline start from the same encoder.
            self.video = VideoMAE(model, objective.feature_dim)
            self.projection = PixelTubeMLP(target_width(model, objective.target_motion), objective.feature_dim,
                                           objective.projection_hidden, tubelet=model.tubelet, patch=model.patch,
                                           motion=objective.target_motion)
            self.projection.requires_grad_(not objective.freeze_projection)
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
            tubes = gather_tokens(tube_pixels(clips, self.config.tubelet, self.config.patch), masked_idx)
            return self.loss(pred, tube_target(tubes, self.config.tubelet, self.objective.normalize_target,
                                               self.objective.target_motion))
        self.prototypes.normalize_()
        target = self.projection(clips, masked_idx)
        levers = bool(self.queues) or self.objective.freeze_prototypes > 0
        scores_video = self.prototypes(pred.flatten(0, 1), detach=True)
        scores_proj = self.prototypes(target.flatten(0, 1), frozen=levers and self._prototypes_frozen())
        queued_video, queued_proj = self._queued_scores() if levers else (None, None)
        out = self.loss(scores_video, scores_proj, queued_video, queued_proj)
        out["codes_per_clip_video"] = codes_per_clip(out["codes_video"].view(pred.shape[:2]))
        out["codes_per_clip_proj"] = codes_per_clip(out["codes_proj"].view(pred.shape[:2]))
        if levers and self.training:
            self._after_batch(pred, target)
        return out

    # The levers' bookkeeping is host-side (counters, a growing queue): kept out of torch.compile's graph so a
    # compiled model does not recompile for every new counter value; the paper's defaults never call it.
    @torch.compiler.disable
    def _prototypes_frozen(self) -> bool:
        return self.training and self.batches_seen < self.objective.freeze_prototypes

    @torch.compiler.disable
    def _queued_scores(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Each side's queued features scored against the current (detached) prototypes, once the queue started."""
        if not self.queues or self.batches_seen < self.objective.queue_start:
            return None, None
        rows = [self.queues[side].features() for side in ("video", "proj")]
        return tuple(None if r is None else self.prototypes(r, detach=True) for r in rows)

    @torch.compiler.disable
    def _after_batch(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.batches_seen += 1
        for side, feats in (("video", pred), ("proj", target)):
            if side in self.queues:
                self.queues[side].push(nn.functional.normalize(feats.detach().flatten(0, 1).float(), dim=-1))

    def queue_state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """This process's queues (tensors only), ``{}`` without a queue."""
        return {side: q.state_dict() for side, q in self.queues.items()}

    def load_queue_state_dict(self, state: dict[str, dict[str, torch.Tensor]], device: torch.device | str) -> None:
        for side, q in self.queues.items():
            q.load_state_dict(state.get(side, {}), device)


def target_width(model: ModelConfig, motion: bool) -> int:
    """Values per masked tube on the target side: its pixels, plus its frame-to-frame differences with ``motion``.
    Raises ConfigError for ``motion`` with a one-frame tubelet (a tube has no differences then)."""
    if not motion:
        return model.tube_pixels
    if model.tubelet < 2:
        raise ConfigError(f"objective.target_motion needs model.tubelet >= 2 (the differences between a tube's "
                          f"frames), not {model.tubelet}")
    return model.tube_pixels * (2 * model.tubelet - 1) // model.tubelet


def build_model(model: ModelConfig = ModelConfig(), objective: ObjectiveConfig = ObjectiveConfig()) -> SigmaModel:
    return SigmaModel(model, objective)
