"""Metrics that reduce correctly across DDP ranks."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class PerCollectionMean(Metric):
    """Mean of a per-sample value within each collection, summed over ranks before dividing.

    Every rank holds the same ``[K]`` states, so the reduction is one collective even
    when a rank saw no sample of some collection.

    Args:
        num_collections: K.
    """

    full_state_update = False

    def __init__(self, num_collections: int) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(num_collections, dtype=torch.float64), "sum")
        self.add_state("count", torch.zeros(num_collections, dtype=torch.float64), "sum")

    def update(self, values: torch.Tensor, collection_idx: torch.Tensor) -> None:
        """Add per-sample ``values`` ``[B]`` of collections ``collection_idx`` ``[B]``."""
        values = values.detach().to(self.total.dtype)
        self.total.index_add_(0, collection_idx, values)
        self.count.index_add_(0, collection_idx, torch.ones_like(values))

    def compute(self) -> dict[str, torch.Tensor]:
        """Return ``{"mean": [K] (nan where no sample), "count": [K], "overall": scalar}``."""
        mean = self.total / self.count.clamp(min=1)
        mean = torch.where(self.count > 0, mean, torch.nan)
        overall = self.total.sum() / self.count.sum().clamp(min=1)
        return {"mean": mean.float(), "count": self.count, "overall": overall.float()}
