"""Fine-tuning: the pretrained encoder plus a LayerNorm + linear head on mean-pooled tokens, trained end to end
with VideoMAE's recipe (which SIGMA follows) and scored with multi-view test accuracy.

Recipe (defaults in :class:`~sigma_ray.eval.config.FinetuneConfig`): AdamW with layer-wise lr decay (block
``i`` of ``L`` gets ``decay ** (L - i)`` of the lr; the embedding ``decay ** (L + 1)``; the final norm and the
head the full lr), linear warm-up then cosine, stochastic depth, mixup/cutmix with label smoothing (timm's
Mixup + SoftTargetCrossEntropy), RandAugment and random erasing. Every augmentation is the same for all frames
of a clip (a per-frame RandAugment would make motion out of noise). The augmentation runs on the consumer's
CPU after the data pipeline's crop, in this process; the model runs on ``device``.
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Iterable

import torch
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing
from timm.layers import trunc_normal_
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn
from torchvision.transforms import InterpolationMode, v2

from sigma_ray.data.config import DataConfig
from sigma_ray.eval.config import FinetuneConfig
from sigma_ray.eval.features import average_by_video, eval_batches, eval_mode
from sigma_ray.eval.metrics import log, topk_accuracy
from sigma_ray.infra.schedule import scaled_lr, warmup_cosine
from sigma_ray.method.step import amp_dtype_for, autocast_context, normalize_clips, seed_everything
from sigma_ray.method.vit import VideoEncoder

FILL = (124, 116, 104)   # ImageNet mean in uint8: what geometric RandAugment ops fill uncovered pixels with


class VideoClassifier(nn.Module):
    """``encoder`` -> mean over tokens -> LayerNorm -> Linear. ``forward`` takes normalized ``B x C x T x H x W``
    clips and returns logits ``B x num_classes``."""

    def __init__(self, encoder: VideoEncoder, num_classes: int, init_scale: float = 0.001):
        super().__init__()
        self.encoder = encoder
        self.fc_norm = nn.LayerNorm(encoder.embed_dim, eps=encoder.config.fc_norm_eps)
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.head.weight.mul_(init_scale)   # near-zero logits at first: the encoder is not shaken up early

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(self.encoder.forward_features(clips).mean(dim=1)))

    def load_head(self, state: dict[str, torch.Tensor]) -> None:
        """Start from a fine-tuned classifier's ``fc_norm.*`` and ``head.*`` tensors (strict: all four, same
        shapes)."""
        self.fc_norm.load_state_dict({k[len("fc_norm."):]: v for k, v in state.items() if k.startswith("fc_norm.")})
        self.head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})


def with_drop_path(encoder: VideoEncoder, rate: float) -> VideoEncoder:
    """A copy of ``encoder`` (same weights, same device) built with stochastic depth ``rate`` (linearly rising
    over the blocks). Rebuilt rather than patched: a block made without drop path has no DropPath module."""
    copy = VideoEncoder(dataclasses.replace(encoder.config, drop_path=rate))
    copy.load_state_dict(encoder.state_dict(), strict=True)
    copy.export_meta = dict(getattr(encoder, "export_meta", {}))
    return copy.to(next(encoder.parameters()).device)


def layer_id(name: str, depth: int) -> int:
    """Depth of a parameter of :class:`VideoClassifier` for lr decay: 0 for the embedding, ``i + 1`` for encoder
    block ``i``, ``depth + 1`` for the final encoder norm and the head."""
    if name.startswith(("encoder.patch_embed", "encoder.pos_embed")):
        return 0
    match = re.match(r"encoder\.blocks\.(\d+)\.", name)
    return int(match.group(1)) + 1 if match else depth + 1


def param_groups(model: VideoClassifier, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW parameter groups, one per (layer, decayed or not). Each group carries ``lr_scale`` =
    ``layer_decay ** (depth + 1 - layer)``, ``layer`` and the parameter ``names``; biases and norm weights
    (1-d parameters) get no weight decay."""
    depth = len(model.encoder.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_id(name, depth)
        decay = param.ndim > 1
        group = groups.setdefault((layer, decay), {
            "params": [], "names": [], "layer": layer, "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": layer_decay ** (depth + 1 - layer)})
        group["params"].append(param)
        group["names"].append(name)
    return [groups[k] for k in sorted(groups)]


class ClipAugment:
    """RandAugment (uint8) then normalization then random erasing, each the same across a clip's frames.

    ``__call__``: uint8 ``B x T x H x W x C`` (any device) -> normalized float32 ``B x C x T x H x W`` on the CPU.
    RandAugment is torchvision's, applied to the clip as a ``T x C x H x W`` batch (one draw of ops and
    magnitudes per call, hence per clip); magnitude is on timm's 0..10 scale. Random erasing is timm's (one box,
    per-pixel normal noise), the same box and noise pasted into every frame.
    """

    def __init__(self, config: FinetuneConfig):
        self.rand_augment = (v2.RandAugment(config.rand_augment_ops, config.rand_augment_magnitude,
                                            num_magnitude_bins=11, interpolation=InterpolationMode.BILINEAR,
                                            fill=list(FILL)) if config.rand_augment else None)
        self.erasing = (RandomErasing(config.random_erasing, mode="pixel", max_count=1, device="cpu")
                        if config.random_erasing > 0 else None)

    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        clips = torch.as_tensor(clips).cpu()
        if self.rand_augment is not None:
            clips = torch.stack([self.rand_augment(c.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) for c in clips])
        x = normalize_clips(clips)
        if self.erasing is not None:
            _, c, _, h, w = x.shape
            for i in range(x.shape[0]):
                # timm draws the box and its noise on a NaN frame; the non-NaN pixels are then pasted into every
                # frame, so the erased patch is a static occluder rather than flickering noise
                erased = self.erasing(torch.full((c, h, w), float("nan")))
                x[i] = torch.where(erased.isnan()[:, None], x[i], erased[:, None])
        return x


def make_mixup(config: FinetuneConfig, num_classes: int) -> Mixup | None:
    if not config.mixing:
        return None
    return Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
                 switch_prob=config.mixup_switch_prob, mode="batch", label_smoothing=config.label_smoothing,
                 num_classes=num_classes)


def make_criterion(config: FinetuneConfig) -> nn.Module:
    """Soft-target CE with mixing (the targets already hold the smoothing), else label-smoothed or plain CE."""
    if config.mixing:
        return SoftTargetCrossEntropy()
    if config.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(config.label_smoothing)
    return nn.CrossEntropyLoss()


def mix_clips(mixup: Mixup, clips: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's Mixup on ``B x C x T x H x W`` clips: viewed as ``B x (C*T) x H x W`` images, so a cutmix box is cut
    through every frame at the same place. B must be even (timm mixes a batch with its reverse)."""
    b, c, t, h, w = clips.shape
    mixed, targets = mixup(clips.reshape(b, c * t, h, w), labels)
    return mixed.reshape(b, c, t, h, w), targets


def train_batches(data: DataConfig, epoch: int, pipeline=None) -> Iterable[dict]:
    """One epoch of the train split: from the Ray pipeline when given, else in-process."""
    if pipeline is not None:
        return pipeline.iter_torch_batches(epoch=epoch)
    from sigma_ray.data.iterator import ClipIterator

    return ClipIterator(data, "train", epoch=epoch, as_torch=True)


def predict_videos(model: nn.Module, batches: Iterable[dict], device: torch.device,
                   amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities per video, ``V x C`` (softmax averaged over each video's views), and labels ``V``."""
    probs, labels, ids = [], [], []
    with eval_mode(model), torch.no_grad():
        for batch in batches:
            if len(batch["video_ids"]) == 0:
                continue
            x = normalize_clips(batch["clips"], device)
            with autocast_context(device, amp_dtype):
                logits = model(x)
            probs.append(logits.float().softmax(dim=1).cpu())
            labels.append(torch.as_tensor(batch["labels"]).long().cpu())
            ids.append(torch.as_tensor(batch["video_ids"]).long().cpu())
    if not probs:
        raise ValueError("no batches to score")
    mean, video_labels, _ = average_by_video(torch.cat(probs), torch.cat(ids), torch.cat(labels))
    return mean, video_labels


def finetune(encoder: VideoEncoder, config: FinetuneConfig, data: DataConfig, num_classes: int,
             device: torch.device | str = "cpu", use_ray: bool = False, seed: int = 0,
             log_every: int = 20) -> dict:
    """Fine-tune a copy of ``encoder`` (the argument is not modified) and score it on ``config.test_split``.

    Batches of ``config.batch_size`` (default ``data.batch_size``) train clips; an epoch is
    ``len(train list) // batch`` steps, capped by ``config.steps_per_epoch``. Seeds the global torch, numpy and
    python RNGs with ``seed``. Returns ``finetune_top1`` / ``finetune_top5`` (percent, multi-view on the test
    split), ``finetune_train_loss`` (mean of the last epoch), ``steps``, ``history`` (per epoch: loss, lr,
    seconds), ``predictions`` and ``targets`` (per video), and ``model``: the trained VideoClassifier (eval mode).
    """
    from sigma_ray.data.annotations import load_split

    device = torch.device(device)
    seed_everything(seed)   # torch (RandAugment, drop path, init), numpy (timm's Mixup), python (RandomErasing)
    batch_size = config.batch_size or data.batch_size
    data = dataclasses.replace(data, batch_size=batch_size)
    num_train = len(load_split(data, "train")) * data.samples_per_video("train")
    steps_per_epoch = max(1, num_train // batch_size)
    if config.steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    lr, min_lr = scaled_lr(config.base_lr, batch_size), scaled_lr(config.min_lr, batch_size)
    amp_dtype = amp_dtype_for(config.precision, device)

    model = VideoClassifier(with_drop_path(encoder, config.drop_path), num_classes, config.head_init_scale)
    imported = getattr(encoder, "classifier_head", None)
    if imported is not None and imported["head.weight"].shape[0] == num_classes:
        # an imported fine-tuned classifier: like the release, keep its head when the class count fits
        model.load_head(imported)
        log(f"starting from the encoder's {num_classes}-class classifier head")
    model.to(device).train()
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay, config.layer_decay), lr=lr,
                                  betas=config.betas)
    augment, mixup, criterion = ClipAugment(config), make_mixup(config, num_classes), make_criterion(config)
    pipeline = None
    if use_ray:
        from sigma_ray.data.pipeline import ClipPipeline   # imports Ray: only on this path

        pipeline = ClipPipeline(data, "train")
    log(f"fine-tuning: {config.epochs} epochs x {steps_per_epoch} steps of {batch_size} clips, lr {lr:.2e}, "
        f"layer decay {config.layer_decay}, drop path {config.drop_path}, mixup {config.mixup}/cutmix "
        f"{config.cutmix}, label smoothing {config.label_smoothing}")

    step, history = 0, []
    for epoch in range(config.epochs):
        t0, losses = time.perf_counter(), []
        for batch in train_batches(data, epoch, pipeline):
            if len(losses) >= steps_per_epoch:
                break
            clips = augment(batch["clips"])
            labels = torch.as_tensor(batch["labels"]).long()
            if mixup is not None:
                even = clips.shape[0] // 2 * 2    # timm mixes pairs: drop an odd clip out
                if even == 0:
                    continue
                clips, labels = clips[:even], labels[:even]
            clips, labels = clips.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if mixup is not None:
                clips, labels = mix_clips(mixup, clips, labels)
            current = warmup_cosine(step, total, warmup, lr, min_lr)
            for group in optimizer.param_groups:
                group["lr"] = current * group["lr_scale"]
            with autocast_context(device, amp_dtype):
                loss = criterion(model(clips).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            losses.append(loss.detach())
            step += 1
            if step % log_every == 0:
                log(f"fine-tune step {step}/{total} loss {losses[-1].item():.4f} lr {current:.2e}")
        if not losses:
            raise ValueError(f"fine-tuning epoch {epoch} produced no batch (train set smaller than a batch?)")
        mean_loss = torch.stack(losses).float().mean().item()
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"fine-tuning loss is {mean_loss} in epoch {epoch}")
        history.append({"epoch": epoch, "loss": mean_loss, "lr": current, "seconds": time.perf_counter() - t0})
        log(f"fine-tune epoch {epoch + 1}/{config.epochs}: loss {mean_loss:.4f} ({history[-1]['seconds']:.1f} s)")

    probs, targets = predict_videos(model, eval_batches(data, config.test_split, use_ray), device, amp_dtype)
    acc = topk_accuracy(probs, targets, (1, 5))
    return {"finetune_top1": acc[1], "finetune_top5": acc[5], "finetune_train_loss": history[-1]["loss"],
            "steps": step, "history": history, "predictions": probs.argmax(dim=1).tolist(),
            "targets": targets.tolist(), "model": model.eval()}
