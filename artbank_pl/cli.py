"""The ``artbank`` command: LightningCLI (fit, validate, test, predict) plus data tools.

``artbank fit --config configs/quickstart.yaml`` trains; ``artbank shards build`` writes
shards; ``artbank export`` writes embedding files from a checkpoint; ``artbank
demo-images`` gathers the images bundled in installed packages into collection folders.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from collections.abc import Callable, Sequence

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from artbank_pl.config_files import configs_main, resolve_config_args
from artbank_pl.errors import ArtbankError, ConfigError

TOOLS_HELP = """data tools (not LightningCLI):
  artbank shards build --input DIR --output DIR   build WebDataset shards + manifest
  artbank shards cache --manifest M --output DIR --pretrained P --resolution R
                                                   cache VAE latents / CLIP features
  artbank export --ckpt FILE --output DIR          write per-collection embedding files
  artbank grid MANIFEST... --output PNG            content | stylized grid
  artbank configs list | show NAME                 the shipped configs (--config NAME)
  artbank demo-images --output DIR                 gather bundled demo images"""


class ArtbankCLI(LightningCLI):
    """LightningCLI that gives the model the collection names its datamodule reads.

    A task with a ``collections`` option left empty gets the names from the datamodule
    class's ``collection_names(**init_args)`` (the manifest's, for ``ArtworkDataModule``).
    """

    def before_instantiate_classes(self) -> None:
        """Check the strategy and fill ``model.init_args.collections`` from the data config."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_strategy(config.get("trainer.strategy"))
        model_args, data = config.get("model.init_args"), config.get("data")
        if model_args is None or data is None or "collections" not in model_args:
            return
        data_class = import_object(data.class_path)
        names = getattr(data_class, "collection_names", None)
        found = names(**dict(data.init_args)) if callable(names) else None
        if model_args.collections and found and list(model_args.collections) != list(found):
            raise ConfigError(
                f"model.collections {list(model_args.collections)} differ from the data's "
                f"{list(found)}; leave model.collections empty to take the data's"
            )
        if not model_args.collections:
            model_args.collections = found
        check = getattr(data_class, "check_model_args", None)
        if callable(check):
            check(dict(model_args), **dict(data.init_args))


def check_strategy(strategy: object) -> None:
    """Fail in one line, before anything is built, if DeepSpeed is asked for without CUDA."""
    name = strategy if isinstance(strategy, str) else getattr(strategy, "class_path", "")
    if "deepspeed" in str(name).lower() and not torch.cuda.is_available():
        raise ConfigError(
            "trainer.strategy DeepSpeed needs CUDA GPUs and none is visible; "
            "on CPUs use configs/trainer/ddp.yaml"
        )


def import_object(class_path: str):
    """Import ``package.module.Name``."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


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
    parser.add_argument(
        "--paintings", type=int, default=0, help="only this many paintings, no photos (0: all)"
    )
    opts = parser.parse_args(argv)
    for name, paths in gather_demo_images(opts.output, opts.paintings).items():
        print(f"{name}: {len(paths)} images")
    return 0


def _grid(argv: Sequence[str]) -> int:
    from artbank_pl.grid import stylization_grid

    parser = argparse.ArgumentParser(
        prog="artbank grid",
        description="Write a content | stylized side-by-side grid from stylization manifests.",
    )
    parser.add_argument("manifests", nargs="+", help="manifest.jsonl files of artbank predict")
    parser.add_argument("--output", required=True, help="PNG to write")
    parser.add_argument("--cell", type=int, default=128, help="cell size in pixels")
    opts = parser.parse_args(argv)
    print(stylization_grid(opts.manifests, opts.output, opts.cell))
    return 0


TOOLS: dict[str, Callable[[Sequence[str]], int]] = {
    "configs": configs_main,
    "export": _export,
    "demo-images": _demo_images,
    "grid": _grid,
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
    # content streams are iterable datasets: outputs are named by sample key instead
    warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
    try:
        if argv[:2] in (["shards", "build"], ["shards", "cache"]):
            # the shard tools live with the datamodules; core code does not import them
            module = "shards" if argv[1] == "build" else "cache"
            return import_object(f"artbank_pl.datamodules.{module}.main")(argv[2:])
        if argv and argv[0] in TOOLS:
            return TOOLS[argv[0]](argv[1:])
        run_lightning_cli(resolve_config_args(argv))
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
