"""SIGMA's symmetric swapped-prediction loss and the VideoMAE pixel baseline."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sigma_ray.method.sinkhorn import sinkhorn, usage_perplexity


class SwappedPredictionLoss(nn.Module):
    """``CE(s_proj / tau, codes_video) + CE(s_video / tau, codes_proj)``, each a mean over the masked tokens.

    ``scores_video`` and ``scores_proj`` are ``M x K`` cosine scores of the video model's and the projection
    network's features for the same M masked tokens. Each side's codes come from Sinkhorn-Knopp on that side's
    scores (no gradient), gathered over all processes when ``gather`` and a process group is initialized.
    Hard codes (argmax, the released code's choice) by default, SwAV's soft codes with ``hard=False``.
    The gradient routing is the caller's: the video side must score against detached prototypes.

    ``queued_video`` / ``queued_proj`` (``Q x K``, optional): scores of queued features from earlier batches
    (:mod:`sigma_ray.method.queue`); they join that side's Sinkhorn call as extra rows and only the current tokens'
    codes are used.
    """

    def __init__(self, num_prototypes: int, temperature: float = 0.1, sinkhorn_eps: float = 0.05,
                 sinkhorn_iterations: int = 10, hard: bool = True, gather: bool = True):
        super().__init__()
        self.num_prototypes = num_prototypes
        self.temperature = temperature
        self.eps = sinkhorn_eps
        self.iterations = sinkhorn_iterations
        self.hard = hard
        self.gather = gather

    def codes(self, scores: torch.Tensor, queued: torch.Tensor | None = None) -> torch.Tensor:
        """Sinkhorn codes ``M x K`` float32 for ``M x K`` cosine scores; with ``queued`` (``Q x K``) the call runs
        over ``[queued; scores]`` and returns the last M rows."""
        scores = scores.detach()
        if queued is None:
            return sinkhorn(scores, self.eps, self.iterations, score_bound=1.0, gather=self.gather)
        both = torch.cat([queued.detach(), scores])
        return sinkhorn(both, self.eps, self.iterations, score_bound=1.0, gather=self.gather)[queued.shape[0]:]

    def _cross_entropy(self, scores: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        logits = scores.float() / self.temperature
        if self.hard:
            return F.cross_entropy(logits, codes.argmax(dim=1))
        return -(codes * F.log_softmax(logits, dim=1)).sum(dim=1).mean()

    def forward(self, scores_video: torch.Tensor, scores_proj: torch.Tensor, queued_video: torch.Tensor | None = None,
                queued_proj: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Returns ``loss`` (the sum), ``loss_video`` (video predicts the projection's codes), ``loss_proj``,
        and each side's hard codes ``codes_video`` / ``codes_proj`` (M int64) and usage perplexities."""
        codes_video = self.codes(scores_video, queued_video)
        codes_proj = self.codes(scores_proj, queued_proj)
        loss_proj = self._cross_entropy(scores_proj, codes_video)
        loss_video = self._cross_entropy(scores_video, codes_proj)
        hard_video, hard_proj = codes_video.argmax(dim=1), codes_proj.argmax(dim=1)
        return {
            "loss": loss_video + loss_proj,
            "loss_video": loss_video,
            "loss_proj": loss_proj,
            "codes_video": hard_video,
            "codes_proj": hard_proj,
            "perplexity_video": usage_perplexity(hard_video, self.num_prototypes),
            "perplexity_proj": usage_perplexity(hard_proj, self.num_prototypes),
        }


class PixelMSELoss(nn.Module):
    """VideoMAE: mean squared error between predictions and the masked tubes' pixel targets (per-tube
    normalized, or raw; :class:`~sigma_ray.method.sigma.ObjectiveConfig`)."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = F.mse_loss(pred.float(), target.float())
        return {"loss": loss, "loss_pixel": loss}
