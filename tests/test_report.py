"""report.py without a browser: the page's embedded data, the colour bar's pixels, thumbnails and `--html`."""

import base64
import io
import json
import re

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
    keys = [c.key for c in report.EXPLAIN_COLUMNS]
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
