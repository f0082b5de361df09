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
