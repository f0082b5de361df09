"""Checkpoint files that are whole or absent, even when the process is killed mid-write."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from artbank_pl.atomic import atomic_write, temp_glob

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save checkpoints through a temporary file in their own folder, fsync and rename.

    Lightning's default writes through fsspec, which on a checkpoint folder on another file
    system than ``$TMPDIR`` (a shared run folder seen from a node-local ``/tmp``: the usual
    cluster layout) copies into place, so a kill during the copy leaves ``last.ckpt``
    truncated and the previous good one gone. A rename within one folder is atomic: the
    old file stays whole until the new one is. Files are mode 0644 (readable by the group
    that shares the run). Remote URLs (``s3://`` ...) keep Lightning's way.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically; remove temporaries of killed saves."""
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
        remove_orphan_temporaries(path)


def remove_orphan_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` left by saves that were killed before their rename.

    One process saves one file name at a time, so once ``path`` is renamed into place
    every other temporary of that name is an orphan.
    """
    for orphan in path.parent.glob(temp_glob(path.name)):
        orphan.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted checkpoint save", orphan)
