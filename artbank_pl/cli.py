"""The ``artbank`` command: LightningCLI (fit, validate, test, predict) plus data tools.

``artbank fit --config configs/quickstart.yaml`` trains; ``artbank shards build`` writes
shards; ``artbank export`` writes embedding files from a checkpoint; ``artbank world``
writes the planted style world's images and pretrains its model and judges.

Lightning is imported only for its four subcommands (:mod:`artbank_pl.lightning_cli`), so a
data tool starts in about the time of ``import torch``.
"""

from __future__ import annotations

import errno
import importlib
import logging
import sys
import warnings
from collections.abc import Callable, Sequence

from artbank_pl.config_files import configs_main, resolve_config_args
from artbank_pl.errors import ArtbankError, ConfigError, DataError
from artbank_pl.tool_args import ToolParser, int_at_least

USAGE = """usage: artbank COMMAND [options]    (artbank COMMAND --help: that command's options)

ArtBank and InST style transfer on a frozen Stable Diffusion, with PyTorch Lightning.

training and stylization (LightningCLI: --config FILE|NAME, dotted options, --print_config):
  artbank fit       train a prompt bank (ArtBank) or an inverter (InST)
  artbank validate  one pass over the validation set of a training config
  artbank test      evaluate stylization: the judges, CLIP metrics, report.html
  artbank predict   stylize a dataset (an image, a folder, shards) with a bank or inverter
"""

TOOLS_HELP = """data tools (not LightningCLI):
  artbank shards build --input DIR --output DIR   build WebDataset shards + manifest
  artbank shards build --parquet DIR --output DIR  the same from Parquet (Hugging Face)
  artbank shards cache --manifest M --output DIR --pretrained P --resolution R
                                                   cache VAE latents / CLIP features
  artbank shards index 'DIR/{00000..00099}.tar' --collection-key FIELD
                                                   manifest for shards other tools wrote
  artbank export --ckpt FILE --output DIR [--style-images IMG...]
                                                   write per-style embedding files
  artbank grid MANIFEST... --output PNG            content | stylized grid
  artbank configs list | show NAME                 the shipped configs (--config NAME)
  artbank world images | pretrain[-xl] | judges    the planted style world
  artbank demo [--output DIR]                      the whole quick start, from the package"""


def _export(argv: Sequence[str]) -> int:
    from artbank_pl.export import FORMATS, write_embeddings
    from artbank_pl.styles import checkpoint_styles

    parser = ToolParser(
        prog="artbank export",
        description="Write per-style embedding files (diffusers and A1111/ComfyUI) from a "
        "PromptBankTask checkpoint (one per collection) or from an InverterTask checkpoint "
        "and style images (one per image, named by its stem).",
    )
    parser.add_argument("--ckpt", "--ckpt-path", required=True, help="Lightning checkpoint (.ckpt)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS,
                        help="file layouts to write")  # fmt: skip
    parser.add_argument(
        "--style-images", nargs="+", metavar="IMAGE",
        help="style images to invert (InverterTask checkpoints only)",
    )  # fmt: skip
    parser.add_argument(
        "--vision-model", help="CLIP vision model of the inverter (default: its training one)"
    )
    parser.add_argument(
        "--raw", action="store_true",
        help="export the raw weights, not the TrainablesEMA average a checkpoint holds",
    )  # fmt: skip
    opts = parser.parse_args(argv)
    styles, widths = checkpoint_styles(
        opts.ckpt, opts.style_images, opts.vision_model, not opts.raw
    )
    paths = write_embeddings(styles, opts.output, opts.formats, widths)
    for path in paths:
        print(path)
    return 0


def _grid(argv: Sequence[str]) -> int:
    from artbank_pl.grid import stylization_grid

    parser = ToolParser(
        prog="artbank grid",
        description="Write a content | stylized side-by-side grid from stylization manifests.",
    )
    parser.add_argument("manifests", nargs="+", help="manifest.jsonl files of artbank predict")
    parser.add_argument("--output", required=True, help="PNG to write")
    parser.add_argument("--cell", type=int_at_least(8, 1024), default=128,
                        help="cell size in pixels, 8-1024")  # fmt: skip
    opts = parser.parse_args(argv)
    print(stylization_grid(opts.manifests, opts.output, opts.cell))
    return 0


def _shards(argv: Sequence[str]) -> int:
    # the shard tools live with the datamodules; core code does not import them
    modules = {"build": "shards", "cache": "cache", "index": "index"}
    if not argv or argv[0] not in modules:
        print("usage: artbank shards {build,cache,index} ... (--help on each)")
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    return importlib.import_module(f"artbank_pl.datamodules.{modules[argv[0]]}").main(argv[1:])


def _demo(argv: Sequence[str]) -> int:
    from artbank_pl.demo import main as demo_main

    return demo_main(argv)


def _world(argv: Sequence[str]) -> int:
    from artbank_pl.world.cli import main as world_main

    return world_main(argv)


TOOLS: dict[str, Callable[[Sequence[str]], int]] = {
    "configs": configs_main,
    "shards": _shards,
    "world": _world,
    "export": _export,
    "grid": _grid,
    "demo": _demo,
}


def main(args: Sequence[str] | None = None) -> int | None:
    """Entry point of ``artbank`` and ``python -m artbank_pl``.

    Args:
        args: command-line arguments; ``None`` reads ``sys.argv``.
    """
    argv = list(sys.argv[1:] if args is None else args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_console()
    # the frozen Stable Diffusion parts are in eval mode on purpose
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # content streams are iterable datasets: outputs are named by sample key instead
    warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
    if not argv or argv[0] in ("-h", "--help"):
        # the top-level help without importing Lightning (that takes several seconds)
        print(USAGE + "\n" + TOOLS_HELP)
        return 0 if argv else 2
    try:
        if argv and argv[0] in TOOLS:
            return TOOLS[argv[0]](argv[1:])
        from artbank_pl.lightning_cli import run_lightning_cli

        # the `lightning` package prints its loggers' lines with a handler of its own; they
        # would reach the root handler too and show twice
        logging.getLogger("lightning").propagate = False
        run_lightning_cli(resolve_config_args(argv), TOOLS_HELP)
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        sys.exit(f"artbank: error: {one_line(cause)}")
    return None


class _DropTorchvisionFallback(logging.Filter):
    """Drop transformers' note that an image processor falls back to PIL without torchvision."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


class _DropAdverts(logging.Filter):
    """Drop Lightning's product tips (litlogger, litmodels): they ask nothing of the user."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Tip:" in message and ("litlogger" in message or "litmodels" in message))


def quiet_console() -> None:
    """Silence console lines that ask nothing of the user; real warnings stay."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropAdverts())
    # diffusers' pipeline imports name transformers' image processors; artbank preprocesses
    # images itself, so the PIL fallback they announce without torchvision changes nothing
    logging.getLogger("transformers.utils.import_utils").addFilter(_DropTorchvisionFallback())
    # the SLURM environment is used by the slurm overlay; outside it the hint is noise
    warnings.filterwarnings("ignore", message=r"The `srun` command is available")
    # KID keeps every feature: a warning for huge sets, not for an evaluation report
    warnings.filterwarnings("ignore", message=r"Metric `Kernel Inception Distance` will save")
    # said in one line, without the hint to set save_last (CheckpointOnSignal.on_fit_start)
    warnings.filterwarnings("ignore", message=r'.*ckpt_path="last"\) is set, but there is no')
    # the default logger is CSV without tensorboard: the extra is in the README
    warnings.filterwarnings("ignore", message=r"Starting from v1.9.0, `tensorboardX` has been")
    # artbank passes LightningCLI the command line itself, after resolving config names
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    # a content folder's length is exact per worker (FolderStream.__len__ splits like the
    # stream does), which is what this warning fears is not the case
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
    # third-party deprecations the user cannot act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(diffusers|transformers)")


def one_line(err: BaseException) -> str:
    """Return the message of ``err``; from a dataloader worker, without its traceback.

    PyTorch re-raises a worker's exception with "Caught X in DataLoader worker process N"
    and the whole traceback as its message; the last line holds the original message.
    """
    message = str(err)
    if "Original Traceback" not in message:
        return message
    last = message.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


#: file-system errors that name a path the user chose (an output under a file, a folder
#: without write permission, a folder that cannot be made, as under /proc, a full disk):
#: said in one line like an ArtbankError
PATH_ERRORS = (
    PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError, FileNotFoundError,
)  # fmt: skip


def command_line_error(err: BaseException) -> ConfigError | None:
    """Return a bad command-line option or Trainer argument as one ``ConfigError``, or None.

    jsonargparse raises ``ArgumentError`` (the parser does not exit, see
    :func:`~artbank_pl.lightning_cli.run_lightning_cli`); Lightning's Trainer raises
    ``MisconfigurationException`` for an argument out of range (``max_steps -5``).
    """
    if "lightning" not in sys.modules:  # a data tool: argparse says it itself
        return None
    from jsonargparse import ArgumentError
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from artbank_pl.lightning_cli import parse_error_line

    if isinstance(err, ArgumentError):
        return ConfigError(parse_error_line(str(err)))
    if isinstance(err, MisconfigurationException):
        return ConfigError(str(err).strip().splitlines()[0])
    return None


def user_error(err: BaseException) -> BaseException | None:
    """Return the user error behind ``err``, or ``None`` for a bug (shown as a traceback).

    An ArtbankError anywhere in the chain (jsonargparse wraps errors raised in __init__),
    or a file-system error on a named path, as ``DataError("<path>: <reason>")``.
    """
    while err is not None:
        if isinstance(err, ArtbankError):
            return err
        bad_option = command_line_error(err)
        if bad_option is not None:
            return bad_option
        if isinstance(err, PATH_ERRORS) and err.filename:
            return DataError(f"{err.filename}: {err.strerror or type(err).__name__}")
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return DataError(f"{err.filename or 'output'}: no space left on the device")
        err = err.__cause__ or err.__context__
    return None
