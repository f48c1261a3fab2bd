"""Batches: input expansion (files, folders, globs), running the inputs (progress, jobs), the summary files."""

from __future__ import annotations

import csv
import glob
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from lrp_cli import api, outputs
from lrp_cli.errors import LrpError
from lrp_cli.preprocess import IMAGE_SUFFIXES

INPUT_SUFFIXES = IMAGE_SUFFIXES | {".npy"}
GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputItem:
    """One input file and the output stem it maps to (its relative path without extension)."""

    path: Path
    stem: str


def _folder_items(folder: Path) -> list[InputItem]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
    return [InputItem(p, p.relative_to(folder).with_suffix("").as_posix()) for p in files]


def expand_inputs(specs: list[str]) -> list[InputItem]:
    """Returns the input files named by files, folders (recursed, layout kept) and glob patterns, in order.

    A name that matches nothing is kept as is, so that the explain step reports it as a missing file.
    """
    items: list[InputItem] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            items.extend(_folder_items(path))
        elif GLOB_CHARS & set(spec) and not path.exists():
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=True))
            items.extend(InputItem(m, m.stem) for m in matches if m.is_file())
            if not matches:
                items.append(InputItem(path, path.stem))
        else:
            items.append(InputItem(path, path.stem))
    return items


SUMMARY_FIELDS = ["input", "status", "target", "label", "score", "f_x", "relevance_sum", "conservation_error",
                  "heatmap", "error"]


def summary_row(item: InputItem, document: dict | None = None, error: str | None = None) -> dict:
    """Returns one summary row for an explained input (its JSON document) or a failed one (its error)."""
    if document is None:
        return {"input": str(item.path), "status": "error", "error": error}
    return {
        "input": str(item.path), "status": "ok", "target": document["target"]["index"],
        "label": document["target"]["label"], "score": document["prediction"]["score"],
        "f_x": document["f_x"], "relevance_sum": document["relevance"]["sum"],
        "conservation_error": document["relevance"]["conservation_error"],
        "heatmap": document["outputs"]["heatmap"], "error": None,
    }


def write_summary(out_dir: Path, rows: list[dict]) -> None:
    """Writes summary.json and summary.csv for a batch, all-or-nothing."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=SUMMARY_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    failed = sum(row["status"] != "ok" for row in rows)
    document = {"schema": "lrp-cli/summary/1", "inputs": len(rows), "failed": failed, "results": rows}
    outputs.write_all({out_dir / "summary.json": outputs.json_bytes(document),
                       out_dir / "summary.csv": text.getvalue().encode("utf-8")})


class BatchRunner:
    """Explains a list of inputs, prints a line per explanation and collects summary rows.

    `echo(text, err=False)` prints one line (click.echo by default, so that output works under CliRunner)."""

    def __init__(self, model, settings, out_dir, cmap, save_raw, global_scale, json_lines, echo=click.echo):
        self.model, self.settings, self.out_dir = model, settings, out_dir
        self.cmap, self.save_raw, self.global_scale, self.json_lines = cmap, save_raw, global_scale, json_lines
        self.echo = echo

    def _compute(self, item):
        try:
            return item, api.explain(self.model, item.path, self.settings), None
        except LrpError as exc:
            return item, None, exc

    def run(self, items, jobs, skip_existing, show_progress) -> list[dict]:
        """Returns the summary rows after explaining every item; an input's error is reported and becomes a row,
        an error of the whole run (exit code other than 1, e.g. a bad --target) is raised."""
        if skip_existing:
            items = [i for i in items if not (self.out_dir / f"{i.stem}.json").exists()]
        results = self._map(items, jobs, show_progress)
        scale = None
        if self.global_scale:  # only a shared scale needs every explanation in memory before the first write
            results = list(results)
            scale = api.global_scale(self.model, [e for _, ex, _ in results if ex for e in ex])
        return [row for result in results for row in self._save(*result, scale)]

    def _map(self, items, jobs, show_progress):
        """Yields (item, explanations, error) in input order, as they are computed."""
        if jobs > 1:
            from joblib import Parallel, delayed
            yield from Parallel(n_jobs=jobs, backend="threading", return_as="generator")(
                delayed(self._compute)(i) for i in items)
            return
        with click.progressbar(items, label="explaining", file=sys.stderr, hidden=not show_progress) as bar:
            yield from (self._compute(item) for item in bar)

    def _save(self, item, explanations, error, scale) -> list[dict]:
        if error is not None:
            if error.exit_code != 1:
                raise error
            self.echo(f"error: {error}", err=True)
            return [summary_row(item, error=str(error))]
        rows = []
        for expl in explanations:
            stem = item.stem if len(explanations) == 1 else f"{item.stem}.class{expl.target['index']}"
            try:
                document = api.save_explanation(self.model, expl, self.out_dir, stem, self.cmap, self.save_raw,
                                                scale)
            except OSError as exc:
                self.echo(f"error: {item.path}: cannot write outputs to {self.out_dir} ({exc})", err=True)
                rows.append(summary_row(item, error=str(exc)))
                continue
            self._report(item, expl, document)
            rows.append(summary_row(item, document))
        return rows

    def _report(self, item, expl, document):
        if self.json_lines:
            self.echo(json.dumps(document))
            return
        target = expl.target
        label = f" ({target['label']})" if target["label"] else ""
        pred = expl.prediction
        self.echo(f"{item.path}: target {target['index']}{label}, predicted {pred['index']} score "
                  f"{pred['score']:.4g}, f(x)={document['f_x']:.4g}, conservation error "
                  f"{document['relevance']['conservation_error']:.2e} -> {document['outputs']['heatmap']}")
        if expl.ir_diff_relative is not None and expl.ir_diff_relative > api.IR_DIFF_WARNING:
            self.echo(f"warning: {item.path}: IR output differs from onnxruntime by "
                      f"{expl.ir_max_abs_diff:.3g} (relative {expl.ir_diff_relative:.2e})", err=True)
