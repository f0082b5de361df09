"""Save the run on SIGTERM/SIGUSR1 and at its last step, so a stopped run resumes where it was."""

from __future__ import annotations

import logging
import signal
import threading

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

#: signals that ask a run to stop (a scheduler's preemption notice, ``kill``, ``timeout``)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class CheckpointOnSignal(Callback):
    """Checkpoint and exit non-zero on SIGTERM or SIGUSR1; save the final step's weights.

    Outside SLURM, Lightning stops on SIGTERM without saving and exits with 0 (wrappers
    think the run finished), and SIGUSR1 kills the process. With this callback the signal
    is noted, the current step finishes, ``last.ckpt`` of every ``ModelCheckpoint`` is
    written and the process exits with ``128 + signal`` (143 for SIGTERM), so
    ``--ckpt_path last`` goes on from that step. Under SLURM with ``auto_requeue``
    Lightning's own save-and-requeue handles the signals and this callback stands aside.

    At the end of training it also saves ``last.ckpt`` when the last step fell between
    checkpoint intervals (Lightning keeps the one of the last interval).

    Args:
        ckpt_path: the ``--ckpt_path`` the run was started with; ``last`` with no
            checkpoint to resume from is said in one line (the run starts from scratch).
        sync_every_n_steps: with several processes, the ranks agree on a signal (one
            all-reduce, a host sync) every this many steps rather than at every step.
    """

    def __init__(self, ckpt_path: str | None = None, sync_every_n_steps: int = 10) -> None:
        self.ckpt_path = ckpt_path
        self.sync_every_n_steps = max(1, sync_every_n_steps)
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def installed(self) -> bool:
        """Whether this run's signals are handled here (not under SLURM's requeue)."""
        return bool(self._previous)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Say when ``--ckpt_path last`` found nothing to resume from."""
        if self.ckpt_path == "last" and trainer.ckpt_path is None:
            folders = sorted({str(cb.dirpath) for cb in trainer.checkpoint_callbacks})
            log.warning("--ckpt_path last: no last checkpoint in %s; starting from scratch",
                        ", ".join(folders) or "any folder (no ModelCheckpoint)")  # fmt: skip

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Install the signal handlers for ``fit`` (main thread only, as Python requires)."""
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        environment = trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            return
        self.received = None
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._note)

    def _note(self, signum: int, frame) -> None:
        self.received = signum
        log.warning("received %s: saving a checkpoint after this step", signal.Signals(signum).name)
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Give the signals back to the handlers they had before."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_batch_end(self, trainer: Trainer, pl_module, outputs, batch, batch_idx) -> None:
        """After a step, if any rank was signalled: save ``last.ckpt`` and exit."""
        signum = self._agreed_signal(trainer)
        if signum is not None:
            raise SystemExit(self._save_and_name_exit(trainer, signum))

    def on_exception(self, trainer: Trainer, pl_module, exception: BaseException) -> None:
        """Lightning's own stop on SIGTERM (a ``SystemExit`` with code 0): save, exit non-zero.

        The signal can land after this callback's check of a step and before Lightning's,
        which then raises its ``SIGTERMException`` (on every rank at once).
        """
        if not self.installed:
            return  # not fit, or SLURM's requeue owns the signals
        if isinstance(exception, SIGTERMException) and exception.code in (None, 0):
            exception.code = self._save_and_name_exit(trainer, self.received or signal.SIGTERM)

    def _save_and_name_exit(self, trainer: Trainer, signum: int) -> int:
        paths = save_last(trainer)
        name = signal.Signals(signum).name
        where = ", ".join(paths) if paths else "nowhere (no ModelCheckpoint with save_last)"
        log.warning("stopped by %s at step %d; saved %s", name, trainer.global_step, where)
        return 128 + signum

    def _agreed_signal(self, trainer: Trainer) -> int | None:
        """Return the signal any rank received, so that every rank saves and stops together."""
        if trainer.world_size == 1:
            return self.received
        if not self.installed or trainer.global_step % self.sync_every_n_steps:
            return None  # SLURM's requeue owns the signals, or not a step the ranks check at
        mine = torch.tensor([self.received or 0], device=trainer.strategy.root_device)
        signum = int(trainer.strategy.reduce(mine, reduce_op="max").item())
        return signum or None

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Save ``last.ckpt`` when the final step fell between checkpoint intervals."""
        save_last(trainer)


def save_last(trainer: Trainer) -> list[str]:
    """Save ``last.ckpt`` of every ``ModelCheckpoint`` with ``save_last`` not yet at this step.

    Returns:
        The paths of the last checkpoints (saved now or already at this step).
    """
    paths = []
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint) or not callback.save_last:
            continue
        # Lightning's own record of the step it last saved at (there is no public one)
        if callback._last_global_step_saved != trainer.global_step:
            callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
            callback._last_global_step_saved = trainer.global_step
        paths.append(callback.last_model_path)
    return paths
