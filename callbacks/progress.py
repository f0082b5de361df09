"""Progress for every install and every log: a bar in a terminal, plain lines in a file."""

from __future__ import annotations

import sys
import time

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only


def run_total_steps(trainer) -> int | None:
    """Return the optimizer steps of the whole run (``max_steps``, else the estimate) or None."""
    if trainer.max_steps and trainer.max_steps > 0:
        return int(trainer.max_steps)
    estimate = trainer.estimated_stepping_batches
    return None if estimate is None or estimate == float("inf") else int(estimate)


def batch_size_of(batch) -> int | None:
    """Return the number of samples in a batch (its first tensor's or list's length), or None."""
    values = batch.values() if isinstance(batch, dict) else [batch]
    for value in values:
        if hasattr(value, "shape") and len(value.shape) > 0:
            return int(value.shape[0])
        if isinstance(value, list | tuple) and value:
            return len(value)
    return None


def shown(metrics: dict) -> list[str]:
    """``name value`` per metric, numbers to 4 significant digits (not the logger version)."""
    return [
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in metrics.items()
        if k != "v_num"
    ]


def clock(seconds: float) -> str:
    """``h:mm:ss`` of a duration."""
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class LoggingStepProgressBar(TQDMProgressBar):
    """One progress display over the run's steps, reading metrics only at logging steps.

    In a terminal it is Lightning's tqdm bar, but over the whole run's optimizer steps
    (``step 120/300``; it fills once, across epochs and resumes) instead of per epoch. When
    standard output is not a terminal (a SLURM job's log, a file, a pipe) a bar redraws
    nothing readable, so it prints a plain line every ``log_every_n_steps`` steps instead:
    ``step 120/300 (40%) | loss 0.123 | 25.1 img/s | ETA 0:01:02``, a line at each
    validation's end, and one per ``log_every_n_steps`` batches of predict and test.

    Lightning's bar converts each ``prog_bar=True`` value to a Python number whenever it
    redraws, by default after every batch: on a GPU each conversion makes the host wait
    until the step has run. This bar reads the metrics only on the steps the loggers write
    (and outside training), the values shown being the ones logged.

    Args:
        refresh_rate: redraw the terminal bar every this many steps (``0`` turns it off).
        process_position: the bar's line, for several bars at once.
        leave: keep finished validation/test bars on screen.
        plain: print plain lines (``True``) or draw a bar (``False``); default: lines when
            standard output is not a terminal.
    """

    def __init__(
        self,
        refresh_rate: int = 1,
        process_position: int = 0,
        leave: bool = False,
        plain: bool | None = None,
    ) -> None:
        super().__init__(refresh_rate, process_position, leave)
        self._shown: dict | None = None
        self._plain_choice = plain
        self._started: tuple[float, int] | None = None  # (time, step) of the first step seen
        self._samples = 0

    @property
    def plain(self) -> bool:
        """Whether this bar prints plain lines instead of drawing."""
        if self._plain_choice is not None:
            return self._plain_choice
        return not sys.stdout.isatty()

    @property
    def is_enabled(self) -> bool:
        """Draw tqdm bars only in a terminal (plain lines are printed by this class)."""
        return super().is_enabled and not self.plain

    def get_metrics(self, trainer, pl_module) -> dict:
        """Return the last metrics read, reading them again only at a logging step."""
        every = max(1, trainer.log_every_n_steps)
        reading_due = not trainer.training or trainer.global_step % every == 0
        if self._shown is None or reading_due:
            self._shown = super().get_metrics(trainer, pl_module)
        return self._shown

    def on_train_start(self, *args) -> None:
        """Open the bar and start the rate's clock afresh (a callback may serve two fits)."""
        super().on_train_start(*args)
        self._started, self._samples = None, 0

    def on_train_epoch_start(self, trainer, *_) -> None:
        """Keep one bar over the run: total = the run's steps, position = the global step."""
        bar = self.train_progress_bar
        total = run_total_steps(trainer)
        if bar.total != total:
            bar.reset(total=total)
            bar.initial = trainer.global_step
            bar.n = trainer.global_step
        bar.set_description(f"epoch {trainer.current_epoch} | step")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        """Advance the bar (or print a line) by optimizer steps."""
        step = trainer.global_step
        if self._started is None:  # the rate counts from the end of the first batch on
            self._started, self._samples = (time.monotonic(), step), 0
        else:
            self._samples += batch_size_of(batch) or 0
        bar = self.train_progress_bar
        if self.is_enabled and self._should_update(step, bar.total or 0):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()
        every = max(1, trainer.log_every_n_steps)
        if self.plain and self.refresh_rate and step % every == 0:
            self._print_line(self._train_line(trainer, pl_module, step))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Refresh the bar's metrics; the run's one bar stays open across epochs."""
        if self.is_enabled:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def _train_line(self, trainer, pl_module, step: int) -> str:
        total = run_total_steps(trainer)
        parts = [f"step {step}/{total} ({100 * step // total}%)" if total else f"step {step}"]
        parts += shown(self.get_metrics(trainer, pl_module))
        start_time, start_step = self._started
        elapsed = time.monotonic() - start_time
        if elapsed > 0 and step > start_step:
            parts.append(f"{self._samples / elapsed:.1f} img/s")
            if total:
                rate = (step - start_step) / elapsed
                parts.append(f"ETA {clock((total - step) / rate)}")
        return " | ".join(parts)

    def on_validation_end(self, trainer, pl_module) -> None:
        """Close the validation bar; in plain mode print the validation's metrics."""
        super().on_validation_end(trainer, pl_module)
        if self.plain and self.refresh_rate and not trainer.sanity_checking:
            metrics = self.get_metrics(trainer, pl_module)
            values = shown({k: v for k, v in metrics.items() if k.startswith("val")})
            line = " | ".join(values) or "done"
            self._print_line(f"validation at step {trainer.global_step}: {line}")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
        """Advance the bar, or print a line every ``log_every_n_steps`` batches."""
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, *args)
        self._batch_line(
            trainer, "predict", batch_idx, self.total_predict_batches_current_dataloader
        )

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
        """Advance the bar, or print a line every ``log_every_n_steps`` batches."""
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, *args)
        self._batch_line(trainer, "test", batch_idx, self.total_test_batches_current_dataloader)

    def _batch_line(self, trainer, stage: str, batch_idx: int, total) -> None:
        done = batch_idx + 1
        if not self.plain or not self.refresh_rate:
            return
        if done % max(1, trainer.log_every_n_steps) == 0 or done == total:
            known = isinstance(total, int | float) and total != float("inf")
            self._print_line(
                f"{stage}: batch {done}/{int(total)}" if known else f"{stage}: batch {done}"
            )

    @rank_zero_only
    def _print_line(self, line: str) -> None:
        print(line, flush=True)
