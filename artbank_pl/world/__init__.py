"""The planted style world: procedural scenes, a miniature SD pretrained on them, judges.

``pretrained: world`` loads the shipped model folder; ``judges: world`` its judges.
"""

from __future__ import annotations

from pathlib import Path

from artbank_pl.errors import ConfigError

WORLD = "world"
WORLD_XL = "world-xl"
MODEL_DIR = Path(__file__).resolve().parent / "model"
#: world-xl's own parts (UNet, second text encoder, scheduler); the rest is the world model's
MODEL_XL_DIR = Path(__file__).resolve().parent / "model_xl"


def model_dir() -> Path:
    """Return the shipped world model folder (a diffusers folder plus ``judges/``)."""
    if not (MODEL_DIR / "unet").is_dir():
        raise ConfigError(
            f"the world model is missing from {MODEL_DIR}; rebuild it with "
            "`artbank world pretrain --output <folder>` and point pretrained at the folder"
        )
    return MODEL_DIR


def model_xl_dir() -> Path:
    """Return the shipped world-xl folder (its UNet, second text encoder and scheduler)."""
    if not (MODEL_XL_DIR / "unet").is_dir():
        raise ConfigError(
            f"the world-xl model is missing from {MODEL_XL_DIR}; rebuild it with "
            "`artbank world pretrain-xl --output <folder>`"
        )
    return MODEL_XL_DIR


def judges_dir(name: str) -> Path:
    """Resolve ``judges``: ``world`` (the shipped judges) or a folder holding judges.json."""
    return model_dir() / "judges" if name == WORLD else Path(name).expanduser()
