"""Input expansion (files, folders, globs) and the batch summary files."""

from __future__ import annotations

import csv
import glob
import io
import os
from dataclasses import dataclass
from pathlib import Path

from lrp_cli import outputs
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


def _glob_items(files: list[Path]) -> list[InputItem]:
    """Returns the items of a glob's files, stems relative to their common folder (as a folder keeps its layout),
    so that a/x.png and b/x.png do not write the same outputs."""
    if not files:
        return []
    base = Path(os.path.commonpath([f.parent.absolute() for f in files]))
    return [InputItem(f, f.absolute().relative_to(base).with_suffix("").as_posix()) for f in files]


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
            items.extend(_glob_items([m for m in matches if m.is_file()]))
            if not matches:
                items.append(InputItem(path, path.stem))
        else:
            items.append(InputItem(path, path.stem))
    return _distinct_stems(items)


def _distinct_stems(items: list[InputItem]) -> list[InputItem]:
    """Returns the items with no output stem used twice: a later x.jpg beside x.png keeps its extension in the
    stem, and inputs that still collide (x.png named in two folders) get ~2, ~3, ..."""
    seen: set[str] = set()
    distinct = []
    for item in items:
        stem, k = item.stem, 2
        if stem in seen:
            stem = item.stem + item.path.suffix
        while stem in seen:
            stem, k = f"{item.stem}~{k}", k + 1
        seen.add(stem)
        distinct.append(InputItem(item.path, stem))
    return distinct


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
