"""Prompt token ids and where their placeholder tokens sit, built without a host-device sync.

A style prompt holds placeholder tokens (ids at or above the first placeholder id) whose
embeddings are spliced in from trainable vectors. Finding them on the device with a
boolean mask needs ``nonzero``, which waits for the GPU; here the positions come with the
ids instead, in one of two ways:

- from strings (:func:`tokenize_prompts`): tokenized on the host, positions found there,
  and ids and positions copied to the device in one non-blocking copy (prompts with
  captions, validation, sampling);
- from a table (:class:`TemplateTable`): each (template, collection) prompt without a
  caption is tokenized once into a device table, and a batch gathers its rows with the
  collection indices it carries and template indices drawn on the device, so a training
  step reads nothing back and copies nothing over.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import CLIPTokenizer

from artbank_pl.errors import ConfigError
from artbank_pl.transfer import upload


@dataclass(frozen=True)
class PromptTokens:
    """Token ids of a batch of prompts and the positions of their placeholder tokens.

    Attributes:
        ids: ``[B, L]`` token ids on the device, placeholders included.
        rows: ``[M]`` prompt (row) of each placeholder token.
        cols: ``[M]`` position (column) of each placeholder token.
        offsets: ``[M]`` each placeholder token's id minus ``first_placeholder_id``.
        first_placeholder_id: the smallest placeholder id (``None``: no placeholders).
    """

    ids: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    offsets: torch.Tensor
    first_placeholder_id: int | None

    @property
    def count(self) -> int:
        """M, the number of placeholder tokens (known on the host)."""
        return self.rows.numel()

    def vocabulary_ids(self) -> torch.Tensor:
        """Return the ids with every placeholder replaced by an in-vocabulary id (spliced over)."""
        if self.first_placeholder_id is None:
            return self.ids
        return self.ids.masked_fill(self.ids >= self.first_placeholder_id, 0)


def fit_caption(
    tokenizer: CLIPTokenizer, build: Callable[[str], str], caption: str
) -> tuple[str, bool]:
    """Return ``build(caption)``, the caption cut from its end until it fits, and if it was cut.

    CLIP reads ``model_max_length`` tokens; a longer prompt is truncated, which would cut
    the style tokens off a prompt that has them after the caption. The caption is the
    part to shorten: the most of its words that fit are kept.
    """
    prompt = build(caption)
    limit = tokenizer.model_max_length
    # byte-level BPE: a token covers at least one byte, so a short prompt needs no count
    if not caption or len(prompt.encode()) + 2 <= limit:
        return prompt, False
    if len(tokenizer(prompt).input_ids) <= limit:
        return prompt, False
    words = caption.split()
    fits, cut = 0, len(words)  # the most words known to fit, the fewest known not to
    while cut - fits > 1:
        middle = (fits + cut) // 2
        if len(tokenizer(build(" ".join(words[:middle]))).input_ids) <= limit:
            fits = middle
        else:
            cut = middle
    return build(" ".join(words[:fits])), True


def token_rows(
    tokenizer: CLIPTokenizer, prompts: Sequence[str], first_placeholder_id: int | None
) -> list[list[int]]:
    """Tokenize prompts on the host to rows of ``model_max_length`` ids, padded and truncated.

    Raises:
        ConfigError: truncation would cut a placeholder (style) token off a prompt.
    """
    length = tokenizer.model_max_length
    rows = tokenizer(list(prompts)).input_ids
    if first_placeholder_id is not None:
        for prompt, ids in zip(prompts, rows, strict=True):
            if any(i >= first_placeholder_id for i in ids[length - 1 :]):
                raise ConfigError(
                    f"prompt {prompt!r} is {len(ids)} tokens: its style tokens fall past "
                    f"CLIP's {length}-token limit; shorten the prompt or its caption"
                )
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    fitted = [ids[: length - 1] + [eos] if len(ids) > length else ids for ids in rows]
    return [ids + [pad] * (length - len(ids)) for ids in fitted]


def placeholder_positions(rows: list[list[int]], first: int | None) -> list[tuple[int, int, int]]:
    """``(row, column, id - first)`` of every placeholder token in host id rows."""
    if first is None:
        return []
    return [
        (r, c, token - first)
        for r, ids in enumerate(rows)
        for c, token in enumerate(ids)
        if token >= first
    ]


def tokenize_prompts(
    tokenizer: CLIPTokenizer,
    prompts: Sequence[str],
    first_placeholder_id: int | None,
    device: torch.device | str,
) -> PromptTokens:
    """Tokenize prompts on the host and copy ids and placeholder positions in one copy."""
    rows = token_rows(tokenizer, prompts, first_placeholder_id)
    places = placeholder_positions(rows, first_placeholder_id)
    length = tokenizer.model_max_length
    columns = [v for column in zip(*places, strict=True) for v in column]  # rows, cols, offsets
    flat = [token for ids in rows for token in ids] + columns
    packed = upload(flat, device, torch.long)
    ids, rest = packed[: len(rows) * length].view(len(rows), length), packed[len(rows) * length :]
    row, col, offset = rest.view(3, len(places)) if places else rest.new_empty(3, 0)
    return PromptTokens(ids, row, col, offset, first_placeholder_id)


class TemplateTable:
    """The token ids of every (template, collection) prompt, tokenized once, on one device.

    Args:
        tokenizer: the tokenizer holding the placeholder tokens.
        prompts: ``prompts[t][k]`` is template ``t`` filled with collection ``k``'s
            placeholder text (no caption).
        first_placeholder_id: the smallest placeholder id.
        device: where the table lives.

    Raises:
        ValueError: a prompt's placeholder tokens are not one run of the same length and
            column in every collection's prompt of a template (the table's assumption).
    """

    def __init__(
        self,
        tokenizer: CLIPTokenizer,
        prompts: Sequence[Sequence[str]],
        first_placeholder_id: int,
        device: torch.device | str,
    ) -> None:
        flat = [p for row in prompts for p in row]
        rows = token_rows(tokenizer, flat, first_placeholder_id)
        count = len(prompts[0])
        found = [[c for c, i in enumerate(ids) if i >= first_placeholder_id] for ids in rows]
        starts = [found[t * count][0] if found[t * count] else 0 for t in range(len(prompts))]
        width = len(found[0])
        for i, (prompt, cols) in enumerate(zip(flat, found, strict=True)):
            start = starts[i // count]
            if not width or cols != list(range(start, start + width)):
                raise ValueError(
                    f"prompt {prompt!r}: its placeholder tokens are not the run of {width} at "
                    f"column {start} that every prompt of its template must share"
                )
        self.first_placeholder_id = first_placeholder_id
        self.device = torch.device(device)
        self.ids = upload(rows, device, torch.long).view(len(prompts), count, -1)
        self.starts = upload(starts, device, torch.long)
        self.slots = torch.arange(width, device=device)

    @property
    def num_templates(self) -> int:
        """T, the number of templates."""
        return self.ids.shape[0]

    def tokens(self, template_idx: torch.Tensor, collection_idx: torch.Tensor) -> PromptTokens:
        """Gather a batch's prompts by its ``[B]`` template and collection indices (device)."""
        ids = self.ids[template_idx, collection_idx]
        cols = self.starts[template_idx][:, None] + self.slots
        rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(cols)
        offsets = ids.gather(1, cols) - self.first_placeholder_id
        return PromptTokens(
            ids, rows.flatten(), cols.flatten(), offsets.flatten(), self.first_placeholder_id
        )
