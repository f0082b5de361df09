"""A resumed fit goes on writing the TensorBoard run it resumes, not a new ``version_N``.

Lightning gives every ``fit`` a new ``version_N`` folder, so a run resumed from its
checkpoint draws its curves as a second run that starts where the first stopped.
:class:`LoggerRuns` records each TensorBoard logger's version in the checkpoint;
:func:`continue_logger_runs` hands it back to the resumed run's logger before anything is
written, with ``purge_step`` set to the checkpoint's step, so TensorBoard drops what the
interrupted run logged after its last checkpoint (those steps are trained again).
"""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

log = logging.getLogger(__name__)
#: the checkpoint key of the recorded runs
RUNS_KEY = "logger_runs"


def _run_id(logger: TensorBoardLogger) -> str:
    """Return the logger's folder of runs (``<save_dir>/<name>``): a run but its version."""
    return str(Path(logger.root_dir).resolve())


class LoggerRuns(Callback):
    """Record each TensorBoard logger's run (folder and version) in every checkpoint."""

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict
    ) -> None:
        """Add ``logger_runs``: ``[{"root_dir", "version"}]`` of the TensorBoard loggers."""
        checkpoint[RUNS_KEY] = [
            {"root_dir": _run_id(logger), "version": logger.version}
            for logger in trainer.loggers
            if isinstance(logger, TensorBoardLogger)
        ]


def logged_step(checkpoint: dict) -> int | None:
    """Return the step Lightning logs metrics at after restoring ``checkpoint``."""
    loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    state = loop.get("epoch_loop.state_dict") or {}
    step = state.get("_batches_that_stepped")
    return int(step) if isinstance(step, int) else None


def continue_logger_runs(trainer: Trainer, checkpoint: dict) -> None:
    """Point each TensorBoard logger of ``trainer`` at the run ``checkpoint`` recorded.

    Call before the run writes anything (the logger picks its version on first use). A
    logger given an explicit ``version``, or writing under another folder, is left alone.
    """
    runs = {run.get("root_dir"): run.get("version") for run in checkpoint.get(RUNS_KEY) or []}
    step = logged_step(checkpoint)
    for logger in trainer.loggers:
        if not isinstance(logger, TensorBoardLogger) or logger._version is not None:
            continue
        version = runs.get(_run_id(logger))
        if version is None:
            continue
        # Lightning's loggers take their version at construction only; setting the field
        # before first use is what the constructor argument does
        logger._version = version
        if step is not None:
            logger._kwargs.setdefault("purge_step", step)
        log.info("continuing TensorBoard run %s from step %s", logger.log_dir, step)
