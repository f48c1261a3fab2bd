"""The public Python API the command line is built on: load a model, explain an input, save the outputs.

A facade: the work is done by the pipeline (pipeline.py) over the model kinds (kinds/); the names here stay
stable for scripts and tests. Model-kind specifics are methods of the model (e.g. `model.compile`,
`model.rules_for`); the functions below that take a model call them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from lrp_cli import pipeline
from lrp_cli.explanation import (IR_DIFF_WARNING, METHOD_NAMES, PRECISIONS, Explanation, Settings, class_index,
                                 label_of, resolve_targets)
from lrp_cli.kinds.bow_model import BowModel as LoadedBowModel
from lrp_cli.kinds.image_outputs import explanation_document
from lrp_cli.kinds.onnx_explain import ir_difference
from lrp_cli.kinds.onnx_model import OnnxModel as LoadedModel
from lrp_cli.kinds.onnx_model import detect_layout, shape_layout
from lrp_cli.kinds.onnx_runtime import onnx_session, reported_output
from lrp_cli.pipeline import explain, global_scale, item_of, load_model, save_explanation

__all__ = ["IR_DIFF_WARNING", "METHOD_NAMES", "PRECISIONS", "Explanation", "LoadedBowModel", "LoadedModel",
           "Settings", "check_settings", "check_size", "class_index", "compile_explainer", "composite_name",
           "detect_layout", "explain", "explain_array", "explanation_document", "global_scale", "ir_difference",
           "label_of", "load_model", "load_model_input", "model_view", "onnx_session", "ort", "pixel_map",
           "preprocess_config", "reported_output", "resolve_targets", "rules_for", "save_explanation",
           "shape_layout", "bind_input"]


def check_settings(model, settings: Settings) -> None:
    """Raises OptionError when the settings do not fit the model (bad rule, options of another model kind)."""
    pipeline.check_settings(model, settings)


def explain_array(model: LoadedModel, x: np.ndarray, settings: Settings, input_path: Path = Path("<array>"),
                  picture=None) -> list[Explanation]:
    """Returns the explanations of one model-input-shaped tensor of an ONNX model, one per target the --target
    setting selects."""
    return model.explain((model, x, picture, input_path), settings)


def load_model_input(model: LoadedModel, input_path: str | Path, settings: Settings):
    """Returns (the ONNX model bound to the input's shape, the model-input tensor, the picture at the model input
    size) of an image or `.npy` file."""
    return model.load_input(Path(input_path), settings)


def bind_input(model: LoadedModel, shape: tuple[int, ...]) -> LoadedModel:
    """Returns the ONNX model bound to a concrete input shape (itself when its input shape is not symbolic)."""
    return model.bind(shape)


def preprocess_config(model: LoadedModel, settings: Settings):
    """Returns the ONNX model's sidecar preprocessing with the command-line overrides applied."""
    return model.preprocess_config(settings)


def check_size(model: LoadedModel, config) -> None:
    """Raises the OptionError of a --size that is not the (bound) ONNX model input's height, width."""
    model.check_size(config)


def rules_for(model: LoadedModel, settings: Settings, config=None) -> dict:
    """Returns node name -> rule object for the settings (`config` is the model's own preprocessing)."""
    return model.rules_for(settings)


def composite_name(model: LoadedModel, settings: Settings) -> str | None:
    """Returns the composite in force (None when --rule sets one rule for every layer)."""
    return model.composite_name(settings)


def compile_explainer(model, settings: Settings, out_path: Path, batch_size: int = 1) -> dict:
    """Writes the relevance pass of the settings as a standalone ONNX file; returns its input/output summary."""
    return model.compile(settings, Path(out_path), batch_size)


def pixel_map(model, expl: Explanation) -> np.ndarray:
    """Returns the [H, W] relevance map of an explanation of an image model (channels summed)."""
    return model.pixels(expl.relevance)


def model_view(model, input_path: str | Path, settings: Settings):
    """Returns the RGB picture of an input as the model sees it, or None for an input that is not an image."""
    return model.view(item_of(input_path), settings)
