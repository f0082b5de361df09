"""Lightning callbacks: exports, EMA, loss curve, progress, grids, writer, runs, preemption."""

from artbank_pl.callbacks.ema import TrainablesEMA
from artbank_pl.callbacks.export import EmbeddingExport
from artbank_pl.callbacks.logger_runs import LoggerRuns
from artbank_pl.callbacks.loss_curve import LossCurve
from artbank_pl.callbacks.prediction_writer import StylizedImageWriter
from artbank_pl.callbacks.preemption import CheckpointOnSignal
from artbank_pl.callbacks.progress import LoggingStepProgressBar
from artbank_pl.callbacks.sample_grid import SampleGrid
from artbank_pl.callbacks.summary import TrainableSummary

__all__ = [
    "CheckpointOnSignal",
    "EmbeddingExport",
    "LoggerRuns",
    "LoggingStepProgressBar",
    "LossCurve",
    "SampleGrid",
    "StylizedImageWriter",
    "TrainableSummary",
    "TrainablesEMA",
]
