"""The configs shipped with the package, and ``--config NAME`` resolution.

The repository's ``configs/`` folder installs as ``artbank_pl/configs`` (see
``pyproject.toml``), so ``artbank fit --config quickstart`` works wherever the wheel is
installed. In a checkout (editable install) the folder is found beside the package.
"""

from __future__ import annotations

from pathlib import Path

from artbank_pl.errors import ConfigError

_PACKAGE_DIR = Path(__file__).resolve().parent


def shipped_configs_dir() -> Path:
    """Return the folder of the shipped YAML configs (installed wheel or checkout)."""
    for candidate in (_PACKAGE_DIR / "configs", _PACKAGE_DIR.parent / "configs"):
        if (candidate / "quickstart.yaml").is_file():
            return candidate
    raise ConfigError(f"no shipped configs found under {_PACKAGE_DIR}; reinstall artbank-pl")


def shipped_config_names() -> list[str]:
    """Return the names of the shipped configs, e.g. ``quickstart``, ``trainer/ddp``."""
    root = shipped_configs_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def shipped_config_path(name: str) -> Path:
    """Return the file of a shipped config by name (``quickstart`` or ``quickstart.yaml``).

    Raises:
        ConfigError: no shipped config has that name; the message lists the names.
    """
    stem = name.removesuffix(".yaml").removeprefix("configs/")
    path = shipped_configs_dir() / f"{stem}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"--config {name}: no such file, and no shipped config of that name "
            f"(shipped: {', '.join(shipped_config_names())})"
        )
    return path


def describe(path: Path) -> str:
    """Return the first sentence of a config's opening comment, joined across its lines."""
    words: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.lstrip("#").strip()
        if not line.startswith("#") or not text or text.startswith("artbank "):
            break
        words.append(text)
        if text.endswith("."):
            break
    summary = " ".join(words)
    end = summary.find(". ")
    return summary[: end + 1] if end >= 0 else summary


def resolve_config_args(argv: list[str]) -> list[str]:
    """Replace ``--config NAME`` by the shipped file when ``NAME`` is not an existing path.

    A path that exists always wins, so a user's own ``quickstart.yaml`` in the working
    directory is read rather than the shipped one.
    """
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = _resolve_one(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + _resolve_one(arg.split("=", 1)[1])
    return out


def _resolve_one(value: str) -> str:
    if Path(value).is_file():
        check_config_file(Path(value))
        return value
    if ":" in value or "\n" in value:
        return value  # an inline YAML/JSON config that jsonargparse parses itself
    return str(shipped_config_path(value))


def check_config_file(path: Path) -> None:
    """Refuse a config file that is not a YAML mapping, naming the file and the problem.

    jsonargparse says "Problems parsing config" without the file, or "Unexpected config"
    for an empty one.

    Raises:
        ConfigError: the file is not UTF-8, not YAML, empty or not a mapping.
    """
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"--config {path}: not UTF-8 text ({err.reason})") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"--config {path}: not valid YAML{where}: {problem}") from err
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}, not a mapping"
        raise ConfigError(f"--config {path}: {what} (a config maps trainer/model/data to options)")


def configs_main(argv: list[str]) -> int:
    """``artbank configs list`` and ``artbank configs show NAME``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="artbank configs",
        description="List or print the configs shipped with artbank-pl "
        "(use them as --config NAME, or copy one: artbank configs show NAME > my.yaml).",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="one line per shipped config")
    show = sub.add_parser("show", help="print a shipped config")
    show.add_argument("name", help="e.g. quickstart or trainer/ddp")
    opts = parser.parse_args(argv)
    if opts.action == "list":
        root = shipped_configs_dir()
        for name in shipped_config_names():
            print(f"{name:24s} {describe(root / f'{name}.yaml')}")
    else:
        print(shipped_config_path(opts.name).read_text(encoding="utf-8"), end="")
    return 0
