"""The HTML report in a real headless browser (Debian's chromium driven by Playwright): rows, thumbnails,
sorting, filtering, no console errors, and a 10,000-row report loading in bounded time."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lrp_cli import report
from lrp_cli.cli import main

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.slow  # a browser start takes seconds


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (.ci/run does) to run the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


def open_page(browser, path: Path):
    """Returns (page, console/page errors list) once the report's script has built the table."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    return page, problems


def column_values(page, key):
    """Returns the raw value of a column in every shown row, in display order (None for empty cells)."""
    return page.evaluate("""key => {
        const k = [...document.querySelectorAll('#report th')].findIndex(th => th.dataset.key === key);
        return [...document.querySelectorAll('#report tbody tr.row')].map(tr => {
            const td = tr.children[k];
            return td.textContent === '' ? null : (td.title || td.textContent);
        });
    }""", key)


def batch_with_report(tiny_cnn_path, rgb_image, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    base = Image.open(rgb_image)
    rng = np.random.default_rng(1)
    for k in range(6):
        noise = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
        Image.blend(base, Image.fromarray(noise), 0.2 * k).save(data / f"img {k}.png")  # a space: URLs encoded
    (data / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["explain", str(data), "--model", str(tiny_cnn_path), "--out", str(out),
                                       "--html"])
    assert result.exit_code == 1 and "report:" in result.output, result.output
    return out, json.loads((out / "summary.json").read_text())["results"]


def test_report_rows_thumbnails_sorting_and_filters(browser, tiny_cnn_path, rgb_image, tmp_path):
    out, results = batch_with_report(tiny_cnn_path, rgb_image, tmp_path)
    page, problems = open_page(browser, out / "index.html")
    assert page.locator("#report tbody tr.row").count() == 7
    assert page.locator("#count").text_content() == "7 of 7 rows"
    page.wait_for_function("""() => [...document.querySelectorAll('#report td.image img')]
        .every(img => img.complete && img.naturalWidth > 0)""", timeout=30_000)
    assert page.locator("#report td.image img").count() == 18  # image, heatmap, overlay of the 6 explained
    assert page.locator("#report td.image img").first.get_attribute("loading") == "lazy"
    json_links = [page.locator("#report td.link a").nth(k).get_attribute("href") for k in range(6)]
    assert all((out / link.replace("%20", " ")).is_file() for link in json_links)

    initial = column_values(page, "input")
    assert initial == [r["input"] for r in results]
    scores = sorted(r["score"] for r in results if r["status"] == "ok")
    page.click("th[data-key='score']")
    ascending = column_values(page, "score")
    assert [float(v) for v in ascending[:6]] == pytest.approx(scores) and ascending[6] is None
    page.click("th[data-key='score']")
    descending = column_values(page, "score")
    assert [float(v) for v in descending[:6]] == pytest.approx(scores[::-1])
    assert column_values(page, "input") != initial
    page.click("th[data-key='input']")
    assert column_values(page, "input") == sorted(initial, key=lambda s: s.replace(" ", ""))

    page.select_option("select[data-key='status']", "error")
    assert column_values(page, "input") == [str(tmp_path / "data" / "broken.png")]
    assert page.locator("#count").text_content() == "1 of 7 rows"
    page.select_option("select[data-key='status']", "")
    label = next(r["label"] for r in results if r["status"] == "ok")
    page.select_option("select[data-key='class']", label)
    assert set(column_values(page, "class")) == {label}
    assert len(column_values(page, "class")) == sum(r.get("label") == label for r in results)
    assert problems == []


def test_ten_thousand_rows_load_sort_and_filter_in_bounded_time(browser, tmp_path):
    shutil.copy(Path(report.__file__).parents[2] / "docs" / "shapes-cnn.png", tmp_path / "thumb.png")
    rng = np.random.default_rng(0)
    rows = [{"input": f"in/{k:05d}.png", "image": "thumb.png", "heatmap": "thumb.png", "overlay": "thumb.png",
             "target": int(k % 10), "class": f"class{k % 10}", "score": float(rng.uniform()),
             "f_x": float(rng.normal()),
             "conservation_error": float(rng.uniform(0, 1e-3)), "status": "error" if k % 100 == 0 else "ok",
             "error": "bad" if k % 100 == 0 else None, "json": f"{k:05d}.json"} for k in range(10_000)]
    path = tmp_path / "index.html"
    report.write_report(path, "synthetic", rows, report.EXPLAIN_COLUMNS, {"cmap": "jet", "caption": "synthetic"})
    start = time.perf_counter()
    page, problems = open_page(browser, path)
    loaded = time.perf_counter() - start
    assert page.locator("#count").text_content() == "10000 of 10000 rows"
    drawn = page.locator("#report tbody tr.row").count()
    assert 10 <= drawn < 100  # a virtual table: only the rows near the viewport are in the DOM
    assert loaded < 30, f"10,000 rows took {loaded:.1f} s"  # about 2 s here on a busy machine; generous for CI
    start = time.perf_counter()
    page.click("th[data-key='score']")
    assert float(column_values(page, "score")[0]) == pytest.approx(min(r["score"] for r in rows))
    page.select_option("select[data-key='status']", "error")
    assert page.locator("#count").text_content() == "100 of 10000 rows"
    assert time.perf_counter() - start < 30
    page.select_option("select[data-key='status']", "")
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")  # the last rows are drawn when scrolled to
    best = max(range(len(rows)), key=lambda k: rows[k]["score"])
    page.wait_for_function(f"() => document.querySelector('#report tr.row[data-index=\"{best}\"]')")
    assert page.evaluate("[...document.querySelectorAll('#report tbody tr.row')].pop().dataset.index") == str(best)
    assert problems == []
