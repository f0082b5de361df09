"""The demo's prompt bank on other styles, to see whether it transfers those too.

    python bench/bank_styles.py --sets striped,dotted,sketch checkered,neon,mosaic \
        --seed 11 --output outputs/bank-styles [--pretrained /path/to/world-v2] \
        [--fit-args "--model.init_args.lr 0.01"] [--strengths 0.7 0.8 1.0]

For each set of three world styles this runs the product's own commands, as the demo does:
``artbank world images`` (24 paintings per style, 8 photographs, world seed ``--seed``),
``artbank shards build``, ``artbank fit --config quickstart`` and ``artbank test --config
evaluate-quickstart`` at the demo's stylization (guidance 10, AdaIN, stochastic inversion)
at each of ``--strengths`` (default the demo's 0.7 and 1.0, where only a trace of the
photograph survives: the content IoU there is what the prompt alone gives). Prints one JSON
line per set (per strength: per-style style accuracy, mean style, shape accuracy and content
IoU) and writes them to ``OUTPUT/bank_styles.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from artbank_pl.demo import demo_configs
from artbank_pl.world.cli import style_slug

STRENGTHS = (0.7, 1.0)  # the demo's, and the prompt's share of the content


def artbank(*args: str) -> None:
    """Run ``artbank ARGS`` in a subprocess; stop on failure."""
    done = subprocess.run([sys.executable, "-m", "artbank_pl", *args], check=False,
                          stdout=subprocess.DEVNULL)  # fmt: skip
    if done.returncode:
        raise SystemExit(f"artbank {' '.join(args)} failed (rc {done.returncode})")


def run_set(
    styles: list[str],
    seed: int,
    out: Path,
    pretrained: str | None,
    fit_args: list[str],
    strengths: tuple[float, ...] = STRENGTHS,
) -> dict:
    """Train the demo's bank on ``styles`` and judge its stylization; return the figures."""
    configs = demo_configs(out)
    model = ["--model.init_args.pretrained", pretrained] if pretrained else []
    artbank("world", "images", "--output", f"{out}/images", "--styles", *styles,
            "--per-style", "24", "--photos", "8", "--seed", str(seed))  # fmt: skip
    artbank("shards", "build", "--input", f"{out}/images/collections", "--output",
            f"{out}/shards", "--size", "32", "--val-per-collection", "2", "--maxcount", "8",
            "--format", "png")  # fmt: skip
    artbank("fit", "--config", configs["quickstart"], *model, *fit_args)
    artbank("test", "--config", configs["evaluate-quickstart"], *model,
            "--model.init_args.sweep_strengths", json.dumps(list(strengths)))  # fmt: skip
    results = json.loads((out / "report/metrics.json").read_text())["results"]
    row: dict = {"styles": styles, "seed": seed, "pretrained": pretrained or "world",
                 "fit_args": fit_args}  # fmt: skip
    for strength in strengths:
        metrics = results[f"strength={strength:g} guidance=10"]
        per_style = {k: round(v, 3) for k, v in metrics["style_accuracy"].items()}
        row[f"{strength:g}"] = {
            "style": per_style,
            "style_mean": round(sum(per_style.values()) / len(per_style), 3),
            "shape": round(sum(metrics["content_accuracy"].values()) / len(per_style), 3),
            "iou": round(sum(metrics["content_iou"].values()) / len(per_style), 3),
        }
    return row


def main() -> None:
    """Run every set; print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", default=["striped,dotted,sketch"],
                        help="style sets, comma-separated: 'neon striped,dotted'")  # fmt: skip
    parser.add_argument("--seed", type=int, default=11, help="world images seed")
    parser.add_argument("--output", default="outputs/bank-styles")
    parser.add_argument("--pretrained", default=None, help="another world model folder")
    parser.add_argument("--fit-args", default="", help="more `artbank fit` options, quoted")
    parser.add_argument("--strengths", type=float, nargs="+", default=list(STRENGTHS))
    args = parser.parse_args()
    rows = []
    for number, names in enumerate(args.sets):
        styles = [name.strip() for name in names.split(",")]
        slugs = "-".join(style_slug(style) for style in styles)
        folder = Path(args.output) / f"set{number}-{slugs}-seed{args.seed}"
        fit_args, strengths = args.fit_args.split(), tuple(args.strengths)
        rows.append(run_set(styles, args.seed, folder, args.pretrained, fit_args, strengths))
        print(json.dumps(rows[-1]), flush=True)
    (Path(args.output) / "bank_styles.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
