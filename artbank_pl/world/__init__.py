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
    return _shipped(MODEL_DIR, WORLD, "pretrain --output <folder>` and point pretrained at it")


def model_xl_dir() -> Path:
    """Return the shipped world-xl folder (its UNet, second text encoder and scheduler)."""
    return _shipped(MODEL_XL_DIR, WORLD_XL, f"pretrain-xl --output {MODEL_XL_DIR}`")


def _shipped(folder: Path, name: str, rebuild: str) -> Path:
    """Return a shipped model folder, or say how to rebuild it when the install lacks it."""
    if not (folder / "unet").is_dir():
        raise ConfigError(
            f"the {name} model is missing from {folder}; rebuild it with `artbank world {rebuild}"
        )
    return folder


def judges_dir(name: str) -> Path:
    """Resolve ``judges``: ``world`` (the shipped judges) or a folder holding judges.json."""
    return model_dir() / "judges" if name == WORLD else Path(name).expanduser()
