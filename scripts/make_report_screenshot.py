"""Writes docs/report.png: `lrp explain --html` on the shape images, screenshotted in headless chromium.

Run from the repository root with the test extra installed and Debian's chromium at /usr/bin/chromium."""

import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    """Runs the batch into a temporary folder and saves the screenshot."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "shapes"
        data.mkdir()
        for image in sorted((REPO / "sample_images" / "shapes").glob("*_[0-9].png")):
            (data / image.name).write_bytes(image.read_bytes())
        (data / "truncated.png").write_bytes((data / "circle_0.png").read_bytes()[:300])
        out = Path(tmp) / "out"
        subprocess.run([sys.executable, "-m", "lrp_cli", "explain", "shapes", "--model",
                        str(REPO / "models" / "shapes-cnn.onnx"), "--out", str(out), "--html", "--no-progress"],
                       cwd=tmp, check=False, stdout=subprocess.DEVNULL)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 860})
            page.goto((out / "index.html").as_uri())
            page.wait_for_selector("body[data-ready='1']")
            page.click("th[data-key='score']")
            page.wait_for_function("() => [...document.querySelectorAll('td.image img')]"
                                   ".every(img => img.complete && img.naturalWidth > 0)")
            page.screenshot(path=str(REPO / "docs" / "report.png"))
            browser.close()


if __name__ == "__main__":
    main()
