"""Plot the training loss curve to a PNG at the end of ``fit``."""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from artbank_pl.atomic import atomic_write, atomic_write_text

log = logging.getLogger(__name__)


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing moving average (shorter windows at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_loss_curve(
    steps: list[int], losses: list[float], path: Path, window: int = 25, title: str = ""
) -> Path:
    """Save a loss-vs-step PNG with a moving average, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, losses, color="0.75", linewidth=0.8, label="per step")
    ax.plot(steps, moving_average(losses, window), color="C0", label=f"mean of {window}")
    ax.set(xlabel="global step", ylabel="train loss", title=title or "training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


class LossCurve(Callback):
    """Record ``train/loss`` each step and plot it, with a CSV of the values, at fit end.

    The curve is kept in checkpoints (so it survives resumes); past ``max_points`` it is
    thinned to every second point, and from then on every second step is recorded, so a
    50k-step run does not grow its checkpoints.

    Args:
        filename: PNG path; relative paths are under ``trainer.default_root_dir``.
        window: moving-average window in points.
        max_points: points kept at most.
    """

    def __init__(
        self, filename: str = "loss.png", window: int = 25, max_points: int = 4096
    ) -> None:
        self.filename = filename
        self.window = window
        self.max_points = max_points
        self.stride = 1
        self.steps: list[int] = []
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Remember this step's loss."""
        loss = trainer.callback_metrics.get("train/loss")
        if loss is None or trainer.global_step % self.stride:
            return
        self.steps.append(trainer.global_step)
        self.losses.append(float(loss))
        if len(self.steps) > self.max_points:
            self.steps, self.losses = self.steps[::2], self.losses[::2]
            self.stride *= 2

    def state_dict(self) -> dict:
        """Keep the curve across resumes."""
        return {"steps": self.steps, "losses": self.losses, "stride": self.stride}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the curve recorded before a resume."""
        self.steps = list(state_dict["steps"])
        self.losses = list(state_dict["losses"])
        self.stride = int(state_dict.get("stride", 1))

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the PNG and ``<name>.csv`` next to it."""
        if not self.losses:
            return
        path = Path(self.filename)
        if not path.is_absolute():
            path = Path(trainer.default_root_dir) / path
        plot_loss_curve(self.steps, self.losses, path, self.window)
        rows = "".join(f"{s},{v}\n" for s, v in zip(self.steps, self.losses, strict=True))
        atomic_write_text(path.with_suffix(".csv"), "step,loss\n" + rows)
        log.info("loss curve: %s", path)
