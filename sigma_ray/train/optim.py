"""AdamW with the MAE/VideoMAE parameter groups, the paper's lr scaling, and per-step warm-up + cosine schedules."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sigma_ray.infra.schedule import cosine, scaled_lr, warmup_cosine

# Parameters whose name contains one of these get no weight decay (besides every parameter with ndim <= 1).
NO_DECAY_NAMES = ("bias", "norm", "pos_embed", "mask_token", "cls_token")


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """True for norms, biases, 1-d parameters, position embeddings and mask tokens."""
    leaf = name.split(".")
    return param.ndim <= 1 or any(key in part for part in leaf for key in NO_DECAY_NAMES)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: ``decay`` (weight_decay) and ``no_decay`` (0). Frozen parameters are left out."""
    decay, skip = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (skip if no_weight_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": skip, "weight_decay": 0.0, "name": "no_decay"}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                    device: torch.device | str = "cpu") -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; the fused CUDA kernel when the model lives on a GPU."""
    fused = torch.device(device).type == "cuda"
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), fused=fused or None)


@dataclass(frozen=True)
class Schedule:
    """Per-step learning rate (linear warm-up from ~0 to ``peak_lr``, then cosine to ``min_lr``) and weight decay
    (cosine from ``weight_decay`` to ``weight_decay_end`` over the whole run when that is set)."""

    total_steps: int
    warmup_steps: int
    peak_lr: float
    min_lr: float
    weight_decay: float
    weight_decay_end: float | None = None

    def lr(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based)."""
        return warmup_cosine(step, self.total_steps, self.warmup_steps, self.peak_lr, self.min_lr)

    def wd(self, step: int) -> float:
        if self.weight_decay_end is None:
            return self.weight_decay
        return cosine(step, self.total_steps, self.weight_decay, self.weight_decay_end)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr (and the decayed group's weight decay) for ``step``; returns the lr."""
        lr, wd = self.lr(step), self.wd(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
            if group.get("name") == "decay":
                group["weight_decay"] = wd
        return lr


def make_schedule(train, total: int, global_batch: int) -> Schedule:
    """The run's schedule from a TrainConfig over ``total`` optimizer steps
    (:func:`~sigma_ray.train.config.run_length`'s): warm-up the same fraction of the run as ``warmup_epochs /
    epochs``, lrs scaled by the global batch."""
    warmup = int(round(total * train.warmup_epochs / train.epochs))
    return Schedule(total, warmup, scaled_lr(train.base_lr, global_batch), scaled_lr(train.min_lr, global_batch),
                    train.weight_decay, train.weight_decay_end)
