"""Readouts of a frozen encoder that keep time, and probes of single factors of a class.

Mean pooling (:mod:`sigma_ray.eval.features`) averages a clip's tokens over space *and time*: an encoder whose
tokens say "the object is here at time t" but not "it moves left" loses the direction there. Two readouts keep
time, so that "the encoder did not learn motion" and "mean pooling lost it" can be told apart:

- **time slices**: the tokens averaged over space per time slice, the slices' means concatenated in time order
  (``t x D`` features), then the same kNN and linear probe as the pooled features;
- **attentive probe**: a learned query attends over all of a clip's tokens (as V-JEPA's frozen evaluation
  does), then LayerNorm and a linear head, trained on the cached tokens; it can read where and when.

**Factor probes**: a class that is a product of factors (``patterns``: the wall's pattern x the pan direction) is
probed on each factor alone, from the same features, so an encoder that knows the appearance but not the motion
shows it. The factors of a data set come from its ``factors.json`` (written by the synthetic generator).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from sigma_ray.eval.features import Features, average_by_video, eval_mode
from sigma_ray.eval.knn import knn_eval
from sigma_ray.eval.linear import fit_head, linear_probe
from sigma_ray.eval.metrics import effective_rank, single_thread, topk_accuracy
from sigma_ray.method.step import autocast_context, normalize_clips

FACTORS_FILE = "factors.json"


@dataclass
class Tokens:
    """A split's frozen tokens, one clip per video (its views averaged), sorted by video id."""

    tokens: torch.Tensor     # N x L x D float32, L = t*h*w time-major
    grid: tuple[int, int, int]
    labels: torch.Tensor     # N int64
    video_ids: torch.Tensor  # N int64

    def mean_pooled(self) -> Features:
        """Tokens averaged over space and time: ``N x D`` (the standard readout)."""
        return Features(self.tokens.mean(dim=1), self.labels, self.video_ids)

    def time_slices(self) -> Features:
        """Tokens averaged over space per time slice and concatenated in time order: ``N x (t*D)``."""
        n, _, d = self.tokens.shape
        t = self.grid[0]
        return Features(self.tokens.view(n, t, -1, d).mean(dim=2).flatten(1), self.labels, self.video_ids)


def extract_tokens(encoder: nn.Module, batches: Iterable[dict], device: torch.device | str = "cpu",
                   amp_dtype: torch.dtype | None = None) -> Tokens:
    """Every token of every video in ``batches`` (uint8 clips ``B x T x H x W x C``), encoder in eval mode, no grad;
    the views of one video are averaged token by token."""
    device = torch.device(device)
    tokens, labels, ids, grid = [], [], [], None
    with eval_mode(encoder), torch.no_grad():
        for batch in batches:
            if len(batch["video_ids"]) == 0:
                continue
            clips = normalize_clips(batch["clips"], device)
            with autocast_context(device, amp_dtype):
                out = encoder.forward_features(clips).float()
            c = encoder.config
            grid = (clips.shape[2] // c.tubelet, clips.shape[3] // c.patch, clips.shape[4] // c.patch)
            tokens.append(out.cpu())
            labels.append(torch.as_tensor(batch["labels"]).long().cpu())
            ids.append(torch.as_tensor(batch["video_ids"]).long().cpu())
    if not tokens:
        raise ValueError("no batches to extract tokens from")
    flat = torch.cat(tokens)
    mean, video_labels, video_ids = average_by_video(flat.flatten(1), torch.cat(ids), torch.cat(labels))
    return Tokens(mean.view(-1, *flat.shape[1:]), grid, video_labels, video_ids)


class AttentiveHead(nn.Module):
    """``tokens B x L x D`` (standardized) -> logits ``B x C``: one learned query attends over the tokens (``heads``
    heads), then LayerNorm and a linear layer."""

    def __init__(self, dim: int, num_classes: int, heads: int = 4):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.query, std=0.02)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.attn(self.query.expand(tokens.shape[0], -1, -1), tokens, tokens, need_weights=False)
        return self.head(self.out_norm(pooled[:, 0]))


def attentive_probe(train: Tokens, val: Tokens, num_classes: int, epochs: int = 30, lr: float = 1e-3,
                    weight_decay: float = 0.05, batch_size: int = 64, heads: int = 4, seed: int = 0) -> dict:
    """Train an :class:`AttentiveHead` on ``train``'s frozen tokens (AdamW, cosine lr to 0, cross-entropy) and
    score it on ``val``. The tokens are first standardized per channel with the train split's mean and std over
    all videos and positions (what the linear probe's BatchNorm does): a pretrained encoder's tokens can be a
    large constant vector plus small variations, which a per-token LayerNorm would flatten away (seen on
    SIGMA-MLP at the demo's scale: its probe stayed at chance on train and val). Deterministic in ``seed``; one
    CPU thread (the ops are small). Returns ``attentive_top1`` (val, percent) and ``attentive_train_top1``."""
    if train.tokens.shape[0] < 2:
        raise ValueError("the attentive probe needs at least 2 training videos")
    mean = train.tokens.mean(dim=(0, 1))
    std = train.tokens.std(dim=(0, 1)).clamp_min(1e-6)
    x_train, x_val = (train.tokens - mean) / std, (val.tokens - mean) / std
    with single_thread(), torch.enable_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = AttentiveHead(train.tokens.shape[-1], num_classes, heads)
        opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
        fit_head(head, x_train, train.labels, opt, epochs, batch_size, seed)
        n = train.tokens.shape[0]
        with torch.no_grad():
            train_scores = torch.cat([head(x_train[i:i + 256]) for i in range(0, n, 256)])
            scores = torch.cat([head(x_val[i:i + 256]) for i in range(0, x_val.shape[0], 256)])
    return {"attentive_top1": topk_accuracy(scores, val.labels, (1,))[1],
            "attentive_train_top1": topk_accuracy(train_scores, train.labels, (1,))[1]}


def read_factors(root: str | Path | None) -> dict[str, list[int]]:
    """``{factor: [value of class 0, value of class 1, ...]}`` from ``root/factors.json``; ``{}`` when the data
    set has none (the factor probes are then skipped)."""
    path = Path(root or ".", FACTORS_FILE)
    if root is None or not path.is_file():
        return {}
    factors = json.loads(path.read_text())["factors"]
    return {name: [int(v) for v in f["of_class"]] for name, f in factors.items()}


def factor_features(features: Features, of_class: list[int]) -> Features:
    """The same features labelled with one factor's value (``of_class[label]``) instead of the class."""
    mapping = torch.tensor(of_class, dtype=torch.int64)
    return Features(features.feats, mapping[features.labels], features.video_ids)


def frozen_probes(encoder: nn.Module, train_batches: Iterable[dict], val_batches: Iterable[dict], num_classes: int,
                  factors: dict[str, list[int]] | None = None, linear_epochs: int = 100, attentive_epochs: int = 30,
                  seed: int = 0, device: torch.device | str = "cpu") -> dict[str, float]:
    """Every frozen readout of ``encoder``, accuracies in percent on the val batches with the train batches as kNN
    bank and probe training set (both decoded once by the caller and reusable across encoders):

    - mean pooling: ``knn20_top1``, ``knn200_top1`` (T = 0.07), ``linear_top1`` / ``linear_top5`` (BatchNorm +
      linear, ``linear_epochs`` of SGD) and ``effective_rank`` of the pooled train features;
    - time slices (:meth:`Tokens.time_slices`): ``time_knn20_top1``, ``time_knn200_top1``, ``time_linear_top1``;
    - ``attentive_top1`` (:func:`attentive_probe`, ``attentive_epochs``);
    - per factor ``f`` of ``factors``: ``f_linear_top1`` (mean pooling) and ``time_f_linear_top1``.
    """
    train, val = extract_tokens(encoder, train_batches, device), extract_tokens(encoder, val_batches, device)
    out: dict[str, float] = {}
    for prefix, (a, b) in (("", (train.mean_pooled(), val.mean_pooled())),
                           ("time_", (train.time_slices(), val.time_slices()))):
        knn = knn_eval(a, b, num_classes, (20, 200))
        lin = linear_probe(a, b, num_classes, epochs=linear_epochs, seed=seed)
        out.update({f"{prefix}knn20_top1": knn["knn20_top1"], f"{prefix}knn200_top1": knn["knn200_top1"],
                    f"{prefix}linear_top1": lin["linear_top1"]})
        if not prefix:
            out["linear_top5"] = lin["linear_top5"]
        for name, of_class in (factors or {}).items():
            out[f"{prefix}{name}_linear_top1"] = linear_probe(
                factor_features(a, of_class), factor_features(b, of_class), max(of_class) + 1,
                epochs=linear_epochs, seed=seed)["linear_top1"]
    out["attentive_top1"] = attentive_probe(train, val, num_classes, epochs=attentive_epochs, seed=seed)[
        "attentive_top1"]
    out["effective_rank"] = effective_rank(train.mean_pooled().feats)
    return out
