"""The ``artbank`` command: LightningCLI (fit, validate, test, predict) plus data tools.

``artbank fit --config configs/quickstart.yaml`` trains; ``artbank shards build`` writes
shards; ``artbank export`` writes embedding files from a checkpoint; ``artbank
demo-images`` gathers the images bundled in installed packages into collection folders.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable, Sequence

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from artbank_pl.errors import ArtbankError

TOOLS_HELP = """data tools (not LightningCLI):
  artbank shards build --input DIR --output DIR   build WebDataset shards + manifest
  artbank export --ckpt FILE --output DIR          write per-collection embedding files
  artbank demo-images --output DIR                 gather bundled demo images"""


class ArtbankCLI(LightningCLI):
    """LightningCLI whose data's collection names are linked into the model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link ``data.collections`` (read from the manifest) to ``model.init_args.collections``."""
        parser.link_arguments(
            "data.collections", "model.init_args.collections", apply_on="instantiate"
        )


def run_lightning_cli(args: Sequence[str] | None) -> ArtbankCLI:
    """Run LightningCLI with subclass modes, env overrides and an overwritable saved config."""
    return ArtbankCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "default_env": True,
            "env_prefix": "ARTBANK",
            "epilog": TOOLS_HELP,
            "formatter_class": argparse.RawDescriptionHelpFormatter,
        },
        args=args,
    )


def _shards_build(argv: Sequence[str]) -> int:
    from datamodules.shards import build_shards

    parser = argparse.ArgumentParser(
        prog="artbank shards build",
        description="Build WebDataset shards and manifest.json from one folder per collection.",
    )
    parser.add_argument("--input", required=True, help="folder with one sub-folder per collection")
    parser.add_argument("--output", required=True, help="folder for shards and manifest.json")
    parser.add_argument("--size", type=int, default=512, help="shorter side in px (0: keep)")
    parser.add_argument("--crop", action="store_true", help="also center-crop to a square")
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    parser.add_argument(
        "--val-per-collection", type=int, default=0, help="images per collection held out"
    )
    parser.add_argument("--format", default="jpg", choices=("jpg", "png"))
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality")
    parser.add_argument("--seed", type=int, default=0, help="training-order shuffle seed")
    opts = parser.parse_args(argv)
    report = build_shards(
        opts.input, opts.output, opts.size, opts.crop, opts.maxcount, opts.val_per_collection,
        opts.format, opts.quality, opts.seed,
    )  # fmt: skip
    counts = ", ".join(f"{name}: {n}" for name, n in sorted(report.written.items()))
    print(f"wrote {sum(report.written.values())} images ({counts}); manifest {report.manifest}")
    if report.skipped:
        print(f"skipped {len(report.skipped)} unreadable file(s): " + ", ".join(report.skipped))
    return 0


def _export(argv: Sequence[str]) -> int:
    from artbank_pl.export import FORMATS, bank_embeddings_from_checkpoint, write_embeddings

    parser = argparse.ArgumentParser(
        prog="artbank export",
        description="Write per-collection embedding files from a PromptBankTask checkpoint.",
    )
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint (.ckpt)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    opts = parser.parse_args(argv)
    paths = write_embeddings(bank_embeddings_from_checkpoint(opts.ckpt), opts.output, opts.formats)
    for path in paths:
        print(path)
    return 0


def _demo_images(argv: Sequence[str]) -> int:
    from artbank_pl.demo import gather_demo_images

    parser = argparse.ArgumentParser(
        prog="artbank demo-images",
        description="Copy images bundled in installed packages into collection folders.",
    )
    parser.add_argument("--output", required=True, help="folder to fill")
    opts = parser.parse_args(argv)
    for name, paths in gather_demo_images(opts.output).items():
        print(f"{name}: {len(paths)} images")
    return 0


TOOLS: dict[str, Callable[[Sequence[str]], int]] = {
    "export": _export,
    "demo-images": _demo_images,
}


def main(args: Sequence[str] | None = None) -> int | None:
    """Entry point of ``artbank`` and ``python -m artbank_pl``.

    Args:
        args: command-line arguments; ``None`` reads ``sys.argv``.
    """
    argv = list(sys.argv[1:] if args is None else args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # the frozen Stable Diffusion parts are in eval mode on purpose
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    try:
        if argv[:2] == ["shards", "build"]:
            return _shards_build(argv[2:])
        if argv and argv[0] in TOOLS:
            return TOOLS[argv[0]](argv[1:])
        run_lightning_cli(args)
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        sys.exit(f"artbank: error: {cause}")
    return None


def user_error(err: BaseException) -> ArtbankError | None:
    """Return the ArtbankError behind ``err`` (jsonargparse wraps errors raised in __init__)."""
    while err is not None:
        if isinstance(err, ArtbankError):
            return err
        err = err.__cause__ or err.__context__
    return None
