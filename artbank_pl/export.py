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

Every file records its collection, placeholder and vector count in the safetensors metadata.
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
    embeddings: dict[str, torch.Tensor], out_dir: str | Path, formats: tuple[str, ...] = FORMATS
) -> list[Path]:
    """Write each collection's ``[n, d]`` embeddings in the requested formats.

    Args:
        embeddings: collection name -> token embeddings ``[n, d]``.
        out_dir: folder to write into; one subfolder per format.
        formats: any of ``diffusers`` and ``a1111``.

    Returns:
        The paths written.
    """
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown export format(s) {sorted(unknown)}; choose from {FORMATS}")
    written = []
    for name, table in embeddings.items():
        token = placeholder_token(name)
        table = table.detach().float().cpu()
        meta = {"format": "pt", "collection": name, "token": token, "num_vectors": str(len(table))}
        for fmt in formats:
            stem = file_stem(name) if fmt == "diffusers" else trigger_word(name)
            path = Path(out_dir) / fmt / f"{stem}.safetensors"
            tensors = {token: table} if fmt == "diffusers" else {"emb_params": table}
            atomic_save_safetensors(tensors, path, meta)
            written.append(path)
    return written


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


def bank_embeddings_from_checkpoint(
    path: str | Path, averaged: bool = True
) -> dict[str, torch.Tensor]:
    """Rebuild the prompt bank of a ``PromptBankTask`` checkpoint and read its embeddings.

    Needs no Stable Diffusion weights: the bank's shape and options come from the
    checkpoint's hyperparameters and tensors.

    Args:
        path: the checkpoint.
        averaged: read the ``TrainablesEMA`` average when the checkpoint has one.
    """
    ckpt = load_checkpoint(path)
    hparams = ckpt.get("hyper_parameters") or {}
    state = trained_state(ckpt, path, averaged)
    bank_state = {k.removeprefix("bank."): v for k, v in state.items() if k.startswith("bank.")}
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
        table = bank.embeddings()
    return dict(zip(hparams["collections"], table, strict=True))
