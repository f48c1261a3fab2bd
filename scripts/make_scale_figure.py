"""Writes docs/scale-percentile.png: the cat photo explained by EfficientNet-Lite0, its heatmap and overlay scaled by
max|R| (Eq 35, the default, left) and by --scale percentile:99.5 (right).

Usage: python scripts/make_scale_figure.py   (after `make demo`, which builds EfficientNet-Lite0)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from make_readme_figures import DOCS, SAMPLES, explain, grid
from PIL import Image, ImageDraw

PHOTO = SAMPLES / "chelsea.png"
SCALES = {"max|R| (default)": "max", "--scale percentile:99.5": "percentile:99.5"}


def labelled(tile: Image.Image, text: str, height: int = 18) -> Image.Image:
    """Returns the tile under a white strip carrying text."""
    canvas = Image.new("RGB", (tile.width, tile.height + height), "white")
    ImageDraw.Draw(canvas).text((4, 3), text, fill="black")
    canvas.paste(tile, (0, height))
    return canvas


def main() -> None:
    """Explains the photo once per scale and writes the 2 x 2 figure (heatmaps above, overlays below)."""
    columns = []
    with tempfile.TemporaryDirectory() as tmp:
        for caption, spec in SCALES.items():
            out = Path(tmp) / spec.replace(":", "-")
            explain([PHOTO], "efficientnet-lite0.onnx", out, "--scale", spec)
            tiles = [Image.open(out / f"{PHOTO.stem}.{kind}.png").convert("RGB") for kind in ("heatmap", "overlay")]
            columns.append([labelled(tiles[0], caption), tiles[1]])
    grid([list(row) for row in zip(*columns)]).save(DOCS / "scale-percentile.png")


if __name__ == "__main__":
    main()
