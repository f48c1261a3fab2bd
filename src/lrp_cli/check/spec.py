"""Behaviour specs (`lrp check SPEC.toml`): reading, validating and resolving paths; every problem is a SpecError
naming the spec file, the key and its TOML line where it can be found."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from lrp_cli import batch, render
from lrp_cli.explanation import METHOD_NAMES, PRECISIONS, Settings
from lrp_cli.errors import OptionError
from lrp_cli.preprocess import LAYOUTS, PRESETS
from lrp_cli.rules import COMPOSITES

METRICS = ("spearman", "cosine", "topk-iou")
UNITS = ("fraction", "px")


class SpecError(OptionError):
    """A behaviour spec that cannot be used: exit code 2, one line naming the file, the key and its line."""


@dataclass(frozen=True)
class Key:
    """One allowed key of a spec table: its kind, whether it is required, and the values it may take."""

    kind: str
    required: bool = False
    choices: tuple = ()


#: Explain options a spec may set, by their `lrp explain` long name with _ for -.
SETTING_KEYS = {
    "method": Key("str", choices=METHOD_NAMES), "composite": Key("str", choices=tuple(COMPOSITES)),
    "rule": Key("str"), "layer_rule": Key("strs"), "output": Key("str"), "layout": Key("str", choices=LAYOUTS),
    "preset": Key("str", choices=tuple(PRESETS)), "size": Key("size"), "resize": Key("count"),
    "mean": Key("numbers"), "std": Key("numbers"), "bgr": Key("bool"), "labels": Key("path"),
    "precision": Key("str", choices=tuple(PRECISIONS)), "cmap": Key("str", choices=render.COLORMAPS),
}
TOP_KEYS = {"model": Key("path"), "include": Key("path"), "case": Key("tables")} | SETTING_KEYS
CASE_KEYS = {
    "name": Key("str", required=True), "inputs": Key("strs", required=True), "expect": Key("class"),
    "expect_top": Key("count"), "min_score": Key("number"), "target": Key("class"),
    "max_conservation_error": Key("number"), "region": Key("tables"), "baseline": Key("table"),
}
REGION_KEYS = {
    "name": Key("str"), "mask": Key("str"), "box": Key("box"), "units": Key("str", choices=UNITS),
    "words": Key("strs"), "regex": Key("str"),
    "min_positive_share": Key("share"), "max_positive_share": Key("share"), "pointing_game": Key("bool"),
}
BASELINE_KEYS = {"dir": Key("path", required=True), "metric": Key("str", choices=METRICS),
                 "min_similarity": Key("number", required=True)}


@dataclass
class Region:
    """A region of the model input grid, given by a per-input mask file pattern or a box, or of a text's words,
    given by the words (any case) or a regular expression whose matches the words overlap; and its assertions."""

    name: str
    mask: str | None = None  # a path pattern with {stem}, already resolved against the spec's folder
    box: tuple[float, float, float, float] | None = None
    words: list[str] | None = None
    regex: str | None = None
    units: str = "fraction"
    min_positive_share: float | None = None
    max_positive_share: float | None = None
    pointing_game: bool = False


@dataclass
class Baseline:
    """Where a case's stored heatmaps live and how similar new ones must be."""

    dir: Path
    min_similarity: float
    metric: str = "spearman"


def text_region(region: Region) -> bool:
    """Returns True for a region of a text's words (words or regex), False for a region of a picture."""
    return region.words is not None or region.regex is not None


@dataclass
class Case:
    """One named behaviour check over a list of inputs."""

    name: str
    inputs: list[batch.InputItem]
    expect: str | None = None
    expect_top: int | None = None
    min_score: float | None = None
    target: str | None = None
    max_conservation_error: float | None = None
    regions: list[Region] = field(default_factory=list)
    baseline: Baseline | None = None
    where: str = ""  # "case[i]", for messages
    source: object = None  # the _Source of the file the case is in, for messages


@dataclass
class Spec:
    """A validated spec: the model, the explain settings and the cases, with paths resolved."""

    path: Path
    model: Path
    settings: dict
    cases: list[Case]
    source: object = None  # the _Source of the spec file, for messages

    def error(self, key: str, message: str) -> SpecError:
        """Returns the SpecError for a top-level key of the spec (with its line when found)."""
        return self.source.error(key, message)


_HEADER = re.compile(r"^\s*\[")


class _Source:
    """One spec file's path and text, for messages that name a key's line."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"{path}: cannot read the spec ({getattr(exc, 'strerror', None) or exc})") from None
        self.lines = self.text.splitlines()

    def error(self, where: str, message: str) -> SpecError:
        """Returns the SpecError for the key at `where` (e.g. case[1].region[0].box), with its line if found."""
        line = self._line_of(where)
        return SpecError(f"{self.path}:{line}: {where}: {message}" if line else f"{self.path}: {where}: {message}")

    def _line_of(self, where: str) -> int | None:
        """Returns the 1-based line of `key =` inside the table `where` names, or of the table's header."""
        parts, start, path = where.split("."), -1, []
        for depth, part in enumerate(parts):
            match = re.fullmatch(r"(\w+)\[(\d+)\]", part)
            path.append(match.group(1) if match else part)
            if depth == len(parts) - 1 and not match:
                line = self._key_line(part, start)
                header = None if line else self._header_line(".".join(path), 0, start)
                return line or (header + 1 if header is not None else None)
            start = self._header_line(".".join(path), int(match.group(2)) if match else 0, start)
            if start is None:
                return None
        return start + 1

    def _header_line(self, name: str, index: int, start: int) -> int | None:
        """Returns the index of the index-th `[name]` or `[[name]]` header line after line `start`."""
        pattern = re.compile(rf"^\s*\[\[?\s*{re.escape(name)}\s*\]\]?\s*(#.*)?$")
        hits = [i for i in range(start + 1, len(self.lines)) if pattern.match(self.lines[i])]
        return hits[index] if index < len(hits) else None

    def _key_line(self, key: str, start: int) -> int | None:
        """Returns the 1-based line of `key =` in the table whose header is line `start` (-1: the top level)."""
        pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for i in range(start + 1, len(self.lines)):
            if _HEADER.match(self.lines[i]):
                return None
            if pattern.match(self.lines[i]):
                return i + 1
        return None


def _check_value(source: _Source, where: str, key: Key, value):
    """Returns the value converted to its kind, or raises the SpecError saying what was expected."""
    def fail(expected: str):
        return source.error(where, f"expected {expected}, got {value!r}")

    kind = key.kind
    if kind in ("str", "path") and not isinstance(value, str):
        raise fail("a string")
    if kind == "strs":
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail("a string or a list of strings")
    if kind == "bool" and not isinstance(value, bool):
        raise fail("true or false")
    if kind in ("number", "share") and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise fail("a number")
    if kind == "share" and not 0 <= value <= 1:
        raise fail("a share from 0 to 1")
    if kind == "count" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise fail("a positive integer")
    if kind == "class" and (isinstance(value, bool) or not isinstance(value, (str, int))):
        raise fail("a label or a class index")
    if kind in ("numbers", "size", "box"):
        count = {"size": 2, "box": 4}.get(kind)
        numbers = isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in value)
        if not numbers or (count and len(value) != count) or (kind == "size" and not all(
                isinstance(v, int) and v > 0 for v in value)):
            raise fail({"size": "[H, W] positive integers", "box": "[x0, y0, x1, y1] numbers"}.get(kind, "numbers"))
        value = tuple(value)
    if kind in ("table", "tables"):
        tables = [value] if kind == "table" else value
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise fail("a table" if kind == "table" else "an array of tables")
    if key.choices and value not in key.choices:
        raise source.error(where, f"{value!r} is not one of {', '.join(map(str, key.choices))}")
    return value


def _check_table(source: _Source, table: dict, keys: dict[str, Key], where: str) -> dict:
    """Returns the table's values checked against `keys`; unknown and missing required keys are errors."""
    prefix = f"{where}." if where else ""
    for name in table:
        if name not in keys:
            raise source.error(prefix + name, f"unknown key; known: {', '.join(sorted(keys))}")
    for name, key in keys.items():
        if key.required and name not in table:
            raise source.error(where or name, f"missing required key '{name}'")
    return {name: _check_value(source, prefix + name, keys[name], value) for name, value in table.items()}


def _region(source: _Source, table: dict, where: str, index: int) -> Region:
    values = _check_table(source, table, REGION_KEYS, where)
    if len({"mask", "box", "words", "regex"} & set(values)) != 1:
        raise source.error(where, "give exactly one of 'mask', 'box' (pictures), 'words' or 'regex' (texts)")
    if "words" in values and not [w for w in values["words"] if w.strip()]:
        raise source.error(f"{where}.words", "lists no word")
    if "regex" in values:
        try:
            re.compile(values["regex"])
        except re.error as exc:
            raise source.error(f"{where}.regex", f"not a regular expression ({exc})") from None
    if not {"min_positive_share", "max_positive_share", "pointing_game"} & set(values):
        raise source.error(where, "asserts nothing: give min_positive_share, max_positive_share or pointing_game")
    if "units" in values and "box" not in values:
        raise source.error(f"{where}.units", "applies to a box, not a mask")
    box = values.get("box")
    if box and not (box[0] < box[2] and box[1] < box[3] and min(box) >= 0):
        raise source.error(f"{where}.box", f"{list(box)} is not [x0, y0, x1, y1] with 0 <= x0 < x1, 0 <= y0 < y1")
    if box and values.get("units", "fraction") == "fraction" and max(box) > 1:
        raise source.error(f"{where}.box", f"{list(box)}: fractions of the model input must lie in [0, 1]")
    if "mask" in values:
        values["mask"] = os.path.normpath(source.path.parent / values["mask"])
    values.setdefault("name", f"region{index}")
    return Region(**values)


def _inputs(source: _Source, patterns: list[str], where: str) -> list[batch.InputItem]:
    if not patterns:
        raise source.error(where, "the case has no inputs")
    items: dict[Path, batch.InputItem] = {}
    for pattern in patterns:
        found = [i for i in batch.expand_inputs([os.path.normpath(source.path.parent / pattern)]) if i.path.is_file()]
        if not found:
            raise source.error(where, f"'{pattern}' matches no input file")
        items.update((i.path, i) for i in found if i.path not in items)
    return list(items.values())


def _case(source: _Source, table: dict, index: int) -> Case:
    where = f"case[{index}]"
    values = _check_table(source, table, CASE_KEYS, where)
    if "expect_top" in values and "expect" not in values:
        raise source.error(f"{where}.expect_top", "needs 'expect'")
    if values.get("target") == "expect" and "expect" not in values:
        raise source.error(f"{where}.target", "'expect' needs the case's 'expect' key")
    regions = [_region(source, t, f"{where}.region[{k}]", k) for k, t in enumerate(values.pop("region", []))]
    baseline = values.pop("baseline", None)
    if baseline is not None:
        checked = _check_table(source, baseline, BASELINE_KEYS, f"{where}.baseline")
        baseline = Baseline(**checked | {"dir": source.path.parent / checked["dir"]})
    if not (regions or baseline or {"expect", "min_score", "max_conservation_error"} & set(values)):
        raise source.error(where, "asserts nothing: give expect, min_score, max_conservation_error, region or "
                                  "baseline")
    inputs = _inputs(source, values.pop("inputs"), f"{where}.inputs")
    return Case(inputs=inputs, regions=regions, baseline=baseline, where=where, source=source, **{
        k: str(v) if k in ("expect", "target") else v for k, v in values.items()})


def _read(path: Path, seen: tuple[Path, ...]) -> tuple[dict, list[Case]]:
    """Returns (top-level settings with paths resolved, cases) of one file, its includes merged under it."""
    source = _Source(path)
    try:
        data = tomllib.loads(source.text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: invalid TOML ({exc})") from None
    values = _check_table(source, data, TOP_KEYS, "")
    for key in ("model", "labels", "include"):
        if key in values:
            values[key] = Path(os.path.normpath(path.parent / values[key]))
    settings, cases = {}, []
    include = values.pop("include", None)
    if include is not None:
        if include.resolve() in seen:
            raise source.error("include", f"{include} includes itself")
        if not include.is_file():
            raise source.error("include", f"{include}: no such file")
        settings, cases = _read(include, seen + (include.resolve(),))
    cases += [_case(source, table, k) for k, table in enumerate(values.pop("case", []))]
    names = set()
    for case in cases:
        if case.name in names:
            raise case.source.error(f"{case.where}.name", f"duplicate case name '{case.name}'")
        names.add(case.name)
    return settings | values, cases


def load_spec(path: str | Path) -> Spec:
    """Returns the validated spec of a TOML file (includes merged, paths resolved), or raises SpecError."""
    path = Path(path)
    settings, cases = _read(path, (path.resolve(),))
    source = _Source(path)
    if "model" not in settings:
        raise SpecError(f"{path}: model: missing required key 'model'")
    if not cases:
        raise SpecError(f"{path}: case: the spec has no [[case]]")
    return Spec(path, settings.pop("model"), settings, cases, source)


def explain_settings(spec: Spec) -> tuple[Settings, dict]:
    """Returns (the Settings of the spec's explain options, load_model keyword arguments)."""
    s = spec.settings
    preprocess = {"preset": s.get("preset"), "size": s.get("size"), "resize": s.get("resize"),
                  "mean": s.get("mean"), "std": s.get("std"), "bgr": s.get("bgr")}
    settings = Settings(s.get("method", "lrp"), s.get("composite"), s.get("rule"), tuple(s.get("layer_rule", ())),
                            "pred", s.get("precision", "float32"), preprocess)
    return settings, {"output": s.get("output"), "labels": s.get("labels"), "layout": s.get("layout")}
