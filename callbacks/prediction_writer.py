"""Write stylized images as they are predicted, atomically, with a JSONL manifest."""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

log = logging.getLogger(__name__)
MANIFEST = "manifest.jsonl"
IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG"}


def write_temp(path: Path, data: bytes) -> Path:
    """Write ``data`` to a hidden temporary file beside ``path``, synced; return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    os.replace(write_temp(path, data), path)


class StylizedImageWriter(BasePredictionWriter):
    """Save each stylized image as ``<output_dir>/<style>/<key>.<format>``.

    Each image is written to a temporary file and renamed, so a file that exists is
    complete. Its manifest line (key, style, seed, strength, steps, source, file) goes to a
    per-rank part file first; at the end of the run, rank 0 merges all parts into
    ``manifest.jsonl``, one line per existing output. Outputs that already exist are
    skipped before any UNet work (the task asks :meth:`exists`), so an interrupted run is
    finished by running it again, and a finished run rewrites nothing.

    Args:
        output_dir: where outputs go.
        image_format: ``png`` or ``jpg``.
        quality: JPEG quality.
    """

    def __init__(self, output_dir: str, image_format: str = "png", quality: int = 95) -> None:
        super().__init__(write_interval="batch")
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be png or jpg, got {image_format!r}")
        self.output_dir = Path(output_dir)
        self.image_format = image_format
        self.quality = quality
        self.written = 0

    def path_for(self, key: str, style: str) -> Path:
        """Where the output of content ``key`` in ``style`` goes."""
        return self.output_dir / style / f"{key}.{self.image_format}"

    def exists(self, key: str, style: str) -> bool:
        """Whether that output was already written (complete, thanks to the rename)."""
        return self.path_for(key, style).is_file()

    def _part_file(self, rank: int) -> Path:
        return self.output_dir / f".{MANIFEST}.rank{rank}"

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Let the task skip outputs that exist; make the output folder."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        pl_module.output_exists = self.exists
        self.written = 0

    def _encode(self, image) -> bytes:
        buffer = io.BytesIO()
        kwargs = {"quality": self.quality} if self.image_format == "jpg" else {}
        Image.fromarray(image.numpy()).save(buffer, IMAGE_FORMATS[self.image_format], **kwargs)
        return buffer.getvalue()

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        """Write this batch's images, then append their manifest lines to the rank's part."""
        hp = pl_module.hparams
        lines, renames = [], []
        for i, image in enumerate(prediction["images"]):
            key, style = prediction["keys"][i], prediction["styles"][i]
            path = self.path_for(key, style)
            renames.append((write_temp(path, self._encode(image)), path))
            record = {
                "key": key, "style": style, "seed": prediction["seeds"][i],
                "strength": hp.strength, "steps": hp.steps, "inversion": hp.inversion,
                "guidance_scale": hp.guidance_scale, "source": prediction["sources"][i],
                "file": path.relative_to(self.output_dir).as_posix(),
            }  # fmt: skip
            lines.append(json.dumps(record) + "\n")
        if not lines:
            return
        # manifest lines first, renames second: an interruption leaves either a line whose
        # file is missing (dropped at merge, redone on rerun) or nothing, never an unlisted file
        with open(self._part_file(trainer.global_rank), "a") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        for tmp, path in renames:
            os.replace(tmp, path)
        self.written += len(lines)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Merge every rank's manifest lines into ``manifest.jsonl`` on rank 0."""
        trainer.strategy.barrier("artbank-writer")
        if trainer.is_global_zero:
            merge_manifest(self.output_dir)
        log.info("rank %d wrote %d outputs", trainer.global_rank, self.written)


def merge_manifest(output_dir: Path) -> Path:
    """Merge ``manifest.jsonl`` and the part files: one line per (key, style) whose file exists."""
    path = output_dir / MANIFEST
    sources = ([path] if path.is_file() else []) + sorted(output_dir.glob(f".{MANIFEST}.rank*"))
    records = {}
    for source in sources:
        for line in source.read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if (output_dir / record["file"]).is_file():
                records[(record["key"], record["style"])] = record
    text = "".join(json.dumps(r) + "\n" for _, r in sorted(records.items()))
    if not path.is_file() or path.read_text() != text:
        atomic_write_bytes(path, text.encode())
    for source in sources[1 if path in sources else 0 :]:
        source.unlink()
    for tmp in output_dir.rglob(".*.tmp"):  # left by an interrupted run; all ranks are done
        tmp.unlink()
    return path
