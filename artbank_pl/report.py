"""The evaluation report of ``artbank test``: ``metrics.json``, a PNG page and an HTML page."""

from __future__ import annotations

import html
import json
import textwrap
from pathlib import Path

from PIL import Image

from artbank_pl.atomic import atomic_write, atomic_write_text

METRIC_LABELS = {
    "style_accuracy": "style accuracy (world judge: share of outputs in the intended style)",
    "content_accuracy": "content accuracy (world judge: share keeping the content's shape)",
    "content_iou": "content IoU (world mask judge: the shape where the content's was, at its size)",
    "style_sim": "style similarity (CLIP cos, higher is more stylized)",
    "content_sim": "content similarity (CLIP cos)",
    "ssim": "SSIM to content",
    "kid": "KID to exemplars (lower is closer)",
    "fid": "FID to exemplars",
}


def metric_names(results: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Return the metrics in ``results``: the known ones in ``METRIC_LABELS`` order, then others."""
    found = {metric for metrics in results.values() for metric in metrics}
    return [m for m in METRIC_LABELS if m in found] + sorted(found - set(METRIC_LABELS))


#: short column names of the console table
_SHORT = {"style_accuracy": "style_acc", "content_accuracy": "shape_acc",
          "content_iou": "iou", "content_sim": "cont_sim"}  # fmt: skip


def results_text(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Return the results as a console table: a row per setting and style, a column per metric.

    Lightning's table puts each ``test/<setting>/<metric>/<style>`` key in a column cut at
    the terminal's width; this one stays as wide as its longest setting label.
    """
    metrics = metric_names(results)
    rows = [(setting, style) for setting, values in results.items()
            for style in next(iter(values.values()), {})]  # fmt: skip
    width = max([len(s) for s, _ in rows] + [7])
    style_width = max([len(s) for _, s in rows] + [5])
    columns = [_SHORT.get(m, m) for m in metrics]
    lines = [f"{'setting':<{width}}  {'style':<{style_width}}  "
             + "  ".join(f"{c:>9}" for c in columns)]  # fmt: skip
    for setting, style in rows:
        cells = [results[setting].get(m, {}).get(style) for m in metrics]
        text = "  ".join(f"{v:>9.4f}" if v is not None else f"{'-':>9}" for v in cells)
        lines.append(f"{setting:<{width}}  {style:<{style_width}}  {text}")
    return "\n".join(lines)


def plot_metrics(results: dict[str, dict[str, dict[str, float]]], path: Path) -> Path:
    """Bar charts per metric (styles x settings), and style vs content similarity per style.

    One legend for all panels sits under them (it covers no bar); in the trade-off panel
    colour is the setting and the marker the style, each point labelled with its style.

    Args:
        results: ``{setting: {metric: {style: value}}}``.
        path: PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(results)
    metrics = metric_names(results)
    styles = sorted({s for r in results.values() for v in r.values() for s in v})
    colours = [plt.get_cmap("tab10")(i % 10) for i in range(len(settings))]
    panels = len(metrics) + 1
    cols = min(3, panels)  # rows of three stay readable on a page
    grid_rows = -(-panels // cols)
    fig, grid = plt.subplots(grid_rows, cols, figsize=(4.6 * cols, 4.0 * grid_rows + 0.6),
                             squeeze=False)  # fmt: skip
    axes = list(grid.flat)
    for unused in axes[panels:]:
        unused.axis("off")
    axes = axes[:panels]
    width = 0.8 / max(1, len(settings))
    for ax, metric in zip(axes, metrics, strict=False):
        for j, setting in enumerate(settings):
            values = [results[setting].get(metric, {}).get(s, float("nan")) for s in styles]
            ax.bar([i + j * width for i in range(len(styles))], values, width,
                   label=setting, color=colours[j])  # fmt: skip
        ax.set_xticks([i + width * (len(settings) - 1) / 2 for i in range(len(styles))])
        ax.set_xticklabels(styles, rotation=30, ha="right", fontsize=9)
        ax.set_title(textwrap.fill(METRIC_LABELS.get(metric, metric), 34), fontsize=10)
    _plot_trade_off(axes[-1], results, styles, colours)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(settings)), fontsize=9,
               title="setting", frameon=False)  # fmt: skip
    legend_rows = 1 + (len(settings) - 1) // 4
    fig.tight_layout(rect=(0, (0.5 + 0.25 * legend_rows) / fig.get_figheight(), 1, 1))
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return path


def _plot_trade_off(ax, results: dict, styles: list[str], colours: list) -> None:
    """Style vs content similarity: one point per (setting, style), labelled by style."""
    markers = "osD^vP*Xh<>"
    for j, setting in enumerate(results):
        style = results[setting].get("style_sim", {})
        content = results[setting].get("content_sim", {})
        for k, name in enumerate(styles):
            if name in style and name in content:
                ax.scatter(content[name], style[name], color=colours[j],
                           marker=markers[k % len(markers)], s=40)  # fmt: skip
                ax.annotate(name, (content[name], style[name]), fontsize=8,
                            xytext=(4, 3), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("content similarity", fontsize=9)
    ax.set_ylabel("style similarity", fontsize=9)
    ax.set_title("trade-off (colour: setting)", fontsize=10)


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


PAGE_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}"
    "th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}"
    "th[scope=row],thead th:first-child{text-align:left}"
    "caption{text-align:left;font-weight:600;padding-bottom:4px}"
    "tr.mean{background:#f4f4f4}figure{margin:1em 0}img{max-width:100%}"
    "figcaption{color:#555;font-size:90%}"
    "dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px}dt{font-weight:600}"
)


def _html(results: dict, grids: dict, info: dict) -> str:
    """Return the page: run settings, a table per metric, the plot and the labelled grids."""
    esc = html.escape
    settings = list(results)
    metrics = metric_names(results)
    run = "".join(f"<dt>{esc(str(k))}</dt><dd>{esc(_text(v))}</dd>" for k, v in info.items())
    tables = "".join(_metric_table(metric, results, settings) for metric in metrics)
    figures = "".join(
        f"<figure><img src='grid-{esc(style)}.png' alt='grid of style {esc(style)}'>"
        f"<figcaption>{esc(style)}: first row the content images, then one row per "
        "setting</figcaption></figure>"
        for style in grids
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>artbank evaluation</title><style>{PAGE_STYLE}</style></head><body>"
        f"<h1>artbank evaluation</h1><h2>Run</h2><dl>{run}</dl><h2>Metrics</h2>{tables}"
        "<figure><img src='metrics.png' alt='metrics per style and setting'><figcaption>"
        "bars: each metric per style and setting; last panel: style vs content similarity"
        f"</figcaption></figure><h2>Grids</h2>{figures}</body></html>"
    )


def _text(value: object) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def _metric_table(metric: str, results: dict, settings: list[str]) -> str:
    """One metric as a table: a row per style (and their mean), a column per setting."""
    esc = html.escape
    styles = sorted({s for r in results.values() for s in r.get(metric, {})})
    head = "".join(f"<th scope='col'>{esc(s)}</th>" for s in settings)
    rows = []
    for style in styles:
        cells = "".join(_cell(results[s].get(metric, {}).get(style)) for s in settings)
        rows.append(f"<tr><th scope='row'>{esc(style)}</th>{cells}</tr>")
    means = []
    for setting in settings:
        values = list(results[setting].get(metric, {}).values())
        means.append(_cell(sum(values) / len(values) if values else None))
    rows.append(f"<tr class='mean'><th scope='row'>mean</th>{''.join(means)}</tr>")
    label = METRIC_LABELS.get(metric, metric)
    return (
        f"<table data-metric='{esc(metric)}'><caption>{esc(label)}</caption>"
        f"<thead><tr><th scope='col'>style</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _cell(value: float | None) -> str:
    return "<td>-</td>" if value is None else f"<td>{value:.4f}</td>"
