"""Target-side networks of SIGMA: the pixel-tube MLP (SIGMA-MLP) and a frozen image teacher (SIGMA-DINO).

Both map a normalized clip ``B x 3 x T x H x W`` and the masked-token indices ``B x Nm`` to target features
``B x Nm x D`` for the masked tubes, in the same token order as the decoder's predictions.
"""
from __future__ import annotations

from pathlib import Path

import timm
import torch
from einops import rearrange
from torch import nn

from sigma_ray.infra.checks import ConfigError
from sigma_ray.method.step import IMAGENET_MEAN, IMAGENET_STD
from sigma_ray.method.vit import gather_tokens


def tube_pixels(clips: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """Raw pixels of every tube, ``B x N x (tubelet*patch*patch*3)``, time-major tokens, channels last per pixel."""
    return rearrange(clips, "b c (t pt) (h ph) (w pw) -> b (t h w) (pt ph pw) c", pt=tubelet, ph=patch, pw=patch
                     ).flatten(2)


def normalize_tubes(tubes: torch.Tensor, channels: int = 3, eps: float = 1e-6,
                    pixel_std: tuple[float, ...] | None = IMAGENET_STD) -> torch.Tensor:
    """VideoMAE's per-tube target: each channel standardized over the tube's pixels (unbiased std, + eps).

    ``tubes`` is ``... x (pixels*channels)`` with channels last; the output has the same shape, in float32.
    ``pixel_std``: the per-channel std the clip was normalized with (ImageNet's), so that ``eps`` acts on [0, 1]
    pixels as in the release (``eps / std_c`` here); ``None`` applies ``eps`` to the values as given. A constant
    tube channel gives exactly 0: the tube's first pixel is subtracted first, which makes its values exact zeros
    (a plain float32 mean of equal values is off by ulps, which the division by ``std + eps`` would blow up).
    """
    x = tubes.float().unflatten(-1, (-1, channels))
    x = x - x[..., :1, :]
    eps_c = eps if pixel_std is None else eps / torch.tensor(pixel_std, device=x.device, dtype=torch.float32)
    x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, unbiased=True, keepdim=True).sqrt() + eps_c)
    return x.flatten(-2)


def raw_tubes(tubes: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """Tubes of an ImageNet-normalized clip back in [0, 1] pixels (VideoMAE's un-normalized target), float32.

    ``tubes`` is ``... x (pixels*channels)`` with channels last, as :func:`tube_pixels` gives; same shape out.
    """
    x = tubes.float().unflatten(-1, (-1, channels))
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=torch.float32)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=torch.float32)
    return (x * std + mean).flatten(-2)


def tube_motion(normalized: torch.Tensor, tubelet: int) -> torch.Tensor:
    """The frame-to-frame differences inside each tube, ``... x ((tubelet-1)*patch*patch*3)``, from normalized tubes
    ``... x (tubelet*patch*patch*3)`` (:func:`normalize_tubes`): zero for a static tube, the moving edges for a tube
    that something crosses, in the tube's own standardized units."""
    frames = normalized.unflatten(-1, (tubelet, -1))
    return (frames[..., 1:, :] - frames[..., :-1, :]).flatten(-2)


def tube_target(tubes: torch.Tensor, tubelet: int, normalize: bool = True, motion: bool = False) -> torch.Tensor:
    """What the target side reads of masked tubes ``... x (tubelet*patch*patch*3)`` (:func:`tube_pixels` of an
    ImageNet-normalized clip): the standardized tubes (:func:`normalize_tubes`), followed by their frame-to-frame
    differences with ``motion`` (:func:`tube_motion`), or the raw [0, 1] pixels without ``normalize``
    (:func:`raw_tubes`; ``motion`` needs ``normalize``). float32."""
    if not normalize:
        if motion:
            raise ValueError("tube_target: motion needs normalize (differences of standardized tubes)")
        return raw_tubes(tubes)
    target = normalize_tubes(tubes)
    return torch.cat([target, tube_motion(target, tubelet)], dim=-1) if motion else target


class PixelTubeMLP(nn.Module):
    """SIGMA-MLP's projection: normalized tube pixels -> 1024 -> 1024 -> 512 -> D with GELU.

    ``motion=True`` also feeds the tube's frame-to-frame differences (:func:`tube_motion`; ``in_dim`` must count
    them): the same pixels, with the motion inside the tube as inputs of their own rather than a small difference
    between two large ones (``objective.target_motion``; the paper's input is the tube alone)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: tuple[int, ...] = (1024, 1024, 512), tubelet: int = 2,
                 patch: int = 16, motion: bool = False):
        super().__init__()
        self.tubelet, self.patch, self.motion = tubelet, patch, motion
        dims = (in_dim, *hidden)
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.GELU()]
        layers.append(nn.Linear(dims[-1], out_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, clips: torch.Tensor, masked_idx: torch.Tensor) -> torch.Tensor:
        tubes = gather_tokens(tube_pixels(clips, self.tubelet, self.patch), masked_idx)
        return self.mlp(tube_target(tubes, self.tubelet, motion=self.motion).to(clips.dtype))


class TeacherProjection(nn.Module):
    """A frozen timm image ViT run in float32 on the first frame of every tubelet (SIGMA-DINO).

    Its patch tokens are standardized per video and channel over all tokens of the clip. The weights come from a
    local checkpoint file (timm ``pretrained_cfg_overlay=dict(file=...)``; position embeddings are resampled to
    ``img_size``); nothing is downloaded. The teacher's patch size must equal the video model's.
    """

    def __init__(self, model_name: str, checkpoint: str | Path, img_size: int, tubelet: int = 2, patch: int = 16):
        super().__init__()
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise ConfigError(f"objective.teacher_checkpoint = {str(checkpoint)!r} is not a file")
        self.teacher = timm.create_model(model_name, pretrained=True, num_classes=0, img_size=img_size,
                                         pretrained_cfg_overlay=dict(file=str(checkpoint)))
        teacher_patch = self.teacher.patch_embed.patch_size[0]
        if teacher_patch != patch:
            raise ConfigError(f"teacher {model_name} has patch size {teacher_patch}, the video model {patch}")
        self.teacher.eval().requires_grad_(False)
        self.tubelet = tubelet
        self.out_dim = self.teacher.num_features

    def train(self, mode: bool = True) -> TeacherProjection:
        super().train(mode)
        self.teacher.eval()  # frozen: never in training mode (dropout, drop path)
        return self

    @torch.no_grad()
    def forward(self, clips: torch.Tensor, masked_idx: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = clips.shape
        frames = rearrange(clips[:, :, :: self.tubelet], "b c t h w -> (b t) c h w").float()
        with torch.autocast(clips.device.type, enabled=False):
            tokens = self.teacher.forward_features(frames)[:, self.teacher.num_prefix_tokens:]
        tokens = rearrange(tokens, "(b t) n d -> b (t n) d", b=b)
        tokens = (tokens - tokens.mean(dim=1, keepdim=True)) / (tokens.std(dim=1, keepdim=True) + 1e-6)
        return gather_tokens(tokens, masked_idx)


class Prototypes(nn.Module):
    """K learnable prototypes of width D, kept at unit length (SwAV): :meth:`normalize_` runs before each step.

    Scores are cosine similarities computed in float32 whatever the autocast state.
    """

    def __init__(self, num_prototypes: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_prototypes, dim))
        nn.init.normal_(self.weight, std=dim ** -0.5)
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> None:
        self.weight.copy_(nn.functional.normalize(self.weight, dim=-1))

    def forward(self, features: torch.Tensor, detach: bool = False, frozen: bool = False) -> torch.Tensor:
        """``... x D`` features -> ``... x K`` cosine scores (float32). ``detach`` blocks the prototypes' gradient;
        ``frozen`` makes it exactly zero instead (DDP needs every parameter to get a gradient each step)."""
        if detach:
            w = self.weight.detach()
        elif frozen:
            w = self.weight.detach() + 0 * self.weight
        else:
            w = self.weight
        with torch.autocast(features.device.type, enabled=False):
            return nn.functional.normalize(features.float(), dim=-1) @ w.float().t()
