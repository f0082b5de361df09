"""Lightning callbacks: embedding export, loss curve, stylized-image writer."""

from callbacks.export import EmbeddingExport
from callbacks.loss_curve import LossCurve
from callbacks.prediction_writer import StylizedImageWriter

__all__ = ["EmbeddingExport", "LossCurve", "StylizedImageWriter"]
