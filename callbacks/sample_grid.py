"""Log content | style | result grids during ``fit`` validation."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image

from artbank_pl.errors import ArtbankError, ConfigError, DataError
from artbank_pl.grid import tile
from artbank_pl.metrics import CLIPImageEncoder, StyleTransferMetrics
from artbank_pl.styles import image_caption, image_files, load_image
from artbank_pl.tasks.style import CAPTION_FIELD
from artbank_pl.vision import load_vision_encoder
from artbank_pl.world.judges import load_judges

log = logging.getLogger(__name__)


def to_pil(pixels: torch.Tensor, signed: bool) -> Image.Image:
    """Convert a ``[3, H, W]`` tensor in ``[-1, 1]`` (``signed``) or ``[0, 1]`` to PIL."""
    x = (pixels.float().cpu() + 1) / 2 if signed else pixels.float().cpu()
    return Image.fromarray((x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())


class SampleGrid(Callback):
    """Stylize a few content images with each collection's style at every validation.

    Each row is one collection: a validation exemplar of it (the style), then each content
    image and its stylized version. The grid goes to the logger's image API (W&B
    ``log_image``, TensorBoard ``add_image``), or to ``<log_dir>/samples/step_N.png`` for
    loggers without one (CSV). Runs on rank 0 with fixed seeds, so grids are comparable
    across steps. With a CLIP model (``metrics_model``, or the task's own vision model) it
    also logs ``val/style_sim/<collection>``, ``val/content_sim/<collection>`` and
    ``val/ssim/<collection>`` for those stylized images.

    Args:
        content: folder of content images (default: validation exemplars of the other
            collections).
        num_content: content images per row.
        max_collections: rows (collections) per grid.
        steps: DDIM steps; strength and guidance_scale as in stylization.
        strength: img2img strength.
        guidance_scale: classifier-free guidance scale.
        seed: base seed.
        metrics_model: CLIP model for the validation metrics (a hub id, folder or ``tiny``);
            default: the task's own vision model if it has one, else no metrics.
        num_exemplars: validation images kept per collection as its style reference.
        judges: the planted world's judges (``world`` or a folder): also log
            ``val/style_accuracy/<collection>`` and ``val/content_accuracy/<collection>``.
        prompt: the prompt, as in ``artbank predict``: ``*`` for the style, ``{caption}``
            for a content image's caption (its ``<stem>.txt`` in ``content``).
        adain: start from the latent statistics of the collection's exemplar.
    """

    def __init__(
        self,
        content: str | None = None,
        num_content: int = 2,
        max_collections: int = 4,
        steps: int = 20,
        strength: float = 0.7,
        guidance_scale: float = 7.5,
        seed: int = 0,
        metrics_model: str | None = None,
        num_exemplars: int = 4,
        judges: str | None = None,
        prompt: str = "*",
        adain: bool = False,
    ) -> None:
        if prompt.count("*") != 1:
            raise ConfigError(f"SampleGrid prompt {prompt!r} must hold one '*' for the style")
        self.template = prompt.replace("*", "{}")
        # as in predict, a caption enters the prompt only where it says {caption}
        self.uses_captions = CAPTION_FIELD in prompt
        self.adain = adain
        self.content = content
        self.judges = load_judges(judges) if judges else None
        self.metrics_model = metrics_model
        self.num_exemplars = num_exemplars
        self.encoder: CLIPImageEncoder | None = None
        self.num_content = num_content
        self.max_collections = max_collections
        self.steps, self.strength, self.guidance_scale, self.seed = (
            steps,
            strength,
            guidance_scale,
            seed,
        )
        self.exemplars: dict[int, list[torch.Tensor]] = {}
        self.last_path: Path | None = None
        self.skipped: set[Path] = set()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check the content folder before any training step."""
        if self.content and not Path(self.content).is_dir():
            raise DataError(f"SampleGrid content folder {self.content} does not exist")
        if self.metrics_model:
            self.encoder = CLIPImageEncoder(load_vision_encoder(self.metrics_model))
        elif hasattr(pl_module, "vision"):
            self.encoder = CLIPImageEncoder(pl_module.vision)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        """Keep the first validation images of each collection as its style exemplars."""
        for pixels, k in zip(batch["pixel_values"], batch["collection_idx"].tolist(), strict=True):
            if k not in self.exemplars and len(self.exemplars) >= self.max_collections:
                continue
            kept = self.exemplars.setdefault(k, [])
            if len(kept) < self.num_exemplars:
                kept.append(pixels.detach().cpu())

    def _content(self, exemplars: dict[int, list[torch.Tensor]]) -> tuple[torch.Tensor, list]:
        """Content pixels for the grid, and their captions (``None`` without one)."""
        if not self.content:
            return self._exemplar_content(exemplars)
        size = tuple(next(iter(exemplars.values()))[0].shape[-2:])
        images, captions = [], []
        for path in image_files(Path(self.content)):
            if len(images) == self.num_content:
                break
            try:
                image, caption = load_image(path), image_caption(path)
            except (ArtbankError, OSError, ValueError) as err:
                self._skip(path, err)
                continue
            images.append(F.interpolate(image, size=size, mode="bilinear"))
            captions.append(caption)
        if not images:  # every content image was unreadable: the exemplars stand in
            return self._exemplar_content(exemplars)
        return torch.cat(images), captions

    def _exemplar_content(self, exemplars: dict[int, list[torch.Tensor]]) -> tuple:
        pixels = torch.stack([kept[0] for kept in exemplars.values()][: self.num_content])
        return pixels, [None] * len(pixels)

    def _skip(self, path: Path, err: Exception) -> None:
        """Count a content image the grid cannot use; name it once (the grid reruns often)."""
        if path not in self.skipped:
            self.skipped.add(path)
            log.warning("SampleGrid skips content %s (%s); %d skipped", path, err,
                        len(self.skipped))  # fmt: skip

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Render and log the grid and metrics (rank 0, not during the sanity check)."""
        exemplars, self.exemplars = self.exemplars, {}
        if trainer.sanity_checking or not trainer.is_global_zero or not exemplars:
            return
        device = pl_module.device
        content, captions = self._content(exemplars)
        content = content.to(device)
        metrics = self._metrics(pl_module, exemplars, device)
        rows = []
        for k, kept in sorted(exemplars.items()):
            results = pl_module.stylize(
                content, k, kept[0].to(device), self.steps, self.strength, self.guidance_scale,
                self.seed, adain=self.adain, captions=captions if self.uses_captions else None,
                template=self.template,
            )  # fmt: skip
            if metrics is not None:
                metrics.update(results, ((content + 1) / 2).clamp(0, 1), [k] * len(content))
            row = [to_pil(kept[0], signed=True)]
            for c, r in zip(content, results, strict=True):
                row += [to_pil(c, signed=True), to_pil(r, signed=False)]
            rows.append(row)
        labels = ["style exemplar"] + ["content", "result"] * len(content)
        row_labels = [pl_module.collections[k] for k in sorted(exemplars)]
        self._log(trainer, tile(rows, labels, cell=96, row_labels=row_labels))
        if metrics is not None:
            for name, values in metrics.compute().items():
                for collection, value in values.items():
                    pl_module.log(f"val/{name}/{collection}", value, rank_zero_only=True)

    def _metrics(self, pl_module, exemplars, device) -> StyleTransferMetrics | None:
        if self.encoder is None:
            return None
        self.encoder.to(device)
        # sync_on_compute is off: only rank 0 renders the samples
        if self.judges is not None:
            self.judges.to(device)
        metrics = StyleTransferMetrics(self.encoder, pl_module.collections, judges=self.judges).to(
            device
        )
        for metric in metrics.tracked():
            metric.sync_on_compute = False
        for k, kept in exemplars.items():
            metrics.set_exemplars(k, ((torch.stack(kept) + 1) / 2).clamp(0, 1).to(device))
        return metrics

    def _log(self, trainer: Trainer, grid: Image.Image) -> None:
        """Send the grid to every logger: its image API, else a PNG in its log dir.

        A logger gets it at the step Lightning logs this validation's scalars at (one less
        than the steps trained, ``global_step``), so a TensorBoard step shows both; the PNG
        is named by ``global_step``, as the checkpoints are.
        """
        step = trainer.global_step
        # Lightning's step for logged metrics (LoggerConnector.log_metrics); no public name
        logged = trainer.fit_loop.epoch_loop._batches_that_stepped
        self.last_path = None
        for logger in trainer.loggers or [None]:
            if logger is not None and hasattr(logger, "log_image"):
                logger.log_image(key="samples", images=[grid], step=logged)
            elif logger is not None and hasattr(getattr(logger, "experiment", None), "add_image"):
                logger.experiment.add_image("samples", np.asarray(grid), logged, dataformats="HWC")
            elif self.last_path is None:  # file loggers (CSV) and no logger: one PNG
                root = Path(logger.log_dir if logger is not None else trainer.default_root_dir)
                self.last_path = root / "samples" / f"step_{step:07d}.png"
                self.last_path.parent.mkdir(parents=True, exist_ok=True)
                grid.save(self.last_path)
