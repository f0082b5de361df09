"""Lightning callbacks: embedding export, loss curve, sample grids, stylized-image writer."""

from callbacks.export import EmbeddingExport
from callbacks.loss_curve import LossCurve
from callbacks.prediction_writer import StylizedImageWriter
from callbacks.sample_grid import SampleGrid

__all__ = ["EmbeddingExport", "LossCurve", "SampleGrid", "StylizedImageWriter"]
