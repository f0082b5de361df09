"""Lightning callbacks: embedding export, loss curve, sample grids, stylized-image writer."""

from artbank_pl.callbacks.export import EmbeddingExport
from artbank_pl.callbacks.loss_curve import LossCurve
from artbank_pl.callbacks.prediction_writer import StylizedImageWriter
from artbank_pl.callbacks.sample_grid import SampleGrid

__all__ = ["EmbeddingExport", "LossCurve", "SampleGrid", "StylizedImageWriter"]
