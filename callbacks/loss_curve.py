"""Plot the training loss curve to a PNG at the end of ``fit``."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
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
    steps: list[int],
    losses: list[float],
    path: Path,
    window: int = 25,
    title: str = "",
    val_steps: list[int] | None = None,
    val_losses: list[float] | None = None,
) -> Path:
    """Save a loss-vs-step PNG, atomically.

    The per-step training loss is drawn faint under its moving average: with noise drawn
    per step it swings widely, and the average is what tells learning. Validation losses
    (fixed noise, so directly comparable) are drawn as points joined by a line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, losses, color="0.8", linewidth=0.8, label="train, per step")
    ax.plot(steps, moving_average(losses, window), color="C0", label=f"train, mean of {window}")
    if val_steps:
        ax.plot(val_steps, val_losses, "o-", color="C1", markersize=4, label="validation")
    ax.set(xlabel="global step", ylabel="loss", title=title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def loss_table(steps, losses, val_steps, val_losses) -> str:
    """CSV text ``step,train_loss,val_loss`` over the steps of either (a blank if absent)."""
    train, val = (
        dict(zip(steps, losses, strict=True)),
        dict(zip(val_steps, val_losses, strict=True)),
    )
    rows = [f"{step},{train.get(step, '')},{val.get(step, '')}\n" for step in sorted(train | val)]
    return "step,train_loss,val_loss\n" + "".join(rows)


class LossCurve(Callback):
    """Record train and validation loss; plot them, with a CSV of the values, at fit end.

    The training step's loss is recorded each step and read back every
    ``log_every_n_steps``; ``val/loss`` after each validation.

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
        self.val_steps: list[int] = []
        self.val_losses: list[float] = []
        self.pending: list[tuple[int, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Remember this step's loss; read the pending ones back every N steps.

        The loss stays on the device until then: reading it every step would make the host
        wait for the GPU once per step.
        """
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor) or trainer.global_step % self.stride:
            return
        # Lightning hands on the loss divided by the accumulation count: undo it
        scale = getattr(trainer, "accumulate_grad_batches", 1)
        self.pending.append((trainer.global_step, loss.detach() * scale))
        if len(self.pending) >= max(1, trainer.log_every_n_steps):
            self.flush()

    def flush(self) -> None:
        """Move the pending losses to the host lists (one read for all of them)."""
        if not self.pending:
            return
        steps, losses = zip(*self.pending, strict=True)
        self.pending = []
        values = torch.stack([loss.float() for loss in losses]).tolist()
        for step, value in zip(steps, values, strict=True):
            if step % self.stride:
                continue  # thinned while pending
            self.steps.append(step)
            self.losses.append(value)
            if len(self.steps) > self.max_points:
                self.steps, self.losses = self.steps[::2], self.losses[::2]
                self.stride *= 2

    def on_validation_end(self, trainer, pl_module) -> None:
        """Remember this validation's loss (not the sanity check's)."""
        loss = trainer.callback_metrics.get("val/loss")
        if loss is None or trainer.sanity_checking:
            return
        self.flush()
        if self.val_steps and self.val_steps[-1] == trainer.global_step:
            self.val_losses[-1] = float(loss)  # validated twice at one step: keep the last
            return
        self.val_steps.append(trainer.global_step)
        self.val_losses.append(float(loss))

    def state_dict(self) -> dict:
        """Keep the curves across resumes."""
        self.flush()
        return {"steps": self.steps, "losses": self.losses, "stride": self.stride,
                "val_steps": self.val_steps, "val_losses": self.val_losses}  # fmt: skip

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the curves recorded before a resume."""
        self.steps = list(state_dict["steps"])
        self.losses = list(state_dict["losses"])
        self.stride = int(state_dict.get("stride", 1))
        self.val_steps = list(state_dict.get("val_steps", []))
        self.val_losses = list(state_dict.get("val_losses", []))

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the PNG and ``<name>.csv`` next to it."""
        self.flush()
        if not self.losses:
            return
        path = Path(self.filename)
        if not path.is_absolute():
            path = Path(trainer.default_root_dir) / path
        plot_loss_curve(self.steps, self.losses, path, self.window,
                        val_steps=self.val_steps, val_losses=self.val_losses)  # fmt: skip
        table = loss_table(self.steps, self.losses, self.val_steps, self.val_losses)
        atomic_write_text(path.with_suffix(".csv"), table)
        log.info("loss curve: %s", path)
