"""Load style sources for stylization: prompt-bank checkpoints or exports, InST inverters.

Nothing here unpickles: checkpoints are read with ``weights_only=True``, embeddings from
safetensors. A pickled ``embeddings.pt`` of the official InST code is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from artbank_pl.errors import ConfigError, DataError
from artbank_pl.export import (
    CheckpointError,
    bank_embeddings_from_checkpoint,
    file_stem,
    load_checkpoint,
    trained_state,
)
from artbank_pl.modules.inverter import AttentionInverter
from artbank_pl.tokenizer import placeholder_token

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """Return a folder's image files, sorted; captions (``<stem>.txt``) and others are left.

    ``recursive`` descends into sub-folders, symlinked ones included (``Path.rglob`` skips
    those without a word); a folder reached twice through links is read once.
    """
    entries = _walk_following_links(folder) if recursive else folder.iterdir()
    return sorted(p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def image_caption(image: Path) -> str | None:
    """Return the caption beside an image (its ``<stem>.txt``, stripped), or ``None``.

    Raises:
        DataError: the caption file is not UTF-8 text.
    """
    text = image.with_suffix(".txt")
    if not text.is_file():
        return None
    try:
        return text.read_text(encoding="utf-8").strip() or None
    except UnicodeDecodeError as err:
        raise DataError(f"caption {text} is not UTF-8 text: {err.reason}") from err


def _walk_following_links(folder: Path) -> list[Path]:
    files, seen = [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link back up the tree, or two links to one folder
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        files += [Path(root) / name for name in names]
    return files


def style_image_names(paths: list[str]) -> dict[str, str]:
    """Name each style image by its stem; stems shared by several images get their folder.

    ``a/x.jpg`` and ``b/x.jpg`` become the styles ``a-x`` and ``b-x`` instead of one style.

    Raises:
        ConfigError: two images still share a name (or a placeholder token).
    """
    stems = [Path(p).stem for p in paths]
    names = [
        f"{Path(p).parent.name}-{stem}" if stems.count(stem) > 1 else stem
        for p, stem in zip(paths, stems, strict=True)
    ]
    by_token: dict[str, str] = {}
    for name, path in zip(names, paths, strict=True):
        token = placeholder_token(name)
        if token in by_token:
            raise ConfigError(
                f"model.style_images {by_token[token]} and {path} both name the style {token}; "
                "rename one"
            )
        by_token[token] = path
    return dict(zip(names, paths, strict=True))


def _read_embedding_file(path: Path) -> torch.Tensor:
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"{path}: embeddings are read from .safetensors only (a pickled .pt/.bin file "
            "is never loaded; re-export it with `artbank export`)"
        )
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    if len(state) != 1:
        raise CheckpointError(f"{path} holds {len(state)} tensors; expected one [n, d] tensor")
    table = next(iter(state.values())).float()
    if table.ndim == 0 or table.numel() == 0:
        shape = "a scalar" if table.ndim == 0 else f"an empty {tuple(table.shape)} tensor"
        raise CheckpointError(f"{path} holds {shape}; expected one [n, d] tensor")
    if not torch.isfinite(table).all():
        raise CheckpointError(f"{path} holds NaN or infinite values (a diverged run?)")
    return table if table.ndim == 2 else table.reshape(-1, table.shape[-1])


def _collection_of(path: Path) -> str:
    """Return the collection an embedding file holds: its metadata, else its file stem."""
    try:
        with safe_open(path, "pt") as handle:
            name = (handle.metadata() or {}).get("collection")
    except (SafetensorError, OSError):
        name = None  # _read_embedding_file reports the unreadable file
    return name or path.stem


def load_bank_styles(source: str | Path, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Read per-collection embeddings ``{name: [n, d]}`` from a bank checkpoint or export.

    Args:
        source: a ``PromptBankTask`` checkpoint (``.ckpt``), one exported ``.safetensors``
            file, or a folder of them (``artbank export``'s ``diffusers/`` or ``a1111/``).
        names: collections to keep (default: all).

    Raises:
        CheckpointError: the file is missing, pickled, or not an embedding.
        ConfigError: a requested collection is not in the source.
    """
    source = Path(source)
    if source.suffix == ".ckpt":
        styles = bank_embeddings_from_checkpoint(source)
    elif source.is_dir():
        files = sorted(source.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{source} holds no .safetensors embedding file")
        styles = {_collection_of(f): _read_embedding_file(f) for f in files}
    elif source.is_file():
        styles = {_collection_of(source): _read_embedding_file(source)}
    else:
        raise CheckpointError(f"style source {source} does not exist")
    # a checkpoint's bank is checked here; an embedding file names itself when read
    diverged = [name for name, table in styles.items() if not torch.isfinite(table).all()]
    if diverged:
        raise CheckpointError(
            f"{source} holds NaN or infinite values (a diverged run?) in {diverged}"
        )
    return select_styles(styles, names, source) if names else styles


def select_styles(
    styles: dict[str, torch.Tensor], names: list[str], source: str | Path
) -> dict[str, torch.Tensor]:
    """Pick ``names`` from loaded styles, matching a name or its file stem.

    Raises:
        ConfigError: a requested collection is not among them.
    """
    by_stem = {file_stem(name): name for name in styles}
    missing = [n for n in names if n not in styles and file_stem(n) not in by_stem]
    if missing:
        raise ConfigError(f"collections {missing} are not in {source} (it has {sorted(styles)})")
    return {n: styles[n] if n in styles else styles[by_stem[file_stem(n)]] for n in names}


def load_inverter(path: str | Path, averaged: bool = True) -> tuple[AttentionInverter, dict]:
    """Rebuild an ``InverterTask``'s inverter from its checkpoint.

    Args:
        path: the checkpoint.
        averaged: read the ``TrainablesEMA`` average when the checkpoint has one.

    Returns:
        The inverter in eval mode, and the checkpoint's hyperparameters.
    """
    ckpt = load_checkpoint(path)
    hparams = ckpt.get("hyper_parameters") or {}
    state = {
        k.removeprefix("inverter."): v
        for k, v in trained_state(ckpt, path, averaged).items()
        if k.startswith("inverter.")
    }
    if "queries" not in state:
        raise CheckpointError(f"{path} is not an InverterTask checkpoint (no inverter weights)")
    num_tokens, hidden = state["queries"].shape
    query_input = state.get("query_input.weight")
    inverter = AttentionInverter(
        feature_dim=state["input.weight"].shape[1],
        embed_dim=state["base"].shape[1],
        num_tokens=num_tokens,
        hidden_dim=hidden,
        num_layers=hparams.get("inverter_layers", 2),
        num_heads=hparams.get("inverter_heads", 8),
        image_queries=query_input is not None,
        embedding_dim=None if query_input is None else query_input.shape[1],
        learned_base=False,  # inference: the base is whatever the checkpoint holds
    )
    inverter.load_state_dict(state)
    return inverter.eval(), hparams


def invert_style_images(
    checkpoint: str | Path,
    images: list[str],
    vision_model: str | None = None,
    averaged: bool = True,
) -> tuple[dict[str, torch.Tensor], str]:
    """Turn style images into pseudo-word embeddings with an ``InverterTask`` checkpoint.

    Args:
        checkpoint: the inverter's checkpoint.
        images: style images; each becomes a style named by :func:`style_image_names`.
        vision_model: CLIP vision model (default: the one the inverter was trained with).
        averaged: use the checkpoint's ``TrainablesEMA`` average when it has one.

    Returns:
        ``{style: [n, d]}`` and the name of the vision model used.
    """
    # CLIP's vision model needs transformers, which `artbank export` of a bank does not
    from artbank_pl.vision import inverter_inputs, load_vision_encoder

    inverter, hparams = load_inverter(checkpoint, averaged)
    vision_model = vision_model or hparams.get("vision_model", "tiny")
    vision = load_vision_encoder(vision_model)
    kind = hparams.get("image_features", "patch")
    styles = {}
    for name, path in style_image_names(images).items():
        with torch.no_grad():
            styles[name] = inverter(*inverter_inputs(vision, load_image(path), kind))[0]
    return styles, vision_model


def checkpoint_styles(
    checkpoint: str | Path,
    style_images: list[str] | None = None,
    vision_model: str | None = None,
    averaged: bool = True,
) -> dict[str, torch.Tensor]:
    """Per-style embeddings ``{name: [n, d]}`` of a checkpoint, as ``artbank export`` writes them.

    Args:
        checkpoint: a ``PromptBankTask`` checkpoint (one style per collection), or an
            ``InverterTask`` checkpoint when ``style_images`` are given (one per image).
        style_images: style images to invert.
        vision_model: CLIP vision model of the inverter (default: its training one).
        averaged: read the ``TrainablesEMA`` average when the checkpoint has one.
    """
    if style_images:
        return invert_style_images(checkpoint, style_images, vision_model, averaged)[0]
    return bank_embeddings_from_checkpoint(checkpoint, averaged)


def load_image(path: str | Path, max_side: int = 1024) -> torch.Tensor:
    """Read an image as ``[1, 3, H, W]`` in ``[-1, 1]``, bounded to ``max_side`` pixels.

    Raises:
        DataError: the file is missing or unreadable.
    """
    try:
        with Image.open(path) as img:
            image = ImageOps.exif_transpose(img).convert("RGB")
    except (OSError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err
    image.thumbnail((max_side, max_side), Image.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def check_width(styles: dict[str, torch.Tensor], width: int) -> None:
    """Raise ConfigError if a style's embeddings do not fit the text encoder's width."""
    for name, table in styles.items():
        if table.shape[-1] != width:
            raise ConfigError(
                f"style {name!r} has {table.shape[-1]}-d embeddings; the text encoder takes "
                f"{width} (was it trained on another model?)"
            )
