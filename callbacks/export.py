"""Write the prompt bank's per-collection embeddings during and after training."""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from artbank_pl.export import FORMATS, write_embeddings

log = logging.getLogger(__name__)


class EmbeddingExport(Callback):
    """Export per-collection embedding files (diffusers and AUTOMATIC1111/ComfyUI forms).

    Files go to ``<dirpath>/diffusers/<name>.safetensors`` and
    ``<dirpath>/a1111/<name>.safetensors``, written atomically on rank 0.

    Args:
        dirpath: output folder; default ``<trainer.default_root_dir>/embeddings``.
        every_n_train_steps: also export every N optimizer steps (0: only at the end).
        formats: any of ``diffusers`` and ``a1111``.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        every_n_train_steps: int = 0,
        formats: list[str] | None = None,
    ) -> None:
        self.dirpath = dirpath
        self.every_n_train_steps = every_n_train_steps
        self.formats = tuple(formats or FORMATS)

    def _out_dir(self, trainer: Trainer) -> Path:
        return Path(self.dirpath or Path(trainer.default_root_dir) / "embeddings")

    @rank_zero_only
    def export(self, trainer: Trainer, pl_module: LightningModule) -> list[Path]:
        """Write the current embeddings; returns the paths written."""
        if not hasattr(pl_module, "embeddings"):
            raise TypeError(f"{type(pl_module).__name__} has no embeddings() to export")
        out_dir, widths = self._out_dir(trainer), pl_module.text_widths
        paths = write_embeddings(pl_module.embeddings(), out_dir, self.formats, widths)
        log.info("exported %d embedding files to %s", len(paths), self._out_dir(trainer))
        return paths

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Export every ``every_n_train_steps`` steps."""
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0:
            self.export(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Export the final embeddings."""
        self.export(trainer, pl_module)
