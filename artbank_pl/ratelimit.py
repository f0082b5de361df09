"""Rate limits for log lines about per-sample problems (millions of samples, a few lines)."""

from __future__ import annotations

#: per-sample warnings name the first few samples, then only counts at powers of ten
_LOGGED_EXAMPLES = 3


def worth_logging(count: int) -> bool:
    """Whether the ``count``-th occurrence of a per-sample problem gets a log line.

    The first few name their sample; after that a line at 10, 100, 1000, ... keeps the
    count visible without a line per sample (millions of skips must not flood a log).
    """
    if count <= _LOGGED_EXAMPLES:
        return True
    return count >= 10 and str(count).rstrip("0") == "1"
