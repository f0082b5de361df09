"""``artbank demo``: the whole quick start from the installed package.

The steps are the ones ``make demo`` runs (``make demo`` calls this): world images and
shards, a prompt bank and an InST inverter trained on the shipped world model, their
embedding files, stylized photographs, a side-by-side grid and the judges' evaluation. The
shipped configs name ``outputs/demo``; for another ``--output`` they are copied into
``OUTPUT/configs`` with their paths pointing there, so the folder holds the configs it was
made with. Each step runs as its own ``artbank`` process, as a user would type it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from artbank_pl.config_files import shipped_config_path
from artbank_pl.errors import ConfigError
from artbank_pl.tool_args import ToolParser

#: the folder the shipped quick-start configs write to
SHIPPED_OUTPUT = "outputs/demo"
#: the configs the demo runs
DEMO_CONFIGS = ("quickstart", "quickstart-inst", "stylize-quickstart", "evaluate-quickstart")
#: the painting the InST inverter inverts: one of the bank's dotted collection, which the
#: inverter (trained on other dotted paintings, inst-images/) never saw
INST_PAINTING = "images/collections/dotted/0000.png"
#: where the inverter's evaluation goes (the bank's: report/)
INST_REPORT = "report-inst"
#: InST's stylization (README, "The world's CLIP and InST on it"): AdaIN from the painting
#: itself at strength 0.8, chosen on another draw of paintings and photographs
INST_STYLIZE = {"adain": True, "strength": 0.8}


def demo_steps(out: str, configs: dict[str, str]) -> list[tuple[str, list[str]]]:
    """Return the demo's steps as ``(what it does, artbank arguments)``, in order.

    Args:
        out: the output folder.
        configs: config name -> the ``--config`` value to pass.
    """
    painting = f"{out}/{INST_PAINTING}"
    inverter = ["--model.init_args.bank", "null",
                "--model.init_args.inverter", f"{out}/inst/checkpoints/last.ckpt",
                "--model.init_args.style_images", f"[{painting}]"]  # fmt: skip
    inverter += [arg for key, value in INST_STYLIZE.items()
                 for arg in (f"--model.init_args.{key}", json.dumps(value))]  # fmt: skip
    return [
        ("world collections and photographs",
         ["world", "images", "--output", f"{out}/images", "--styles", "striped", "dotted",
          "sketch", "--per-style", "24", "--photos", "8"]),
        ("collection shards",
         ["shards", "build", "--input", f"{out}/images/collections", "--output",
          f"{out}/shards", "--size", "32", "--val-per-collection", "2", "--maxcount", "8",
          "--format", "png"]),
        ("ArtBank: a prompt bank over three collections",
         ["fit", "--config", configs["quickstart"]]),
        ("the bank's embedding files",
         ["export", "--ckpt", f"{out}/checkpoints/last.ckpt", "--output", f"{out}/export"]),
        ("dotted world paintings for InST",
         ["world", "images", "--output", f"{out}/inst-images", "--styles", "dotted",
          "--per-style", "24", "--photos", "0", "--seed", "7"]),
        ("their shards",
         ["shards", "build", "--input", f"{out}/inst-images/collections", "--output",
          f"{out}/inst-shards", "--size", "32", "--format", "png"]),
        ("InST: an inverter trained on those paintings",
         ["fit", "--config", configs["quickstart-inst"]]),
        ("a painting it never saw, as an embedding file",
         ["export", "--ckpt", f"{out}/inst/checkpoints/last.ckpt", "--output",
          f"{out}/inst/export", "--style-images", painting]),
        # AdaIN: each style starts from the latent statistics of its collection's first image
        ("stylize the photographs with the bank",
         ["predict", "--config", configs["stylize-quickstart"],
          "--model.init_args.adain", "true",
          "--model.init_args.adain_reference", f"{out}/images/collections"]),
        ("stylize them with the inverter",
         ["predict", "--config", configs["stylize-quickstart"], *inverter,
          "--trainer.callbacks.init_args.output_dir", f"{out}/stylized-inst"]),
        ("content | bank | inverter grid",
         ["grid", f"{out}/stylized/manifest.jsonl", f"{out}/stylized-inst/manifest.jsonl",
          "--output", f"{out}/grid.png"]),
        ("evaluation by the judges",
         ["test", "--config", configs["evaluate-quickstart"]]),
        ("the inverter's evaluation by the judges",
         ["test", "--config", configs["evaluate-quickstart"], *inverter,
          "--model.init_args.adain_reference", "null", "--model.init_args.exemplars", "null",
          "--model.init_args.sweep_strengths", "[0.7, 0.8, 0.9]",
          "--model.init_args.report_dir", f"{out}/{INST_REPORT}"]),
    ]  # fmt: skip


def demo_configs(output: Path) -> dict[str, str]:
    """Return the ``--config`` value of each demo config for an output folder.

    ``outputs/demo`` itself runs the shipped configs by name; any other folder gets copies
    in ``OUTPUT/configs`` whose ``outputs/demo`` paths name ``OUTPUT``.
    """
    if output.as_posix() == SHIPPED_OUTPUT:
        return {name: name for name in DEMO_CONFIGS}
    folder = output / "configs"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in DEMO_CONFIGS:
        text = shipped_config_path(name).read_text(encoding="utf-8")
        path = folder / f"{name}.yaml"
        path.write_text(text.replace(SHIPPED_OUTPUT, output.as_posix()), encoding="utf-8")
        written[name] = str(path)
    return written


def results_table(metrics_file: Path) -> str:
    """Return the evaluation's mean style accuracy, shape accuracy and content IoU per setting."""
    results = json.loads(metrics_file.read_text(encoding="utf-8"))["results"]
    keys = ("style_accuracy", "content_accuracy", "content_iou")
    lines = [f"{'setting':<28} {'style':>6} {'shape':>6} {'IoU':>6}"]
    for setting, metrics in results.items():
        means = [sum(metrics[k].values()) / len(metrics[k]) for k in keys]
        lines.append(f"{setting:<28} " + " ".join(f"{m:>6.3f}" for m in means))
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """``artbank demo [--output DIR]``: run every step, then print the evaluation table."""
    parser = ToolParser(
        prog="artbank demo",
        description="Run the whole quick start (world data, ArtBank and InST on the world "
        "model, stylization, grid, evaluation) from the installed package.",
    )
    parser.add_argument(
        "--output", default=SHIPPED_OUTPUT, help="folder for every output (default: %(default)s)"
    )
    opts = parser.parse_args(argv)
    if not opts.output.strip():
        raise ConfigError("--output is empty: name the folder the demo writes to")
    output = Path(opts.output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output}: exists and is not a folder")
    steps = demo_steps(output.as_posix(), demo_configs(output))
    started = time.monotonic()
    for number, (what, args) in enumerate(steps, start=1):
        print(f"[demo {number}/{len(steps)}] {what}: artbank {' '.join(args)}", flush=True)
        done = subprocess.run([sys.executable, "-m", "artbank_pl", *args], check=False)
        if done.returncode != 0:
            print(f"artbank demo: step {number} ({what}) failed, rc {done.returncode}")
            return done.returncode or 1
    minutes = (time.monotonic() - started) / 60
    print(f"\ndemo done in {minutes:.1f} min; outputs in {output}/: grid.png, report/report.html")
    print("ArtBank, the prompt bank (report/):")
    print(results_table(output / "report" / "metrics.json"))
    print(f"InST, the inverter on a painting it never saw ({INST_REPORT}/):")
    print(results_table(output / INST_REPORT / "metrics.json"))
    return 0
