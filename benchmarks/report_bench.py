"""`make bench` (second part): the HTML report at 10,000 rows, rendered in Python and opened in headless chromium.

Prints a Markdown table: the time to render and write index.html, and in Debian's chromium (skipped without
/usr/bin/chromium or Playwright) the time until the table is drawn, a sort by score and a filter by status, each
measured from Python around the Playwright call (so it includes the round trip). Median of N runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lrp_cli import report

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
THUMBNAIL = Path(__file__).resolve().parents[1] / "docs" / "shapes-cnn.png"


def synthetic_rows(count: int) -> list[dict]:
    """Returns `count` explain-report rows with random numbers, every thumbnail one image, 1 % failed."""
    rng = np.random.default_rng(0)
    return [{"input": f"in/{k:05d}.png", "image": "thumb.png", "heatmap": "thumb.png", "overlay": "thumb.png",
             "target": k % 10, "class": f"class{k % 10}", "score": float(rng.uniform()), "f_x": float(rng.normal()),
             "conservation_error": float(rng.uniform(0, 1e-3)), "status": "error" if k % 100 == 0 else "ok",
             "error": "bad" if k % 100 == 0 else None, "json": f"{k:05d}.json"} for k in range(count)]


def timed(fn) -> float:
    """Returns the wall time of one call of fn."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def browser_times(path: Path) -> dict[str, float]:
    """Returns the seconds until the table is drawn, for a sort by score and for a filter by status."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        times = {"load": timed(lambda: (page.goto(path.as_uri()), page.wait_for_selector("body[data-ready='1']")))}
        times["sort"] = timed(lambda: page.click("th[data-key='score']"))
        times["filter"] = timed(lambda: page.select_option("select[data-key='status']", "error"))
        browser.close()
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows = synthetic_rows(args.rows)
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.html"
        (Path(tmp) / "thumb.png").write_bytes(THUMBNAIL.read_bytes())
        for _ in range(args.runs):
            results.setdefault("render + write index.html (Python)", []).append(
                timed(lambda: report.write_report(path, "bench", rows, report.EXPLAIN_COLUMNS, {"cmap": "jet"})))
            if CHROMIUM.exists():
                for key, seconds in browser_times(path).items():
                    results.setdefault(f"chromium: {key}", []).append(seconds)
        size = path.stat().st_size
    print(f"HTML report, {args.rows} rows ({size / 1e6:.1f} MB), median of {args.runs} runs\n")
    print("| step | seconds |\n|---|---|")
    for step, values in results.items():
        print(f"| {step} | {statistics.median(values):.2f} |")
    if not CHROMIUM.exists():
        print(f"\n{CHROMIUM} is absent: browser timings skipped", file=sys.stderr)


if __name__ == "__main__":
    main()
