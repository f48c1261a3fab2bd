"""Find exporters' decomposed forms of one operation in an ONNX graph, so the importer converts each as one layer.

- LayerNorm written out (ReduceMean, Sub, Pow 2 or Mul, ReduceMean, Add eps, Sqrt, Div or Reciprocal+Mul, then an
  optional Mul by a scale and Add of a bias), as older opsets and tf2onnx write it;
- RMSNorm written out (Pow 2 or Mul, ReduceMean, Add eps, Sqrt, Div, or Reciprocal or Div(1, .) then Mul, then an
  optional Mul by a scale), as the dynamo exporter writes torch's nn.RMSNorm before opset 23 and the legacy one
  x * rsqrt(mean(x^2) + eps);
- GELU in its Erf form x * 0.5 * (1 + erf(x / sqrt 2)) or tanh approximation, or any other element-wise
  expression of one tensor that contains a product of two activations: it is fused when it computes c * GELU(x),
  checked numerically on probe values; otherwise the product stays an error naming its node.
- L2 normalization x / Expand(Clip(ReduceL2(x))) over the last axis (F.normalize: Swin V2's cosine attention).

Regions are found on the graph's structure before conversion; the importer converts a region when it reaches its
last node, when every constant it reads is known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

#: Ops that act element by element (with constants broadcast) and may appear inside a fused expression.
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Erf", "Tanh", "Sqrt", "Neg", "Reciprocal", "Exp", "Sigmoid"}
MAX_EXPRESSION_NODES = 16


@dataclass
class Region:
    """A fused group of ONNX nodes: `kind` ("layernorm", "rmsnorm", "l2norm" or "expression"), node indices in graph
    order, the dynamic input tensor and the tensor the last node writes."""

    kind: str
    nodes: list[int]
    source: str
    output: str


class GraphIndex:
    """Producers, consumers and the structurally constant tensors of an ONNX graph."""

    def __init__(self, model: onnx.ModelProto):
        self.nodes = list(model.graph.node)
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        self.constant = {init.name for init in model.graph.initializer}
        self.values = {init.name: init for init in model.graph.initializer}
        outputs = {o.name for o in model.graph.output}
        for k, node in enumerate(self.nodes):
            for t in dict.fromkeys(node.input):
                self.consumers.setdefault(t, []).append(k)
            for t in node.output:
                self.producer[t] = k
            if node.op_type == "Constant" or node.op_type in ("Shape", "Size") or (
                    node.input and all(not t or t in self.constant for t in node.input)):
                self.constant.update(node.output)
        for t in outputs:
            self.consumers.setdefault(t, []).append(-1)

    def dynamic_inputs(self, k: int) -> list[str]:
        """Returns the non-constant inputs of node k."""
        return [t for t in self.nodes[k].input if t and t not in self.constant]

    def sole_consumer(self, tensor: str, op: str | tuple[str, ...]) -> int | None:
        """Returns the index of the one node reading tensor when it has the given op type(s), else None."""
        readers = self.consumers.get(tensor, [])
        if len(readers) != 1 or readers[0] < 0:
            return None
        ops = (op,) if isinstance(op, str) else op
        return readers[0] if self.nodes[readers[0]].op_type in ops else None


def find_regions(model: onnx.ModelProto) -> dict[int, Region]:
    """Returns last node index -> Region for every decomposed LayerNorm, RMSNorm and fusable element-wise
    expression."""
    index = GraphIndex(model)
    regions: dict[int, Region] = {}
    taken: set[int] = set()
    # LayerNorms in graph order; expressions from the last product back, so the outermost product claims its
    # whole expression (the x * x inside a tanh-form GELU is part of it)
    candidates = [(k, _layernorm_region) for k, n in enumerate(index.nodes) if n.op_type == "ReduceMean"]
    # after the LayerNorms: the variance half of a LayerNorm is an RMSNorm of the centred input
    candidates += [(k, _rmsnorm_region) for k, n in enumerate(index.nodes) if n.op_type == "ReduceMean"]
    candidates += [(k, _expression_region) for k, n in reversed(list(enumerate(index.nodes)))
                   if n.op_type == "Mul" and len(index.dynamic_inputs(k)) == 2]
    candidates += [(k, _l2norm_region) for k, n in enumerate(index.nodes) if n.op_type == "ReduceL2"]
    for k, find in candidates:
        region = None if k in taken else find(index, k)
        if region and not taken.intersection(region.nodes):
            regions[region.nodes[-1]] = region
            taken.update(region.nodes)
    return regions


def _layernorm_region(index: GraphIndex, k: int) -> Region | None:
    """Returns the LayerNorm whose mean is ReduceMean node k: x - mean(x), divided as an RMSNorm divides (see
    `_scaled_by_rms`), then an optional element-wise bias."""
    nodes = index.nodes
    x = nodes[k].input[0]
    if x in index.constant:
        return None
    readers = index.consumers.get(nodes[k].output[0], [])
    if len(readers) != 1 or nodes[readers[0]].op_type != "Sub" or list(nodes[readers[0]].input) != [
            x, nodes[k].output[0]]:
        return None
    sub = readers[0]
    centred = nodes[sub].output[0]
    readers = index.consumers.get(centred, [])
    if len(readers) != 2:  # the square and the division
        return None
    square = next((r for r in readers if _is_square(index, r, centred)), None)
    scaled = None if square is None else _scaled_by_rms(index, square, centred)
    if scaled is None or not set(readers) <= set(scaled):
        return None
    chain = [k, sub] + scaled
    bias = index.sole_consumer(nodes[chain[-1]].output[0], "Add")
    if bias is not None and len(index.dynamic_inputs(bias)) == 1:
        chain.append(bias)
    chain = sorted(chain)
    return Region("layernorm", chain, x, nodes[chain[-1]].output[0])


def _rmsnorm_region(index: GraphIndex, k: int) -> Region | None:
    """Returns the RMSNorm x / sqrt(mean(x^2) + eps) [* scale] whose ReduceMean is node k, if it is one."""
    nodes = index.nodes
    square = index.producer.get(nodes[k].input[0])
    if square is None or nodes[square].op_type not in ("Pow", "Mul"):
        return None
    x = nodes[square].input[0]
    if x in index.constant or not _is_square(index, square, x):
        return None
    chain = _scaled_by_rms(index, square, x)
    if chain is None or chain[1] != k:
        return None
    chain = sorted(chain)
    return Region("rmsnorm", chain, x, nodes[chain[-1]].output[0])


def _scaled_by_rms(index: GraphIndex, square: int, x: str) -> list[int] | None:
    """Returns the nodes from `square` (x * x or x ** 2) through ReduceMean, Add eps, Sqrt, the division of x
    (Div, Reciprocal then Mul, or Div(1, .) then Mul) to an optional element-wise scale Mul, or None."""
    nodes = index.nodes
    chain = [square]
    for ops in (("ReduceMean",), ("Add",), ("Sqrt",)):
        nxt = index.sole_consumer(nodes[chain[-1]].output[0], ops)
        if nxt is None:
            return None
        chain.append(nxt)
    std = nodes[chain[-1]].output[0]
    divide = index.sole_consumer(std, ("Div", "Reciprocal"))
    if divide is not None and (nodes[divide].op_type == "Reciprocal" or nodes[divide].input[0] in index.constant):
        # 1 / std, then x * it: the legacy exporter writes rsqrt as Div(1, Sqrt); the 1 is checked at conversion
        chain.append(divide)
        divide = index.sole_consumer(nodes[divide].output[0], "Mul")
        if divide is None or set(nodes[divide].input) != {x, nodes[chain[-1]].output[0]}:
            return None
    elif divide is None or list(nodes[divide].input) != [x, std]:
        return None
    chain.append(divide)
    scale = index.sole_consumer(nodes[divide].output[0], "Mul")
    if scale is not None and len(index.dynamic_inputs(scale)) == 1:
        chain.append(scale)
    return chain


def _is_square(index: GraphIndex, k: int, tensor: str) -> bool:
    node = index.nodes[k]
    if node.op_type == "Mul":
        return list(node.input) == [tensor, tensor]
    return node.op_type == "Pow" and node.input[0] == tensor and node.input[1] in index.constant


def _expression_region(index: GraphIndex, k: int) -> Region | None:
    """Returns the element-wise expression of one tensor that ends at the product node k, if there is one."""
    candidates = list(index.dynamic_inputs(k))
    for t in list(candidates):  # x * 0.5 written before the product
        producer = index.producer.get(t)
        if producer is not None and index.nodes[producer].op_type in ELEMENTWISE:
            candidates += index.dynamic_inputs(producer)
    for source in dict.fromkeys(candidates):
        members = _closure(index, k, source)
        if members is not None and _internal(index, members, k):
            tail = index.sole_consumer(index.nodes[k].output[0], ("Mul", "Div"))
            if tail is not None and len(index.dynamic_inputs(tail)) == 1:
                members.add(tail)  # the trailing * 0.5
            nodes = sorted(members)
            return Region("expression", nodes, source, index.nodes[nodes[-1]].output[0])
    return None


def _closure(index: GraphIndex, k: int, source: str) -> set[int] | None:
    """Returns the element-wise nodes between source and node k when every dynamic path from k leads to source."""
    members, stack = set(), [k]
    while stack:
        node = stack.pop()
        if node in members:
            continue
        if index.nodes[node].op_type not in ELEMENTWISE or len(members) >= MAX_EXPRESSION_NODES:
            return None
        members.add(node)
        for t in index.dynamic_inputs(node):
            if t == source:
                continue
            producer = index.producer.get(t)
            if producer is None:
                return None
            stack.append(producer)
    return members


def _internal(index: GraphIndex, members: set[int], last: int) -> bool:
    """Returns True when the tensors written inside the region are read only inside it."""
    for k in members:
        if k == last:
            continue
        for t in index.nodes[k].output:
            if any(reader not in members for reader in index.consumers.get(t, [])):
                return False
    return True


def gelu_erf(x: np.ndarray) -> np.ndarray:
    """Returns the exact GELU x * Phi(x)."""
    from scipy.special import erf  # scipy comes with scikit-learn
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """Returns the tanh approximation of GELU."""
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def match_gelu(values: np.ndarray, probe: np.ndarray) -> tuple[str, float] | None:
    """Returns (approximate, scale) when values = scale * GELU(probe) in the erf or tanh form, else None."""
    for approximate, fn in (("none", gelu_erf), ("tanh", gelu_tanh)):
        reference = fn(probe)
        scale = float(values @ reference / (reference @ reference))
        if scale != 0 and np.abs(values - scale * reference).max() <= 1e-5 * max(1.0, abs(scale)):
            return approximate, scale
    return None


def _l2norm_region(index: GraphIndex, k: int) -> Region | None:
    """Returns x / Expand(Clip(ReduceL2(x))) (F.normalize as exporters write it) starting at ReduceL2 node k."""
    nodes = index.nodes
    x = nodes[k].input[0]
    if x in index.constant:
        return None
    chain = [k]
    for ops in (("Clip", "Max"), ("Expand",)):  # the Expand is optional: Div broadcasts
        nxt = index.sole_consumer(nodes[chain[-1]].output[0], ops)
        if nxt is not None and len(index.dynamic_inputs(nxt)) == 1:
            chain.append(nxt)
        elif ops != ("Expand",):
            return None
    divide = index.sole_consumer(nodes[chain[-1]].output[0], "Div")
    if divide is None or list(nodes[divide].input) != [x, nodes[chain[-1]].output[0]]:
        return None
    return Region("l2norm", sorted(chain + [divide]), x, nodes[divide].output[0])
