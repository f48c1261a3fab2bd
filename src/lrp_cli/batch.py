"""Input expansion (files, folders, globs) and the batch summary files."""

from __future__ import annotations

import csv
import glob
import io
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
