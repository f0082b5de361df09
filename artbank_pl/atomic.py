"""Atomic file writes: a complete file appears under its name, or nothing does.

Every writer of the project goes through :func:`write_temp` (a hidden ``.<name>.*.tmp`` file
in the target's folder, flushed to disk) and a rename, so an interrupted process never leaves
a half-written output, and two processes never share a temporary name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

TEMP_GLOB = ".*.tmp"


def temp_glob(name: str) -> str:
    """Return the pattern of the temporaries :func:`write_temp` makes for a file ``name``."""
    return f".{name}.*.tmp"


def write_temp(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Let ``write`` fill a temporary file beside ``path``; return it, synced and mode 0644.

    Args:
        path: the final file (its folder is created).
        write: writes the whole content to the path it is given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; outputs are meant to be shared
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write a file through :func:`write_temp` and a rename; return ``path``."""
    os.replace(write_temp(path, write), path)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
