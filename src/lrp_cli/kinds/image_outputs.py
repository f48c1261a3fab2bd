"""The outputs of image explanations, for every kind whose inputs are images: heatmap, overlay, the JSON
document (schema lrp-cli/explanation/1, DESIGN §6) and the raw relevance, written all-or-nothing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from lrp_cli import __version__, absorption, outputs, render
from lrp_cli.explanation import Explanation
from lrp_cli.kinds.base import OutputOptions
from lrp_cli.preprocess import to_nchw
from lrp_cli.propagate import conservation_error


def overflow_reported_per_node():
    """Returns a context silencing NumPy's overflow warnings: non-finite values are reported per node instead."""
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


def explanation_document(model, expl: Explanation, paths: dict[str, Path], render_seconds: float) -> dict:
    """Returns the JSON document of an explanation (DESIGN §6, schema lrp-cli/explanation/1)."""
    relevance = expl.relevance.astype(np.float64)
    total = float(relevance.sum())
    input_info = {"path": str(expl.input_path)}
    if expl.input_path.is_file():
        input_info["sha256"] = outputs.sha256_file(expl.input_path)
    return {
        "schema": outputs.SCHEMA,
        "input": input_info,
        "model": {"path": str(model.path), "sha256": model.sha256, "kind": model.kind},
        "method": expl.method,
        "composite": expl.composite,
        "rules": expl.rules,
        "target": expl.target,
        "prediction": expl.prediction,
        "f_x": expl.propagation.f_x,
        "relevance": {
            "sum": total,
            "positive": float(relevance[relevance > 0].sum()),
            "negative": float(relevance[relevance < 0].sum()),
            "abs_max": float(np.abs(relevance).max()),
            "conservation_error": expl.extra.get("conservation_error",
                                                 conservation_error(total, expl.propagation.f_x)),
            "absorbed": absorption.summary(expl.propagation, expl.method),
        },
        "layers": absorption.layer_documents(expl.propagation, expl.method),
        "ir_max_abs_diff": expl.ir_max_abs_diff,
        "outputs": {key: str(path) for key, path in paths.items() if key != "json"} | {"raw": (
            str(paths["raw"]) if "raw" in paths else None)},
        "timing_s": {**{k: round(v, 6) for k, v in expl.timing.items()}, "render": round(render_seconds, 6)},
        "versions": {"lrp_cli": __version__, "numpy": np.__version__, "onnx": onnx.__version__,
                     "onnxruntime": ort.__version__},
    } | {k: v for k, v in expl.extra.items() if k != "conservation_error"}


def pixel_map(layout: str, relevance: np.ndarray) -> np.ndarray:
    """Returns the [H, W] relevance map (channels summed) of a relevance tensor of a model input in `layout`."""
    return render.pixel_relevance(to_nchw(relevance, layout))


def save_image_explanation(model, expl: Explanation, out_dir: Path, stem: str, options: OutputOptions) -> dict:
    """Writes heatmap, overlay (scaled as options.scale says), JSON (and raw relevance) all-or-nothing; returns
    the JSON document."""
    start = time.perf_counter()
    paths = outputs.output_paths(out_dir, stem, options.save_raw)
    with overflow_reported_per_node():
        heat = pixel_map(model.layout, expl.relevance)
        images = model.pictures(expl, heat, options)
        contents = {paths[kind]: outputs.png_bytes(rgb) for kind, rgb in images.items()}
        if options.save_raw:
            contents[paths["raw"]] = outputs.npy_bytes(expl.relevance.astype(np.float32))
        document = explanation_document(model, expl, paths, time.perf_counter() - start) | {
            "heatmap_scale": options.scale.document(heat)} | model.document_extras(heat)
        contents[paths["json"]] = outputs.json_bytes(document)
        outputs.write_all(contents)
    return document


def image_summary_fields(document: dict) -> dict:
    """Returns the summary-row fields of an explanation document (schema lrp-cli/explanation/1)."""
    return {"target": document["target"]["index"], "label": document["target"]["label"],
            "score": document["prediction"]["score"], "f_x": document["f_x"],
            "relevance_sum": document["relevance"]["sum"],
            "conservation_error": document["relevance"]["conservation_error"],
            "heatmap": document["outputs"]["heatmap"]}


class ImageOutputs:
    """The output methods of the protocol (kinds.base.Model) for a kind whose explanations are pictures: mixed
    in before Model by a class that has `layout` ("nchw"/"nhwc", the relevance tensor's channel axis)."""

    layout: str

    def save(self, expl: Explanation, out_dir: Path, stem: str, options: OutputOptions) -> dict:
        """Writes heatmap, overlay, JSON (and raw relevance); returns the JSON document."""
        return save_image_explanation(self, expl, out_dir, stem, options)

    def summary_fields(self, document: dict) -> dict:
        """Returns the summary-row fields of an explanation document."""
        return image_summary_fields(document)

    def pictures(self, expl: Explanation, heat: np.ndarray, options: OutputOptions) -> dict[str, np.ndarray]:
        """Returns the RGB images to write, by output name: the heatmap and its overlay on the input picture."""
        return render.heatmap_images(heat, expl.picture, options.cmap, options.scale)

    def document_extras(self, heat: np.ndarray) -> dict:
        """Returns the JSON fields this kind adds to an explanation document (none for pictures)."""
        return {}

    def conservation_account(self, document: dict) -> str:
        """Returns 'sum R = S of f(x) = F; P % absorbed by biases/stabilisers (most in NODE)' (absorption.py)."""
        return absorption.describe(document)

    def heat(self, expl: Explanation) -> np.ndarray:
        """Returns the explanation's pixel map (channels summed), which its heatmap colours."""
        return pixel_map(self.layout, expl.relevance)

    def pixels(self, relevance: np.ndarray) -> np.ndarray:
        """Returns the [H, W] relevance map of a model-input-shaped relevance tensor (channels summed)."""
        return pixel_map(self.layout, relevance)
