"""Range checks of numeric options: one line naming the option instead of a deep traceback."""

from __future__ import annotations

import math

from artbank_pl.errors import ConfigError


def check_at_least(name: str, value: float | int | None, minimum: float | int) -> None:
    """Raise ``ConfigError`` unless ``value`` (when set) is finite and ``>= minimum``.

    Args:
        name: the option as the user writes it (``data.batch_size``).
        value: its value; ``None`` means "use the default" and passes.
        minimum: the smallest allowed value.
    """
    if value is None:
        return
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")


def check_positive(name: str, value: float | int | None) -> None:
    """Raise ``ConfigError`` unless ``value`` (when set) is finite and ``> 0``."""
    if value is None:
        return
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


def check_resolution(name: str, value: int) -> None:
    """Raise ``ConfigError`` unless ``value`` is a positive multiple of 8 (the VAE's factor)."""
    if value <= 0 or value % 8:
        raise ConfigError(f"{name} must be a positive multiple of 8, got {value}")


def check_fraction(name: str, value: float | None, include_one: bool = False) -> None:
    """Raise ``ConfigError`` unless ``value`` (when set) is in ``[0, 1)`` (``[0, 1]``)."""
    if value is None:
        return
    top_ok = value <= 1 if include_one else value < 1
    if not (math.isfinite(value) and value >= 0 and top_ok):
        interval = "[0, 1]" if include_one else "[0, 1)"
        raise ConfigError(f"{name} must be in {interval}, got {value}")


def check_betas(name: str, betas: object) -> None:
    """Raise ``ConfigError`` unless ``betas`` are two numbers in ``[0, 1)`` (Adam's)."""
    pair = tuple(betas) if isinstance(betas, list | tuple) else ()
    if len(pair) != 2 or not all(isinstance(b, int | float) for b in pair):
        raise ConfigError(f"{name} must be two numbers in [0, 1), got {betas!r}")
    for beta in pair:
        check_fraction(name, beta)
