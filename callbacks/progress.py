"""A progress bar that reads logged values back only on the steps the loggers write."""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar


class LoggingStepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, with the metrics it shows refreshed every ``log_every_n_steps``.

    Lightning's bar converts each ``prog_bar=True`` value to a Python number whenever it
    redraws, by default after every batch: on a GPU each conversion makes the host wait
    until the step has run, so the next step cannot be queued behind it. This bar keeps
    the counter moving every ``refresh_rate`` batches but reads the metrics only on the
    steps the loggers write (and outside training), the values shown then being the ones
    logged.

    Args:
        refresh_rate: redraw every this many batches (``0`` turns the bar off).
        process_position: the bar's line, for several bars at once.
        leave: keep the finished bar of each epoch on screen.
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False):
        super().__init__(refresh_rate, process_position, leave)
        self._shown: dict | None = None

    def get_metrics(self, trainer, pl_module) -> dict:
        """Return the last metrics read, reading them again only at a logging step."""
        every = max(1, trainer.log_every_n_steps)
        reading_due = not trainer.training or trainer.global_step % every == 0
        if self._shown is None or reading_due:
            self._shown = super().get_metrics(trainer, pl_module)
        return self._shown
