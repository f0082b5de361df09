"""Errors caused by user input: the CLI prints them as one line instead of a traceback."""


class ArtbankError(Exception):
    """Base of the errors that name a bad input (file, key or option)."""


class ConfigError(ArtbankError, ValueError):
    """An option or config value is invalid."""


class DataError(ArtbankError, ValueError):
    """A data file (manifest, shard, image folder) is missing or malformed."""
