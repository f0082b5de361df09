"""A training DataLoader whose place in the stream is saved in checkpoints.

Lightning saves ``state_dict()`` of every training loader that has one into each checkpoint
and hands it to ``load_state_dict()`` before the resumed run's first batch. Saved here: the
epoch and how many batches of it this rank has trained on. With the stream's order a
function of (seed, epoch, part) (:func:`~artbank_pl.datamodules.stream.stream_seed`), a
resumed run goes on with exactly the batches the interrupted run would have read next,
instead of replaying the start of the data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch.utils.data import DataLoader

from artbank_pl.datamodules.stream import ShardStream

#: returns (epoch, batches of that epoch already trained on), or None outside a Trainer
Progress = Callable[[], "tuple[int, int] | None"]


class ResumableLoader(DataLoader):
    """A DataLoader over a :class:`ShardStream` that resumes where a checkpoint left it.

    Args:
        stream: the training stream (its ``set_position`` is called before each pass).
        progress: the trainer's (epoch, batches trained in it); ``None`` outside a trainer,
            when each pass counts as the next epoch.
        **kwargs: DataLoader arguments.
    """

    def __init__(self, stream: ShardStream, progress: Progress, **kwargs) -> None:
        super().__init__(stream, **kwargs)
        self._progress = progress
        self._resume_at: tuple[int, int] | None = None
        self._passes = 0

    def state_dict(self) -> dict[str, int]:
        """Return the epoch and the batches of it trained so far (saved with a checkpoint)."""
        epoch, batches = self._progress() or (max(0, self._passes - 1), 0)
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state: dict) -> None:
        """Start the next pass where the checkpoint's run stood."""
        self._resume_at = (int(state["epoch"]), int(state["batches"]))

    def __iter__(self) -> Iterator:
        if self._resume_at is not None:
            epoch, skip = self._resume_at
        else:
            current = self._progress()
            epoch, skip = (current[0] if current else self._passes), 0
        self._resume_at, self._passes = None, epoch + 1
        self.dataset.set_position(epoch, skip, self.batch_size)
        return super().__iter__()
