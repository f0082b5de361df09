"""A training DataLoader whose place in the stream is saved in checkpoints.

Lightning saves ``state_dict()`` of every training loader that has one into each checkpoint
and hands it to ``load_state_dict()`` before the resumed run's first batch. Saved here: the
epoch and how many batches of it this rank has trained on. With the stream's order a
function of (seed, epoch, part) (:func:`~artbank_pl.datamodules.stream.stream_seed`), a
resumed run goes on with exactly the batches the interrupted run would have read next,
instead of replaying the start of the data.

The loader is one endless stream: its iterator (and its worker processes) lives across
epochs, each epoch taking its batches from where the last one stopped, instead of
re-forking the workers and refilling their shuffle buffers at every epoch boundary (with
8 GPUs x batch 8 on 1,000 images, an epoch is 16 steps).
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
        stream: the training stream (its ``set_position`` is called before a new iterator
            starts); with ``chain_epochs`` one iterator serves epoch after epoch.
        progress: the trainer's (epoch, batches trained in it); ``None`` outside a trainer,
            when each pass counts as the next epoch.
        **kwargs: DataLoader arguments.
    """

    def __init__(self, stream: ShardStream, progress: Progress, **kwargs) -> None:
        super().__init__(stream, **kwargs)
        self._progress = progress
        self._resume_at: tuple[int, int] | None = None
        self._passes = 0
        self._live: _LiveIterator | None = None

    @property
    def batches_per_epoch(self) -> int | None:
        """Batches of one epoch on this rank (each worker's part in full batches), if chained."""
        if not self.dataset.chain_epochs:
            return None
        return self.dataset.num_samples // self.batch_size * max(1, self.num_workers)

    def close(self) -> None:
        """Stop the live iterator's worker processes (at the end of a fit)."""
        live, self._live = self._live, None
        shutdown = getattr(live.batches if live else None, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

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
        per_epoch = self.batches_per_epoch
        if per_epoch is None:  # one pass per iterator, as a DataLoader
            self.dataset.set_position(epoch, skip, self.batch_size)
            return super().__iter__()
        live = self._live
        if live is None or (live.epoch, live.taken) != (epoch, skip):
            # first pass, a resume, or a pass left before its end: start the stream there
            self.dataset.set_position(epoch, skip, self.batch_size)
            live = self._live = _LiveIterator(super().__iter__(), epoch, skip)
        return live.epoch_batches(per_epoch)


class _LiveIterator:
    """The loader's one iterator over the endless stream, and where it stands."""

    def __init__(self, batches: Iterator, epoch: int, taken: int) -> None:
        self.batches, self.epoch, self.taken = batches, epoch, taken

    def epoch_batches(self, per_epoch: int) -> Iterator:
        """Yield the rest of the current epoch's batches, then move on to the next epoch."""
        while self.taken < per_epoch:
            batch = next(self.batches)
            self.taken += 1
            yield batch
        self.epoch, self.taken = self.epoch + 1, 0
