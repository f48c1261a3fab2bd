"""report.py without a browser: the page's embedded data, the colour bar's pixels, thumbnails and `--html`."""

import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lrp_cli import render, report
from lrp_cli.cli import main
from lrp_cli.preprocess import PreprocessConfig, fit_geometry


def embedded(page: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page,
                                re.S).group(1))


def test_rows_are_embedded_as_json_and_markup_in_values_stays_text():
    columns = [report.Column("name", "name", filter=True), report.Column("value", "value", "number")]
    rows = [{"name": "</script><b>x</b>", "value": 1.5}, {"name": "b", "value": float("nan")}]
    page = report.render_html("t <&>", rows, columns)
    assert page.count("</script>") == 2  # the data's own "</script>" is escaped
    assert "<title>t &lt;&amp;&gt;</title>" in page
    data = embedded(page)
    assert data["rows"] == [["</script><b>x</b>", 1.5], ["b", None]]
    assert data["columns"][0] == {"key": "name", "title": "name", "kind": "text", "filter": True}
    assert "http://" not in page and "https://" not in page  # self-contained: nothing to fetch
    with pytest.raises(ValueError, match="kind"):
        report.render_html("t", rows, [report.Column("name", "name", "video")])


@pytest.mark.parametrize("cmap", render.COLORMAPS)
def test_colour_bar_is_the_colormap_from_minus_one_to_plus_one(cmap):
    uri = report.colorbar_data_uri(cmap)
    bar = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert bar.shape == (8, 256, 3)
    np.testing.assert_array_equal(bar[0], render.colorize(np.linspace(-1, 1, 256), cmap))
    np.testing.assert_array_equal(bar[0, [0, -1]], render.colorize(np.array([-1.0, 1.0]), cmap))


def test_html_option_writes_the_report_and_the_model_view_thumbnails(tiny_cnn_path, rgb_image, tmp_path):
    data = tmp_path / "in dir"
    data.mkdir()
    Image.open(rgb_image).save(data / "a.png")
    (data / "bad.png").write_bytes(b"nope")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["explain", str(data), "--model", str(tiny_cnn_path), "--out", str(out),
                                       "--html", "--cmap", "bwr"])
    assert result.exit_code == 1 and f"report: {out / 'index.html'}" in result.output
    page = (out / "index.html").read_text()
    rows = embedded(page)["rows"]
    keys = [c["key"] for c in embedded(page)["columns"]]  # the text column only shows for texts
    by_input = {row[keys.index("input")]: dict(zip(keys, row)) for row in rows}
    good, bad = by_input[str(data / "a.png")], by_input[str(data / "bad.png")]
    assert good["status"] == "ok" and good["image"] == "a.input.png" and good["json"] == "a.json"
    assert good["class"] in ["ant", "bee", "cat", "dog"] and good["conservation_error"] is not None
    assert bad["status"] == "error" and "bad.png" in bad["error"] and bad["image"] is None
    # the thumbnail is the image as the model saw it: resized to the 16 x 16 input
    expected = fit_geometry(Image.open(rgb_image).convert("RGB"), PreprocessConfig(preset="unit"), (16, 16))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a.input.png")), np.asarray(expected))
    assert report.colorbar_data_uri("bwr") in page and "each heatmap scaled by its own max|R|" in page
    result = CliRunner().invoke(main, ["explain", str(data / "a.png"), "--model", str(tiny_cnn_path), "--out",
                                       str(out), "--html", "--normalize", "global"])
    assert result.exit_code == 0 and "max|R| over the whole batch" in (out / "index.html").read_text()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_relative_urls_are_percent_encoded(tmp_path):
    assert report.relative_url(tmp_path / "sub dir" / "a#1.png", tmp_path) == "sub%20dir/a%231.png"
    assert report.relative_url(None, tmp_path) is None


ROWS = [[3.0, "img 10"], [None, "img 2"], [1.5, None], [2.0, "img 1"], [1.5, "img 2"], [-2.0, "IMG 3"],
        [1.25, "img 20"]]  # 1.25 < 1.5 and -2 < 1 only as numbers, not as text


def sorted_in_node(rows, k: int, numeric: bool, direction: int) -> list[int]:
    """Returns the row indices in the order the page's own rowOrder (report.SORT_JS) sorts them, run by Node."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is absent: the column order is then checked by the browser tests only")
    script = report.SORT_JS + (f"var rows = {json.dumps(rows)};\n"
                               f"var order = rows.map(function (_, i) {{ return i; }});\n"
                               f"order.sort(rowOrder(rows, {k}, {json.dumps(numeric)}, {direction}));\n"
                               "process.stdout.write(JSON.stringify(order));\n")
    done = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("k, numeric, direction, expected", [
    (0, True, 1, [5, 6, 2, 4, 3, 0, 1]),  # by value, the two 1.5 in their rows' order, the empty cell last
    (0, True, -1, [0, 3, 2, 4, 6, 5, 1]),  # descending: ties still in their rows' order, the empty cell still last
    (1, False, 1, [3, 1, 4, 5, 0, 6, 2]),  # natural order: img 1, img 2, img 2, IMG 3, img 10, img 20; empty last
    (1, False, -1, [6, 0, 5, 1, 4, 3, 2]),
])
def test_column_sort_order_of_the_page(k, numeric, direction, expected):
    assert sorted_in_node(ROWS, k, numeric, direction) == expected


def test_page_sorts_with_the_tested_order():
    page = report.render_html("t", [{"name": "a", "value": 1.0}],
                              [report.Column("name", "name"), report.Column("value", "value", "number")])
    assert report.SORT_JS in page and "order.sort(rowOrder(rows, k, " in page
