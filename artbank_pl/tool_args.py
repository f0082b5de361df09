"""The argument parser of the data tools (``artbank shards | export | grid | world``)."""

from __future__ import annotations

import argparse
import math


class _DefaultsHelpFormatter(argparse.HelpFormatter):
    """Append ``(default: X)`` to an option's help when it has a default worth showing.

    Not for required options, flags, ``None`` defaults, or help that already says it.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.required or action.default in (None, False):
            return text
        if action.option_strings and action.nargs != 0 and action.default is not argparse.SUPPRESS:
            return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"
        return text


class ToolParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that shows defaults in ``--help`` and takes both spellings.

    Every ``--two-words`` option is also accepted as ``--two_words`` (the spelling of the
    LightningCLI options, ``--ckpt_path``), so a user need not remember which tool uses which.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *flags, **kwargs):
        """Add an argument; a ``--dashed-name`` also answers to ``--dashed_name``."""
        aliases = [
            "--" + flag[2:].replace("-", "_")
            for flag in flags
            if flag.startswith("--") and "-" in flag[2:]
        ]
        return super().add_argument(*flags, *[a for a in aliases if a not in flags], **kwargs)


def int_at_least(minimum: int, maximum: int | None = None):
    """Return an argparse ``type`` that reads an integer of at least ``minimum``.

    argparse then refuses ``--photos -1`` in one line naming the option, before any work.
    With ``maximum``, a larger value is refused the same way.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    parse.__name__ = (
        f"integer >= {minimum}" if maximum is None else f"integer in {minimum}-{maximum}"
    )
    return parse


def float_at_least(minimum: float):
    """Return an argparse ``type`` that reads a finite number of at least ``minimum``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be a number of at least {minimum}, got {text}")
        return value

    parse.__name__ = f"number >= {minimum}"
    return parse
