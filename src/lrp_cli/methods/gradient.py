"""Gradient and gradient x input: the backward pass with each layer's exact derivative instead of a rule."""

from __future__ import annotations

import numpy as np

from lrp_cli.ir.graph import Graph
from lrp_cli.ir.sequence import token_embedding
from lrp_cli.methods.base import Method, MethodInput
from lrp_cli.propagate import LayerRecord, Propagation, backward, one_hot, target_scores


def _gradient_step(node, xs, y, g):
    try:
        return node.layer.gradient(xs, y, g)
    except NotImplementedError as exc:
        raise NotImplementedError(f"node '{node.name}' ({node.op}): {exc}") from None


def tensor_gradient(graph: Graph, values: dict[str, np.ndarray], target,
                    tensor: str | None = None) -> tuple[np.ndarray, list[LayerRecord]]:
    """Returns (d score[target] / d tensor, per-node records) for any tensor of the graph (default: the input);
    a target per batch item (an int array) records per-item node sums."""
    return backward(graph, values, one_hot(values[graph.output_name], target), _gradient_step, until=tensor,
                    per_item=np.ndim(target) > 0)


def input_gradient(graph: Graph, values: dict[str, np.ndarray], target) -> Propagation:
    """Returns the gradient of the target's score w.r.t. the input (as a Propagation; f_x is the score)."""
    gradient, records = tensor_gradient(graph, values, target)
    return Propagation(gradient, target_scores(values[graph.output_name], target), records)


def gradient_x_input(graph: Graph, values: dict[str, np.ndarray], target) -> Propagation:
    """Returns input * gradient of the target's score (the first-order Taylor terms around 0); for token ids read
    by an embedding, each token's vector dotted with the gradient w.r.t. it (ids have no gradient)."""
    embedding = token_embedding(graph)
    if embedding is not None:
        gradient, records = tensor_gradient(graph, values, target, embedding.output)
        x = values[graph.input_name]
        per_token = (values[embedding.output] * gradient).sum(axis=-1) * embedding.layer.kept(x)
        return Propagation(per_token, target_scores(values[graph.output_name], target), records)
    result = input_gradient(graph, values, target)
    return Propagation(result.relevance * values[graph.input_name], result.f_x, result.layers)


class Gradient(Method):
    """The gradient of the target score w.r.t. the input (sensitivity, paper Section "Sensitivity analysis")."""

    name = "gradient"

    def explain(self, job: MethodInput, target: int) -> Propagation:
        """Returns the input gradient of the target score."""
        return input_gradient(job.graph, job.values, target)


class GradientXInput(Method):
    """Input times gradient of the target score."""

    name = "gradient-x-input"

    def explain(self, job: MethodInput, target: int) -> Propagation:
        """Returns input * gradient of the target score."""
        return gradient_x_input(job.graph, job.values, target)
