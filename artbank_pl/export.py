"""Export style embeddings as files that diffusers, AUTOMATIC1111 and ComfyUI load.

The styles are a prompt bank's collections, or style images turned into embeddings by an
InST inverter (:func:`artbank_pl.styles.checkpoint_styles`). Per style, two safetensors
files (``<name>`` is the collection, or the style image's stem):

- ``diffusers/<name>.safetensors``: ``{placeholder: tensor[n, d]}``, read by
  ``pipe.load_textual_inversion(path)`` (tokens ``<name>``, ``<name>_1``, ...);
- ``a1111/artbank-<name>.safetensors``: ``{"emb_params": tensor[n, d]}``, the form that
  AUTOMATIC1111 and ComfyUI (``embedding:artbank-<name>``) read, as kohya-ss sd-scripts
  writes it. Both programs use the file name as the trigger word, so the ``artbank-`` prefix
  keeps an ordinary word ("monet") in a prompt from turning into the embedding.

On SDXL (a style is ``[n, d_l + d_g]``: its CLIP-L vectors, then its OpenCLIP-G ones):

- ``a1111/artbank-<name>.safetensors``: one file ``{"clip_l": [n, 768], "clip_g": [n, 1280]}``,
  the layout AUTOMATIC1111, ComfyUI and kohya-ss read and write;
- ``diffusers/<name>.safetensors`` and ``diffusers/<name>_2.safetensors``: the pair that
  diffusers' SDXL textual-inversion script writes, ``{placeholder: [n, 768]}`` for the first
  text encoder and ``{placeholder: [n, 1280]}`` for the second (two
  ``load_textual_inversion`` calls, one per encoder).

Every file records its collection, placeholder and vector count in the safetensors
metadata, and its model family (``sd`` or ``sdxl``) and text encoder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from artbank_pl.atomic import atomic_write
from artbank_pl.errors import ArtbankError
from artbank_pl.modules import ImplicitStylePromptBank
from artbank_pl.tokenizer import placeholder_token

log = logging.getLogger(__name__)

FORMATS = ("diffusers", "a1111")
#: the tensor names of one-file SDXL embeddings (A1111, ComfyUI, kohya-ss), in encoder order
SDXL_KEYS = ("clip_l", "clip_g")


class CheckpointError(ArtbankError, RuntimeError):
    """Raised when a checkpoint is not a prompt-bank checkpoint artbank can read."""


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]
) -> None:
    """Write a safetensors file atomically (never half-written)."""
    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata))


def file_stem(collection: str) -> str:
    """Return the file name stem of a collection: its placeholder without the brackets."""
    return placeholder_token(collection).strip("<>")


def trigger_word(collection: str) -> str:
    """Return the A1111/ComfyUI file stem (their trigger word): ``artbank-<name>``."""
    return f"artbank-{file_stem(collection)}"


def write_embeddings(
    embeddings: dict[str, torch.Tensor],
    out_dir: str | Path,
    formats: tuple[str, ...] = FORMATS,
    widths: tuple[int, ...] | None = None,
) -> list[Path]:
    """Write each collection's ``[n, d]`` embeddings in the requested formats.

    Args:
        embeddings: collection name -> token embeddings ``[n, d]`` (SDXL: ``[n, d_l + d_g]``).
        out_dir: folder to write into; one subfolder per format.
        formats: any of ``diffusers`` and ``a1111``.
        widths: each text encoder's width; two (``(d_l, d_g)``) write SDXL's files.

    Returns:
        The paths written.
    """
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown export format(s) {sorted(unknown)}; choose from {FORMATS}")
    written = []
    for name, table in embeddings.items():
        table = table.detach().float().cpu()
        for fmt in formats:
            files = (
                _sdxl_files(name, table, widths, fmt)
                if widths and len(widths) == 2
                else _sd_files(name, table, fmt)
            )
            for path, tensors, meta in files:
                atomic_save_safetensors(tensors, Path(out_dir) / fmt / path, meta)
                written.append(Path(out_dir) / fmt / path)
    return written


def _metadata(name: str, table: torch.Tensor, family: str, encoder: str) -> dict[str, str]:
    token = placeholder_token(name)
    return {"format": "pt", "collection": name, "token": token, "num_vectors": str(len(table)),
            "model_family": family, "text_encoder": encoder}  # fmt: skip


def _sd_files(name: str, table: torch.Tensor, fmt: str) -> list[tuple[str, dict, dict]]:
    """One file of an SD 1.x/2.x style: diffusers' ``{token: t}`` or A1111's ``emb_params``."""
    meta = _metadata(name, table, "sd", "text_encoder")
    if fmt == "diffusers":
        return [(f"{file_stem(name)}.safetensors", {placeholder_token(name): table}, meta)]
    return [(f"{trigger_word(name)}.safetensors", {"emb_params": table}, meta)]


def _sdxl_files(
    name: str, table: torch.Tensor, widths: tuple[int, ...], fmt: str
) -> list[tuple[str, dict, dict]]:
    """Lay out an SDXL style: A1111's one ``{clip_l, clip_g}`` file, or diffusers' pair."""
    if table.shape[-1] != sum(widths):
        expected = " + ".join(map(str, widths))
        raise ValueError(f"{name}: {table.shape[-1]}-wide vectors, expected {expected}")
    clip_l, clip_g = table.split(list(widths), dim=-1)
    if fmt == "a1111":
        meta = _metadata(name, table, "sdxl", "clip_l+clip_g")
        tensors = dict(zip(SDXL_KEYS, (clip_l, clip_g), strict=True))
        return [(f"{trigger_word(name)}.safetensors", tensors, meta)]
    token, stem = placeholder_token(name), file_stem(name)
    return [
        (f"{stem}.safetensors", {token: clip_l}, _metadata(name, clip_l, "sdxl", "text_encoder")),
        (f"{stem}_2.safetensors", {token: clip_g},
         _metadata(name, clip_g, "sdxl", "text_encoder_2")),
    ]  # fmt: skip


def load_checkpoint(path: str | Path) -> dict:
    """Load a Lightning checkpoint without unpickling code (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling refusal is reported the same way
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} cannot be loaded safely (weights_only=True): {first_line}"
        ) from err


def averaged_state(checkpoint: dict) -> dict[str, torch.Tensor] | None:
    """Return the ``TrainablesEMA`` average a loaded checkpoint holds, by parameter name."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("TrainablesEMA") and isinstance(state, dict):
            return state.get("average")
    return None


def trained_state(checkpoint: dict, path: str | Path, averaged: bool) -> dict[str, torch.Tensor]:
    """Return the checkpoint's trainable weights, with its ``TrainablesEMA`` average if asked.

    Raises:
        CheckpointError: an averaged tensor has another shape than the weight it averages,
            or a weight is not finite (nothing is exported from NaN).
    """
    state = dict(checkpoint.get("state_dict") or {})
    average = averaged_state(checkpoint) if averaged else None
    if average:
        log.info("%s: exporting the TrainablesEMA average (--raw for the raw weights)", path)
        for name, value in average.items():
            own = state.get(name)
            if own is not None and tuple(own.shape) != tuple(value.shape):
                raise CheckpointError(
                    f"{path}: the moving average of {name} is {tuple(value.shape)}, the weight "
                    f"{tuple(own.shape)}; export the raw weights with --raw"
                )
        state |= average
    for name, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not value.isfinite().all():
            which = "moving average" if average and name in average else "weight"
            raise CheckpointError(f"{path}: the {which} {name} holds NaN or inf; nothing exported")
    return state


def checkpoint_text_widths(checkpoint: dict) -> tuple[int, ...] | None:
    """Return the text-encoder widths a loaded checkpoint was trained for (``None``: unknown)."""
    widths = checkpoint.get("text_widths")
    return tuple(int(w) for w in widths) if widths else None


def bank_embeddings_from_checkpoint(
    path: str | Path, averaged: bool = True
) -> dict[str, torch.Tensor]:
    """Rebuild the prompt bank of a ``PromptBankTask`` checkpoint and read its embeddings.

    Needs no Stable Diffusion weights: the bank's shape and options come from the
    checkpoint's hyperparameters and tensors. An SDXL bank (``bank`` and ``bank_2``) gives
    ``[n, d_l + d_g]`` per collection.

    Args:
        path: the checkpoint.
        averaged: read the ``TrainablesEMA`` average when the checkpoint has one.
    """
    return bank_styles_and_widths(path, averaged)[0]


def bank_styles_and_widths(
    path: str | Path, averaged: bool = True
) -> tuple[dict[str, torch.Tensor], tuple[int, ...]]:
    """:func:`bank_embeddings_from_checkpoint`, and the widths of its banks (SDXL: two)."""
    ckpt = load_checkpoint(path)
    state = trained_state(ckpt, path, averaged)
    tables = [_bank_table(ckpt, state, path, "bank.")]
    if any(k.startswith("bank_2.") for k in state):
        tables.append(_bank_table(ckpt, state, path, "bank_2."))
    collections = ckpt["hyper_parameters"]["collections"]
    widths = tuple(table.shape[-1] for table in tables)
    return dict(zip(collections, torch.cat(tables, dim=-1), strict=True)), widths


def _bank_table(ckpt: dict, state: dict, path: str | Path, prefix: str) -> torch.Tensor:
    """Rebuild one bank (``bank.`` or SDXL's ``bank_2.``) of a checkpoint: ``[K, n, d]``."""
    hparams = ckpt.get("hyper_parameters") or {}
    bank_state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    if "prompts" not in bank_state or not hparams.get("collections"):
        hint = (
            ": an InverterTask checkpoint exports with style images (--style-images)"
            if any(k.startswith("inverter.") for k in state)
            else " (no bank or collections)"
        )
        raise CheckpointError(f"{path} is not a PromptBankTask checkpoint{hint}")
    num_collections, num_tokens, dim = bank_state["prompts"].shape
    try:
        bank = ImplicitStylePromptBank(
            num_collections,
            num_tokens,
            dim,
            attention=hparams.get("bank_attention", "ssam"),
            num_heads=hparams.get("bank_heads", 8),
        )
        bank.load_state_dict(bank_state)
    except (ValueError, RuntimeError) as err:  # options or shapes the checkpoint contradicts
        first_line = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{path}: its bank cannot be rebuilt: {first_line}") from None
    if len(hparams["collections"]) != num_collections:
        raise CheckpointError(
            f"{path}: names {len(hparams['collections'])} collections but its bank holds "
            f"{num_collections}"
        )
    bank.eval()
    with torch.no_grad():
        return bank.embeddings()
