"""What every model kind shares: the settings of a request, the Explanation it gives back, and targets.

Settings travel from the command line (or a Python caller) to a model kind unchanged; an Explanation travels from
the kind back to the pipeline, which hands it to the same kind to write. Nothing here knows a model kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lrp_cli.errors import OptionError
from lrp_cli.methods import METHODS
from lrp_cli.propagate import Propagation

PRECISIONS = {"float32": np.float32, "float64": np.float64}
METHOD_NAMES = tuple(METHODS)
#: A relative IR-vs-onnxruntime difference above this triggers a warning.
IR_DIFF_WARNING = 1e-4


@dataclass
class Settings:
    """What to explain and how: method, rules, target, precision, preprocessing overrides."""

    method: str = "lrp"
    composite: str | None = None
    rule: str | None = None
    layer_rules: tuple[str, ...] = ()
    target: str = "pred"
    precision: str = "float32"
    preprocess: dict = field(default_factory=dict)
    tiling: dict = field(default_factory=dict)  # BoW models: tile, tile_stride, pair
    engine: str = "auto"  # auto | onnxruntime | numpy (engines/)
    providers: tuple[str, ...] = ()  # onnxruntime execution providers of the compiled engine
    method_options: dict = field(default_factory=dict)  # given options of the method: layer, patch, seed, ...
    #: Options only one model kind reads (e.g. a text kind's text_field), by name; the CLI adds them, the pipeline
    #: passes them through untouched.
    kind_options: dict = field(default_factory=dict)


@dataclass
class Explanation:
    """One explained decision: the input, prediction, target, relevance and bookkeeping for the JSON."""

    input_path: Path
    x: np.ndarray
    picture: object
    model_output: np.ndarray
    prediction: dict
    target: dict
    propagation: Propagation
    rules: dict[str, str]
    composite: str | None
    ir_max_abs_diff: float
    ir_diff_relative: float
    timing: dict[str, float]
    method: str = "lrp"
    extra: dict = field(default_factory=dict)

    @property
    def relevance(self) -> np.ndarray:
        """Returns the input relevance tensor, shaped like the model input."""
        return self.propagation.relevance


def resolve_targets(spec: str, scores: np.ndarray, labels: list[str] | None) -> list[int]:
    """Returns the class indices a --target spec (pred, INDEX, LABEL, top:K) selects for these scores."""
    spec = str(spec).strip()
    count = scores.size
    if spec == "pred":
        return [int(np.argmax(scores))]
    if spec.startswith("top:"):
        k = spec[4:]
        if not k.isdigit() or not 1 <= int(k) <= count:
            raise OptionError(f"--target {spec}: K must be an integer from 1 to {count}")
        return [int(i) for i in np.argsort(-scores, kind="stable")[:int(k)]]
    return [class_index(spec, count, labels)]


def class_index(spec: str, count: int | None, labels: list[str] | None) -> int:
    """Returns the class a --target INDEX or LABEL names, among `count` classes (None: any index >= 0)."""
    if spec.lstrip("-").isdigit():
        index = int(spec)
        if index < 0 or count is not None and index >= count:
            raise OptionError(f"--target {spec}: class index out of range (the model has {count} classes)")
        return index
    lowered = [label.lower() for label in labels or []]
    if spec.lower() in lowered:
        return lowered.index(spec.lower())
    raise OptionError(f"--target {spec}: not 'pred', 'top:K', a class index or a known label")


def label_of(model, index: int) -> str | None:
    """Returns the label of a class index, if the model has labels for it."""
    labels = model.labels
    return labels[index] if labels and index < len(labels) else None


def prediction(model, scores: np.ndarray) -> dict:
    """Returns the JSON `prediction` of class scores: the best class (index, label, score) and the top 5."""
    top = np.argsort(-scores, kind="stable")[:5]
    best = int(top[0])
    return {
        "index": best, "label": label_of(model, best), "score": float(scores[best]),
        "top5": [{"index": int(i), "label": label_of(model, int(i)), "score": float(scores[i])} for i in top],
    }
