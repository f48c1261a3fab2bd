"""The HTML report of a batch (`DIR/index.html`): one self-contained page, with inline CSS, JS and data and
no network access, listing one row per input; sortable by any column, filterable, and fast with 10,000 rows
(the rows live in a JSON array; sorting and filtering reorder that array, and only the rows near the viewport
are in the DOM, with lazily loading thumbnails)."""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from lrp_cli import outputs, render
from lrp_cli.errors import LrpError

KINDS = ("text", "number", "image", "link")


@dataclass(frozen=True)
class Column:
    """One report column: the row key it shows, its header, how it is shown (text, number, image: a relative
    path shown as a lazy thumbnail, link: a relative path), and whether the page offers a filter on it."""

    key: str
    title: str
    kind: str = "text"
    filter: bool = False


def colorbar_data_uri(cmap: str, width: int = 256) -> str:
    """Returns a PNG data URI of the colormap from -1 (left) through 0 to +1 (right), drawn with render.colorize."""
    ramp = np.tile(np.linspace(-1.0, 1.0, width), (8, 1))
    png = outputs.png_bytes(render.colorize(ramp, cmap))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def relative_url(path: str | Path | None, base: Path) -> str | None:
    """Returns a path as a URL relative to folder `base` (percent-encoded), or None for no path."""
    if path is None:
        return None
    return quote(Path(os.path.relpath(Path(path), base)).as_posix())


def render_html(title: str, rows: list[dict], columns: list[Column], colorbar: dict | None = None) -> str:
    """Returns the page: `rows` hold each column's key (image and link values already relative URLs);
    `colorbar` is {"cmap": name, "caption": text} for the heatmaps' colour bar (none without it)."""
    for column in columns:
        if column.kind not in KINDS:
            raise ValueError(f"column {column.key}: kind must be one of {', '.join(KINDS)}")
    data = {"columns": [asdict(c) for c in columns],
            "rows": [[row.get(c.key) for c in columns] for row in rows]}
    payload = json.dumps(outputs.finite(data), separators=(",", ":")).replace("</", "<\\/")
    bar = ""
    if colorbar:
        cmap = html.escape(colorbar["cmap"])
        bar = (f'<figure id="colorbar"><img alt="{cmap} colour bar" src="{colorbar_data_uri(colorbar["cmap"])}">'
               '<figcaption><span>&minus;max|R|</span><span>0</span><span>+max|R|</span></figcaption>'
               f'<p>{cmap}; {html.escape(colorbar.get("caption", ""))}</p></figure>')
    return PAGE.format(title=html.escape(title), colorbar=bar, data=payload, css=CSS, js=JS)


def write_report(path: Path, title: str, rows: list[dict], columns: list[Column],
                 colorbar: dict | None = None) -> None:
    """Writes the report page to `path` all-or-nothing (temporary name, then rename)."""
    outputs.write_all({path: render_html(title, rows, columns, colorbar).encode("utf-8")})


EXPLAIN_COLUMNS = [
    Column("input", "input"), Column("text", "text"), Column("image", "image", "image"),
    Column("heatmap", "heatmap", "image"),
    Column("overlay", "overlay", "image"), Column("target", "target", "number"),
    Column("class", "class", filter=True), Column("score", "score", "number"), Column("f_x", "f(x)", "number"),
    Column("conservation_error", "conservation error", "number"), Column("status", "status", filter=True),
    Column("error", "error"), Column("json", "JSON", "link"),
]
HEATMAP_SUFFIX = ".heatmap.png"


def thumbnail_path(heatmap: str | Path) -> Path:
    """Returns where the input thumbnail of an explanation goes: STEM.input.png beside STEM.heatmap.png."""
    heatmap = str(heatmap)
    return Path(heatmap[:-len(HEATMAP_SUFFIX)] + ".input.png")


def save_thumbnail(picture, heatmap: str | Path) -> Path | None:
    """Writes STEM.input.png beside STEM.heatmap.png from the picture an explanation saw (the batch's own, so the
    report decodes no input again); returns its path, or None for an input that is not an image."""
    if picture is None:
        return None
    path = thumbnail_path(heatmap)
    outputs.write_all({path: outputs.png_bytes(np.asarray(picture.convert("RGB")))})
    return path


def write_thumbnail(model, settings, row: dict) -> Path | None:
    """Returns the STEM.input.png of an explained summary row: the one its batch wrote when it is newer than the
    heatmap, else (an input an earlier run without --html explained) the input decoded again as the model sees it,
    or None when the input is not an image or cannot be read."""
    path = thumbnail_path(row["heatmap"])
    heatmap = Path(row["heatmap"])
    if path.exists() and heatmap.exists() and path.stat().st_mtime >= heatmap.stat().st_mtime:
        return path
    if row["status"] != "skipped":  # this batch explained it and wrote no thumbnail: not an image
        return None
    from lrp_cli.pipeline import item_of
    try:
        picture = model.view(item_of(row["input"]), settings)
    except LrpError:
        return None
    return save_thumbnail(picture, row["heatmap"])


def explain_rows(out_dir: Path, summary_rows: list[dict], model, settings) -> list[dict]:
    """Returns the report rows of `lrp explain` summary rows, writing each explained image's thumbnail. A row
    whose heatmap is not an image's STEM.heatmap.png (a text's STEM.png, which draws the words, or its STEM.json)
    has no thumbnail nor overlay, and its `text` (first words) in the text column."""
    rows = []
    for row in summary_rows:
        heatmap = row.get("heatmap")
        image = bool(heatmap) and heatmap.endswith(HEATMAP_SUFFIX)
        stem = heatmap[:-len(HEATMAP_SUFFIX)] if image else heatmap and str(Path(heatmap).with_suffix(""))
        thumbnail = write_thumbnail(model, settings, row) if image else None
        label = row.get("label")
        rows.append({
            "input": row["input"], "text": row.get("text"), "image": relative_url(thumbnail, out_dir),
            "heatmap": relative_url(heatmap if heatmap and heatmap.endswith(".png") else None, out_dir),
            "overlay": relative_url(stem + ".overlay.png" if image else None, out_dir),
            "target": row.get("target"), "class": label if label is not None else _text(row.get("target")),
            "score": row.get("score"), "f_x": row.get("f_x"), "conservation_error": row.get("conservation_error"),
            "status": row["status"], "error": row.get("error"), "json": relative_url(stem and stem + ".json", out_dir),
        })
    return rows


def _text(value) -> str | None:
    return None if value is None else str(value)


def write_explain_report(out_dir: Path, summary_rows: list[dict], model, settings, cmap: str,
                         global_scale: bool = False, scale: render.Scale = render.Scale()) -> Path:
    """Writes DIR/index.html for an `lrp explain` batch (and each input's thumbnail); returns its path."""
    path = out_dir / "index.html"
    rows = explain_rows(out_dir, summary_rows, model, settings)
    caption = scale.caption(global_scale)
    columns = [c for c in EXPLAIN_COLUMNS if c.key != "text" or any(row["text"] for row in rows)]
    write_report(path, f"lrp explain: {model.path.name}", rows, columns, {"cmap": cmap, "caption": caption})
    return path


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy"
  content="default-src 'none'; img-src 'self' data: file:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<header>
<h1>{title}</h1>
{colorbar}
<div id="controls"><span id="filters"></span><span id="count"></span></div>
</header>
<table id="report"><thead><tr></tr></thead><tbody></tbody></table>
<script type="application/json" id="report-data">{data}</script>
<script>{js}</script>
</body>
</html>
"""

CSS = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 0; color: #222; }
header { padding: 8px 16px; border-bottom: 1px solid #ccc; display: flex; flex-wrap: wrap; gap: 24px;
  align-items: center; }
h1 { font-size: 16px; margin: 0; }
#colorbar { margin: 0; width: 256px; }
#colorbar img { width: 256px; height: 12px; display: block; }
#colorbar figcaption { display: flex; justify-content: space-between; font-size: 11px; }
#colorbar p { margin: 0; font-size: 11px; color: #666; }
#controls label { margin-right: 12px; }
#count { color: #666; }
table { border-collapse: collapse; margin: 8px 16px; table-layout: fixed; }
th { position: sticky; top: 0; z-index: 1; background: #f4f4f4; cursor: pointer; user-select: none;
  text-align: left; padding: 4px 6px; border-bottom: 1px solid #bbb; white-space: nowrap; overflow: hidden; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
tbody tr.row td { height: 80px; box-sizing: border-box; padding: 2px 6px; border-bottom: 1px solid #eee;
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
tbody tr.spacer td { padding: 0; border: 0; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
td.image img { width: 72px; height: 72px; object-fit: contain; background: #eee; display: block; }
tr.error td { background: #fff1f0; }
td.error-text { color: #a00; }
"""

#: The order of a column sort, on its own so that a test runs it without a browser (tests/test_report.py):
#: rowOrder(rows, k, numeric, direction) compares two row indices by column k; empty cells last in both directions,
#: numbers by value, text in natural order ("img 2" before "img 10"), ties in the rows' own order.
SORT_JS = r"""
var rowOrder = (function () {
  "use strict";
  var collator = new Intl.Collator(undefined, {numeric: true});
  return function (rows, k, numeric, direction) {
    return function (a, b) {
      var x = rows[a][k], y = rows[b][k];
      if (x === null || x === undefined) return (y === null || y === undefined) ? a - b : 1;
      if (y === null || y === undefined) return -1;
      var d = numeric ? x - y : collator.compare(String(x), String(y));
      return d !== 0 ? direction * d : a - b;
    };
  };
})();
"""

JS = SORT_JS + r"""
(function () {
  "use strict";
  // Only the rows in and near the viewport are in the DOM (a virtual table): sorting and filtering are array
  // operations, and a redraw touches some 30 rows whatever the report's length.
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var columns = data.columns, rows = data.rows, n = rows.length;
  var table = document.getElementById("report"), tbody = table.tBodies[0], headRow = table.tHead.rows[0];
  var WIDTHS = {image: 84, number: 96, link: 56, text: 140};
  var statusAt = columns.findIndex(function (c) { return c.key === "status"; });
  var errorAt = columns.findIndex(function (c) { return c.key === "error"; });
  var rowHeight = 80, OVERSCAN = 10;
  function esc(value) {
    return String(value).replace(/[&<>"']/g, function (ch) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[ch];
    });
  }
  function cell(column, k, value) {
    if (value === null || value === undefined) return '<td class="' + column.kind + '"></td>';
    if (column.kind === "image")
      return '<td class="image"><img loading="lazy" decoding="async" alt="" src="' + esc(value) + '"></td>';
    if (column.kind === "link") return '<td class="link"><a href="' + esc(value) + '">JSON</a></td>';
    if (column.kind === "number")
      return '<td class="number" title="' + esc(value) + '">' +
        esc(Number.isInteger(value) ? value : Number(value).toPrecision(4)) + "</td>";
    return '<td class="' + (k === errorAt ? "text error-text" : "text") + '" title="' + esc(value) + '">' +
      esc(value) + "</td>";
  }
  var cache = new Array(n);
  function rowHtml(i) {
    if (cache[i] === undefined) {
      var row = rows[i], parts = new Array(columns.length);
      for (var k = 0; k < columns.length; k++) parts[k] = cell(columns[k], k, row[k]);
      var failed = statusAt >= 0 && row[statusAt] === "error";
      cache[i] = '<tr class="row' + (failed ? " error" : "") + '" data-index="' + i + '">' + parts.join("") + "</tr>";
    }
    return cache[i];
  }
  function spacer(height) {
    return '<tr class="spacer"><td colspan="' + columns.length + '" style="height:' + height + 'px"></td></tr>';
  }
  var order = [], view = [];
  for (var i = 0; i < n; i++) order.push(i);
  var visible = new Uint8Array(n).fill(1);
  function draw() {
    var offset = window.scrollY - (tbody.getBoundingClientRect().top + window.scrollY);
    var first = Math.max(0, Math.min(view.length, Math.floor(offset / rowHeight) - OVERSCAN));
    var last = Math.min(view.length, first + Math.ceil(window.innerHeight / rowHeight) + 2 * OVERSCAN);
    var parts = [spacer(first * rowHeight)];
    for (var j = first; j < last; j++) parts.push(rowHtml(view[j]));
    parts.push(spacer((view.length - last) * rowHeight));
    tbody.innerHTML = parts.join("");
  }
  function render() {
    view = order.filter(function (i) { return visible[i] === 1; });
    draw();
    var measured = tbody.querySelector("tr.row");
    if (measured && Math.abs(measured.getBoundingClientRect().height - rowHeight) > 0.5) {
      rowHeight = measured.getBoundingClientRect().height;
      draw();
    }
    document.getElementById("count").textContent = view.length + " of " + n + " rows";
    document.body.dataset.shown = view.length;
  }
  var pending = false;
  window.addEventListener("scroll", function () {
    if (pending) return;
    pending = true;
    requestAnimationFrame(function () { pending = false; draw(); });
  }, {passive: true});
  window.addEventListener("resize", draw);
  var collator = new Intl.Collator(undefined, {numeric: true});
  var colgroup = document.createElement("colgroup");
  columns.forEach(function (column, k) {
    var col = document.createElement("col");
    var wide = column.key === "input" || k === errorAt;
    col.style.width = (wide ? 260 : WIDTHS[column.kind]) + "px";
    colgroup.appendChild(col);
    var th = document.createElement("th");
    th.textContent = column.title;
    th.title = "sort by " + column.title;
    th.dataset.key = column.key;
    th.addEventListener("click", function () {
      var direction = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
      headRow.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", direction === 1 ? "ascending" : "descending");
      order.sort(rowOrder(rows, k, columns[k].kind === "number", direction));
      render();
    });
    headRow.appendChild(th);
  });
  table.insertBefore(colgroup, table.tHead);
  var filters = [];
  columns.forEach(function (column, k) {
    if (!column.filter) return;
    var values = Array.from(new Set(rows.map(function (r) { return r[k]; })
      .filter(function (v) { return v !== null && v !== undefined; }).map(String)))
      .sort(collator.compare);
    var label = document.createElement("label"), select = document.createElement("select");
    select.dataset.key = column.key;
    select.innerHTML = '<option value="">all</option>' + values.map(function (v) {
      return '<option value="' + esc(v) + '">' + esc(v) + "</option>";
    }).join("");
    select.addEventListener("change", apply);
    label.append(column.title + " ", select);
    document.getElementById("filters").appendChild(label);
    filters.push({k: k, select: select});
  });
  function apply() {
    for (var i = 0; i < n; i++) {
      visible[i] = filters.every(function (f) {
        return f.select.value === "" || String(rows[i][f.k]) === f.select.value;
      }) ? 1 : 0;
    }
    render();
  }
  render();
  document.body.dataset.ready = "1";
})();
"""
