"""``artbank world images | pretrain | pretrain-xl | judges | clip``: the world's tools."""

from __future__ import annotations

import argparse
import inspect
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from artbank_pl.errors import ConfigError
from artbank_pl.styles import load_image
from artbank_pl.tool_args import ToolParser, float_at_least, int_at_least
from artbank_pl.world.scenes import PHOTO, SHAPES, STYLES, caption, render

DEFAULT_STYLES = ("striped", "dotted", "sketch")


def style_slug(style: str) -> str:
    """Folder name of a style: ``neon striped`` -> ``neon-striped``."""
    return style.replace(" ", "-")


def write_images(
    output: str | Path,
    styles: Sequence[str] = DEFAULT_STYLES,
    per_style: int = 24,
    photos: int = 8,
    seed: int = 0,
    captions: bool = True,
) -> dict[str, list[Path]]:
    """Write ``output/collections/<style>/`` folders and ``output/photographs/``.

    Collections hold ``per_style`` images of random shapes; photographs cycle through the
    shapes and are named after them (``circle-000.png``), so a person can check the content
    of a stylized output at a glance. With ``captions``, each image gets its shape as a
    caption beside it (``circle-000.txt``: "a circle"), which ``shards build`` and content
    loading read. ``artbank shards build --input output/collections``
    and ``artbank predict`` (content ``output/photographs``) take them as they are.

    Raises:
        ConfigError: an unknown style, or ``photo`` given as a style.
    """
    for style in styles:
        if style not in STYLES or style == PHOTO:
            choices = ", ".join(s for s in STYLES if s != PHOTO)
            raise ConfigError(f"--styles: unknown style {style!r}; choose from {choices}")
    output = Path(output)
    rng = np.random.default_rng(seed)
    written: dict[str, list[Path]] = {}
    for style in styles:
        folder = output / "collections" / style_slug(style)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(per_style):
            shape = SHAPES[rng.integers(len(SHAPES))]
            paths.append(_save(folder / f"{i:04d}.png", render(shape, style, rng), shape, captions))
        written[style_slug(style)] = paths
    if not photos:
        return written
    folder = output / "photographs"
    folder.mkdir(parents=True, exist_ok=True)
    written["photographs"] = []
    for i in range(photos):
        shape = SHAPES[i % len(SHAPES)]
        image = render(shape, PHOTO, rng)
        written["photographs"].append(
            _save(folder / f"{shape}-{i:03d}.png", image, shape, captions)
        )
    return written


def caption_of(path: Path) -> str:
    """Return the caption written beside a world image (``circle-000.txt``: "a circle")."""
    return path.with_suffix(".txt").read_text().strip()


def shape_of(path: Path) -> str:
    """Return the shape word of a world image, from its caption ("a circle": ``circle``)."""
    return caption_of(path).removeprefix("a ")


def read_photographs(files: Sequence[Path]) -> tuple[torch.Tensor, list[str]]:
    """Read world images written by :func:`write_images` and their captions.

    Returns:
        ``[N, 3, H, W]`` in ``[-1, 1]`` and one caption per image.
    """
    return torch.cat([load_image(f) for f in files]), [caption_of(f) for f in files]


def _save(path: Path, image: np.ndarray, shape: str, with_caption: bool) -> Path:
    """Write one world image, and its shape as caption (``a circle``) beside it."""
    Image.fromarray(image).save(path)
    if with_caption:
        path.with_suffix(".txt").write_text(caption(shape, None) + "\n")
    return path


def _defaults(function) -> dict[str, object]:
    """Return the default of each keyword of ``function`` (the CLI's defaults' one source)."""
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _parser(command: str, description: str, output_help: str) -> argparse.ArgumentParser:
    """Build the parser of ``artbank world <command>`` with its ``--output`` and ``--seed``."""
    parser = ToolParser(prog=f"artbank world {command}", description=description)
    parser.add_argument("--output", required=True, help=output_help)
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="seed of every random draw")
    return parser


def _images(argv: Sequence[str]) -> int:
    parser = _parser(
        "images",
        "Write world collections (OUTPUT/collections/<style>/) and world photographs "
        "(OUTPUT/photographs/).",
        "folder to fill",
    )
    choices = ", ".join(s for s in STYLES if s != PHOTO)
    parser.add_argument("--styles", nargs="+", default=list(DEFAULT_STYLES),
                        help=f"styles, from: {choices}")  # fmt: skip
    parser.add_argument("--per-style", type=int_at_least(0), default=24,
                        help="images per style collection")  # fmt: skip
    parser.add_argument("--photos", type=int_at_least(0), default=8, help="content photographs")
    opts = parser.parse_args(argv)
    for name, paths in write_images(**vars(opts)).items():
        print(f"{name}: {len(paths)} images")
    return 0


def _unet_recipe_options(parser: argparse.ArgumentParser, defaults: dict) -> None:
    """Add the UNet recipe's options that ``pretrain`` and ``pretrain-xl`` share."""
    for name in ("unet_steps", "dataset_size"):
        parser.add_argument("--" + name.replace("_", "-"), type=int_at_least(1),
                            default=defaults[name], help=name.replace("_", " "))  # fmt: skip
    parser.add_argument(
        "--min-snr-gamma",
        type=float_at_least(0.0),
        default=defaults["min_snr_gamma"],
        help="Min-SNR-gamma loss weighting of the UNet; 0 turns it off",
    )
    parser.add_argument(
        "--noise-offset",
        type=float_at_least(0.0),
        default=defaults["noise_offset"],
        help="offset noise of the UNet's training (per-channel constants); 0 turns it off",
    )
    parser.add_argument(
        "--stripes-weight",
        type=float_at_least(0.0),
        default=defaults["stripes_weight"],
        help="how much more often the UNet's scenes have stripes than any other style",
    )
    parser.add_argument(
        "--unet-lr",
        type=float_at_least(1e-8),
        default=defaults["unet_lr"],
        help="the UNet's peak learning rate (100 warm-up steps, cosine to a tenth)",
    )
    parser.add_argument(
        "--unet-channels",
        type=int_at_least(1),
        nargs="+",
        default=list(defaults["unet_channels"]),
        help="the UNet's channels per level (default: %(default)s)",
    )


def _pretrain(argv: Sequence[str]) -> int:
    from artbank_pl.world.pretrain import pretrain

    parser = _parser(
        "pretrain",
        "Pretrain the world's miniature SD (VAE, UNet) and judges from scratch.",
        "diffusers folder to write",
    )
    defaults = _defaults(pretrain)
    parser.add_argument("--vae-steps", type=int_at_least(1), default=defaults["vae_steps"],
                        help="vae steps")  # fmt: skip
    _unet_recipe_options(parser, defaults)
    parser.add_argument(
        "--judge-steps",
        type=int_at_least(0),
        default=defaults["judge_steps"],
        help="steps of each judge; 0 leaves them out (artbank world judges)",
    )
    parser.add_argument(
        "--vae-from",
        default=None,
        help="a world model folder whose autoencoder to keep instead of training one",
    )
    opts = parser.parse_args(argv)
    print(json.dumps(pretrain(**vars(opts)), indent=2))
    return 0


def _pretrain_xl(argv: Sequence[str]) -> int:
    from artbank_pl.world.pretrain_xl import pretrain_xl

    parser = _parser(
        "pretrain-xl",
        "Pretrain world-xl: the world model's UNet in SDXL's architecture (two text "
        "encoders, pooled text, micro-conditioning), on the world model's autoencoder.",
        "folder to write (unet/, text_encoder_2/, scheduler/, recipe.json)",
    )
    _unet_recipe_options(parser, _defaults(pretrain_xl))
    opts = parser.parse_args(argv)
    print(json.dumps(pretrain_xl(**vars(opts)), indent=2))
    return 0


def _judges(argv: Sequence[str]) -> int:
    from artbank_pl.world.judges import train_judges

    parser = _parser(
        "judges",
        "Train the style (with its reject class), content and mask judges on generator output.",
        "folder for judges.json + weights",
    )
    parser.add_argument("--steps", type=int_at_least(1), default=_defaults(train_judges)["steps"],
                        help="optimisation steps of each judge")  # fmt: skip
    opts = parser.parse_args(argv)
    print(json.dumps(train_judges(opts.output, opts.seed, opts.steps), indent=2))
    return 0


def _clip(argv: Sequence[str]) -> int:
    from artbank_pl.world.clip import build_world_clip

    parser = _parser(
        "clip",
        "Train the world's CLIP image tower against the world model's frozen text encoder.",
        "folder to write (the world model's image_encoder/)",
    )
    parser.add_argument("--steps", type=int_at_least(1),
                        default=_defaults(build_world_clip)["steps"],
                        help="optimisation steps (batch 128)")  # fmt: skip
    opts = parser.parse_args(argv)
    print(json.dumps(build_world_clip(opts.output, opts.seed, opts.steps), indent=2))
    return 0


COMMANDS = {
    "images": _images,
    "pretrain": _pretrain,
    "pretrain-xl": _pretrain_xl,
    "judges": _judges,
    "clip": _clip,
}


def main(argv: Sequence[str]) -> int:
    """Dispatch ``artbank world <command>``."""
    if not argv or argv[0] not in COMMANDS:
        print("usage: artbank world {images,pretrain,pretrain-xl,judges,clip} ... (--help on each)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])
