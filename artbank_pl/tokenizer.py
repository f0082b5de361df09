"""The CLIP tokenizer, built offline, and the placeholder tokens of style collections.

The 49,408-token CLIP vocabulary is derived from the BPE file that ``open-clip-torch``
ships (``bpe_simple_vocab_16e6.txt.gz``), following OpenAI's ``simple_tokenizer``. The
conversion runs once and is cached as a ``vocab.json`` + ``merges.txt`` folder that
``CLIPTokenizer.from_pretrained`` reads. The package is located without importing it,
because importing ``open_clip`` needs torchvision.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
import tempfile
from functools import cache
from pathlib import Path

from transformers import CLIPTokenizer

from artbank_pl.errors import ArtbankError

CLIP_VOCAB_SIZE = 49408
_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
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


def _find_bpe_file() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError(
            "The CLIP vocabulary comes from the open-clip-torch package, which is not installed. "
            "Install it without its dependencies: pip install --no-deps open-clip-torch"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _BPE_FILE
    if not path.is_file():
        raise TokenizerError(f"open-clip-torch is installed but {path} is missing")
    return path


def _convert_bpe(bpe_path: Path, out_dir: Path) -> None:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` into ``out_dir``."""
    lines = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    byte_chars = _bytes_to_unicode()
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise TokenizerError(f"{bpe_path} gave {len(vocab)} tokens, expected {CLIP_VOCAB_SIZE}")
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    merges_text = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    (out_dir / "merges.txt").write_text(merges_text, encoding="utf-8")
    config = {"model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}
    config |= {"unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config))


def cache_dir() -> Path:
    """Return the folder where artbank caches derived files (``$ARTBANK_CACHE`` overrides)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "artbank"
    return Path(os.environ.get("ARTBANK_CACHE", default))


def clip_tokenizer_dir() -> Path:
    """Return a folder holding the CLIP tokenizer files, converting them on first use.

    The conversion writes into a temporary folder that is renamed into place, so that
    concurrent processes (DDP ranks, SLURM tasks) never read a half-written vocabulary.
    """
    target = cache_dir() / "clip-vit-tokenizer"
    if (target / "merges.txt").is_file():
        return target
    bpe_path = _find_bpe_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".clip-tokenizer-", dir=target.parent))
    _convert_bpe(bpe_path, tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race: its copy is identical
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return target


@cache
def _load_clip_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(clip_tokenizer_dir())


def build_clip_tokenizer() -> CLIPTokenizer:
    """Build the real 49,408-token CLIP tokenizer offline.

    Returns:
        A fresh tokenizer (safe to extend with placeholder tokens).
    """
    import copy

    return copy.deepcopy(_load_clip_tokenizer())


def placeholder_token(collection: str) -> str:
    """Return the placeholder string of a collection, e.g. ``"Van Gogh"`` -> ``"<van-gogh>"``."""
    slug = re.sub(r"[^a-z0-9]+", "-", collection.lower()).strip("-")
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
