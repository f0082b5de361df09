"""Lightning callbacks: embedding export and the loss curve."""

from callbacks.export import EmbeddingExport
from callbacks.loss_curve import LossCurve

__all__ = ["EmbeddingExport", "LossCurve"]
