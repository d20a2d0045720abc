"""Weighted k-nearest-neighbour classification on frozen features (cosine similarity, exp(sim / T) votes).

The bank is the *train* split's features and the queries the *val* split's (see SIGMA.md: the released
script built the bank from the wrong split and left the backbone in train mode).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sigma_ray.data.config import DataConfig
from sigma_ray.eval.features import Features, eval_batches, extract_features
from sigma_ray.eval.linear import linear_probe
from sigma_ray.eval.metrics import effective_rank, topk_accuracy


def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07, chunk: int = 4096) -> torch.Tensor:
    """Class scores ``Q x C`` (float32) of the queries ``Q x D`` against the bank ``N x D`` with labels ``N``.

    Both sides are L2-normalized, so the similarity is the cosine. Each query's ``k`` most similar bank rows
    (k capped at N) vote for their label with weight ``exp(cos / temperature)``; a class's score is the sum of
    its votes. Queries are processed ``chunk`` at a time so the Q x N similarity never exists at once.
    """
    if bank.shape[0] != bank_labels.shape[0]:
        raise ValueError(f"bank has {bank.shape[0]} rows but {bank_labels.shape[0]} labels")
    if bank.shape[1] != queries.shape[1]:
        raise ValueError(f"bank width {bank.shape[1]} != query width {queries.shape[1]}")
    if temperature <= 0:
        raise ValueError(f"temperature = {temperature} must be > 0")
    k = min(k, bank.shape[0])
    bank = F.normalize(bank.float(), dim=1)
    labels = bank_labels.to(bank.device).long()
    scores = []
    for start in range(0, queries.shape[0], chunk):
        q = F.normalize(queries[start:start + chunk].float().to(bank.device), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)                            # q x k
        weights = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=bank.device)
        scores.append(votes.scatter_add_(1, labels[idx], weights))
    return torch.cat(scores) if scores else torch.zeros(0, num_classes)


def knn_eval(train: Features, val: Features, num_classes: int, ks: tuple[int, ...] = (20, 200),
             temperature: float = 0.07, chunk: int = 4096) -> dict:
    """kNN accuracy of ``val`` against the bank ``train`` for every k in ``ks`` (capped at the bank size).

    Returns ``knn{k}_top1`` and ``knn{k}_top5`` in percent (the key keeps the requested k), plus
    ``predictions`` (top-1 labels of the first k, a list) and ``targets`` for a confusion matrix.
    """
    if not ks:
        raise ValueError("ks must list at least one k")
    out: dict = {}
    predictions = None
    for k in ks:
        scores = knn_predict(train.feats, train.labels, val.feats, num_classes, k, temperature, chunk)
        acc = topk_accuracy(scores, val.labels, (1, 5))
        out[f"knn{k}_top1"], out[f"knn{k}_top5"] = acc[1], acc[5]
        if predictions is None:
            predictions = scores.argmax(dim=1).tolist()
    out["predictions"] = predictions
    out["targets"] = val.labels.tolist()
    return out


class KnnProbe:
    """``probe(encoder) -> {"knn_top1", "knn_top5", "effective_rank"}``: kNN accuracy (percent) of the val split
    against the train split's bank, both decoded in-process (no Ray) with single centred views, and the effective
    rank of the bank's pooled features (how many directions the features use, followed over training). Picklable,
    so the trainer can run it on its rank-0 worker every ``train.probe_every`` steps (the sweep's intermediate score). With
    ``linear_epochs`` > 0 it also trains a linear probe (BatchNorm + linear, SGD, that many epochs) on the bank's
    features and adds its val accuracy, ``linear_top1`` / ``linear_top5``, and ``mean_top1``, the mean of the kNN
    and linear top-1: on a few hundred queries kNN at chance cannot rank encoders whose pooled features are
    linearly, not locally, separable.

    The decoded clips are cached after the first call (the encoder changes between calls, the clips do not), so
    later probes cost only the encoder's forward passes (and the linear probe's epochs on cached features).
    """

    def __init__(self, data: DataConfig, num_classes: int, k: int = 20, temperature: float = 0.07,
                 linear_epochs: int = 0):
        self.data, self.num_classes, self.k, self.temperature = data, num_classes, k, temperature
        self.linear_epochs = linear_epochs
        self._batches: dict[str, list[dict]] = {}

    def _split(self, split: str) -> list[dict]:
        if split not in self._batches:
            self._batches[split] = list(eval_batches(self.data, split))
        return self._batches[split]

    def __call__(self, encoder: torch.nn.Module) -> dict[str, float]:
        device = next(encoder.parameters()).device
        bank = extract_features(encoder, self._split("train"), device)
        queries = extract_features(encoder, self._split("val"), device)
        out = knn_eval(bank, queries, self.num_classes, (self.k,), self.temperature)
        scores = {"knn_top1": out[f"knn{self.k}_top1"], "knn_top5": out[f"knn{self.k}_top5"],
                  "effective_rank": effective_rank(bank.feats)}
        if self.linear_epochs:
            lin = linear_probe(bank, queries, self.num_classes, epochs=self.linear_epochs)
            scores.update(linear_top1=lin["linear_top1"], linear_top5=lin["linear_top5"],
                          mean_top1=(scores["knn_top1"] + lin["linear_top1"]) / 2)
        return scores

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_batches": {}}  # ship the recipe, not decoded clips
