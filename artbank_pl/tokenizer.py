"""The CLIP tokenizer, built offline, and the placeholder tokens of style collections.

The 49,408-token CLIP vocabulary is built from OpenAI's BPE file
(``bpe_simple_vocab_16e6.txt.gz``, MIT licence, see ``assets/NOTICE``), shipped as package
data, following OpenAI's ``simple_tokenizer``: byte characters, their end-of-word forms,
the merges, then the two special tokens. Nothing is downloaded or written to disk.
"""

from __future__ import annotations

import gzip
import json
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from artbank_pl.errors import ArtbankError

if TYPE_CHECKING:  # transformers takes ~1 s to import: only the tokenizer builders need it
    from transformers import CLIPTokenizer

CLIP_VOCAB_SIZE = 49408
BPE_FILE = Path(__file__).parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
_NUM_MERGES = 49152 - 256 - 2


class TokenizerError(ArtbankError, RuntimeError):
    """Raised when the CLIP tokenizer cannot be built or a token is unusable."""


def _bytes_to_unicode() -> list[str]:
    """Return OpenAI CLIP's reversible byte-to-unicode characters, in its vocabulary order.

    Printable bytes map to themselves and come first; the others map to 256, 257, ...
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Read the shipped BPE file into CLIP's token-to-id map and its merge list."""
    if not BPE_FILE.is_file():
        raise TokenizerError(f"the package data file {BPE_FILE} is missing; reinstall artbank-pl")
    with gzip.open(BPE_FILE, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    byte_chars = _bytes_to_unicode()
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise TokenizerError(f"{BPE_FILE} gave {len(vocab)} tokens, expected {CLIP_VOCAB_SIZE}")
    return {token: i for i, token in enumerate(vocab)}, merges


def save_clip_vocabulary(folder: str | Path) -> None:
    """Write the CLIP tokenizer as ``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json``.

    ``CLIPTokenizer.from_pretrained`` reads them: 2 MB, against 3.6 MB for ``tokenizer.json``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _clip_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    text = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    (folder / "merges.txt").write_text(text, encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


@cache
def _load_clip_tokenizer() -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    # transformers 5 ignores vocab_file=...: the vocabulary must be passed as objects
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_clip_tokenizer() -> CLIPTokenizer:
    """Build the real 49,408-token CLIP tokenizer offline.

    Returns:
        A fresh tokenizer (safe to extend with placeholder tokens).
    """
    import copy

    return copy.deepcopy(_load_clip_tokenizer())


def placeholder_token(collection: str) -> str:
    """Return the placeholder string of a collection, e.g. ``"Van Gogh"`` -> ``"<van-gogh>"``.

    Names are slugged to ASCII letters and digits; a name with none (``日本画``) keeps its
    own letters (``<日本画>``), which the tokenizer matches as one added token.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", collection.lower()).strip("-")
    if not slug:
        slug = re.sub(r"[\W_]+", "-", collection.lower()).strip("-")
    if not slug:
        raise TokenizerError(f"collection name {collection!r} has no letters or digits")
    return f"<{slug}>"


def token_strings(placeholder: str, num_tokens: int) -> list[str]:
    """Return the per-vector token strings of a multi-vector placeholder.

    Follows diffusers' ``load_textual_inversion`` naming: ``<t>``, ``<t>_1``, ``<t>_2``, ...
    """
    return [placeholder] + [f"{placeholder}_{i}" for i in range(1, num_tokens)]


def add_placeholder_tokens(
    tokenizer: CLIPTokenizer, placeholders: list[str], num_tokens: int
) -> list[list[int]]:
    """Add each placeholder's ``num_tokens`` token strings to the tokenizer.

    Args:
        tokenizer: the tokenizer to extend in place.
        placeholders: one placeholder string per collection.
        num_tokens: vectors per placeholder.

    Returns:
        For each placeholder, the ids of its token strings.

    Raises:
        TokenizerError: a placeholder is already a word of the vocabulary, or is repeated.
    """
    if len(set(placeholders)) != len(placeholders):
        raise TokenizerError(f"placeholders must be unique, got {placeholders}")
    ids = []
    for placeholder in placeholders:
        strings = token_strings(placeholder, num_tokens)
        added = tokenizer.add_tokens(strings)
        if added != len(strings):
            raise TokenizerError(
                f"placeholder {placeholder!r} clashes with tokens already in the tokenizer"
            )
        ids.append(tokenizer.convert_tokens_to_ids(strings))
    return ids


def expand_placeholder(text: str, placeholder: str, num_tokens: int) -> str:
    """Replace ``placeholder`` in ``text`` by its space-separated token strings."""
    return text.replace(placeholder, " ".join(token_strings(placeholder, num_tokens)))


def single_token_id(tokenizer: CLIPTokenizer, word: str) -> int:
    """Return the id of a word that the tokenizer encodes as exactly one token.

    Raises:
        TokenizerError: the word splits into several tokens.
    """
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise TokenizerError(
            f"initializer_token {word!r} is {len(ids)} tokens; choose a single-token word"
        )
    return ids[0]
