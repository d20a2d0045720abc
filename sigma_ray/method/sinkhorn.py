"""Sinkhorn-Knopp equipartition of tokens over prototypes (SwAV/SIGMA), stable, in float32, gathered.

The textbook iteration on ``Q = exp(scores / eps)^T`` (K x N) alternates row scaling (each prototype gets mass
1/K) and column scaling (each token 1/N), then normalizes every column to 1. It equals
``Q = diag(a) exp(S^T/eps) diag(b)``, and the columns of the result depend on ``a`` alone:
``codes[n] = softmax_k(S[n, k]/eps + log a[k])``. So only a K-vector is iterated:

    a <- a * N / (K * sum_n R[n, k]),   R = softmax_k(S/eps + log a)   (the column step folded in)

starting from ``a = 1 / rowsum(exp(S^T/eps))``. Row sums run over the *global* batch: when a default
``torch.distributed`` group is initialized, the K-vectors are all-reduced, so every process gets exactly the
codes a single process would compute on the concatenated batch. Two implementations:

- *scaled*: one N x K float32 matrix ``P = exp(S/eps - rowmax)`` and matrix-vector products per iteration.
  Used when every entry of P is provably above float32 underflow (``2 * bound / eps < 80`` for ``|S| <= bound``).
- *log domain*: log-sum-exp reductions in column chunks, exact for any eps (e.g. 0.01 with bf16 scores).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

# exp(-80) ~ 1.8e-35 is still a normal float32; below ~ -87 entries start to underflow.
_SAFE_EXPONENT_RANGE = 80.0
_LOG_CHUNK = 8192


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _Reducer:
    """All-reduces K-vectors over the default group when gathering, else leaves them as they are."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and _distributed()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def max(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t


def global_count(n: int, device: torch.device) -> int:
    """Number of rows over all processes (N_global); ``n`` in a single process."""
    if not _distributed():
        return n
    t = torch.tensor([n], dtype=torch.int64, device=device)
    dist.all_reduce(t)
    return int(t.item())


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, iterations: int = 10, score_bound: float | None = 1.0,
             gather: bool = True) -> torch.Tensor:
    """Soft codes ``N x K`` float32 (rows sum to 1) for ``scores`` ``N x K`` (tokens x prototypes, any float dtype).

    ``iterations`` counts row (prototype) normalizations, as in SwAV's loop. ``score_bound`` is a known bound on
    ``|scores|`` (1 for cosine similarities) that lets the fast scaled path run when it is exact; ``None`` measures
    the range (a device sync). ``gather`` all-reduces over the default process group when one is initialized.
    Autocast is disabled inside: everything runs in float32.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be N x K, got {tuple(scores.shape)}")
    if eps <= 0 or iterations < 1:
        raise ValueError(f"need eps > 0 and iterations >= 1, got eps={eps}, iterations={iterations}")
    reduce = _Reducer(gather)
    with torch.autocast(scores.device.type, enabled=False):
        n, k = scores.shape
        n_global = global_count(n, scores.device) if reduce.enabled else n
        if score_bound is None:
            score_bound = float(reduce.max(torch.stack([-scores.min().float(), scores.max().float()])).max())
        logits = scores.float() / eps  # N x K, the only full-size matrix (a copy even when scores are float32)
        if 2 * score_bound / eps < _SAFE_EXPONENT_RANGE:
            return _sinkhorn_scaled(logits, iterations, n_global, reduce)
        return _sinkhorn_log(logits, iterations, n_global, reduce)


def _sinkhorn_scaled(p: torch.Tensor, iterations: int, n_global: int, reduce: _Reducer) -> torch.Tensor:
    k = p.shape[1]
    row_max = reduce.max(p.amax(dim=0))
    p.sub_(row_max).exp_()  # every entry in [exp(-80), 1]: no underflow, no overflow
    a = 1.0 / reduce.sum(p.sum(dim=0))  # a' = a * exp(rowmax): the first row step
    for _ in range(iterations - 1):
        c = p @ a  # column sums of diag(a) P, N
        a = n_global / (k * reduce.sum(p.t() @ (1.0 / c)))
    c = p @ a
    return p.mul_(a).div_(c.unsqueeze(1))


def _sinkhorn_log(logits: torch.Tensor, iterations: int, n_global: int, reduce: _Reducer) -> torch.Tensor:
    k = logits.shape[1]
    # First row step: log a = -logsumexp_n(logits[:, k]) over the global batch.
    row_max = reduce.max(logits.amax(dim=0))
    row_sum = torch.zeros(k, device=logits.device)
    for chunk in logits.split(_LOG_CHUNK):
        row_sum += (chunk - row_max).exp().sum(dim=0)
    log_a = -(row_max + reduce.sum(row_sum).log())
    log_ratio = math.log(n_global / k)
    for _ in range(iterations - 1):
        resp_sum = torch.zeros(k, device=logits.device)  # sum_n R[n, k]
        for chunk in logits.split(_LOG_CHUNK):
            resp_sum += torch.softmax(chunk + log_a, dim=1).sum(dim=0)
        log_a = log_a + log_ratio - reduce.sum(resp_sum).log()
    for chunk in logits.split(_LOG_CHUNK):  # the last column step, in place: softmax_k(logits + log a)
        chunk.add_(log_a)
        chunk.sub_(chunk.logsumexp(dim=1, keepdim=True)).exp_()
    return logits


def usage_perplexity(codes: torch.Tensor, num_prototypes: int) -> torch.Tensor:
    """exp(entropy) of the prototype histogram of hard assignments; K when uniform, 1 at collapse. 0-d tensor.

    ``codes`` is ``N`` int (prototype indices) or ``N x K`` (argmax taken). A scatter-add rather than
    ``bincount`` keeps the shape static, so ``torch.compile`` traces it without a graph break.
    """
    idx = codes if codes.ndim == 1 else codes.argmax(dim=1)
    counts = torch.zeros(num_prototypes, device=idx.device).scatter_add_(0, idx, torch.ones_like(idx, dtype=torch.float))
    p = counts / counts.sum().clamp_min(1)
    return torch.exp(-(p * p.clamp_min(1e-12).log()).sum())


def codes_per_clip(codes: torch.Tensor) -> torch.Tensor:
    """Distinct hard codes among each clip's tokens, averaged over clips: 0-d float tensor.

    ``codes`` is ``B x M`` int (prototype ids of a clip's M masked tokens). 1 means every token of a clip got
    one code (the codes name the clip, not the tube); a batch can look balanced over prototypes while this is 1.
    Counted from sorted rows, so the shape stays static (no ``unique``, no device sync).
    """
    ordered = codes.sort(dim=1).values
    return ((ordered[:, 1:] != ordered[:, :-1]).sum(dim=1) + 1).float().mean()
