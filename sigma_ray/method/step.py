"""One SIGMA training step without Ray: normalize on the device, forward under autocast, backward, step.

The Ray trainer and the GPU benchmark both call these functions. Metrics stay on the device as 0-d tensors
(no host-device sync inside the step); the caller turns them into numbers at its log interval.
"""
from __future__ import annotations

import random
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_METRIC_KEYS = ("loss", "loss_video", "loss_proj", "loss_pixel", "perplexity_video", "perplexity_proj",
                "codes_per_clip_video", "codes_per_clip_proj")


def normalize_clips(clips: torch.Tensor, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``B x T x H x W x C`` -> ImageNet-normalized ``B x C x T x H x W`` of ``dtype`` on ``device``.

    The uint8 tensor crosses to the device first (4x fewer bytes than float32), the arithmetic happens there.
    """
    clips = torch.as_tensor(clips).to(device, non_blocking=True)
    mean = torch.tensor(IMAGENET_MEAN, device=clips.device, dtype=torch.float32) * 255
    std = torch.tensor(IMAGENET_STD, device=clips.device, dtype=torch.float32) * 255
    x = (clips.float() - mean) / std
    return x.permute(0, 4, 1, 2, 3).to(dtype).contiguous()


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None):
    """bf16/fp16 autocast on the device, or nothing when ``amp_dtype`` is None (float32)."""
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


def amp_dtype_for(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a ``precision`` setting: ``auto`` is bf16 on CUDA and float32 (None: no autocast)
    elsewhere; ``bf16``, ``fp16`` and ``fp32`` are what they say."""
    if precision == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def seed_everything(seed: int) -> None:
    """Seed the torch, numpy and python RNGs of this process with ``seed``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def forward_backward(model: nn.Module, batch: dict, device: torch.device, amp_dtype: torch.dtype | None = None,
                     loss_scale: float = 1.0, scaler: torch.amp.GradScaler | None = None) -> dict[str, torch.Tensor]:
    """Forward and backward of one (micro-)batch; gradients accumulate. ``batch`` has ``clips`` (uint8
    B x T x H x W x C) and ``masks`` (bool B x N, host or device). ``loss_scale`` divides the loss for gradient
    accumulation. Returns the detached loss terms and perplexities."""
    masks = torch.as_tensor(batch["masks"])
    num_masked = int(masks[0].sum())  # counted on the host copy: no device sync
    clips = normalize_clips(batch["clips"], device)
    masks = masks.to(device, non_blocking=True)
    with autocast_context(device, amp_dtype):
        out = model(clips, masks, num_masked=num_masked)
    loss = out["loss"] * loss_scale
    (scaler.scale(loss) if scaler is not None else loss).backward()
    return {k: out[k].detach() for k in _METRIC_KEYS if k in out}


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None,
                   grad_clip: float | None = None) -> torch.Tensor:
    """Unscale, compute the total gradient norm (clip when ``grad_clip``), step, zero the gradients.

    Returns the pre-clip gradient norm as a 0-d tensor.
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else float("inf"))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm.detach()


def train_step(model: nn.Module, batch: dict, optimizer: torch.optim.Optimizer, device: torch.device | str = "cpu",
               amp_dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None,
               grad_clip: float | None = None) -> dict[str, torch.Tensor]:
    """One full step on one batch: forward, backward, optimizer step. Returns the metrics plus ``grad_norm``."""
    device = torch.device(device)
    metrics = forward_backward(model, batch, device, amp_dtype, scaler=scaler)
    metrics["grad_norm"] = optimizer_step(model, optimizer, scaler, grad_clip)
    return metrics


def metrics_to_floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """One host transfer for all metrics (call at log intervals only)."""
    keys = list(metrics)
    values = torch.stack([metrics[k].float().reshape(()) for k in keys]).cpu().tolist()
    return dict(zip(keys, values))
