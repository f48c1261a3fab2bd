"""Gradient and gradient x input: the backward pass with each layer's exact derivative instead of a rule."""

from __future__ import annotations

import numpy as np

from lrp_cli.ir.graph import Graph
from lrp_cli.propagate import Propagation, backward, one_hot, output_scores


def _gradient_step(node, xs, y, g):
    try:
        return node.layer.gradient(xs, y, g)
    except NotImplementedError as exc:
        raise NotImplementedError(f"node '{node.name}' ({node.op}): {exc}") from None


def input_gradient(graph: Graph, values: dict[str, np.ndarray], target: int) -> Propagation:
    """Returns the gradient of the target's score w.r.t. the input (as a Propagation; f_x is the score)."""
    output = values[graph.output_name]
    gradient, records = backward(graph, values, one_hot(output, target), _gradient_step)
    return Propagation(gradient, float(output_scores(output)[target]), records)


def gradient_x_input(graph: Graph, values: dict[str, np.ndarray], target: int) -> Propagation:
    """Returns input * gradient of the target's score (the first-order Taylor terms around 0)."""
    result = input_gradient(graph, values, target)
    return Propagation(result.relevance * values[graph.input_name], result.f_x, result.layers)


METHODS = {"gradient": input_gradient, "gradient-x-input": gradient_x_input}
