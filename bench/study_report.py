"""The study's tables and figures from its per-seed results (see ``bench/study.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from study_stats import interval, paired, show

MEASURES = ("style", "shape", "iou")
#: the comparisons each claim is about: (name, first, second), read as first - second
BANK_PAIRS = (("ssam - none", "ssam", "none"), ("ssam - self", "ssam", "self"),
              ("self - none", "self", "none"))  # fmt: skip
PAINTING_PAIRS = (("inverter - embedding", "inverter", "embedding"),)


def arm_curves(result: dict, arm: str) -> list[list[dict]]:
    """One seed's curves of ``arm`` (a bank arm has one, a painting arm one per style)."""
    return [c for name, c in result["curves"].items() if name.split(" ")[0] == arm]


def mean_style(curves: list[list[dict]]) -> list[tuple[int, float]]:
    """``(step, style accuracy)`` along the curves, averaged over them."""
    return [(row["step"], float(np.mean([c[i]["style"] for c in curves])))
            for i, row in enumerate(curves[0])]  # fmt: skip


def arm_finals(seeds: dict, arm: str) -> list[dict]:
    """Per seed, the arm's final measures, averaged over its curves (one per painting style)."""
    finals = []
    for result in seeds.values():
        curves = arm_curves(result, arm)
        finals.append({m: float(np.mean([c[-1][m] for c in curves])) for m in curves[0][-1]
                       if m in (*MEASURES, "copied")})  # fmt: skip
    return finals


def steps_to(seeds: dict, arm: str, threshold: float) -> list[int | None]:
    """Per seed, the first probed step whose style (mean over the arm's curves) >= threshold."""
    reached = []
    for result in seeds.values():
        along = mean_style(arm_curves(result, arm))
        reached.append(next((step for step, style in along if style >= threshold), None))
    return reached


def summarise(study: dict) -> dict:
    """Intervals per arm and setting, and of the paired differences each claim is about."""
    seeds, threshold = study["seeds"], study["args"]["threshold"]
    first = next(iter(seeds.values()))
    arms = sorted({name.split(" ")[0] for name in first["curves"]})
    summary: dict = {"arms": {}, "pairs": {}, "sampling": {}, "sampling_pairs": {}}
    for arm in arms:
        finals = arm_finals(seeds, arm)
        summary["arms"][arm] = {m: interval([f[m] for f in finals]) for m in finals[0]}
        summary["arms"][arm]["steps_to_threshold"] = steps_to(seeds, arm, threshold)
        summary["arms"][arm]["lr"] = study["chosen"][arm]["lr"]
    for name, a, b in (*BANK_PAIRS, *PAINTING_PAIRS):
        if a in arms and b in arms:
            fa, fb = arm_finals(seeds, a), arm_finals(seeds, b)
            summary["pairs"][name] = {
                m: paired([f[m] for f in fa], [f[m] for f in fb]) for m in MEASURES
            }
    if first["sampling"]:
        settings = list(first["sampling"])
        for setting in settings:
            summary["sampling"][setting] = {
                m: interval([r["sampling"][setting][m] for r in seeds.values()]) for m in MEASURES
            }
        for name, a, b in sampling_pairs(settings):
            summary["sampling_pairs"][name] = {
                m: paired([r["sampling"][a][m] for r in seeds.values()],
                          [r["sampling"][b][m] for r in seeds.values()])
                for m in MEASURES
            }  # fmt: skip
    return summary


def sampling_pairs(settings: list[str]) -> list[tuple[str, str, str]]:
    """Stochastic against noise and DDIM inversion per strength; AdaIN; the samplers."""
    strengths = [s.split(" ")[1] for s in settings if s.startswith("stochastic ")]
    pairs = [(f"stochastic - {other} at {s}", f"stochastic {s}", f"{other} {s}")
             for s in strengths for other in ("noise", "ddim")]  # fmt: skip
    return pairs + [("adain on - off", "adain on", "adain off"),
                    ("dpmsolver++ 20 - ddim 50", "sampler dpmsolver++ 20", "sampler ddim 50"),
                    ("ddim 50 - ddim 20", "sampler ddim 50", "sampler ddim 20")]  # fmt: skip


def markdown(study: dict, summary: dict) -> str:
    """Return the tables of ``study.md``."""
    n = len(study["seeds"])
    lines = [f"{n} seeds, mean ± 95 % t-interval; {study['seconds']} s.", "",
             "| arm | lr (tuning: style, IoU per lr) | style | shape | content IoU | "
             "painting's shape copied | steps to style >= "
             f"{study['args']['threshold']} |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for arm, row in summary["arms"].items():
        tuning = ", ".join(f"{lr}: {s:.2f}/{i:.2f}"
                           for lr, (s, i) in study["chosen"][arm]["tuning"].items())  # fmt: skip
        copied = show(row["copied"]) if "copied" in row else "-"
        reached = ", ".join("-" if s is None else str(s) for s in row["steps_to_threshold"])
        measures = " | ".join(show(row[m]) for m in MEASURES)
        lines.append(f"| {arm} | {row['lr']:g} ({tuning}) | {measures} | {copied} | {reached} |")
    lines += ["", "| difference (paired) | style | shape | content IoU |", "|---|---|---|---|"]
    for name, row in {**summary["pairs"], **summary["sampling_pairs"]}.items():
        lines.append(f"| {name} | " + " | ".join(show(row[m]) for m in MEASURES) + " |")
    if summary["sampling"]:
        lines += ["", "| sampling (SSAM bank) | style | shape | content IoU |", "|---|---|---|---|"]
        for name, row in summary["sampling"].items():
            lines.append(f"| {name} | " + " | ".join(show(row[m]) for m in MEASURES) + " |")
    return "\n".join(lines) + "\n"


def plot(study: dict, summary: dict, output: Path) -> None:
    """``curves.png``: style against step per arm (mean, 95 % band); ``tradeoff.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = study["seeds"]
    groups = [[a for a in summary["arms"] if a in ("ssam", "self", "none")],
              [a for a in summary["arms"] if a in ("inverter", "embedding")]]  # fmt: skip
    groups = [g for g in groups if g]
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=True):
        for arm in group:
            per_seed = [mean_style(arm_curves(result, arm)) for result in seeds.values()]
            steps = [step for step, _ in per_seed[0]]
            columns = zip(*[[style for _, style in along] for along in per_seed], strict=True)
            stats = [interval(list(column)) for column in columns]
            mean = np.array([s["mean"] for s in stats])
            half = np.array([s["half_width"] or 0.0 for s in stats])
            ax.plot(steps, mean, label=f"{arm} (lr {summary['arms'][arm]['lr']:g})", linewidth=2)
            ax.fill_between(steps, mean - half, mean + half, alpha=0.2)
        ax.set(xlabel="step", ylabel="style accuracy (judge)", ylim=(-0.02, 1.02),
               title="prompt bank" if "none" in group else "one painting")  # fmt: skip
        ax.legend()
    fig.tight_layout()
    fig.savefig(output / "curves.png", dpi=120)
    plt.close(fig)
    if not summary["sampling"]:
        return
    fig, ax = plt.subplots(figsize=(6, 5))
    for inversion, marker in (("stochastic", "o"), ("noise", "s"), ("ddim", "^")):
        points = [(row["iou"]["mean"], row["style"]["mean"], name.split(" ")[1])
                  for name, row in summary["sampling"].items()
                  if name.startswith(inversion + " ")]  # fmt: skip
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=inversion)
        for x, y, strength in points:
            ax.annotate(strength, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(title="style vs content IoU per inversion (labels: strength)",
           xlabel="content IoU", ylabel="style accuracy")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / "tradeoff.png", dpi=120)
    plt.close(fig)


def write_report(study: dict, output: Path) -> dict:
    """Write ``study.md``, ``curves.png`` and ``tradeoff.png``; return the summary."""
    summary = summarise(study)
    (output / "study.md").write_text(markdown(study, summary))
    plot(study, summary, output)
    return summary
