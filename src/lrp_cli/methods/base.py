"""What every explanation method shares: its input, its options and how a per-pixel map becomes a relevance
tensor in the model-input shape."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from lrp_cli.errors import OptionError
from lrp_cli.ir.graph import Graph
from lrp_cli.preprocess import PreprocessConfig, from_nchw, to_nchw
from lrp_cli.propagate import Propagation, output_scores


#: Perturbed copies scored per call of MethodInput.scores: bounds the memory of a batch of copies.
SCORE_CHUNK = 32


@dataclass
class MethodInput:
    """Everything a method may read: the IR forward pass, LRP rules, preprocessing, its options, the model
    input's layout and a scorer of batches; a method never sees the model itself."""

    graph: Graph
    values: dict[str, np.ndarray]
    rules: dict
    config: PreprocessConfig
    options: dict
    #: "nchw" or "nhwc": the channel axis of the model input
    layout: str
    #: scores(batch) -> [N, K] pre-softmax class scores of N model inputs ([N, ...] in the model's layout)
    scores: Callable[[np.ndarray], np.ndarray]
    #: what a method computes once per input and reuses for every target (the perturbation methods' scores)
    memo: dict = field(default_factory=dict)

    def once(self, key, compute):
        """Returns compute() the first time for this key and input, the same object every later time."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    @property
    def x(self) -> np.ndarray:
        """Returns the model input (model layout, the precision of the forward pass)."""
        return self.values[self.graph.input_name]

    def score(self, target: int) -> float:
        """Returns the IR's pre-softmax score of the target class, f(x)."""
        return float(output_scores(self.values[self.graph.output_name])[target])

    def image_shape(self, method: str) -> tuple[int, int, int]:
        """Returns (C, H, W) of an image model input; OptionError when the input is not an image."""
        shape = self.graph.input_shape
        if len(shape) != 4:
            raise OptionError(f"--method {method}: needs an image model input [N, C, H, W], this one is "
                              f"{list(shape)}")
        return tuple(to_nchw(tuple(shape), self.layout)[1:])

    def nchw(self, x: np.ndarray) -> np.ndarray:
        """Returns a batch of model inputs in NCHW order."""
        return to_nchw(x, self.layout)

    def model_layout(self, x: np.ndarray) -> np.ndarray:
        """Returns an NCHW batch in the model's layout."""
        return from_nchw(x, self.layout)

    def spread(self, pixel_map: np.ndarray) -> np.ndarray:
        """Returns a [H, W] map as a model-input-shaped tensor: each channel holds map / C, so the channel sum
        (the heatmap) is the map itself."""
        channels = self.nchw(self.x).shape[1]
        per_channel = np.repeat(pixel_map[None, None] / channels, channels, axis=1)
        return self.model_layout(per_channel).astype(self.x.dtype)


class Method(ABC):
    """An explanation method: a name, its options with their defaults, and `explain` giving a Propagation."""

    name: ClassVar[str]
    #: option name -> default (None: derived from the input at explain time)
    defaults: ClassVar[dict] = {}

    def resolve(self, given: dict) -> dict:
        """Returns the method's options: its defaults with the given ones applied (OptionError for others)."""
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            flags = ", ".join("--" + name for name in unknown)
            raise OptionError(f"{flags} does not apply to --method {self.name}")
        return {**self.defaults, **given}

    def check(self, graph: Graph, options: dict) -> None:
        """Raises OptionError when the options do not fit the model's IR graph (default: nothing to check)."""

    def options_for(self, job: MethodInput) -> dict:
        """Returns the options in force for this input (defaults that depend on the input resolved); the JSON
        records them."""
        return dict(job.options)

    @abstractmethod
    def explain(self, job: MethodInput, target: int) -> Propagation:
        """Returns the relevance of the target class (model-input shape), f(x) and per-node records."""
