"""Run the product on a hostile input and report what it did (for ``tests/hostile_cases.py``).

Every runner goes through the entry point a user has (``artbank ...`` via ``main``), or the
datamodule that ``artbank fit`` / ``predict`` reads through, and returns an :class:`Observed`:
the exit code, the line the user saw, the skip count and which good samples were used.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from artbank_pl.cli import main
from artbank_pl.errors import ArtbankError
from tests import hostile

#: the good images every shard-building case starts from (collection/file)
BASE_IMAGES = ("hokusai/wave.png", "monet/lilies.png", "monet/poppies.png")

#: fast settings for a fit that is refused before or at its first step
QUICK_FIT = ["--trainer.max_steps", "1", "--trainer.val_check_interval", "1",
             "--data.init_args.resolution", "16", "--data.init_args.batch_size", "1",
             "--data.init_args.samples_per_epoch", "2",
             "--data.init_args.num_workers", "0"]  # fmt: skip

#: fast settings for a stylization of a few images
QUICK_PREDICT = ["--model.init_args.steps", "4", "--data.init_args.resolution", "16"]


@dataclass
class Observed:
    """What the product did with one hostile input.

    Attributes:
        exit: process exit code (1 for ``sys.exit("artbank: error: ...")``).
        text: the error line for a non-zero exit, else everything printed and logged.
        skipped: files, samples or shards the product counted as skipped.
        used: the good samples that reached the model or the output (keys or source paths).
    """

    exit: int
    text: str
    skipped: int = 0
    used: set[str] = field(default_factory=set)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def captured_log() -> Iterator[list[str]]:
    """Collect the messages logged meanwhile (INFO and up) into the list it yields."""
    records = _Records()
    logging.getLogger().addHandler(records)
    try:
        yield records.lines
    finally:
        logging.getLogger().removeHandler(records)


@contextlib.contextmanager
def inside(folder: Path) -> Iterator[None]:
    """Run with ``folder`` as working directory (configs name ``outputs/demo/...``)."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def run_main(argv: list[str], folder: Path) -> Observed:
    """Run ``artbank <argv>`` in ``folder``; an exception other than SystemExit propagates."""
    printed = io.StringIO()
    with captured_log() as lines, inside(folder), contextlib.redirect_stdout(printed):
        try:
            code = main(argv) or 0
        except SystemExit as exit_:
            if isinstance(exit_.code, str):
                return Observed(1, exit_.code)
            code = exit_.code or 0
    return Observed(code, "\n".join([printed.getvalue(), *lines]))


def run_tool(argv: list[str], folder: Path) -> Observed:
    """Run a data tool (``artbank world ...``); an argparse refusal is its last stderr line."""
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        seen = run_main(argv, folder)
    if seen.exit == 2:  # argparse: usage, then "prog: error: ..."
        return Observed(1, errors.getvalue().strip().splitlines()[-1])
    return seen


def run_refusing_early(argv: list[str], folder: Path, refused_at_start: bool) -> Observed:
    """:func:`run_main`; with ``refused_at_start`` a refusal must come before SD is loaded."""
    from unittest import mock

    from artbank_pl.tasks import base

    with mock.patch.object(base, "load_parts", wraps=base.load_parts) as load_parts:
        seen = run_main(argv, folder)
    if seen.exit and refused_at_start:
        assert not load_parts.called, f"refused after loading the model: {seen.text}"
    return seen


def run_datamodule(read: Callable[[], tuple[list[str], int]]) -> Observed:
    """Call ``read`` (keys read, skip count) with the log captured; a user error is exit 1."""
    with captured_log() as lines:
        try:
            keys, skipped = read()
        except ArtbankError as err:
            return Observed(1, str(err))
    return Observed(0, "\n".join(lines), skipped, set(keys))


# --- artbank shards build ---------------------------------------------------------------


def image_tree(root: Path, extra: dict[str, Callable[[Path], Path]] | None = None) -> Path:
    """Write the base images plus ``extra`` (relative path -> writer) under ``root``."""
    for relative in BASE_IMAGES:
        hostile.good_image(root / relative)
    for relative, write in (extra or {}).items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        write(root / relative)
    return root


def shard_sources(out: Path) -> set[str]:
    """The ``source`` (collection/file) of every sample in a build's shards."""
    sources = set()
    for path in out.glob("*.tar"):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    sources.add(json.loads(tar.extractfile(member).read())["source"])
    return sources


def shards_build(ws: Path, extra=None, options=(), images=None, out=None) -> Observed:
    """``artbank shards build`` of ``images`` (default: the base images plus ``extra``)."""
    images = images or image_tree(ws / "in", extra)
    out = out or ws / "out"
    argv = ["shards", "build", "--input", str(images), "--output", str(out),
            "--size", "16", "--format", "png", *options]  # fmt: skip
    seen = run_main(argv, ws)
    if seen.exit == 0:
        seen.skipped = len(json.loads((out / "manifest.json").read_text())["skipped"])
        seen.used = shard_sources(out)
        assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary left"
    return seen


# --- artbank fit: manifests, options, checkpoints ---------------------------------------------


def demo_layout(ws: Path) -> Path:
    """Lay ``ws`` out as ``make demo`` does: shards of the base images and photographs."""
    from artbank_pl.datamodules.shards import build_shards

    images = image_tree(ws / "images")
    build_shards(images, ws / "outputs/demo/shards", size=16, maxcount=1, val_per_collection=0,
                 image_format="png")  # fmt: skip
    photographs = ws / "outputs/demo/images/photographs"
    hostile.good_image(photographs / "house.png")
    return ws / "outputs/demo/shards/manifest.json"


def edit_manifest(manifest: Path, edit: Callable[[dict], object]) -> Path:
    """Rewrite ``manifest`` as ``edit`` returns it."""
    manifest.write_text(json.dumps(edit(json.loads(manifest.read_text()))))
    return manifest


def fit(ws: Path, *options: str, manifest_edit=None, refused_at_start=True) -> Observed:
    """``artbank fit --config quickstart`` in a demo layout, with ``options``.

    With ``refused_at_start``, a refusal must come before Stable Diffusion is loaded.
    """
    manifest = demo_layout(ws)
    if manifest_edit is not None:
        edit_manifest(manifest, manifest_edit)
    argv = ["fit", "--config", "quickstart", *QUICK_FIT, *options]
    return run_refusing_early(argv, ws, refused_at_start)


# --- the training stream (what fit reads) -----------------------------------------------------


def training_stream(ws: Path, extra_shards: dict[str, Callable[[Path], Path]], good: int = 3):
    """One epoch of ``good`` samples of the training stream: the demo shards + ``extra_shards``.

    With a shuffle buffer of 1 an epoch as long as the good samples holds each of them once.
    ``skipped`` counts skipped samples plus unreadable shards.
    """
    from artbank_pl.datamodules import ArtworkDataModule
    from artbank_pl.datamodules import stream as stream_module

    manifest = demo_layout(ws)
    for name, write in extra_shards.items():
        write(manifest.parent / name)

    def add_shards(data: dict) -> dict:
        data["splits"]["train"]["shards"] += list(extra_shards)
        return data

    edit_manifest(manifest, add_shards)

    def read() -> tuple[list[str], int]:
        stream_module.BAD_SHARDS.clear()
        data = ArtworkDataModule(manifest=str(manifest), resolution=16, batch_size=1,
                                 num_workers=0, samples_per_epoch=good,
                                 shuffle_buffer=1)  # fmt: skip
        loader = data.train_dataloader()
        keys = [key for batch in loader for key in batch["__key__"]]
        passed_over = sum(loader.dataset.select.other.values())  # counted per collection
        return keys, loader.dataset.skipped + passed_over + len(stream_module.BAD_SHARDS)

    return run_datamodule(read)


# --- content (what predict reads) and artbank predict -------------------------------------------


def content_stream(ws: Path, extra: dict[str, Callable[[Path], Path]], content=None) -> Observed:
    """The content images ``artbank predict`` would stylize, from a folder with ``extra``."""
    from artbank_pl.datamodules import ContentDataModule

    folder = ws / "content"
    folder.mkdir(exist_ok=True)
    for relative, write in extra.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        write(folder / relative)

    def read() -> tuple[list[str], int]:
        data = ContentDataModule(str(content or folder), resolution=16, num_workers=0)
        loader = data.predict_dataloader()
        keys = [key for batch in loader for key in batch["__key__"]]
        return keys, loader.dataset.skipped

    return run_datamodule(read)


def bank(ws: Path, styles=("monet", "ukiyo")) -> Path:
    """A style bank folder as ``artbank export`` writes it (small random vectors)."""
    from artbank_pl.export import write_embeddings

    gen = torch.Generator().manual_seed(0)
    vectors = {name: torch.randn(2, 32, generator=gen) * 0.02 for name in styles}
    write_embeddings(vectors, ws / "export", formats=("diffusers",))
    return ws / "export/diffusers"


def predict(
    ws: Path, *options: str, bank_path: Path | None = None, prepare=None, refused_at_start=True
) -> Observed:
    """``artbank predict --config stylize-quickstart`` on two photographs.

    ``prepare(output_folder)`` may plant files in the output folder first. ``used`` holds
    the ``key/style`` pairs of the output manifest whose image decodes. With
    ``refused_at_start``, a refusal must come before Stable Diffusion is loaded.
    """
    from PIL import Image

    hostile.good_image(ws / "photos/house.png")
    hostile.good_image(ws / "photos/tree.png", value=60)
    out = ws / "outputs/demo/stylized"
    out.mkdir(parents=True, exist_ok=True)
    if prepare is not None:
        prepare(out)
    argv = ["predict", "--config", "stylize-quickstart", *QUICK_PREDICT,
            "--model.init_args.bank", str(bank_path or bank(ws)),
            "--data.init_args.content", str(ws / "photos"), *options]  # fmt: skip
    seen = run_refusing_early(argv, ws, refused_at_start)
    if seen.exit == 0 and (out / "manifest.jsonl").is_file():
        for line in (out / "manifest.jsonl").read_text().splitlines():
            record = json.loads(line)
            Image.open(out / record["file"]).load()  # every output listed decodes
            seen.used.add(f"{record['key']}/{record['style']}")
    return seen
