"""Compile a relevance pass (IR graph + rules + method) into ONE ONNX graph that onnxruntime runs.

The forward pass is the model's own ONNX graph, unchanged, so every IR tensor (the importer keeps ONNX tensor
names, BatchNorm folded into the Conv that writes the BN's output) is available by name. Appended to it: the
start relevance from the `target` input, then each node's backward step in reverse topological order, exactly
as `propagate.backward` walks the NumPy layers (fan-out sums, per-node relevance sums).

Inputs: the model's data input (float32, the IR's shape: batch 1, or N for a graph compiled for batches of N) and
`target` (int64 [N]; -1 = the predicted class). Outputs: `scores` (float32 [N, K], the explained pre-softmax
scores), `relevance` (float32, input shape), `target_index` (int64 [N]), `layer_relevance_sums` (float32 [L*N],
node-major: one per node of `lrp_cli.layers` and item), `model_output` (the model's own chosen output, e.g.
softmax probabilities), `layer_relevance_in_sums` (float32 [L*N], like `layer_relevance_sums`: the relevance that
reached each node).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lrp_cli import __version__
from lrp_cli.engines import onnx_recurrent  # noqa: F401  (registers the LSTM/GRU relevance emitters)
from lrp_cli.engines import onnx_transformer  # noqa: F401  (registers the transformer kinds' emitters)
from lrp_cli.engines.onnx_builder import CompileError, GraphBuilder
from lrp_cli.engines.onnx_linear import Weight, linear_ops
from lrp_cli.engines.onnx_nodes import GRADIENT, RELEVANCE, NodeSite, find_emitter
from lrp_cli.engines.onnx_rules import RuleSite, emit_rule
from lrp_cli.ir import layers as L
from lrp_cli.ir.graph import Graph, Node
from lrp_cli.ir.sequence import token_embedding
from lrp_cli.rules import Rule

#: The opset the appended ops are written for; older models are converted up to it.
MIN_OPSET = 13
TARGET, SCORES, RELEVANCE_OUT, TARGET_INDEX, LAYER_SUMS, MODEL_OUTPUT, LAYER_IN_SUMS = (
    "target", "scores", "relevance", "target_index", "layer_relevance_sums", "model_output",
    "layer_relevance_in_sums")
#: Part of the cache key: a graph cached by a build with other outputs is compiled again.
GRAPH_FORMAT = 2
IO_DOC = {
    "inputs": {
        "<data input>": "float32, the model input shape at batch N (lrp_cli.batch_size, 1 unless compiled with "
                        "--batch-size), preprocessed as for the model",
        TARGET: "int64 [N]: the class to explain per item; -1 explains the predicted class (argmax of scores)",
    },
    "outputs": {
        SCORES: "float32 [N, K]: the explained tensor (pre-softmax scores), flattened per item",
        RELEVANCE_OUT: "float32, the input shape: the input relevance (or gradient) of the target",
        TARGET_INDEX: "int64 [N]: the class that was explained per item",
        LAYER_SUMS: "float32 [L*N]: relevance each node passed down, summed per item, node-major (reshape to "
                    "[L, N]; names in lrp_cli.layers)",
        MODEL_OUTPUT: "the model's own output (e.g. softmax probabilities), as the original model computes it",
        LAYER_IN_SUMS: "float32 [L*N]: relevance that reached each node, summed per item, node-major; minus "
                       "layer_relevance_sums, what the node absorbed (biases, stabilisers)",
    },
}
NONNEGATIVE_ACTIVATIONS = {"Relu", "Sigmoid", "Softplus", "HardSigmoid"}
ORDER_PRESERVING = (L.MaxPool, L.AvgPool, L.GlobalAvgPool, L.ReduceMean, L.Reshape, L.Transpose)


@dataclass
class CompiledGraph:
    """The ONNX model of a relevance pass and the (name, op, rule) of each entry of its layer sums."""

    model: onnx.ModelProto
    input_name: str
    layers: list[tuple[str, str, str | None]]


#: The methods the compiler writes as a graph; the others (perturbation and CAM methods) run on NumPy.
COMPILED_METHODS = ("lrp", "gradient", "gradient-x-input")


def node_errors(proto: onnx.ModelProto, graph: Graph, method: str, rules: dict[str, Rule]) -> dict[str, str]:
    """Returns node name -> why it cannot be compiled, for every such node (empty: the whole pass compiles)."""
    errors: dict[str, str] = {}
    try:
        compile_relevance(proto, graph, method, rules, errors=errors)
    except CompileError as exc:
        errors.setdefault("<model>", str(exc))
    return errors


def _check_plain_float32(proto: onnx.ModelProto, graph: Graph) -> None:
    """Raises CompileError for a quantized (QDQ) or non-float32 model: the compiled graph would run the model's own
    quantized or half-precision forward, while the rules are defined on the IR's float forward. Integer token ids
    read by an embedding are fine: the forward is float from the embedding on."""
    quantized = next((n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")), None)
    if quantized is not None:
        raise CompileError(f"cannot compile node {quantized.name or quantized.op_type} ({quantized.op_type}): "
                           "quantized models run on the NumPy engine")
    for value in proto.graph.input:
        dtype = value.type.tensor_type.elem_type
        ids = dtype in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and token_embedding(graph) is not None
        if dtype not in (0, onnx.TensorProto.FLOAT) and not ids:
            name = onnx.TensorProto.DataType.Name(dtype).lower()
            raise CompileError(f"cannot compile input {value.name}: {name} models run on the NumPy engine")


def compile_relevance(proto: onnx.ModelProto, graph: Graph, method: str, rules: dict[str, Rule],
                      model_output: str | None = None, errors: dict | None = None,
                      owned: bool = False) -> CompiledGraph:
    """Returns the relevance pass of `method` ("lrp", "gradient", "gradient-x-input") with per-node rules as
    one ONNX graph built on the model's own forward graph; CompileError names a node that cannot be compiled
    (or, given an `errors` dict, each such node is recorded there and sends zero relevance on). An `owned` proto
    is built on in place instead of copied (the caller hands it over)."""
    _check_plain_float32(proto, graph)
    model = _forward_model(proto, owned)
    available = {t for n in model.graph.node for t in n.output} | {i.name for i in model.graph.input}
    missing = [t for n in graph.nodes for t in n.inputs + [n.output] if t not in available]
    if missing:
        raise CompileError(f"cannot compile: IR tensor '{missing[0]}' is not a tensor of the ONNX graph")
    _check_names(available)
    params = activation_params(model, graph)
    b = GraphBuilder()
    b.know(model.graph.initializer)
    start, target_index = _start_relevance(b, graph, method)
    relevance, layers, sums, in_sums = _walk(b, graph, method, rules, start, params, errors)
    if method == "gradient-x-input" and token_embedding(graph) is None:  # an embedding multiplies it per token
        relevance = b.mul(relevance, graph.input_name)
    chosen = model_output or model.graph.output[0].name
    outputs = {SCORES: b.reshape(graph.output_name, [batch_size(graph), -1]), RELEVANCE_OUT: relevance,
               TARGET_INDEX: target_index, LAYER_SUMS: _concat(b, sums), MODEL_OUTPUT: chosen,
               LAYER_IN_SUMS: _concat(b, in_sums)}
    _finish(model, graph, b, outputs)
    onnx.helper.set_model_props(model, {
        "lrp_cli.version": __version__, "lrp_cli.method": method,
        "lrp_cli.rules": json.dumps({name: rule.spec() for name, rule in rules.items()}),
        "lrp_cli.layers": json.dumps(layers), "lrp_cli.io": json.dumps(IO_DOC | {"data_input": graph.input_name}),
        "lrp_cli.batch_size": str(batch_size(graph)),
    })
    return CompiledGraph(model, graph.input_name, layers)


def _forward_model(proto: onnx.ModelProto, owned: bool = False) -> onnx.ModelProto:
    """Returns the model (a copy unless owned) at opset >= MIN_OPSET (converted when older)."""
    model = proto
    if not owned:
        model = onnx.ModelProto()
        model.CopyFrom(proto)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    if opset < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:  # the converter raises its own types for ops it cannot adapt
            raise CompileError(f"cannot compile: opset {opset} model does not convert to opset {MIN_OPSET} "
                               f"({exc})".splitlines()[0]) from None
    model.ir_version = max(model.ir_version, 7)
    return model


def _check_names(available: set) -> None:
    taken = available & {TARGET, SCORES, RELEVANCE_OUT, TARGET_INDEX, LAYER_SUMS, MODEL_OUTPUT, LAYER_IN_SUMS}
    if taken:
        raise CompileError(f"cannot compile: the model already has a tensor named '{sorted(taken)[0]}'")


def batch_size(graph: Graph) -> int:
    """Returns the batch size N the IR graph is bound to (its input's first dimension)."""
    return int(graph.input_shape[0]) if graph.input_shape else 1


def _start_relevance(b: GraphBuilder, graph: Graph, method: str) -> tuple[str, str]:
    """Returns (output-shaped start relevance, the target index per item): one-hot at each item's target, valued
    f(x) for LRP."""
    out_shape = graph.shapes[graph.output_name]
    items = batch_size(graph)
    classes = int(np.prod(out_shape)) // items
    scores = b.reshape(graph.output_name, [items, classes])
    predicted = b.op("ArgMax", [scores], axis=1, keepdims=0)
    target = b.op("Where", [b.op("Less", [TARGET, b.scalar(0, np.int64)]), predicted, TARGET])
    hot = b.indicator(b.op("Equal", [b.reshape(target, [items, 1]),
                                     b.const(np.arange(classes).reshape(1, -1), "classes", np.int64)]))
    if method == "lrp":
        hot = b.mul(hot, b.reduce_sum(b.mul(scores, hot), [1]))
    return b.reshape(hot, out_shape), target


def _walk(b: GraphBuilder, graph: Graph, method: str, rules: dict, start: str, params: dict, errors: dict | None):
    """Returns (input relevance, [(name, op, rule)], [per-node sum tensors], [per-node received-sum tensors]) of
    the backward walk."""
    registry = RELEVANCE if method == "lrp" else GRADIENT
    nonnegative = nonnegative_tensors(graph, params)
    items = batch_size(graph)
    pending = {graph.output_name: start}
    layers, sums, in_sums = [], [], []
    for node in reversed(graph.nodes):
        r = pending.pop(node.output, None)
        if r is None:
            continue
        in_sums.append(_item_sums(b, r, items))
        rule = rules.get(node.name) if method == "lrp" else None
        site = NodeSite(b, node, list(node.inputs), node.output, r, graph.shapes, params.get(node.name, {}),
                        nonnegative, rule, method)
        try:
            lower = _node_backward(site, registry, rule)
        except CompileError as exc:
            if errors is None:
                raise
            errors[node.name] = str(exc)
            lower = [b.const(np.zeros(shape), "zero") for shape in site.x_shapes]
        parts = []
        for name, r_in in zip(node.inputs, lower):
            if r_in is None:
                continue
            parts.append(_item_sums(b, r_in, items))
            pending[name] = b.add(pending[name], r_in) if name in pending else r_in
        total = parts[0] if parts else b.const(np.zeros(items), "zero")
        for part in parts[1:]:
            total = b.add(total, part)
        sums.append(total)
        layers.append((node.name, node.op, rule.spec() if rule is not None else None))
    relevance = pending.get(graph.input_name)
    if relevance is None:
        relevance = b.const(np.zeros(graph.input_shape), "zero")
    return relevance, layers, sums, in_sums


def _concat(b: GraphBuilder, parts: list[str]) -> str:
    """Returns the node-major concatenation of per-node [N] sums (an empty tensor for a graph of no nodes)."""
    return b.op("Concat", parts, axis=0) if parts else b.const([])


def _item_sums(b: GraphBuilder, r: str, items: int) -> str:
    """Returns the [N] sums of a relevance tensor over each batch item (its first axis)."""
    if items == 1:
        return b.reshape(b.op("ReduceSum", [r], keepdims=0), [1])
    return b.op("ReduceSum", [b.reshape(r, [items, -1]), b.ints([1])], keepdims=0)


def _node_backward(site: NodeSite, registry: dict, rule: Rule | None) -> list:
    node = site.node
    if node.layer.is_linear:
        ops = linear_ops(site.b, node.layer, site.x_shapes[0], site.y_shape, f"{node.name} ({node.op})")
        if rule is None:
            return [ops.transposed(site.r, Weight(site.b, node.layer.weight))]
        try:
            return [emit_rule(RuleSite(ops, site.xs[0], site.y, site.r, node.inputs[0] in site.nonnegative), rule)]
        except KeyError:
            raise site.fail(f"no compiled form of rule {rule.spec()}") from None
    emit = find_emitter(registry, node.layer)
    if emit is None:
        raise site.fail("no compiled backward step for this layer kind")
    return emit(site)


def _finish(model: onnx.ModelProto, graph: Graph, b: GraphBuilder, outputs: dict) -> None:
    """Appends the built nodes and initializers; binds the data input to the IR's shape; sets the named outputs."""
    g = model.graph
    for name, tensor in outputs.items():
        b.nodes.append(helper.make_node("Identity", [tensor], [name], name=f"lrp/{name}"))
    g.node.extend(b.nodes)
    for tensor in b.take_initializers():
        g.initializer.append(tensor)
    data = next(i for i in g.input if i.name == graph.input_name)
    data.type.tensor_type.shape.CopyFrom(helper.make_tensor_value_info("_", 1, list(graph.input_shape))
                                         .type.tensor_type.shape)
    items = batch_size(graph)
    g.input.append(helper.make_tensor_value_info(TARGET, onnx.TensorProto.INT64, [items]))
    out_shape = graph.shapes[graph.output_name]
    chosen_type = next((o.type for o in g.output if o.name == outputs[MODEL_OUTPUT]), None)
    del g.output[:]
    g.output.extend([
        helper.make_tensor_value_info(SCORES, onnx.TensorProto.FLOAT, [items, int(np.prod(out_shape)) // items]),
        helper.make_tensor_value_info(RELEVANCE_OUT, onnx.TensorProto.FLOAT, list(graph.input_shape)),
        helper.make_tensor_value_info(TARGET_INDEX, onnx.TensorProto.INT64, [items]),
        helper.make_tensor_value_info(LAYER_SUMS, onnx.TensorProto.FLOAT, None),
    ])
    model_out = onnx.ValueInfoProto(name=MODEL_OUTPUT)
    if chosen_type is not None:
        model_out.type.CopyFrom(chosen_type)
    g.output.append(model_out)
    g.output.append(helper.make_tensor_value_info(LAYER_IN_SUMS, onnx.TensorProto.FLOAT, None))


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            attr = next((a for a in node.attribute if a.name == "value"), None)
            if attr is not None:
                values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def activation_params(model: onnx.ModelProto, graph: Graph) -> dict[str, dict]:
    """Returns node name -> the numeric parameters of its source activation op (Clip bounds, LeakyRelu alpha)."""
    by_output = {out: node for node in model.graph.node for out in node.output}
    constants = _constants(model)
    params = {}
    for node in graph.nodes:
        source = by_output.get(node.output)
        if source is None or not isinstance(node.layer, L.Activation):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in source.attribute}
        found = {k: float(v) for k, v in attrs.items() if k in ("alpha", "min", "max") and np.isscalar(v)}
        if source.op_type == "Clip":
            for index, key in ((1, "min"), (2, "max")):
                if len(source.input) > index and source.input[index]:
                    value = constants.get(source.input[index])
                    found[key] = None if value is None else float(np.asarray(value).reshape(-1)[0])
        if source.op_type in ("Min", "Max"):  # imported as a one-sided Clip, its bound in the layer's attrs
            found.update(node.layer.attrs)
        params[node.name] = found
    return params


def nonnegative_tensors(graph: Graph, params: dict) -> set[str]:
    """Returns the IR tensors that are >= 0 for every input by construction (ReLU outputs, poolings of them...)."""
    known: set[str] = set()
    for node in graph.nodes:
        if _is_nonnegative(node, all(t in known for t in node.inputs), params.get(node.name, {})):
            known.add(node.output)
    return known


def _is_nonnegative(node: Node, inputs_nonnegative: bool, params: dict) -> bool:
    layer = node.layer
    if isinstance(layer, L.Activation):
        if layer.op == "Clip":
            low = params.get("min", -np.inf)
            return low is not None and low >= 0
        return layer.op in NONNEGATIVE_ACTIVATIONS
    if not inputs_nonnegative:
        return False
    if isinstance(layer, ORDER_PRESERVING):
        return True
    if isinstance(layer, L.IndexMap):
        return layer.fill is None or layer.fill >= 0
    if isinstance(layer, L.Concat):
        return all(isinstance(p, int) or np.all(p >= 0) for p in layer.parts)
    if isinstance(layer, L.Add):
        return layer.constant is None or bool(np.all(layer.constant >= 0))
    if isinstance(layer, L.Resize):
        return bool(np.all(layer.rows >= 0) and np.all(layer.cols >= 0))
    return False
