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
    SDXL_KEYS,
    CheckpointError,
    bank_styles_and_widths,
    checkpoint_text_widths,
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


def _read_embedding_file(path: Path) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Read one embedding file: its ``[n, d]`` vectors (SDXL: ``[n, d_l + d_g]``), its widths."""
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"{path}: embeddings are read from .safetensors only (a pickled .pt/.bin file "
            "is never loaded; re-export it with `artbank export`)"
        )
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    if set(state) == set(SDXL_KEYS):  # A1111 / ComfyUI / kohya-ss SDXL: one file, two tensors
        parts = [_checked_table(path, state[key], key) for key in SDXL_KEYS]
        if parts[0].shape[0] != parts[1].shape[0]:
            raise CheckpointError(
                f"{path}: clip_l holds {parts[0].shape[0]} vectors and clip_g "
                f"{parts[1].shape[0]}; an SDXL embedding has as many in each"
            )
        return torch.cat(parts, dim=-1), tuple(p.shape[-1] for p in parts)
    if len(state) != 1:
        raise CheckpointError(
            f"{path} holds {len(state)} tensors ({', '.join(sorted(state)[:4])}); expected one "
            "[n, d] tensor, or clip_l and clip_g (SDXL)"
        )
    table = _checked_table(path, next(iter(state.values())))
    return table, (table.shape[-1],)


def _checked_table(path: Path, tensor: torch.Tensor, name: str = "") -> torch.Tensor:
    """Return a stored tensor as float ``[n, d]``, refusing empty or non-finite ones."""
    path = f"{path} ({name})" if name else path
    table = tensor.float()
    if table.ndim == 0 or table.numel() == 0:
        shape = "a scalar" if table.ndim == 0 else f"an empty {tuple(table.shape)} tensor"
        raise CheckpointError(f"{path} holds {shape}; expected one [n, d] tensor")
    if not torch.isfinite(table).all():
        raise CheckpointError(f"{path} holds NaN or infinite values (a diverged run?)")
    return table if table.ndim == 2 else table.reshape(-1, table.shape[-1])


def _file_metadata(path: Path) -> dict[str, str]:
    """Return an embedding file's safetensors metadata (empty if it has none).

    An unreadable file gives none here; :func:`_read_embedding_file` reports it.
    """
    try:
        with safe_open(path, "pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError):
        return {}


def _with_second_encoder_file(path: Path) -> list[Path]:
    """One exported file, and the ``_2`` file beside it when they are diffusers' SDXL pair."""
    second = path.with_name(f"{path.stem}_2{path.suffix}")
    first_encoder = _file_metadata(path).get("text_encoder")
    if first_encoder == "text_encoder" and _file_metadata(second).get("text_encoder") == (
        "text_encoder_2"
    ):
        return [path, second]
    return [path]


def _read_embedding_files(files: list[Path]) -> dict[str, tuple[torch.Tensor, tuple[int, ...]]]:
    """Read embedding files into ``{collection: (vectors, widths)}``, joining SDXL pairs.

    A diffusers SDXL pair is two files of one collection, the second encoder's marked
    ``text_encoder: text_encoder_2``: its vectors follow the first's.
    """
    firsts, seconds = {}, {}
    for path in files:
        meta = _file_metadata(path)  # the collection, else the file stem names the style
        target = seconds if meta.get("text_encoder") == "text_encoder_2" else firsts
        name = meta.get("collection") or path.stem
        if name in target:
            raise CheckpointError(f"{path}: a second embedding file for the style {name!r}")
        target[name] = (path, *_read_embedding_file(path))
    read = {}
    for name, (path, table, widths) in firsts.items():
        if name in seconds:
            second = seconds.pop(name)
            if second[1].shape[0] != table.shape[0]:
                raise CheckpointError(
                    f"{path} and {second[0]}: {table.shape[0]} and {second[1].shape[0]} "
                    "vectors; the two encoders' files of an SDXL style hold as many"
                )
            table, widths = torch.cat([table, second[1]], dim=-1), widths + second[2]
        read[name] = (table, widths)
    if seconds:
        name, (path, *_) = next(iter(seconds.items()))
        raise CheckpointError(
            f"{path}: the second text encoder's file of {name!r} without its first "
            f"({file_stem(name)}.safetensors)"
        )
    return read


def load_bank_styles(
    source: str | Path, names: list[str] | None = None, widths: tuple[int, ...] | None = None
) -> dict[str, torch.Tensor]:
    """Read per-collection embeddings ``{name: [n, d]}`` from a bank checkpoint or export.

    SDXL styles come as ``[n, d_l + d_g]``: from a one-file ``{clip_l, clip_g}`` embedding,
    from diffusers' pair (``<name>.safetensors`` and ``<name>_2.safetensors``, told apart by
    their ``text_encoder`` metadata), or from an SDXL bank checkpoint.

    Args:
        source: a ``PromptBankTask`` checkpoint (``.ckpt``), one exported ``.safetensors``
            file, or a folder of them (``artbank export``'s ``diffusers/`` or ``a1111/``).
        names: collections to keep (default: all).
        widths: the text encoders' widths of the model that will use them; a style of
            other widths (an SD 1.5 file on SDXL, or the reverse) is refused.

    Raises:
        CheckpointError: the file is missing, pickled, or not an embedding.
        ConfigError: a requested collection is not in the source, or has other widths.
    """
    read = read_bank_styles(source, names)
    if widths:
        return fitting_styles(read, widths, source)
    return {name: table for name, (table, _) in read.items()}


def fitting_styles(
    read: dict[str, tuple[torch.Tensor, tuple[int, ...]]],
    widths: tuple[int, ...],
    source: str | Path,
) -> dict[str, torch.Tensor]:
    """Return :func:`read_bank_styles`' vectors once each style's widths are ``widths``.

    Raises:
        ConfigError: a style is for other text encoders (see :func:`check_widths`).
    """
    for name, (_, found) in read.items():
        check_widths(name, found, widths, source)
    return {name: table for name, (table, _) in read.items()}


def read_bank_styles(
    source: str | Path, names: list[str] | None = None
) -> dict[str, tuple[torch.Tensor, tuple[int, ...]]]:
    """:func:`load_bank_styles` before the width check: ``{name: (vectors, widths)}``."""
    source = Path(source)
    if source.suffix == ".ckpt":
        styles, found = bank_styles_and_widths(source)
        read = {name: (table, found) for name, table in styles.items()}
    elif source.is_dir():
        files = sorted(source.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{source} holds no .safetensors embedding file")
        read = _read_embedding_files(files)
    elif source.is_file():
        read = _read_embedding_files(_with_second_encoder_file(source))
    else:
        raise CheckpointError(f"style source {source} does not exist")
    # a checkpoint's bank is checked here; an embedding file names itself when read
    diverged = [name for name, (table, _) in read.items() if not torch.isfinite(table).all()]
    if diverged:
        raise CheckpointError(
            f"{source} holds NaN or infinite values (a diverged run?) in {diverged}"
        )
    return select_styles(read, names, source) if names else read


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
) -> tuple[dict[str, torch.Tensor], tuple[int, ...]]:
    """Per-style embeddings ``{name: [n, d]}`` of a checkpoint, as ``artbank export`` writes them.

    Args:
        checkpoint: a ``PromptBankTask`` checkpoint (one style per collection), or an
            ``InverterTask`` checkpoint when ``style_images`` are given (one per image).
        style_images: style images to invert.
        vision_model: CLIP vision model of the inverter (default: its training one).
        averaged: read the ``TrainablesEMA`` average when the checkpoint has one.

    Returns:
        The styles and the text encoders' widths they are for (SDXL: two).
    """
    if not style_images:
        return bank_styles_and_widths(checkpoint, averaged)
    styles = invert_style_images(checkpoint, style_images, vision_model, averaged)[0]
    width = next(iter(styles.values())).shape[-1]
    return styles, checkpoint_text_widths(load_checkpoint(checkpoint)) or (width,)


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


def describe_widths(widths: tuple[int, ...]) -> str:
    """Say what text encoders vectors of ``widths`` are for: ``768 (one text encoder)``."""
    if len(widths) == 2:
        return f"clip_l {widths[0]} + clip_g {widths[1]} (SDXL's two text encoders)"
    return f"{widths[0]} (one text encoder: SD 1.x/2.x)"


def check_widths(
    name: str, found: tuple[int, ...], wanted: tuple[int, ...], source: str | Path
) -> None:
    """Refuse a style whose vectors are for other text encoders than the model's.

    Raises:
        ConfigError: naming the source, the widths found and the widths wanted.
    """
    if tuple(found) != tuple(wanted):
        raise ConfigError(
            f"{source}: style {name!r} has embeddings of width {describe_widths(found)}; this "
            f"model needs {describe_widths(wanted)} (was it trained on another model family?)"
        )


def check_width(styles: dict[str, torch.Tensor], widths: tuple[int, ...], source: str) -> None:
    """Raise ConfigError if a style's embeddings do not fit the text encoders' widths."""
    for name, table in styles.items():
        if table.shape[-1] != sum(widths):
            check_widths(name, (table.shape[-1],), widths, source)
