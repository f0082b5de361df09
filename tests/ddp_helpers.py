"""Callbacks that record what each DDP rank did, for the multi-process tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch import Callback


class RankRecorder(Callback):
    """Write, per rank, the sample keys of every training step, the final bank and val/loss."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.keys: list[list[str]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.keys.append(list(batch["__key__"]))

    def on_fit_end(self, trainer, pl_module) -> None:
        rank = trainer.global_rank
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(pl_module.bank.state_dict(), self.out_dir / f"bank-{rank}.pt")
        record = {"keys": self.keys, "val_loss": float(trainer.callback_metrics["val/loss"])}
        (self.out_dir / f"rank-{rank}.json").write_text(json.dumps(record))


class StepRecorder(Callback):
    """Append ``<restart> <global step>`` per optimizer step and rank; mark when ready.

    The SLURM test sends SIGUSR1 once ``ready`` exists (Lightning's handler is installed
    by then) and reads the step files to check that no step was lost or repeated.

    Args:
        out_dir: where ``steps-rank<r>.txt`` and ``ready`` go.
        ready_step: global step at which rank 0 writes ``ready`` (first run only).
        seconds_per_step: sleep after each step, so the signal lands mid-training.
    """

    def __init__(self, out_dir: str, ready_step: int = 10, seconds_per_step: float = 0.0) -> None:
        self.out_dir = Path(out_dir)
        self.ready_step = ready_step
        self.seconds_per_step = seconds_per_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import os
        import time

        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / f"steps-rank{trainer.global_rank}.txt", "a") as f:
            f.write(f"{restart} {trainer.global_step}\n")
        if trainer.is_global_zero and trainer.global_step == self.ready_step and restart == "0":
            (self.out_dir / "ready").write_text(str(trainer.global_step))
        time.sleep(self.seconds_per_step)


class KillAtStep(Callback):
    """Send this process ``signum`` (SIGKILL by default) after optimizer step ``step``.

    It runs before ModelCheckpoint (Lightning orders checkpoint callbacks last), so the
    step it kills at is never checkpointed: the resumed run must redo steps.
    """

    def __init__(self, step: int, signum: int = 9) -> None:
        self.step = step
        self.signum = signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import os

        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class KillGroupAfterPredictBatches(Callback):
    """kill -9 the whole process group (every DDP rank) after rank 0's ``batches``-th batch.

    The test starts the run in a session of its own, so the group is the run's processes
    only: what a node failure or ``scancel --signal=KILL`` leaves behind.
    """

    def __init__(self, batches: int) -> None:
        self.batches = batches

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
        import os
        import signal

        if trainer.is_global_zero and batch_idx + 1 == self.batches:
            os.killpg(os.getpgrp(), signal.SIGKILL)
