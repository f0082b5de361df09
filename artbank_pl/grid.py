"""Side-by-side grids of content images and their stylized versions."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from artbank_pl.atomic import atomic_write
from artbank_pl.errors import DataError

#: pixels per character of PIL's default bitmap font, and per text line
CHAR_WIDTH, LINE_HEIGHT = 6, 12


def wrap(label: str, width: int) -> list[str]:
    """Split ``label`` into lines of at most ``width`` pixels, at spaces where possible."""
    per_line = max(1, width // CHAR_WIDTH)
    lines: list[str] = []
    for word in label.split(" "):
        while len(word) > per_line:  # a word longer than a line is cut, not lost
            lines.append(word[:per_line])
            word = word[per_line:]
        if lines and len(lines[-1]) + 1 + len(word) <= per_line:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def tile(
    rows: list[list[Image.Image | None]],
    labels: list[str],
    cell: int = 128,
    row_labels: list[str] | None = None,
) -> Image.Image:
    """Lay out ``rows`` of images (``None`` leaves a blank) under column ``labels``.

    Labels are wrapped to their cell's width, never clipped; ``row_labels`` go in a column
    on the left.
    """
    columns = [wrap(label, cell - 8) for label in labels]
    header = 6 + LINE_HEIGHT * max((len(c) for c in columns), default=1)
    rows_text = [wrap(label, cell - 8) for label in row_labels or []]
    left = cell if row_labels else 0
    canvas = Image.new("RGB", (left + cell * len(labels), header + cell * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, lines in enumerate(columns):
        draw.multiline_text((left + c * cell + 4, 3), "\n".join(lines), fill="black", spacing=2)
    for r, lines in enumerate(rows_text):
        draw.multiline_text((4, header + r * cell + 4), "\n".join(lines), fill="black", spacing=2)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            if image is not None:
                thumb = image.convert("RGB").resize((cell, cell), Image.LANCZOS)
                canvas.paste(thumb, (left + c * cell, header + r * cell))
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
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"stylization manifest {path} is not UTF-8 text") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {number} is not JSON: {err.msg}") from None
        if not isinstance(record, dict):
            raise DataError(f"{path} line {number} is not a JSON object")
        records.append(record)
    return records


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
