"""Writes the README figures in docs/ by running `lrp explain` on the bundled models and sample images.

Each figure is a row per input: the image as the model saw it, the heatmap and the overlay, enlarged with
nearest-neighbour pixels so that small inputs (8x8 digits, 64x64 shapes) stay readable.
Usage: python scripts/make_readme_figures.py   (after `make demo`, which builds EfficientNet-Lite0)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from lrp_cli import api
from lrp_cli.cli import main
from lrp_cli.preprocess import load_input

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SAMPLES = ROOT / "sample_images"


def explain(inputs: list[Path], model: str, out: Path, *options: str) -> None:
    """Runs `lrp explain` and fails loudly when it does not succeed."""
    result = CliRunner().invoke(main, ["explain", *map(str, inputs), "--model", str(ROOT / "models" / model),
                                       "--out", str(out), "--no-progress", *options])
    if result.exit_code != 0:
        raise SystemExit(result.output)


def row(picture: Image.Image, out: Path, stem: str, side: int) -> list[Image.Image]:
    """Returns [picture, heatmap, overlay] of one explained input, each resized to side x side-ish."""
    tiles = [picture.convert("RGB"), Image.open(out / f"{stem}.heatmap.png"), Image.open(out / f"{stem}.overlay.png")]
    scale = side / max(tiles[1].size)
    return [t.resize((round(tiles[1].width * scale), round(tiles[1].height * scale)), Image.NEAREST) for t in tiles]


def grid(rows: list[list[Image.Image]], gap: int = 4) -> Image.Image:
    """Returns the rows pasted side by side on a white canvas."""
    width = max(sum(t.width for t in r) + gap * (len(r) - 1) for r in rows)
    height = sum(max(t.height for t in r) for r in rows) + gap * (len(rows) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    y = 0
    for r in rows:
        x = 0
        for tile in r:
            canvas.paste(tile, (x, y))
            x += tile.width + gap
        y += max(t.height for t in r) + gap
    return canvas


def figure(name: str, model: str, inputs: list[Path], side: int, *options: str) -> None:
    """Writes docs/NAME.png for the inputs explained by the model."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        explain(inputs, model, out, *options)
        loaded = api.load_model(ROOT / "models" / model)
        rows = []
        for path in inputs:
            picture = Image.open(path)
            if loaded.kind == "onnx":  # the image as the model saw it: resized and cropped
                config = api.preprocess_config(loaded, api.Settings())
                picture = load_input(path, config, loaded.graph.input_shape, loaded.layout)[1]
            rows.append(row(picture, out, path.stem, side))
        grid(rows).save(DOCS / f"{name}.png")


def main_figures() -> None:
    """Writes every README figure."""
    DOCS.mkdir(exist_ok=True)
    figure("efficientnet", "efficientnet-lite0.onnx", [SAMPLES / "chelsea.png", SAMPLES / "coffee.png"], 224)
    shapes = sorted((SAMPLES / "shapes").glob("*_0.png"))
    figure("shapes-cnn", "shapes-cnn.onnx", shapes, 160)
    digits = [SAMPLES / "digits" / f"digit_{k}.png" for k in (0, 3, 7)]
    figure("digits-mlp", "digits-mlp.onnx", digits, 96)
    figure("polygons-bow", "polygons-bow-svm.joblib", [SAMPLES / "polygons_scene.png"], 306, "--target",
           "positive")
    tag_figure()


def tag_figure() -> None:
    """Writes docs/tag-models.png: per tagged circle of examples/ci, the picture, then heatmap and overlay of
    tag-clean.onnx, then those of tag-shortcut.onnx, both explaining the class circle."""
    inputs = sorted((ROOT / "examples" / "ci" / "images").glob("circle_*.png"))[:3]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [[], [], []]
        for model in ("tag-clean.onnx", "tag-shortcut.onnx"):
            out = Path(tmp) / model
            explain(inputs, model, out, "--target", "circle")
            for k, path in enumerate(inputs):
                tiles = row(Image.open(path), out, path.stem, 160)
                rows[k] += tiles if model == "tag-clean.onnx" else tiles[1:]  # the picture once per row
        grid(rows).save(DOCS / "tag-models.png")


if __name__ == "__main__":
    main_figures()
