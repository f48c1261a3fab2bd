"""The files of `lrp evaluate`: evaluation.json and .csv, curves.png (Fig 22) and the strips (Figs 23/24).

Figures use matplotlib's object API on the Agg canvas (no pyplot state), so threads can draw at once.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from lrp_cli import outputs

SCHEMA = "lrp-cli/evaluation/1"
CSV_FIELDS = ["input", "method", "order", "target", "step", "fraction", "score", "probability", "predicted"]
ORDER_TITLES = {"morf": "MoRF: most relevant first", "lerf": "LeRF: |R| closest to zero first",
                "negative": "most negative first"}


def _canvas(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def mean_curves(runs: list[dict]) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Returns order -> method -> (fractions, mean score over the runs), in first-seen order."""
    grouped: dict[str, dict[str, list]] = {}
    for run in runs:
        grouped.setdefault(run["order"], {}).setdefault(run["method"], []).append(run)
    return {order: {method: (np.asarray(group[0]["fractions"]), np.mean([r["scores"] for r in group], axis=0))
                    for method, group in methods.items()}
            for order, methods in grouped.items()}


def curves_figure(runs: list[dict], ylabel: str = "mean target score f(x) (pre-softmax)"):
    """Returns the matplotlib Figure of the mean score against the fraction perturbed: one panel per order, one
    line per method (random dashed, as in Fig 22)."""
    curves = mean_curves(runs)
    figure = _canvas(5.0 * len(curves), 4.2)
    colours = {}
    for panel, (order, methods) in enumerate(curves.items()):
        axes = figure.add_subplot(1, len(curves), panel + 1)
        for method, (fractions, scores) in methods.items():
            colour = colours.setdefault(method, f"C{len(colours) % 10}")
            axes.plot(fractions * 100, scores, label=method, color=colour, linewidth=1.8,
                      linestyle="--" if method == "random" else "-")
        axes.set_title(ORDER_TITLES.get(order, order))
        axes.set_xlabel("units perturbed (%)")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def curves_png(runs: list[dict]) -> bytes:
    """Returns curves.png: the PNG of `curves_figure`."""
    return _png(curves_figure(runs))


def strip_png(title: str, rows: list[tuple[str, list]]) -> bytes:
    """Returns a strip PNG: per order a row of the image at increasing fractions perturbed, with the caption
    (predicted label, y_p, y) under each frame (Figs 23/24)."""
    columns = max(len(frames) for _, frames in rows)
    figure = _canvas(1.25 * columns, 1.75 * len(rows) + 0.4)
    for r, (order, frames) in enumerate(rows):
        for c, (fraction, picture, caption) in enumerate(frames):
            axes = figure.add_subplot(len(rows), columns, r * columns + c + 1)
            axes.imshow(np.asarray(picture), interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            axes.set_title(f"{fraction * 100:.0f}%", fontsize=7)
            axes.set_xlabel(caption, fontsize=6)
            if c == 0:
                axes.set_ylabel(order, fontsize=8)
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    return _png(figure)


def csv_bytes(runs: list[dict]) -> bytes:
    """Returns evaluation.csv: one row per run and step."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for run in runs:
        for step, values in enumerate(zip(run["fractions"], run["scores"], run["probabilities"], run["predicted"])):
            writer.writerow({"input": run["input"], "method": run["method"], "order": run["order"],
                             "target": run["target"], "step": step, **dict(zip(CSV_FIELDS[5:], values))})
    return text.getvalue().encode("utf-8")


def evaluation_document(settings: dict, runs: list[dict], summary: list[dict], errors: list[dict],
                        rankings: list[dict] | None = None) -> dict:
    """Returns the evaluation.json document (schema lrp-cli/evaluation/1)."""
    return {"schema": SCHEMA, "settings": settings, "runs": runs, "summary": summary, "rankings": rankings or [],
            "errors": errors}


def write_evaluation(out_dir: Path, document: dict, files: dict[Path, bytes]) -> list[Path]:
    """Writes evaluation.json, evaluation.csv, curves.png and the per-input files all-or-nothing; returns the
    paths of the three summary files."""
    paths = [out_dir / "evaluation.json", out_dir / "evaluation.csv", out_dir / "curves.png"]
    contents = dict(zip(paths, (outputs.json_bytes(document), csv_bytes(document["runs"]),
                                curves_png(document["runs"]))))
    outputs.write_all({**files, **contents})
    return paths


def _mean_sem(mean: float, sem: float | None, n: int | None = None) -> str:
    return f"{mean:.4g}" + ("" if sem is None else f" ± {sem:.4g}") + ("" if n is None else f" (n={n})")


def range_label(settings: dict) -> str:
    """Returns what the curves cover: "" for all units, else e.g. " first 100 units" or " first 10 %"."""
    if settings.get("prefix_units"):
        return f" first {settings['prefix_units']} units"
    if settings.get("max_fraction"):
        return f" first {settings['max_fraction'] * 100:g} %"
    return ""


def summary_table(summary: list[dict], settings: dict | None = None) -> str:
    """Returns the summary as a text table: a row per method; first the headline, the MoRF-LeRF area (when MoRF and
    LeRF ran), then per order the AOPC (over the prefix when one is set, then the full-range AOPC beside it), each
    mean ± sem."""
    prefix = range_label(settings or {})
    orders = list(dict.fromkeys(s["order"] for s in summary))
    methods = list(dict.fromkeys(s["method"] for s in summary))
    cells = {(s["method"], s["order"]): s for s in summary}
    full = any("aopc_full_range_mean" in s for s in summary)
    areas = {s["method"]: s["morf_lerf_area"] for s in summary if "morf_lerf_area" in s}
    area = ("MoRF-LeRF area", lambda m: m in areas and _mean_sem(areas[m]["mean"], areas[m]["sem"]))
    columns = [area] if areas else []
    columns += [(f"AOPC {o}{prefix}", lambda m, o=o: cells.get((m, o)) and _mean_sem(
        cells[m, o]["aopc_mean"], cells[m, o]["aopc_sem"], cells[m, o]["n"])) for o in orders]
    if full:
        columns += [(f"full-range AOPC {o}", lambda m, o=o: cells.get((m, o)) and "aopc_full_range_mean" in
                     cells[m, o] and _mean_sem(cells[m, o]["aopc_full_range_mean"], cells[m, o]["aopc_full_range_sem"]))
                    for o in orders]
    width = max(len(m) for m in methods + ["method"])
    # a column is as wide as its title and its longest cell, plus two spaces, so cells never run together
    widths = [max(26, len(title) + 2, *(len(cell(m) or "") + 2 for m in methods)) for title, cell in columns]
    lines = [f"{'method':<{width}}  " + "".join(f"{title:<{w}}" for (title, _), w in zip(columns, widths))]
    lines += [f"{m:<{width}}  " + "".join(f"{(cell(m) or ''):<{w}}" for (_, cell), w in zip(columns, widths))
              for m in methods]
    return "\n".join(line.rstrip() for line in lines)


def ranking_text(rankings: list[dict]) -> str:
    """Returns the printed verdicts of the first ranking (the MoRF-LeRF area when there is one): the methods best
    first, then each pair: "a > b: 95 % CI [lo, hi]" (CI of the mean paired difference) or "not separated"."""
    from lrp_cli.ranking import verdict_line
    if not rankings:
        return ""
    first = rankings[0]
    lines = [f"ranking by {first['measure']} ({first['better']} is better; paired over the inputs, "
             f"{first['confidence'] * 100:.0f} % bootstrap CI of the mean difference, {first['resamples']} "
             f"resamples, seed {first['seed']}): " + " ".join(m["method"] for m in first["methods"])]
    lines += ["  " + verdict_line(pair, first["confidence"]) for pair in first["pairs"]]
    return "\n".join(lines)


def accuracy_text(summary: list[dict]) -> str:
    """Returns the printed accuracy curves of the summary entries that have one: per method and order, the share
    of labelled inputs still classified correctly at the start, middle and end of the curve."""
    entries = [s for s in summary if "accuracy" in s]
    width = max(len(f"{s['method']} {s['order']}") for s in entries)
    lines = [f"accuracy over the {entries[0]['accuracy']['n']} labelled inputs at the curve's start / middle / end:"]
    for entry in entries:
        curve = entry["accuracy"]["curve"]
        points = " / ".join(f"{curve[k]:.3f}" for k in (0, len(curve) // 2, len(curve) - 1))
        lines.append(f"  {entry['method'] + ' ' + entry['order']:<{width}}  {points}")
    return "\n".join(lines)
