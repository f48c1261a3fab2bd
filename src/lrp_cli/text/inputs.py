"""Text inputs for every text kind: .txt files, folders and globs of them, a literal text, stdin, and the rows of
.jsonl / .csv files -> items (stem, text). A .txt file is read when its item is loaded, so that a batch of many
files reads each in the worker that explains it."""

from __future__ import annotations

import csv
import glob
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from lrp_cli.errors import InputError, OptionError

TEXT_SUFFIXES = frozenset({".txt"})
TABLE_SUFFIXES = frozenset({".jsonl", ".csv"})
UNSAFE = re.compile(r"[^\w.-]+")


@dataclass(frozen=True)
class TextItem:
    """One text to explain: its output stem, and either its file (read by `load`) or the text itself."""

    stem: str
    path: Path | None = None
    text: str | None = None
    source: tuple = ()  # what the JSON says about the input, as (key, value) pairs (hashable, picklable)
    error: str | None = None  # why this row or file has no text: its explanation fails, the batch goes on

    def load(self) -> str:
        """Return the text (read from the file, UTF-8, on first use); InputError when it cannot be read."""
        if self.error is not None:
            raise InputError(self.error)
        if self.text is not None:
            return self.text
        try:
            return self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{self.path}: cannot read the text ({type(exc).__name__}: {exc})".splitlines()[0]) \
                from None


def _safe(value) -> str:
    """Return a value as a file-name-safe stem part."""
    return UNSAFE.sub("_", str(value)).strip("._") or "_"


def table_rows(path: Path) -> list[dict]:
    """Return the rows of a .jsonl (one JSON object a line, blank lines skipped) or .csv (with a header) file."""
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8") as handle:
                return list(csv.DictReader(handle))
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise InputError(f"{path}:{number}: a .jsonl line must be a JSON object")
                rows.append(row)
        return rows
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read the rows ({type(exc).__name__}: {exc})".splitlines()[0]) from None


def table_items(path: Path, text_field: str | None, id_field: str | None,
                label_field: str | None = None) -> list[TextItem]:
    """Return one item per row of a .jsonl/.csv file; stems are FILE/ID (id_field) or FILE/ROW (1-based); the
    row's label_field value, when asked for, goes into the source as `label`."""
    if not text_field:
        raise OptionError(f"{path}: a {path.suffix} input needs --text-field NAME (the column holding the text)")
    try:
        rows = table_rows(path)
    except InputError as exc:  # the whole file fails as one input
        return [TextItem(path.stem, path=path, source=(("path", str(path)),), error=str(exc))]
    items = []
    for number, row in enumerate(rows, start=1):  # one step per row
        key = row.get(id_field, number) if id_field else number
        source = (("path", str(path)), ("row", number)) + ((("id", str(key)),) if id_field else ())
        error = None
        if text_field not in row or not isinstance(row[text_field], str):
            error = f"{path}: row {number} has no text field {text_field!r}"
        elif label_field and label_field not in row:
            error = f"{path}: row {number} has no label field {label_field!r}"
        elif label_field:
            source += (("label", str(row[label_field])),)
        items.append(TextItem(f"{path.stem}/{_safe(key)}", text=row.get(text_field) if error is None else None,
                              source=source, error=error))
    return items


def _file_items(path: Path, text_field, id_field, stem: str, label_field=None) -> list[TextItem]:
    if path.suffix.lower() in TABLE_SUFFIXES:
        return table_items(path, text_field, id_field, label_field)
    return [TextItem(stem, path=path, source=(("path", str(path)),))]


def text_items(specs: list[str], text: str | None = None, text_field: str | None = None,
               id_field: str | None = None, stdin=None, label_field: str | None = None) -> list[TextItem]:
    """Return the items named by INPUT specs (files, folders of .txt, globs, `-` for stdin) and a literal text
    (label_field: the rows' column holding the true class, kept in each row item's source)."""
    items = [] if text is None else [TextItem("text", text=text, source=(("kind", "text"),))]
    for spec in specs:  # one step per INPUT argument
        path = Path(spec)
        if spec == "-":
            items.append(TextItem("stdin", text=(stdin or sys.stdin).read(), source=(("kind", "stdin"),)))
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
            items.extend(TextItem(p.relative_to(path).with_suffix("").as_posix(), path=p, source=(("path", str(p)),))
                         for p in files)
        elif set("*?[") & set(spec) and not path.exists():
            for match in sorted(Path(m) for m in glob.glob(spec, recursive=True) if Path(m).is_file()):
                items.extend(_file_items(match, text_field, id_field, match.stem, label_field))
        else:
            items.extend(_file_items(path, text_field, id_field, path.stem, label_field))
    return _distinct(items)


def _distinct(items: list[TextItem]) -> list[TextItem]:
    """Return the items with distinct stems (a repeated stem gets ~2, ~3, ...)."""
    seen, out = set(), []
    for item in items:
        stem, k = item.stem, 2
        while stem in seen:
            stem, k = f"{item.stem}~{k}", k + 1
        seen.add(stem)
        out.append(TextItem(stem, item.path, item.text, item.source, item.error))
    return out
