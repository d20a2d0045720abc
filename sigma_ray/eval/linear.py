"""Linear probe on cached frozen features: BatchNorm (no affine) + a linear layer, trained with SGD or AdamW.

The features are computed once (the encoder is frozen and augmentation is off), so an epoch is a pass over an
N x D tensor: a few hundred epochs of a few thousand videos take seconds on a CPU.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sigma_ray.eval.features import Features
from sigma_ray.eval.metrics import single_thread, topk_accuracy
from sigma_ray.infra.checks import check_choice, check_range
from sigma_ray.infra.schedule import cosine

DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}


def make_head(dim: int, num_classes: int) -> nn.Sequential:
    """BatchNorm1d(affine=False) then Linear; the weights start small (std 0.01) as in MAE's probe."""
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, num_classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    return head


def fit_head(head: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer, epochs: int,
             batch_size: int, seed: int, min_batch: int = 1,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy) -> None:
    """Train ``head`` on cached inputs ``x`` (``N x ...``) for targets ``y`` (``N ...``) by ``loss_fn(logits,
    targets)`` (cross-entropy on labels by default): ``epochs`` passes in batches of ``batch_size``, shuffled by
    ``seed``, the optimizer's lr decayed by a per-step cosine to 0. Batches smaller than ``min_batch`` are
    skipped. Leaves ``head`` in eval mode."""
    n = x.shape[0]
    total = epochs * -(-n // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine(s, total, 1.0, 0.0))
    gen = torch.Generator().manual_seed(seed)
    head.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).to(x.device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            if idx.shape[0] < min_batch:
                continue
            loss = loss_fn(head(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sched.step()
    head.eval()


def linear_probe(train: Features, val: Features, num_classes: int, epochs: int = 100, lr: float | None = None,
                 optimizer: str = "sgd", batch_size: int = 256, weight_decay: float = 0.0, seed: int = 0,
                 device: torch.device | str = "cpu") -> dict:
    """Train the probe on ``train`` features, evaluate on ``val``.

    ``lr`` defaults to 0.1 for SGD (momentum 0.9) and 1e-3 for AdamW, decayed by a per-step cosine to 0.
    Deterministic in ``seed`` (initialization and batch order). Returns ``linear_top1`` / ``linear_top5`` (val,
    percent), ``linear_train_top1``, ``predictions`` (val top-1 labels, a list) and ``targets``.
    """
    check_choice("optimizer", optimizer, DEFAULT_LR)
    check_range("epochs", epochs, 1)
    check_range("batch_size", batch_size, 2)
    if len(train) < 2:
        raise ValueError("the linear probe needs at least 2 training videos (BatchNorm statistics)")
    lr = DEFAULT_LR[optimizer] if lr is None else lr
    device = torch.device(device)
    # enable_grad: callers may hold no_grad (the trainer's in-training probe does); the head still has to train
    with single_thread(device.type == "cpu"), torch.enable_grad():
        return _train_probe(train, val, num_classes, epochs, lr, optimizer, batch_size, weight_decay, seed, device)


def _train_probe(train: Features, val: Features, num_classes: int, epochs: int, lr: float, optimizer: str,
                 batch_size: int, weight_decay: float, seed: int, device: torch.device) -> dict:
    x, y = train.feats.float().to(device), train.labels.long().to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = make_head(x.shape[1], num_classes).to(device)
    params = head.parameters()
    opt = (torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay) if optimizer == "sgd" else
           torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay))
    # BatchNorm cannot normalize a batch of one sample; that sample is seen in other epochs
    fit_head(head, x, y, opt, epochs, batch_size, seed, min_batch=2)
    with torch.no_grad():
        train_scores = head(x)
        scores = head(val.feats.float().to(device)).cpu()
    acc = topk_accuracy(scores, val.labels, (1, 5))
    return {"linear_top1": acc[1], "linear_top5": acc[5],
            "linear_train_top1": topk_accuracy(train_scores.cpu(), train.labels, (1,))[1],
            "predictions": scores.argmax(dim=1).tolist(), "targets": val.labels.tolist()}
