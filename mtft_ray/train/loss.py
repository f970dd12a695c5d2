"""The episodic prototype loss of multitask finetuning (as the paper's authors implement it).

Support and query samples are encoded in one forward pass; a class centroid is the mean of its
support features; logits are ``tau * cos(query, centroid)`` with a learnable temperature
``tau``; the loss is the cross-entropy of the query logits.

Example:
    >>> import torch
    >>> head = PrototypeHead(init_temperature=10.0)
    >>> feats = torch.randn(5 * (1 + 4), 16)  # 5-way: 5 supports, then 20 queries, class-major
    >>> loss, acc = head(feats, n_way=5, n_shot=1, n_query=4)
    >>> loss.ndim, 0.0 <= acc <= 1.0
    (0, True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def prototype_logits(features: torch.Tensor, n_way: int, n_shot: int, n_query: int,
                     temperature: torch.Tensor | float) -> torch.Tensor:
    """Cosine-to-centroid logits of the queries of one episode.

    Args:
        features: ``(n_way*n_shot + n_way*n_query, d)``: supports class-major, then queries
            class-major (the order of :meth:`TaskSet.episode_samples`).
        temperature: the scale ``tau``.

    Returns:
        ``(n_way*n_query, n_way)`` logits; the label of query row ``r`` is ``r // n_query``.
    """
    n_sup = n_way * n_shot
    if features.shape[0] != n_sup + n_way * n_query:
        raise ValueError(f"expected {n_sup + n_way * n_query} feature rows, got {features.shape[0]}")
    support = features[:n_sup].reshape(n_way, n_shot, -1)
    centroids = F.normalize(support.mean(dim=1), dim=-1)
    queries = F.normalize(features[n_sup:], dim=-1)
    return temperature * queries @ centroids.T


def query_labels(n_way: int, n_query: int, device: torch.device | None = None) -> torch.Tensor:
    return torch.arange(n_way, device=device).repeat_interleave(n_query)


class PrototypeHead(nn.Module):
    """Holds the learnable temperature; returns (loss, accuracy) of an episode's features."""

    def __init__(self, init_temperature: float = 10.0) -> None:
        super().__init__()
        # shape (1,), not a scalar: DeepSpeed broadcasts parameters as bytes, which 0-d tensors cannot be viewed as
        self.temperature = nn.Parameter(torch.full((1,), float(init_temperature)))

    def forward(self, features: torch.Tensor, n_way: int, n_shot: int, n_query: int) -> tuple[torch.Tensor, float]:
        logits = prototype_logits(features.float(), n_way, n_shot, n_query, self.temperature)
        labels = query_labels(n_way, n_query, logits.device)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(dim=1) == labels).float().mean().item()
        return loss, acc
