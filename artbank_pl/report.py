"""The evaluation report of ``artbank test``: ``metrics.json``, a PNG page and an HTML page."""

from __future__ import annotations

import html
import json
from pathlib import Path

from PIL import Image

from artbank_pl.atomic import atomic_write, atomic_write_text

METRIC_LABELS = {
    "style_accuracy": "style accuracy (world judge: share of outputs in the intended style)",
    "content_accuracy": "content accuracy (world judge: share keeping the content's shape)",
    "style_sim": "style similarity (CLIP cos, higher is more stylized)",
    "content_sim": "content similarity (CLIP cos)",
    "ssim": "SSIM to content",
    "kid": "KID to exemplars (lower is closer)",
    "fid": "FID to exemplars",
}


def plot_metrics(results: dict[str, dict[str, dict[str, float]]], path: Path) -> Path:
    """Bar charts per metric (styles x settings), and style vs content similarity per setting.

    Args:
        results: ``{setting: {metric: {style: value}}}``.
        path: PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(results)
    metrics = [m for m in METRIC_LABELS if any(m in r for r in results.values())]
    styles = sorted({s for r in results.values() for v in r.values() for s in v})
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(4.2 * (len(metrics) + 1), 3.8))
    width = 0.8 / max(1, len(settings))
    for ax, metric in zip(axes, metrics, strict=False):
        for j, setting in enumerate(settings):
            values = [results[setting].get(metric, {}).get(s, float("nan")) for s in styles]
            ax.bar([i + j * width for i in range(len(styles))], values, width, label=setting)
        ax.set_xticks([i + width * (len(settings) - 1) / 2 for i in range(len(styles))])
        ax.set_xticklabels(styles, rotation=20)
        ax.set_title(METRIC_LABELS[metric], fontsize=8)
    axes[0].legend(fontsize=6)
    ax = axes[-1]
    for setting in settings:
        style = results[setting].get("style_sim", {})
        content = results[setting].get("content_sim", {})
        xs = [content[s] for s in styles if s in content and s in style]
        ys = [style[s] for s in styles if s in content and s in style]
        ax.scatter(xs, ys, label=setting)
    ax.set(xlabel="content similarity", ylabel="style similarity", title="trade-off per setting")
    ax.legend(fontsize=6)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return path


def write_report(
    out_dir: str | Path,
    results: dict[str, dict[str, dict[str, float]]],
    grids: dict[str, Image.Image],
    info: dict,
) -> dict[str, Path]:
    """Write ``metrics.json``, ``metrics.png``, one grid PNG per style and ``report.html``.

    Args:
        out_dir: report folder.
        results: ``{setting: {metric: {style: value}}}``.
        grids: style name -> grid image (rows: settings, columns: content images).
        info: run settings recorded in ``metrics.json``.

    Returns:
        Paths written, by kind.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": out / "metrics.json",
        "plot": out / "metrics.png",
        "html": out / "report.html",
    }
    payload = json.dumps({"info": info, "results": results}, indent=2)
    atomic_write_text(paths["metrics"], payload)
    plot_metrics(results, paths["plot"])
    for style, grid in grids.items():
        path = out / f"grid-{style}.png"
        atomic_write(path, lambda tmp, g=grid: g.save(tmp, format="PNG"))
        paths[f"grid-{style}"] = path
    atomic_write_text(paths["html"], _html(results, grids, info))
    return paths


def _html(results: dict, grids: dict, info: dict) -> str:
    rows = []
    for setting, metrics in results.items():
        for metric, values in metrics.items():
            for style, value in values.items():
                rows.append(f"<tr><td>{html.escape(setting)}</td><td>{metric}</td>"
                            f"<td>{html.escape(style)}</td><td>{value:.4f}</td></tr>")  # fmt: skip
    images = "".join(
        f"<h3>{html.escape(s)}</h3><img src='grid-{html.escape(s)}.png'>" for s in grids
    )
    return (
        "<!doctype html><meta charset='utf-8'><title>artbank evaluation</title>"
        f"<h1>artbank evaluation</h1><pre>{html.escape(json.dumps(info, indent=1))}</pre>"
        "<img src='metrics.png'><table border=1 cellpadding=3>"
        "<tr><th>setting</th><th>metric</th><th>style</th><th>value</th></tr>"
        + "".join(rows)
        + f"</table><h2>rows: settings; columns: content images</h2>{images}"
    )
