"""Side-by-side grids of content images and their stylized versions."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from artbank_pl.atomic import atomic_write
from artbank_pl.errors import DataError


def tile(rows: list[list[Image.Image | None]], labels: list[str], cell: int = 128) -> Image.Image:
    """Lay out ``rows`` of images (``None`` leaves a blank) under column ``labels``."""
    header = 18
    width, height = cell * len(labels), header + cell * len(rows)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(labels):
        draw.text((c * cell + 4, 3), label[:24], fill="black")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            if image is not None:
                thumb = image.convert("RGB").resize((cell, cell), Image.LANCZOS)
                canvas.paste(thumb, (c * cell, header + r * cell))
    return canvas


def manifest_path(path: str | Path) -> Path:
    """Return ``path``, or ``path/manifest.jsonl`` when ``path`` is an output folder."""
    path = Path(path)
    if not path.is_dir():
        return path
    if not (path / "manifest.jsonl").is_file():
        raise DataError(f"{path} is a folder without manifest.jsonl (run artbank predict)")
    return path / "manifest.jsonl"


def read_manifest_lines(path: Path) -> list[dict]:
    """Read a stylization ``manifest.jsonl``."""
    if not path.is_file():
        raise DataError(f"stylization manifest {path} does not exist (run artbank predict)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stylization_grid(manifests: list[str | Path], output: str | Path, cell: int = 128) -> Path:
    """Write a grid PNG: one row per content image, its source then each style's result.

    Args:
        manifests: ``manifest.jsonl`` files written by ``StylizedImageWriter`` (or the
            folders holding them); their outputs are matched by content key.
        output: PNG path (written atomically).
        cell: pixel size of each cell.
    """
    columns: dict[str, dict[str, Path]] = {}
    sources: dict[str, str] = {}
    for manifest in map(manifest_path, manifests):
        for record in read_manifest_lines(manifest):
            name = f"{manifest.parent.name}/{record['style']}"
            columns.setdefault(name, {})[record["key"]] = manifest.parent / record["file"]
            sources.setdefault(record["key"], record.get("source", ""))
    keys = sorted(sources)
    rows = []
    for key in keys:
        source = Path(sources[key])
        row = [Image.open(source) if source.is_file() else None]
        row += [Image.open(c[key]) if key in c else None for c in columns.values()]
        rows.append(row)
    grid = tile(rows, ["content", *columns], cell)
    return atomic_write(output, lambda tmp: grid.save(tmp, format="PNG"))
