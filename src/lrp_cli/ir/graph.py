"""The IR graph: nodes in topological order over named tensors, with one data input and one output."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from lrp_cli.ir.layers import Layer


@dataclass
class Node:
    """One computation: a layer reading dynamic tensors `inputs` and writing tensor `output`."""

    name: str
    layer: Layer
    inputs: list[str]
    output: str
    source_op: str = ""

    @property
    def op(self) -> str:
        """Returns the ONNX op type the node came from (or the layer kind)."""
        return self.source_op or self.layer.op


@dataclass
class Graph:
    """A feed-forward DAG of layers; `shapes` holds the static shape of every tensor for the bound input shape."""

    nodes: list[Node]
    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Returns every tensor of a forward pass (name -> array), in the dtype of x."""
        values = {self.input_name: x}
        for node in self.nodes:
            values[node.output] = node.layer.forward(*(values[name] for name in node.inputs))
        return values

    def astype(self, dtype) -> "Graph":
        """Returns a copy whose layer parameters have the given dtype."""
        nodes = [replace(node, layer=node.layer.astype(dtype)) for node in self.nodes]
        return replace(self, nodes=nodes)

    def linear_nodes(self) -> list[Node]:
        """Returns the Conv/Dense nodes in topological order."""
        return [node for node in self.nodes if node.layer.is_linear]

    def rule_nodes(self) -> list[Node]:
        """Returns the nodes whose relevance a rule decides (Conv/Dense, MaxPool ties, LayerNorm, Softmax, products),
        in order."""
        return [node for node in self.nodes if node.layer.rule_kind]
