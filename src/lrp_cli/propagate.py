"""The relevance backward pass over an IR graph (DESIGN §3, Algorithm 2 of the paper).

Relevance starts one-hot at the target with value f(x), the target's pre-softmax score, and walks the nodes in
reverse topological order. A tensor read by several nodes sums what comes back from each (Eq 62); fan-in nodes
(Add, Concat) split it among their operands. Every node's relevance sums, what reached it and what it passed down,
are recorded to check conservation (Eq 2) and to say which nodes absorbed the rest (absorption.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lrp_cli.ir.graph import Graph
from lrp_cli.rules import Rule


@dataclass
class LayerRecord:
    """The relevance a node passed to its inputs, summed, under the rule it used (None: fixed behaviour), and the
    relevance that reached its output (None where the engine does not record it: BoW pipelines)."""

    name: str
    op: str
    rule: str | None
    relevance_sum: float
    relevance_in: float | None = None


@dataclass
class Propagation:
    """The result of a backward pass: input relevance (input-shaped), f(x) and the per-node records."""

    relevance: np.ndarray
    f_x: float
    layers: list[LayerRecord]


def output_scores(output: np.ndarray) -> np.ndarray:
    """Returns the class scores of a batch-1 output tensor ([1, K] or [1, K, 1, 1]) as a flat vector."""
    return output.reshape(output.shape[0], -1)[0]


def target_scores(output: np.ndarray, target) -> float | np.ndarray:
    """Returns f(x), the target's pre-softmax score: a float for one target, or for a batch with one target per
    item (an int array) the float64 scores of each item's target."""
    rows = output.reshape(output.shape[0], -1)
    if np.ndim(target) == 0:
        return float(rows[0, target])
    return rows[np.arange(len(rows)), target].astype(np.float64)


def one_hot(output: np.ndarray, target) -> np.ndarray:
    """Returns an array shaped like the output, 1 at the target class (of each item, for a target per item) and 0
    elsewhere."""
    hot = np.zeros_like(output).reshape(output.shape[0], -1)
    hot[np.arange(len(hot)) if np.ndim(target) else 0, target] = 1
    return hot.reshape(output.shape)


def initial_relevance(output: np.ndarray, target) -> tuple[np.ndarray, float | np.ndarray]:
    """Returns the output-shaped one-hot relevance at target valued f(x), and f(x) (one per item for a target per
    item)."""
    f_x = target_scores(output, target)
    scale = np.reshape(f_x, (-1,) + (1,) * (output.ndim - 1)).astype(output.dtype)
    return one_hot(output, target) * scale, f_x


def _relevance_sum(r: np.ndarray, per_item: bool) -> float | np.ndarray:
    """Returns the float64 sum of r, or with per_item its sum over each batch item (the first axis)."""
    if per_item:
        return r.reshape(r.shape[0], -1).sum(axis=1, dtype=np.float64)
    return float(r.sum(dtype=np.float64))


def item_of(propagation: Propagation, index: int) -> Propagation:
    """Returns the batch-1 Propagation of one item of a batched one (a target per item)."""
    layers = [LayerRecord(r.name, r.op, r.rule, float(r.relevance_sum[index]),
                          None if r.relevance_in is None else float(r.relevance_in[index])) for r in propagation.layers]
    return Propagation(propagation.relevance[index:index + 1], float(propagation.f_x[index]), layers)


def backward(graph: Graph, values: dict[str, np.ndarray], start: np.ndarray, step,
             rule_names: dict[str, str] | None = None, until: str | None = None, per_item: bool = False
             ) -> tuple[np.ndarray, list[LayerRecord]]:
    """Returns (input-shaped result, per-node records) of walking `start` from the output down the graph.

    `step(node, xs, y, r)` gives what each dynamic input receives; fan-out tensors sum what comes back.
    `until` names another tensor to stop at (default: the input); the result is then shaped like it.
    `per_item` records each node's sum per batch item (an array) instead of over the whole tensor.
    """
    until = until or graph.input_name
    pending = {graph.output_name: start}
    records = []
    for node in reversed(graph.nodes):
        if node.output == until:  # topological order: every reader of `until` has been walked by now
            break
        r = pending.pop(node.output, None)
        if r is None:
            continue
        lower = step(node, [values[name] for name in node.inputs], values[node.output], r)
        total = 0.0
        for name, r_in in zip(node.inputs, lower):
            if r_in is None:
                continue
            total = total + _relevance_sum(r_in, per_item)
            pending[name] = pending[name] + r_in if name in pending else r_in
        records.append(LayerRecord(node.name, node.op, (rule_names or {}).get(node.name), total,
                                   _relevance_sum(r, per_item)))
    result = pending.get(until)
    return (np.zeros_like(values[until]) if result is None else result), records


def propagate(graph: Graph, values: dict[str, np.ndarray], target, rules: dict[str, Rule]) -> Propagation:
    """Returns the input relevance for the target class given a forward pass `values` and node -> rule (for a
    batch with a target per item, an int array, f(x) and the node sums are per item)."""
    start, f_x = initial_relevance(values[graph.output_name], target)

    def step(node, xs, y, r):
        return node.layer.relevance(xs, y, r, rules.get(node.name))
    relevance, records = backward(graph, values, start, step, {n: r.spec() for n, r in rules.items()},
                                  per_item=np.ndim(target) > 0)
    return Propagation(relevance, f_x, records)


def conservation_error(relevance_sum: float, f_x: float) -> float:
    """Returns |sum R - f(x)| / |f(x)| (absolute difference when f(x) is 0)."""
    gap = abs(relevance_sum - f_x)
    return gap / abs(f_x) if f_x != 0 else gap


def first_non_finite(layers: list[LayerRecord]) -> LayerRecord | None:
    """Returns the first record, from the output down, whose relevance sum is NaN or Inf (None if all are finite);
    any NaN or Inf term makes the sum so."""
    return next((record for record in layers if not math.isfinite(record.relevance_sum)), None)
