"""The video ViT of VideoMAE/SIGMA: tubelet embedding, an encoder on visible tokens, a decoder for masked ones.

Shapes: clips ``B x C x T x H x W`` (normalized float), masks ``B x N`` bool (True = masked), tokens time-major
over the grid ``(T/tubelet, H/patch, W/patch)``. Every clip of a batch masks the same number of tokens, so the
visible and masked tokens are gathered with index tensors (no boolean indexing, no host-device sync).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from sigma_ray.infra.checks import check_choice, check_range
from sigma_ray.method.masking import token_grid


@dataclass(frozen=True)
class VitSize:
    """Widths and depths of one named model size (encoder, then decoder)."""

    embed_dim: int
    depth: int
    num_heads: int
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    mlp_ratio: float = 4.0


# The paper's ViT-S/B (decoder 192-d/3 heads and 384-d/6 heads, depth 4), VideoMAE's ViT-L, and two CPU sizes:
# tiny, and micro (width 128 x depth 4 against tiny's 192 x 6: ~3.4x fewer encoder FLOPs per token; on 32x32
# clips its supervised bound leaves chance within 1,200 steps, docs/studies/patterns.md).
VIT_SIZES: dict[str, VitSize] = {
    "micro": VitSize(128, 4, 4, 64, 2, 2),
    "tiny": VitSize(192, 6, 3, 96, 2, 3),
    "small": VitSize(384, 12, 6, 192, 4, 3),
    "base": VitSize(768, 12, 12, 384, 4, 6),
    "large": VitSize(1024, 24, 16, 512, 4, 8),
}


PosEmbedKind = Literal["sinusoid_1d", "sincos_3d"]
POS_EMBED_KINDS = ("sinusoid_1d", "sincos_3d")


@dataclass(frozen=True)
class ModelConfig:
    """The video model's shape. ``size`` names a :data:`VIT_SIZES` entry; the input is ``num_frames x img_size^2``.

    ``pos_embed``: ``sinusoid_1d`` is the table of the SIGMA and VideoMAE releases (and of ``transformers``'
    VideoMAE) over the flattened token index; released weights only give their features with it. ``sincos_3d``
    encodes time, height and width separately, so a position keeps its meaning when the grid changes (another
    clip length or frame size at evaluation); use it for models trained and evaluated here on varying grids.

    ``norm_eps`` is every LayerNorm's epsilon (the releases use 1e-6; ``transformers``' VideoMAE configs say
    1e-12). ``final_norm = False`` drops the encoder's last LayerNorm: VideoMAE's fine-tuned classifiers have none
    (their ``fc_norm`` after mean pooling takes its place), so their encoders are represented exactly. Two
    LayerNorms have their own epsilon, because ``transformers`` builds them with PyTorch's default 1e-5 whatever its
    config says: the decoder's last (``decoder_norm_eps``, None: ``norm_eps``) and a fine-tuned classifier's
    ``fc_norm`` (``fc_norm_eps``; the releases' 1e-6).
    """

    size: str = "base"
    num_frames: int = 16
    img_size: int = 224
    tubelet: int = 2
    patch: int = 16
    drop_path: float = 0.0
    pos_embed: PosEmbedKind = "sinusoid_1d"
    norm_eps: float = 1e-6
    final_norm: bool = True
    decoder_norm_eps: float | None = None     # the decoder's last LayerNorm; None: norm_eps
    fc_norm_eps: float = 1e-6                 # a fine-tuned classifier's LayerNorm after pooling

    def validate(self) -> None:
        check_choice("size", self.size, VIT_SIZES)
        check_choice("pos_embed", self.pos_embed, POS_EMBED_KINDS)
        check_range("tubelet", self.tubelet, 1)
        check_range("patch", self.patch, 1)
        check_range("drop_path", self.drop_path, 0.0, 1.0, hi_open=True)
        check_range("norm_eps", self.norm_eps, 0.0, 1.0, lo_open=True)
        if self.decoder_norm_eps is not None:
            check_range("decoder_norm_eps", self.decoder_norm_eps, 0.0, 1.0, lo_open=True)
        check_range("fc_norm_eps", self.fc_norm_eps, 0.0, 1.0, lo_open=True)
        token_grid(self.num_frames, self.img_size, self.img_size, self.tubelet, self.patch)

    @property
    def grid(self) -> tuple[int, int, int]:
        return token_grid(self.num_frames, self.img_size, self.img_size, self.tubelet, self.patch)

    @property
    def tube_pixels(self) -> int:
        """Values in one RGB tube: tubelet * patch * patch * 3 (1536 for 2x16x16)."""
        return self.tubelet * self.patch * self.patch * 3


def sinusoid_pos_embed_1d(num_tokens: int, dim: int) -> torch.Tensor:
    """VideoMAE's fixed table over the flattened (time-major) token index, (num_tokens, dim) float32.

    Entry ``[p, j] = sin(p / 10000^(2*(j//2)/dim))`` for even ``j`` and ``cos(...)`` for odd ``j`` (interleaved),
    computed in float64 like the release's numpy table, then rounded to float32.
    """
    j = torch.arange(dim, dtype=torch.float64)
    angles = torch.arange(num_tokens, dtype=torch.float64)[:, None] / 10000 ** (2 * (j // 2) / dim)
    return torch.where(j % 2 == 0, angles.sin(), angles.cos()).float()


def pos_embed_table(kind: PosEmbedKind, grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """The ``(t*h*w, dim)`` float32 position table of ``kind`` for a token grid."""
    if kind == "sinusoid_1d":
        return sinusoid_pos_embed_1d(grid[0] * grid[1] * grid[2], dim)
    return sincos_pos_embed_3d(grid, dim)


def sincos_pos_embed_3d(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """Fixed sinusoidal space-time position embeddings, (t*h*w, dim) float32, time-major.

    The width is split between time, height and width (``dim - 2*d`` for time, ``d`` each for the spatial axes,
    ``d`` even), each axis encoded with sin/cos at geometrically spaced frequencies as in MAE.
    """
    if dim % 2:
        raise ValueError(f"position embedding width {dim} must be even")
    d_space = (dim // 3) // 2 * 2
    d_time = dim - 2 * d_space

    def axis(n: int, d: int) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / max(d // 2, 1))
        angles = torch.arange(n, dtype=torch.float64)[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    t, h, w = grid
    et = axis(t, d_time)[:, None, None, :].expand(t, h, w, d_time)
    eh = axis(h, d_space)[None, :, None, :].expand(t, h, w, d_space)
    ew = axis(w, d_space)[None, None, :, :].expand(t, h, w, d_space)
    return torch.cat([et, eh, ew], dim=-1).reshape(t * h * w, dim).float()


def make_block(dim: int, num_heads: int, mlp_ratio: float, drop_path: float = 0.0, norm_eps: float = 1e-6
               ) -> Block:
    """timm's pre-norm ViT block (as MAE and VideoMAE use): fused qkv with bias, SDPA attention, GELU MLP, LayerNorm
    ``norm_eps``, optional stochastic depth. Its parameter names (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
    ``mlp.fc1``, ``mlp.fc2``) are the ones every sigma-ray export holds."""
    return Block(dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=drop_path,
                 norm_layer=partial(nn.LayerNorm, eps=norm_eps))


class PosEmbed(nn.Module):
    """Caches the fixed position table per grid on the module's device (built once, not every step)."""

    def __init__(self, kind: PosEmbedKind, grid: tuple[int, int, int], dim: int):
        super().__init__()
        self.kind, self.dim, self.grid = kind, dim, grid
        self.register_buffer("table", pos_embed_table(kind, grid, dim), persistent=False)

    def forward(self, grid: tuple[int, int, int]) -> torch.Tensor:
        if grid != self.grid:  # another clip size: rebuild once and keep it
            self.grid = grid
            self.table = pos_embed_table(self.kind, grid, self.dim).to(self.table.device)
        return self.table


def split_indices(mask: torch.Tensor, num_masked: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of visible and masked tokens, ``(B x Nv, B x Nm)`` int64, each ascending in token order.

    ``num_masked`` (the same for every clip) avoids a device sync when the caller knows it.
    """
    if num_masked is None:
        num_masked = int(mask[0].sum())
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
    return order[:, : mask.shape[1] - num_masked], order[:, mask.shape[1] - num_masked:]


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[b, idx[b]]`` for ``x`` of B x N x C and ``idx`` of B x M -> B x M x C."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class VideoEncoder(nn.Module):
    """Tubelet embedding + ViT over the visible tokens. ``forward_features`` runs it on all tokens (evaluation)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        size = VIT_SIZES[config.size]
        self.config = config
        self.embed_dim = size.embed_dim
        self.patch_embed = nn.Conv3d(3, size.embed_dim, kernel_size=(config.tubelet, config.patch, config.patch),
                                     stride=(config.tubelet, config.patch, config.patch))
        self.pos_embed = PosEmbed(config.pos_embed, config.grid, size.embed_dim)
        rates = torch.linspace(0, config.drop_path, size.depth).tolist()
        self.blocks = nn.ModuleList(make_block(size.embed_dim, size.num_heads, size.mlp_ratio, r, config.norm_eps)
                                    for r in rates)
        self.norm = nn.LayerNorm(size.embed_dim, eps=config.norm_eps) if config.final_norm else nn.Identity()

    def embed(self, clips: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """``B x 3 x T x H x W`` -> tokens ``B x N x D`` with position embeddings, and the token grid."""
        x = self.patch_embed(clips)
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)
        return x + self.pos_embed(grid).to(x.dtype), grid

    def forward(self, clips: torch.Tensor, visible_idx: torch.Tensor) -> torch.Tensor:
        """Encoded visible tokens, ``B x Nv x D`` (final LayerNorm applied, when the config has one)."""
        x, _ = self.embed(clips)
        x = gather_tokens(x, visible_idx)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_features(self, clips: torch.Tensor) -> torch.Tensor:
        """All tokens of unmasked clips, ``B x N x D``: what evaluation pools."""
        x, _ = self.embed(clips)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class VideoDecoder(nn.Module):
    """Maps encoder tokens to the decoder width, adds mask tokens, and predicts only the masked positions."""

    def __init__(self, config: ModelConfig, out_dim: int):
        super().__init__()
        size = VIT_SIZES[config.size]
        self.embed = nn.Linear(size.embed_dim, size.decoder_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, size.decoder_dim))
        self.pos_embed = PosEmbed(config.pos_embed, config.grid, size.decoder_dim)
        self.blocks = nn.ModuleList(make_block(size.decoder_dim, size.decoder_heads, size.mlp_ratio,
                                               norm_eps=config.norm_eps) for _ in range(size.decoder_depth))
        eps = config.norm_eps if config.decoder_norm_eps is None else config.decoder_norm_eps
        self.norm = nn.LayerNorm(size.decoder_dim, eps=eps)
        self.head = nn.Linear(size.decoder_dim, out_dim)
        trunc_normal_(self.mask_token, std=0.02)

    def forward(self, latent: torch.Tensor, visible_idx: torch.Tensor, masked_idx: torch.Tensor,
                grid: tuple[int, int, int]) -> torch.Tensor:
        """``latent`` B x Nv x D_enc -> predictions for the masked tokens, B x Nm x out_dim (in ``masked_idx`` order)."""
        x = self.embed(latent)
        pos = self.pos_embed(grid).to(x.dtype)
        b, num_masked = masked_idx.shape
        x = torch.cat([x + pos[visible_idx], self.mask_token.expand(b, num_masked, -1) + pos[masked_idx]], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, -num_masked:]))


class VideoMAE(nn.Module):
    """Encoder + decoder: ``forward(clips, mask)`` -> predictions ``B x Nm x out_dim`` for the masked tokens."""

    def __init__(self, config: ModelConfig, out_dim: int):
        super().__init__()
        self.config = config
        # The encoder is built and initialized before the decoder exists, so its weights depend on the seed only,
        # not on the decoder's output width (the same encoder for every objective under one seed).
        self.encoder = VideoEncoder(config)
        self.encoder.apply(_init_weights)
        self.decoder = VideoDecoder(config, out_dim)
        self.decoder.apply(_init_weights)

    def forward(self, clips: torch.Tensor, visible_idx: torch.Tensor, masked_idx: torch.Tensor) -> torch.Tensor:
        grid = tuple(s // k for s, k in zip(clips.shape[2:], (self.config.tubelet, self.config.patch,
                                                                self.config.patch)))
        return self.decoder(self.encoder(clips, visible_idx), visible_idx, masked_idx, grid)


def _init_weights(m: nn.Module) -> None:
    # MAE's initialization: xavier-uniform linear layers, the patch embedding as a flattened linear map.
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv3d):
        nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
        nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
