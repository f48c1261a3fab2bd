"""ONNX graph -> IR: one converter per op type in a registry, plus constant folding and BatchNorm folding.

The graph is bound to a concrete input shape (batch 1): every tensor's shape is known once its producer is
converted, so exporter patterns like Shape -> Gather -> Concat -> Reshape fold to constants (evaluated by ONNX's
reference evaluator) and no shape is ever hard-coded. Identity and eval-mode Dropout become aliases; a trailing
Softmax/LogSoftmax is stripped so that the pre-softmax score is explained.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from lrp_cli.errors import ModelLoadError
from lrp_cli.ir import layers as L
from lrp_cli.ir import masks
from lrp_cli.ir.l2norm import L2Normalize
from lrp_cli.importers import onnx_fusion, onnx_tensors
from lrp_cli.ir import transformer as T
from lrp_cli.ir.graph import Graph, Node
from lrp_cli.ir.windows import Window, same_pads
from lrp_cli.preprocess import fits_shape, shape_text

CONVERTERS: dict[str, Callable] = {}
ALIAS_OPS = ("Identity", "Dropout")
OUTPUT_STRIPPED_OPS = ("Softmax", "LogSoftmax")
#: Integer-arithmetic ops (onnxruntime's QOperator format): lrp-cli computes in float, so it reads QDQ exports.
INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "DynamicQuantizeLinear")


def converter(*ops: str):
    """Returns a decorator that registers a function as the converter of the given ONNX op types."""
    def register(fn):
        for op in ops:
            CONVERTERS[op] = fn
        return fn
    return register


def supported_ops() -> list[str]:
    """Returns every ONNX op type the importer accepts, sorted."""
    return sorted(set(CONVERTERS) | set(ALIAS_OPS) | set(OUTPUT_STRIPPED_OPS) | {"Constant", "Shape", "Size"})


def attributes(node: onnx.NodeProto) -> dict:
    """Returns the node's attributes as a name -> Python value dict."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class ImportContext:
    """State of one conversion: constants, aliases, converted nodes and the dummy forward values (for shapes)."""

    def __init__(self, path: Path, model: onnx.ModelProto, output: str | None):
        self.path = path
        self.model = model
        graph = model.graph
        self.constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.alias: dict[str, str] = {}
        self.nodes: list[Node] = []
        self.values: dict[str, np.ndarray] = {}
        self.notes: list[str] = []
        self.used_names: set[str] = set()
        self.output = self._choose_output(output)
        self._resolve_aliases()
        self.consumers = self._count_consumers()

    def _choose_output(self, output: str | None) -> str:
        names = [o.name for o in self.model.graph.output]
        if not names:
            raise ModelLoadError(f"{self.path}: the graph has no outputs")
        if output is None:
            return names[0]
        if output not in names:
            raise ModelLoadError(f"{self.path}: --output '{output}' is not a graph output; outputs: {', '.join(names)}")
        return output

    def _resolve_aliases(self) -> None:
        for node in self.model.graph.node:
            if node.op_type in ALIAS_OPS:
                self.alias[node.output[0]] = self.name(node.input[0])

    def _count_consumers(self) -> Counter:
        counts = Counter()
        for node in self.model.graph.node:
            if node.op_type not in ALIAS_OPS:
                counts.update(self.name(t) for t in node.input if t)
        counts.update(self.name(o.name) for o in self.model.graph.output)
        return counts

    def name(self, tensor: str) -> str:
        """Returns the tensor a name stands for after Identity/Dropout aliases."""
        while tensor in self.alias:
            tensor = self.alias[tensor]
        return tensor

    def is_constant(self, tensor: str) -> bool:
        """Returns True for an absent optional input or a tensor with a value known at import."""
        return not tensor or self.name(tensor) in self.constants

    def const(self, node: onnx.NodeProto, index: int, default=None):
        """Returns input `index` of node as a constant array (default when absent); error when it is dynamic."""
        if index >= len(node.input) or not node.input[index]:
            return default
        tensor = self.name(node.input[index])
        if tensor not in self.constants:
            raise self.error(node, f"input {index} ('{node.input[index]}') must be a constant")
        return self.constants[tensor]

    def shape(self, tensor: str) -> tuple[int, ...]:
        """Returns the static shape of a dynamic or constant tensor."""
        tensor = self.name(tensor)
        return tuple(self.constants[tensor].shape if tensor in self.constants else self.values[tensor].shape)

    def error(self, node: onnx.NodeProto, message: str) -> ModelLoadError:
        """Returns a load error naming the file, the node and its op type."""
        return ModelLoadError(f"{self.path}: node '{node.name or node.output[0]}' ({node.op_type}): {message}")

    def unique_name(self, node: onnx.NodeProto) -> str:
        """Returns the node's name, made unique and never empty."""
        base = node.name or f"{node.op_type}_{len(self.nodes)}"
        name, k = base, 1
        while name in self.used_names:
            name, k = f"{base}_{k}", k + 1
        self.used_names.add(name)
        return name

    def add(self, node: onnx.NodeProto, layer: L.Layer, inputs: list[str] | None = None,
            output: str | None = None) -> Node:
        """Returns a new IR node for layer reading `inputs` (default: node's first input) into `output`
        (default: node's first output)."""
        inputs = [self.name(t) for t in (inputs if inputs is not None else node.input[:1])]
        if layer.is_linear and not all(np.isfinite(p).all() for p in (layer.weight, layer.bias) if p is not None):
            raise self.error(node, "weights or bias hold NaN or Inf")
        ir_node = Node(self.unique_name(node), layer, inputs, output or node.output[0], node.op_type)
        try:  # float32 like the dummy input: the values only give shapes, and float32 halves the cost
            self.values[ir_node.output] = layer.astype(np.float32).forward(*(self.values[t] for t in inputs))
        except (ValueError, IndexError) as exc:
            raise self.error(node, f"cannot run on the input shapes {[self.shape(t) for t in inputs]}: {exc}")
        self.nodes.append(ir_node)
        return ir_node

    def producer_ops(self) -> dict[str, str]:
        """Returns tensor name -> the ONNX op type of the node that writes it."""
        return {n.output: n.source_op for n in self.nodes}

    def sole_linear_producer(self, tensor: str) -> Node | None:
        """Returns the Conv/Dense node writing tensor when nothing else reads it (so folding into it is exact)."""
        tensor = self.name(tensor)
        if self.consumers[tensor] != 1:
            return None
        for ir_node in reversed(self.nodes):
            if ir_node.output == tensor:
                return ir_node if ir_node.layer.is_linear else None
        return None


def load_onnx(path: Path) -> onnx.ModelProto:
    """Returns the ONNX model stored in a file, its external data loaded (a one-line load error naming the file,
    and the tensor when one is missing, truncated or ill-sized)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises several unrelated types for a bad file
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})".splitlines()[0])
    if not model.HasField("graph"):  # an empty file parses as an empty message
        raise ModelLoadError(f"{path}: not an ONNX model (it holds no graph)")
    onnx_tensors.load_tensors(model, Path(path))
    return model


class SymbolicInputError(ModelLoadError):
    """The model input has a symbolic dimension other than the batch: the graph needs a concrete input shape."""

    def __init__(self, message: str, shape: tuple):
        super().__init__(message)
        self.shape = shape  # the input shape with None for each symbolic dimension (batch set to 1)

    def __reduce__(self):  # a loaded model holding this error pickles (to worker processes)
        return type(self), (str(self), self.shape)


def import_onnx(path: str | Path, output: str | None = None, model: onnx.ModelProto | None = None,
                input_shape: tuple[int, ...] | None = None) -> Graph:
    """Returns the IR graph of an ONNX classifier file (or of its already loaded `model`), bound to batch 1 and
    to `input_shape` where the model's input has symbolic dimensions."""
    path = Path(path)
    model = model if model is not None else load_onnx(path)
    ctx = ImportContext(path, model, output)
    input_name, input_shape = _data_input(ctx, input_shape)
    ctx.values[input_name] = np.zeros(input_shape, dtype=np.float32)
    regions = onnx_fusion.find_regions(model)
    inside = {k for region in regions.values() for k in region.nodes}
    for k, node in enumerate(model.graph.node):
        if k in regions:
            _convert_region(ctx, regions[k])
        elif k not in inside:
            _convert_node(ctx, node)
    output_name = ctx.name(ctx.output)
    if output_name in ctx.constants or output_name not in ctx.values:
        raise ModelLoadError(f"{path}: output '{ctx.output}' does not depend on the input")
    nodes = _prune(ctx.nodes, output_name)
    shapes = {t: v.shape for t, v in ctx.values.items()}
    return Graph(nodes, input_name, input_shape, output_name, shapes, ctx.notes)


def _data_input(ctx: ImportContext, bound: tuple[int, ...] | None) -> tuple[str, tuple[int, ...]]:
    """Returns the name and batch-1 shape of the one graph input that is not an initializer, its symbolic
    dimensions taken from `bound`."""
    inputs = [i for i in ctx.model.graph.input if i.name not in ctx.constants]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise ModelLoadError(f"{ctx.path}: expected exactly one data input, found: {names}")
    if not inputs[0].type.tensor_type.HasField("shape"):
        raise ModelLoadError(f"{ctx.path}: input '{inputs[0].name}' declares no shape; export it with one")
    shape = declared_input_shape(inputs[0])
    if bound is not None:
        if not fits_shape(tuple(bound), shape):
            raise ModelLoadError(f"{ctx.path}: input shape {list(bound)} does not fit the model input "
                                 f"{shape_text(shape)}")
        shape = tuple(bound)
    if None in shape:
        raise SymbolicInputError(f"{ctx.path}: input '{inputs[0].name}' {shape_text(shape)} has symbolic "
                                 "dimensions; a .npy tensor input fixes them, an image needs --size H,W (or "
                                 "size in the sidecar)", shape)
    return inputs[0].name, shape


def declared_input_shape(value_info: onnx.ValueInfoProto) -> tuple[int | None, ...]:
    """Returns an input's declared shape with the batch set to 1 and None for every other symbolic dimension."""
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (1 if k == 0 else None)
                 for k, d in enumerate(dims))


def _convert_node(ctx: ImportContext, node: onnx.NodeProto) -> None:
    op = node.op_type
    if op in ALIAS_OPS:
        return  # resolved up front in ImportContext
    unknown = [t for t in node.input if not ctx.is_constant(t) and ctx.name(t) not in ctx.values]
    if unknown:
        raise ctx.error(node, f"input '{unknown[0]}' is not defined before this node (no initializer, graph input "
                              "or earlier node writes it: a missing initializer, or a cycle)")
    if op in ("Shape", "Size") and not ctx.is_constant(node.input[0]):
        _fold_shape(ctx, node)
    elif all(ctx.is_constant(t) for t in node.input):
        _fold_constant(ctx, node)
    elif op in OUTPUT_STRIPPED_OPS:
        _strip_output_softmax(ctx, node)
    elif op in INTEGER_OPS or op.startswith("QLinear"):
        raise ctx.error(node, "integer-arithmetic quantized op (QOperator format) is not converted; export the model "
                              "in QDQ format (QuantizeLinear/DequantizeLinear pairs, e.g. onnxruntime's "
                              "quantize_static with quant_format=QuantFormat.QDQ)")
    elif op in CONVERTERS:
        CONVERTERS[op](ctx, node)
    else:
        raise ModelLoadError(f"{ctx.path}: unsupported op {op} at node '{node.name or node.output[0]}' "
                             f"(any op is folded on constants only); supported ops: {', '.join(supported_ops())}")


def evaluate(ctx: ImportContext, node: onnx.NodeProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Returns the outputs of one node on the given inputs, computed by ONNX's reference evaluator."""
    try:
        opset = {o.domain: o.version for o in ctx.model.opset_import}
        single = onnx.helper.make_model(
            onnx.helper.make_graph([node], "single", [_value_info(t, v) for t, v in feeds.items()],
                                   [onnx.helper.make_tensor_value_info(o, 0, None) for o in node.output]),
            opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opset.items()])
        return [np.asarray(v) for v in ReferenceEvaluator(single).run(None, feeds)]
    except Exception as exc:  # the evaluator raises many kinds for ops it cannot run
        raise ctx.error(node, f"cannot evaluate: {exc}".splitlines()[0])


def _fold_constant(ctx: ImportContext, node: onnx.NodeProto) -> None:
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):  # ONNX's evaluator has them from opset 19 only
        ctx.constants[node.output[0]] = _quantization(ctx, node)
        return
    results = evaluate(ctx, node, {t: ctx.constants[ctx.name(t)] for t in node.input if t})
    for name, value in zip(node.output, results):
        ctx.constants[name] = value


def _value_info(name: str, value: np.ndarray):
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.asarray(value).dtype)
    return onnx.helper.make_tensor_value_info(name, elem, np.shape(value))


def _fold_shape(ctx: ImportContext, node: onnx.NodeProto) -> None:
    shape = np.array(ctx.shape(node.input[0]), dtype=np.int64)
    if node.op_type == "Size":
        ctx.constants[node.output[0]] = np.array(shape.prod(), dtype=np.int64)
        return
    a = attributes(node)
    ctx.constants[node.output[0]] = shape[a.get("start", 0):a.get("end", len(shape))]


def _strip_output_softmax(ctx: ImportContext, node: onnx.NodeProto) -> None:
    if ctx.name(node.output[0]) != ctx.name(ctx.output):
        if node.op_type == "Softmax":
            return _softmax(ctx, node)
        raise ctx.error(node, "a LogSoftmax inside the network has no LRP rule; only an output LogSoftmax is "
                              "supported (it is stripped to explain the pre-softmax score)")
    ctx.alias[node.output[0]] = ctx.name(node.input[0])
    ctx.notes.append(f"stripped output {node.op_type} '{node.name or node.output[0]}': explaining the "
                     "pre-softmax score")


def _prune(nodes: list[Node], output: str) -> list[Node]:
    """Returns the nodes the output depends on, in their original order."""
    needed, kept = {output}, []
    for node in reversed(nodes):
        if node.output in needed:
            kept.append(node)
            needed.update(node.inputs)
    return kept[::-1]


# --- converters ---------------------------------------------------------------------------------------------


def _window(ctx: ImportContext, node: onnx.NodeProto, kernel, spatial: tuple[int, ...]) -> Window:
    a = attributes(node)
    kernel = tuple(int(k) for k in kernel)
    rank = len(kernel)
    if rank != len(spatial) or rank < 1:
        raise ctx.error(node, f"a {rank}-D kernel does not fit an input with {len(spatial)} spatial axes")
    strides = tuple(a.get("strides", (1,) * rank))
    dilations = tuple(a.get("dilations", (1,) * rank))
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = same_pads(spatial, kernel, strides, dilations, upper=auto_pad == "SAME_UPPER")
    elif auto_pad in ("NOTSET", "VALID"):
        pads = tuple(a.get("pads", (0,) * 2 * rank)) if auto_pad == "NOTSET" else (0,) * 2 * rank
    else:
        raise ctx.error(node, f"unknown auto_pad {auto_pad}")
    return Window(kernel, strides, pads, dilations, bool(a.get("ceil_mode", 0)))


@converter("Conv")
def _conv(ctx, node):
    weight = ctx.const(node, 1)
    if weight.ndim < 3:
        raise ctx.error(node, f"a convolution weight needs a spatial axis (weight has {weight.ndim} dims)")
    a = attributes(node)
    window = _window(ctx, node, a.get("kernel_shape", weight.shape[2:]), ctx.shape(node.input[0])[2:])
    ctx.add(node, L.Conv(weight, ctx.const(node, 2), window, int(a.get("group", 1))))


@converter("Gemm")
def _gemm(ctx, node):
    a = attributes(node)
    weight = ctx.const(node, 1)
    weight = (weight.T if a.get("transB", 0) else weight) * a.get("alpha", 1.0)
    bias = ctx.const(node, 2)
    if bias is not None:
        bias = _channel_vector(bias * a.get("beta", 1.0), (1, weight.shape[1]), 1)
        if bias is None:
            raise ctx.error(node, "only a Gemm bias C that is the same for every row is supported")
    inputs = None
    if a.get("transA", 0):
        transposed = onnx.helper.make_node("Transpose", node.input[:1], [node.output[0] + "/transA"],
                                           name=(node.name or node.output[0]) + "/transA")
        inputs = [ctx.add(transposed, L.Transpose((1, 0))).output]
    ctx.add(node, L.Dense(weight, bias), inputs)


@converter("MatMul")
def _matmul(ctx, node):
    if not ctx.is_constant(node.input[0]) and not ctx.is_constant(node.input[1]):
        return _product(ctx, node, T.MATMUL)
    weight = ctx.const(node, 1)
    if weight.ndim != 2:
        raise ctx.error(node, "only a MatMul by a constant 2-D matrix is supported")
    ctx.add(node, L.Dense(weight, None))


def _channel_vector(const: np.ndarray, out_shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """Returns const as a vector over output axis `axis` when it varies along that axis only, else None."""
    const = np.asarray(const, dtype=np.float64)
    if const.ndim > len(out_shape):
        return None
    full = (1,) * (len(out_shape) - const.ndim) + const.shape
    if any(n != 1 for k, n in enumerate(full) if k != axis) or full[axis] not in (1, out_shape[axis]):
        return None
    return np.broadcast_to(const.reshape(-1), (out_shape[axis],)).copy()


def _fold_affine(ctx, node, tensor: str, scale, shift) -> bool:
    """Folds y -> y * scale + shift into the sole linear producer of tensor; returns True when it did.

    The producer then writes the folded node's output tensor: its own tensor no longer exists (and nothing else
    read it), so every remaining tensor name keeps its ONNX meaning.
    """
    producer = ctx.sole_linear_producer(tensor)
    if producer is None:
        return False
    out_shape = ctx.shape(tensor)
    axis = 1 if isinstance(producer.layer, L.Conv) else len(out_shape) - 1
    scale_vec = _channel_vector(scale, out_shape, axis)
    shift_vec = _channel_vector(shift, out_shape, axis)
    if scale_vec is None or shift_vec is None:
        return False
    producer.layer.fold_output_affine(scale_vec, shift_vec)
    channel_shape = (-1,) + (1,) * (len(out_shape) - 1 - axis)
    value = ctx.values.pop(producer.output)
    producer.output = node.output[0]
    ctx.values[producer.output] = (value * scale_vec.reshape(channel_shape) + shift_vec.reshape(channel_shape)
                                   ).astype(np.float32)
    return True


def _affine_or_fold(ctx, node, tensor: str, scale, shift) -> None:
    if not _fold_affine(ctx, node, tensor, scale, shift):
        ctx.add(node, L.Affine(scale, shift, node.op_type), [tensor])


@converter("BatchNormalization")
def _batchnorm(ctx, node):
    gamma, beta, mean, var = (ctx.const(node, k).astype(np.float64) for k in range(1, 5))
    scale = gamma / np.sqrt(var + attributes(node).get("epsilon", 1e-5))
    shift = beta - mean * scale
    rank = len(ctx.shape(node.input[0]))
    shape = (-1,) + (1,) * (rank - 2)
    _affine_or_fold(ctx, node, node.input[0], scale.reshape(shape), shift.reshape(shape))


@converter("Add", "Sub", "Mul", "Div", "Sum")
def _arithmetic(ctx, node):
    dynamic = [t for t in node.input if not ctx.is_constant(t)]
    constants = [ctx.constants[ctx.name(t)].astype(np.float64) for t in node.input if ctx.is_constant(t)]
    if node.op_type in ("Add", "Sum"):
        constant = sum(constants) if constants else None
        if len(dynamic) == 1 and not _is_embedding(constant):
            return _affine_or_fold(ctx, node, dynamic[0], 1.0, constant)
        # a residual sum, or a position embedding: it takes its share of the relevance, as a bias does (z-rule)
        ctx.add(node, L.Add(constant), dynamic)
        return
    if node.op_type == "Mul" and len(dynamic) == 2:
        return _gated_product(ctx, node)
    if len(dynamic) != 1:
        raise ctx.error(node, "a product or difference of two activations has no LRP rule here")
    const = constants[0]
    first_is_dynamic = not ctx.is_constant(node.input[0])
    if node.op_type == "Mul":
        scale, shift = const, 0.0
    elif node.op_type == "Div" and first_is_dynamic:
        scale, shift = 1.0 / const, 0.0
    elif node.op_type == "Sub":
        scale, shift = (1.0, -const) if first_is_dynamic else (-1.0, const)
    else:
        raise ctx.error(node, "division of a constant by an activation has no LRP rule")
    _affine_or_fold(ctx, node, dynamic[0], scale, shift)


def _is_embedding(constant) -> bool:
    """Returns True for a constant that varies along two or more axes (tokens and channels), not a bias vector."""
    return constant is not None and sum(n > 1 for n in np.shape(constant)) >= 2


def _clip_bound(ctx, node, index: int, attr: str, default: float) -> float:
    value = ctx.const(node, index)
    if value is None:
        value = attributes(node).get(attr, default)
    return float(value)


@converter("Clip")
def _clip(ctx, node):
    low = _clip_bound(ctx, node, 1, "min", -np.inf)
    high = _clip_bound(ctx, node, 2, "max", np.inf)
    ctx.add(node, L.Activation("Clip", lambda x: np.clip(x, low, high), lambda x, y: (x > low) & (x < high)))


@converter("Min", "Max")
def _min_max(ctx, node):
    """Min or Max of an activation and a scalar constant: a Clip on one side (tf2onnx's Minimum/Maximum relu6)."""
    dynamic = [t for t in node.input if not ctx.is_constant(t)]
    constants = [np.asarray(ctx.constants[ctx.name(t)]) for t in node.input if ctx.is_constant(t)]
    if len(dynamic) != 1 or len(constants) != 1 or np.ptp(constants[0]) > 0:
        raise ctx.error(node, f"{node.op_type} has an LRP rule only of one activation and one scalar constant")
    bound = float(constants[0].reshape(-1)[0])
    low, high = (bound, np.inf) if node.op_type == "Max" else (-np.inf, bound)
    ctx.add(node, L.Activation("Clip", lambda x: np.clip(x, low, high), lambda x, y: (x > low) & (x < high),
                               attrs={"min": low, "max": high}), dynamic)


@converter("LeakyRelu")
def _leaky_relu(ctx, node):
    alpha = float(attributes(node).get("alpha", 0.01))
    ctx.add(node, L.Activation("LeakyRelu", lambda x: np.where(x >= 0, x, alpha * x),
                               lambda x, y: np.where(x > 0, 1.0, alpha)))


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _hard_sigmoid(a):
    alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
    linear = lambda x: alpha * x + beta  # noqa: E731
    return (lambda x: np.clip(linear(x), 0, 1),
            lambda x, y: alpha * ((linear(x) > 0) & (linear(x) < 1)))


def _elu(a, gamma=1.0, default_alpha=1.0):
    alpha = a.get("alpha", default_alpha)
    return (lambda x: gamma * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),
            lambda x, y: gamma * np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0))))


def _selu(a):
    return _elu(a, a.get("gamma", 1.05070102214813232421875), 1.67326319217681884765625)


def _gelu(a):
    from scipy.special import erf  # scipy comes with scikit-learn
    if a.get("approximate", b"none") in (b"tanh", "tanh"):
        k = np.sqrt(2 / np.pi)
        inner = lambda x: k * (x + 0.044715 * x ** 3)  # noqa: E731
        return (onnx_fusion.gelu_tanh,
                lambda x, y: 0.5 * (1 + np.tanh(inner(x)))
                + 0.5 * x * (1 - np.tanh(inner(x)) ** 2) * k * (1 + 3 * 0.044715 * x ** 2))
    return (onnx_fusion.gelu_erf,
            lambda x, y: 0.5 * (1 + erf(x / np.sqrt(2))) + x * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi))


#: Element-wise activations: op -> (attributes -> (function, derivative(x, y))). All pass relevance unchanged
#: (Eq 63); the derivative serves the gradient methods (zero at kinks, as PyTorch).
ACTIVATIONS = {
    "Relu": lambda a: (lambda x: np.maximum(x, 0), lambda x, y: x > 0),
    "Tanh": lambda a: (np.tanh, lambda x, y: 1 - y * y),
    "Sigmoid": lambda a: (_sigmoid, lambda x, y: y * (1 - y)),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": lambda a: (lambda x: x * np.clip(x / 6 + 0.5, 0, 1),
                            lambda x, y: np.where(x < -3, 0.0, np.where(x > 3, 1.0, x / 3 + 0.5))),
    "Elu": _elu,
    "Selu": _selu,
    "Gelu": _gelu,
    "Softplus": lambda a: (lambda x: np.logaddexp(x, 0).astype(x.dtype), lambda x, y: _sigmoid(x)),
}


def _text_values(attrs: dict) -> dict:
    """Returns the attributes with byte strings decoded (ONNX stores string attributes as bytes)."""
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}


@converter(*ACTIVATIONS)
def _activation(ctx, node):
    a = attributes(node)
    ctx.add(node, L.Activation(node.op_type, *ACTIVATIONS[node.op_type](a), attrs=_text_values(a)))


@converter("PRelu")
def _prelu(ctx, node):
    slope = ctx.const(node, 1).astype(np.float64)
    ctx.add(node, L.Activation("PRelu", lambda x: np.where(x >= 0, x, slope.astype(x.dtype) * x),
                               lambda x, y: np.where(x > 0, 1.0, slope.astype(x.dtype)), attrs={"slope": slope}))


@converter("MaxPool")
def _maxpool(ctx, node):
    if len(node.output) > 1 and node.output[1]:
        raise ctx.error(node, "the Indices output of MaxPool is not supported")
    a = attributes(node)
    ctx.add(node, L.MaxPool(_window(ctx, node, a["kernel_shape"], ctx.shape(node.input[0])[2:])))


@converter("AveragePool")
def _avgpool(ctx, node):
    a = attributes(node)
    window = _window(ctx, node, a["kernel_shape"], ctx.shape(node.input[0])[2:])
    ctx.add(node, L.AvgPool(window, bool(a.get("count_include_pad", 0))))


@converter("LpPool")
def _lppool(ctx, node):
    a = attributes(node)
    window = _window(ctx, node, a["kernel_shape"], ctx.shape(node.input[0])[2:])
    ctx.add(node, L.LpPool(window, float(a.get("p", 2))))


def _spatial(ctx, node) -> tuple[int, ...]:
    shape = ctx.shape(node.input[0])
    if len(shape) < 3:
        raise ctx.error(node, f"a global pooling needs an [N, C, *spatial] input, got {list(shape)}")
    return shape[2:]


@converter("GlobalAveragePool")
def _global_avgpool(ctx, node):
    _spatial(ctx, node)
    ctx.add(node, L.GlobalAvgPool())


@converter("GlobalMaxPool")
def _global_maxpool(ctx, node):
    ctx.add(node, L.MaxPool(L.global_window(_spatial(ctx, node)), "GlobalMaxPool"))


def _reshape_to(ctx, node, shape) -> None:
    ctx.add(node, L.Reshape(tuple(int(n) for n in shape), node.op_type))


@converter("Flatten")
def _flatten(ctx, node):
    shape = ctx.shape(node.input[0])
    axis = attributes(node).get("axis", 1) % max(len(shape), 1)
    _reshape_to(ctx, node, (int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))))


@converter("Reshape")
def _reshape(ctx, node):
    shape = ctx.shape(node.input[0])
    target = [int(n) for n in ctx.const(node, 1)]
    if not attributes(node).get("allowzero", 0):
        target = [shape[k] if n == 0 else n for k, n in enumerate(target)]
    try:
        _reshape_to(ctx, node, np.empty(shape, dtype=np.int8).reshape(target).shape)
    except ValueError:
        raise ctx.error(node, f"cannot reshape {shape} to {target}") from None


def _axes(ctx, node) -> list[int] | None:
    axes = ctx.const(node, 1)
    if axes is None:
        axes = attributes(node).get("axes")
    return None if axes is None else [int(a) for a in np.atleast_1d(axes)]


@converter("Squeeze")
def _squeeze(ctx, node):
    shape = ctx.shape(node.input[0])
    axes = _axes(ctx, node)
    axes = [k for k, n in enumerate(shape) if n == 1] if axes is None else [a % len(shape) for a in axes]
    _reshape_to(ctx, node, [n for k, n in enumerate(shape) if k not in axes])


@converter("Unsqueeze")
def _unsqueeze(ctx, node):
    shape = list(ctx.shape(node.input[0]))
    axes = _axes(ctx, node)
    rank = len(shape) + len(axes)
    for axis in sorted(a % rank for a in axes):
        shape.insert(axis, 1)
    _reshape_to(ctx, node, shape)


@converter("Transpose")
def _transpose(ctx, node):
    rank = len(ctx.shape(node.input[0]))
    ctx.add(node, L.Transpose(tuple(attributes(node).get("perm", range(rank - 1, -1, -1)))))


@converter("Concat")
def _concat(ctx, node):
    axis = attributes(node)["axis"] % len(ctx.shape(node.input[0]))
    dynamic = [t for t in node.input if not ctx.is_constant(t)]
    parts = [ctx.constants[ctx.name(t)] if ctx.is_constant(t) else dynamic.index(t) for t in node.input]
    ctx.add(node, L.Concat(axis, parts), dynamic)


# --- issue-3 ops: element routing, reductions, products, resizing, transposed convolution ------------------


def _constant_feeds(ctx, node) -> dict[str, np.ndarray]:
    return {t: ctx.constants[ctx.name(t)] for t in node.input[1:] if t}


@converter("Slice", "Split", "Pad", "Gather", "Tile", "Expand", "DepthToSpace", "SpaceToDepth")
def _index_map(ctx, node):
    """Element-moving ops: run the op on the 1-based positions of the input elements; the result, minus one,
    is each output's index map (a Pad's constant fill shows as -1)."""
    if any(not ctx.is_constant(t) for t in node.input[1:]):
        raise ctx.error(node, "only constant indices, sizes and pads are supported")
    shape = ctx.shape(node.input[0])
    feeds = _constant_feeds(ctx, node)
    feeds[node.input[0]] = np.arange(1, int(np.prod(shape)) + 1, dtype=np.int64).reshape(shape)
    fill = None
    if node.op_type == "Pad":
        node, feeds, fill = _pad_with_zero_fill(ctx, node, feeds)
    for output, positions in zip(node.output, evaluate(ctx, node, feeds)):
        if output:
            index = positions.astype(np.int64) - 1
            ctx.add(node, L.IndexMap(index, fill if (index < 0).any() else None, node.op_type), output=output)


def _pad_with_zero_fill(ctx, node, feeds):
    """Returns (node, feeds, fill) for tracing a Pad: its constant value replaced by 0, the real value as fill."""
    a = attributes(node)
    mode = a.get("mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        return node, feeds, None
    if "value" in a:  # opset < 11 keeps pads and value as attributes
        return _with_attribute(node, "value", 0.0), feeds, float(a["value"])
    value = ctx.const(node, 2)
    if value is None:
        return node, feeds, 0.0
    feeds[node.input[2]] = np.zeros_like(value, dtype=np.int64)
    return node, feeds, float(np.asarray(value).reshape(-1)[0])


def _with_attribute(node, name, value):
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    kept = [attr for attr in copy.attribute if attr.name != name]
    del copy.attribute[:]
    copy.attribute.extend(kept + [onnx.helper.make_attribute(name, value)])
    return copy


@converter("ReduceMean")
def _reduce_mean(ctx, node):
    shape = ctx.shape(node.input[0])
    axes = _axes(ctx, node)
    axes = tuple(range(len(shape))) if axes is None else tuple(sorted(a % len(shape) for a in axes))
    keepdims = bool(attributes(node).get("keepdims", 1))
    if axes == (2, 3) and keepdims and len(shape) == 4:
        ctx.add(node, L.GlobalAvgPool())
    else:
        ctx.add(node, L.ReduceMean(axes, keepdims))


GATE_OPS = ("Sigmoid", "HardSigmoid")
#: The activations of a hard sigmoid written out, relu6(x + 3) / 6 (Min/Max of a scalar import as Clip); its
#: scalar Add/Sub/Mul/Div steps are Affine layers. Exporters write at most 5 steps; 6 bounds the walk back.
_WRITTEN_GATE_STEPS = ("Clip", "Relu")
_MAX_GATE_STEPS = 6
_GATE_PROBE = np.linspace(-64.0, 64.0, 4097)  # 1/32 apart, wide enough for any breakpoints an exporter writes


def _gated_product(ctx, node):
    producers = ctx.producer_ops()
    gates = [producers.get(ctx.name(t)) in GATE_OPS or _is_written_hard_sigmoid(ctx, ctx.name(t))
             for t in node.input[:2]]
    if gates == [False, False]:
        raise ctx.error(node, "a product of two activations has an LRP rule only when one operand is a gate "
                              "(the output of a Sigmoid/HardSigmoid, or a hard sigmoid written out as "
                              "relu6(x + 3) / 6)")
    signal = 0 if gates[1] else 1
    ctx.add(node, L.GatedProduct(signal), list(node.input[:2]))


def _is_written_hard_sigmoid(ctx, tensor: str) -> bool:
    """Returns True when the tensor is k * clip(a t + b, 0, 1) of an earlier tensor t (k > 0, a != 0), computed by
    a chain of scalar Add/Sub/Mul/Div and Clip/Relu/Min/Max nodes (checked on probe values, as a HardSigmoid): a
    gate, whichever exporter wrote it out."""
    by_output = {n.output: n for n in ctx.nodes}
    chain = []
    while len(chain) < _MAX_GATE_STEPS and tensor in by_output and _is_gate_step(by_output[tensor]):
        chain.append(by_output[tensor])
        tensor = chain[-1].inputs[0]
        if isinstance(chain[-1].layer, L.Activation) and _fits_hard_sigmoid(chain):
            return True
    return False


def _is_gate_step(ir_node: Node) -> bool:
    layer = ir_node.layer
    if isinstance(layer, L.Affine):
        return layer.scale.size == 1 and layer.shift.size == 1
    return isinstance(layer, L.Activation) and layer.op in _WRITTEN_GATE_STEPS


def _fits_hard_sigmoid(chain: list[Node]) -> bool:
    """Returns whether the chain (last node first) computes k * clip(a t + b, 0, 1) on the probe values."""
    values = _GATE_PROBE
    for ir_node in reversed(chain):
        values = np.asarray(ir_node.layer.forward(values), dtype=np.float64).reshape(-1)
    top = float(values.max())
    if not np.isfinite(values).all() or top <= 0:
        return False
    share = values / top
    inside = (share > 1e-9) & (share < 1 - 1e-9)
    if inside.sum() < 2 or (share < 1e-12).sum() < 2 or (share > 1 - 1e-9).sum() < 2:
        return False  # both plateaus inside the probe: a ReLU alone is no gate
    slope, offset = np.polyfit(_GATE_PROBE[inside], share[inside], 1)
    return slope != 0 and float(np.abs(np.clip(slope * _GATE_PROBE + offset, 0, 1) - share).max()) < 1e-6


def _resize_matrix(ctx, node, axis: int, size: int, feeds: dict) -> np.ndarray:
    """Returns the [out, in] interpolation matrix of spatial axis 2 or 3, from resizing unit vectors.

    The unit vectors sit on the channel axis and are constant along the other spatial axis, whose
    interpolation rows sum to one, so any output position along it reads the matrix.
    """
    other = 5 - axis
    scales = _resize_scales(ctx, node)
    sizes_name = node.input[3] if node.op_type == "Resize" and len(node.input) > 3 and node.input[3] else None
    other_size = 1 if sizes_name or scales is None else max(1, int(np.ceil(1.0 / scales[other])))
    shape = [1, size, 1, 1]
    shape[axis], shape[other] = size, other_size
    basis = np.broadcast_to(np.eye(size, dtype=np.float32).reshape([1, size] + [size if k == axis else 1
                                                                                 for k in (2, 3)]), shape)
    feeds = dict(feeds, **{node.input[0]: np.ascontiguousarray(basis)})
    if sizes_name:
        sizes = np.ones(4, dtype=np.int64)
        sizes[1], sizes[axis] = size, int(feeds[sizes_name][axis])
        feeds[sizes_name] = sizes
    out = evaluate(ctx, node, feeds)[0][0]
    return (out[:, :, 0] if axis == 2 else out[:, 0, :]).T


def _resize_scales(ctx, node) -> np.ndarray | None:
    if node.op_type == "Upsample":
        scales = ctx.const(node, 1)
        return np.asarray(attributes(node)["scales"] if scales is None else scales, dtype=np.float64)
    scales = ctx.const(node, 2)
    return None if scales is None or np.size(scales) == 0 else np.asarray(scales, dtype=np.float64)


@converter("Resize", "Upsample")
def _resize(ctx, node):
    shape = ctx.shape(node.input[0])
    mode = attributes(node).get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if len(shape) != 4 or mode not in ("nearest", "linear", "bilinear"):
        raise ctx.error(node, f"only 4-D nearest/linear resizing is supported (mode {mode})")
    feeds = _constant_feeds(ctx, node)
    rows = _resize_matrix(ctx, node, 2, shape[2], feeds)
    cols = _resize_matrix(ctx, node, 3, shape[3], feeds)
    ctx.add(node, L.Resize(rows.astype(np.float64), cols.astype(np.float64)))


@converter("ConvTranspose")
def _conv_transpose(ctx, node):
    weight = ctx.const(node, 1)
    if weight.ndim < 3:
        raise ctx.error(node, f"a transposed convolution weight needs a spatial axis (weight has {weight.ndim} dims)")
    a = attributes(node)
    if "output_shape" in a or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ctx.error(node, "output_shape/auto_pad of ConvTranspose are not supported; give explicit pads")
    rank = weight.ndim - 2
    kernel = tuple(a.get("kernel_shape", weight.shape[2:]))
    window = Window(kernel, a.get("strides"), a.get("pads"), a.get("dilations"))
    extra = tuple(a.get("output_padding", (0,) * rank))
    sizes = ctx.shape(node.input[0])[2:]
    out = tuple(window.strides[k] * (sizes[k] - 1) + extra[k] + window.extent(k) - window.begins[k] - window.ends[k]
                for k in range(rank))
    ctx.add(node, L.ConvTranspose(weight, ctx.const(node, 2), window, int(a.get("group", 1)), out))


@converter("Cast")
def _cast(ctx, node):
    to = attributes(node)["to"]
    if onnx.helper.tensor_dtype_to_np_dtype(to).kind != "f":
        raise ctx.error(node, "a cast of an activation to a non-float type has no relevance rule")
    ctx.alias[node.output[0]] = ctx.name(node.input[0])


def _quantization_params(ctx: ImportContext, node: onnx.NodeProto, shape) -> tuple[np.ndarray, np.ndarray]:
    """Returns (scale, zero point) of a Quantize/DequantizeLinear node, per tensor or stretched along its axis
    (per axis, or in blocks of block_size) to broadcast against an input of the given shape."""
    scale = ctx.const(node, 1).astype(np.float32)
    default = onnx.TensorProto.UINT8 if node.op_type == "QuantizeLinear" else onnx.TensorProto.INT32
    a = attributes(node)
    zero = ctx.const(node, 2, np.zeros((), onnx.helper.tensor_dtype_to_np_dtype(a.get("output_dtype") or default)))
    if not scale.ndim:
        return scale, zero
    axis, block = a.get("axis", 1) % len(shape), max(int(a.get("block_size", 0)), 1)
    layout = [1] * len(shape) if scale.ndim == 1 else list(scale.shape)
    layout[axis] = -1
    crop = tuple(slice(0, n) if k == axis else slice(None) for k, n in enumerate(shape))
    return tuple(np.repeat(np.reshape(v, layout), block, axis=axis)[crop] if np.ndim(v) else v
                 for v in (scale, zero))


def _quantization(ctx: ImportContext, node: onnx.NodeProto) -> np.ndarray:
    """Returns QuantizeLinear/DequantizeLinear of constants (weights) as the ONNX spec defines them."""
    x = ctx.const(node, 0)
    scale, zero = _quantization_params(ctx, node, x.shape)
    if node.op_type == "DequantizeLinear":
        return ((x.astype(np.float32) - zero.astype(np.float32)) * scale).astype(np.float32)
    info = np.iinfo(zero.dtype)
    return np.clip(np.rint(x.astype(np.float32) / scale) + zero, info.min, info.max).astype(zero.dtype)


@converter("QuantizeLinear", "DequantizeLinear")
def _quantize_dequantize(ctx, node):
    # An activation's QDQ pair rounds and saturates. lrp-cli computes in float: the pair becomes a Clip to the
    # representable range (quantizers drop a ReLU before it, relying on that saturation), written where the
    # DequantizeLinear writes its float output; the rounding it skips shows in ir_max_abs_diff.
    if node.op_type == "QuantizeLinear":
        ctx.alias[node.output[0]] = ctx.name(node.input[0])
        return
    scale, zero = _quantization_params(ctx, node, ctx.shape(node.input[0]))
    info = np.iinfo(ctx.const(node, 2, np.zeros((), np.uint8)).dtype)
    low, high = (info.min - zero.astype(np.float64)) * scale, (info.max - zero.astype(np.float64)) * scale
    ctx.add(node, L.Activation("Clip", lambda x: np.clip(x, low.astype(x.dtype), high.astype(x.dtype)),
                               lambda x, y: (x > low) & (x < high)))
    note = "activation QuantizeLinear/DequantizeLinear pairs computed in float: a clip to the quantized range"
    if note not in ctx.notes:
        ctx.notes.append(note)


@converter("LRN")
def _lrn(ctx, node):
    a = attributes(node)
    size, alpha, beta, bias = int(a["size"]), a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)

    def lrn(x):
        square = np.pad(x * x, ((0, 0), ((size - 1) // 2, size // 2), (0, 0), (0, 0)))
        window = np.cumsum(square, axis=1)
        window = np.concatenate([window[:, size - 1:size], window[:, size:] - window[:, :-size]], axis=1)
        return x / (bias + alpha / size * window) ** beta
    ctx.add(node, L.Activation("LRN", lrn))


# --- issue-9 ops: transformers (LayerNorm, in-graph Softmax, products of activations, GELU forms) ------------


def _softmax(ctx, node):
    shape = ctx.shape(node.input[0])
    axis = attributes(node).get("axis", -1 if _opset(ctx) >= 13 else 1) % len(shape)
    if _opset(ctx) < 13 and axis != len(shape) - 1:
        raise ctx.error(node, "a Softmax before opset 13 over more than the last axis is not supported")
    ctx.add(node, T.Softmax(axis))


def _opset(ctx) -> int:
    return next((o.version for o in ctx.model.opset_import if o.domain in ("", "ai.onnx")), 13)


def _product(ctx, node, equation: str):
    """Adds a product of two activations; an operand written by a Softmax holds the attention weights."""
    producers = ctx.producer_ops()
    weights = [k for k, t in enumerate(node.input[:2]) if producers.get(ctx.name(t)) == "Softmax"]
    layer = T.Product(equation, weights[0] if len(weights) == 1 else None, node.op_type)
    ctx.add(node, layer, list(node.input[:2]))


@converter("Einsum")
def _einsum(ctx, node):
    equation = attributes(node)["equation"]
    equation = (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")
    operands, _, out = equation.partition("->")
    specs = operands.split(",")
    if len(node.input) != 2 or len(specs) != 2 or not out or any(ctx.is_constant(t) for t in node.input):
        raise ctx.error(node, "only an Einsum of two activations with an explicit output ('ab,bc->ac') is supported")
    a, b = specs
    if any(set(a) - set(b) - set(out) for a, b in ((a, b), (b, a))) or any(len(set(x)) != len(x) for x in specs):
        raise ctx.error(node, f"Einsum '{equation}': an index summed within one operand has no LRP rule")
    if not (set(a) & set(b)) - set(out):
        raise ctx.error(node, f"Einsum '{equation}': an element-wise product of two activations has no LRP rule; "
                              "only contractions (attention's Q K^T, A V) are supported")
    _product(ctx, node, equation)


@converter("LayerNormalization", "RMSNormalization")
def _layer_norm(ctx, node):
    if any(o for o in node.output[1:]):
        raise ctx.error(node, "the Mean/InvStdDev outputs of LayerNormalization are not supported")
    a = attributes(node)
    if a.get("stash_type", 1) != 1:
        raise ctx.error(node, "only stash_type 1 (float32 statistics) is supported")
    scale = ctx.const(node, 1)
    bias = ctx.const(node, 2)
    norm = T.RMSNorm if node.op_type == "RMSNormalization" else T.LayerNorm
    ctx.add(node, norm(int(a.get("axis", -1)), scale, bias, float(a.get("epsilon", 1e-5))))


def _erf(x):
    from scipy.special import erf  # scipy comes with scikit-learn
    return erf(x).astype(x.dtype)


@converter("Erf")
def _erf_activation(ctx, node):
    ctx.add(node, L.Activation("Erf", _erf, lambda x, y: 2 / np.sqrt(np.pi) * np.exp(-x * x)))


@converter("Pow")
def _pow(ctx, node):
    exponent = ctx.const(node, 1)
    if exponent.size != 1:
        raise ctx.error(node, "only a Pow by one constant exponent is supported")
    p = float(exponent.reshape(-1)[0])
    ctx.add(node, L.Activation("Pow", lambda x: x ** x.dtype.type(p),
                               lambda x, y: p * x ** x.dtype.type(p - 1), attrs={"exponent": p}))


def _convert_region(ctx, region: onnx_fusion.Region) -> None:
    """Converts a decomposed LayerNorm, RMSNorm or GELU as one layer; when it is not one after all, node by node."""
    nodes = [ctx.model.graph.node[k] for k in region.nodes]
    try:
        if region.kind == "expression":
            layer = _fused_expression(ctx, nodes, region)
        else:  # layernorm and rmsnorm share one converter
            layer = _fused_l2norm(ctx, nodes) if region.kind == "l2norm" else _fused_norm(ctx, nodes)
    except (ValueError, KeyError, IndexError, ModelLoadError):
        layer = None
    if layer is None:
        try:
            for node in nodes:
                _convert_node(ctx, node)
        except ModelLoadError as exc:
            if region.kind not in _NORMS:  # an expression or an L2 norm that is not one: the node's own error
                raise
            reason = str(exc).replace(str(ctx.path) + ": ", "")
            raise ctx.error(nodes[-1], f"a normalization of activations that is not {_NORMS[region.kind]} over the "
                                       f"trailing axes has no LRP rule ({reason})") from None
        return
    ctx.add(nodes[-1], layer, [region.source], region.output).source_op = layer.op
    ctx.notes.append(f"fused {len(nodes)} nodes ending at '{nodes[-1].name or region.output}' into one "
                     f"{layer.op}")


_NORMS = {"layernorm": "a LayerNorm", "rmsnorm": "an RMSNorm"}


def _fused_norm(ctx, nodes) -> T.LayerNorm | None:
    """Returns the LayerNorm (two ReduceMeans: mean and variance) or RMSNorm (one: mean square) the nodes compute,
    or None when it does not normalize over the trailing axes."""
    means = [n for n in nodes if n.op_type == "ReduceMean"]
    rank = len(ctx.shape(nodes[0].input[0]))
    axes = [sorted(a % rank for a in (_axes(ctx, n) or range(rank))) for n in means]
    keep = [attributes(n).get("keepdims", 1) for n in means]
    if axes[0] != axes[-1] or axes[0] != list(range(axes[0][0], rank)) or not all(keep):
        return None
    powers = [n for n in nodes if n.op_type == "Pow"]
    if powers and float(ctx.const(powers[0], 1).reshape(-1)[0]) != 2.0:
        return None
    if any(n.op_type == "Div" and ctx.is_constant(n.input[0]) and np.any(ctx.const(n, 0) != 1) for n in nodes):
        return None  # Div(c, std) is 1 / std only for c = 1
    adds = [n for n in nodes if n.op_type == "Add"]
    epsilon = float(_constant_operand(ctx, adds[0]).reshape(-1)[0])
    after_sqrt = nodes[[n.op_type for n in nodes].index("Sqrt") + 1:]
    scale = next((_constant_operand(ctx, n) for n in after_sqrt if n.op_type == "Mul" and _has_constant(ctx, n)),
                 None)
    bias = next((_constant_operand(ctx, n) for n in after_sqrt if n.op_type == "Add"), None)
    normalized = len(axes[0])
    for const in (scale, bias):
        if const is not None and np.squeeze(const).ndim > normalized:
            return None
    return (T.LayerNorm if len(means) == 2 else T.RMSNorm)(axes[0][0], scale, bias, epsilon)


def _has_constant(ctx, node) -> bool:
    return any(ctx.is_constant(t) for t in node.input)


def _constant_operand(ctx, node) -> np.ndarray:
    return next(ctx.constants[ctx.name(t)] for t in node.input if ctx.is_constant(t))


def _fused_expression(ctx, nodes, region) -> L.Activation | None:
    probe = np.linspace(-5, 5, 101, dtype=np.float32)
    feeds = {region.source: probe}
    for node in nodes:
        feeds.update({t: ctx.constants[ctx.name(t)] for t in node.input if t and ctx.is_constant(t)})
    opset = [onnx.helper.make_opsetid(o.domain, o.version) for o in ctx.model.opset_import]
    graph = onnx.helper.make_graph(nodes, "expression", [_value_info(t, v) for t, v in feeds.items()],
                                   [onnx.helper.make_tensor_value_info(region.output, 0, None)])
    values = ReferenceEvaluator(onnx.helper.make_model(graph, opset_imports=opset)).run(None, feeds)[0]
    match = onnx_fusion.match_gelu(np.asarray(values, dtype=np.float64).reshape(-1), probe.astype(np.float64))
    if match is None:
        return None
    approximate, scale = match
    fn, derivative = _gelu({"approximate": approximate})
    return L.Activation("Gelu", lambda x: (scale * fn(x)).astype(x.dtype), lambda x, y: scale * derivative(x, y),
                        attrs={"approximate": approximate, "scale": scale})


# --- Swin: masks ----------------------------------------------------------------------------------------------


@converter("Where")
def _where(ctx, node):
    """A Where by a constant condition routes elements (a condition computed from the input has no rule)."""
    condition = ctx.const(node, 0)
    dynamic = list(dict.fromkeys(t for t in node.input[1:] if not ctx.is_constant(t)))
    operands = [ctx.constants[ctx.name(t)] if ctx.is_constant(t) else dynamic.index(t) for t in node.input[1:]]
    shape = np.broadcast_shapes(*(ctx.shape(t) for t in node.input))
    condition = np.broadcast_to(condition, shape)
    ctx.add(node, masks.Where(condition, operands), dynamic)


# --- Swin V2: cosine attention ----------------------------------------------------------------------------------


def _fused_l2norm(ctx, nodes) -> L2Normalize | None:
    """Returns the L2Normalize a ReduceL2 -> Clip/Max -> (Expand) -> Div region computes, or None if it is not one
    (a reduction over other than the last axis, or a floor that is not one positive constant)."""
    reduce, floor = nodes[0], nodes[1]
    rank = len(ctx.shape(reduce.input[0]))
    axes = _axes(ctx, reduce)
    if axes is None or [a % rank for a in axes] != [rank - 1] or not attributes(reduce).get("keepdims", 1):
        return None
    bounds = [t for t in floor.input[1:] if t] if floor.op_type == "Clip" else [
        t for t in floor.input if ctx.is_constant(t)]
    if floor.op_type == "Clip" and (len(floor.input) < 2 or not floor.input[1] or len(floor.input) > 2 and
                                    floor.input[2]):
        return None  # a Clip with an upper bound, or without the lower one, is no normalization floor
    values = [np.asarray(ctx.constants[ctx.name(t)]).reshape(-1) for t in bounds]
    if len(values) != 1 or values[0].size != 1 or values[0][0] <= 0:
        return None
    return L2Normalize(rank - 1, float(values[0][0]))


from lrp_cli.importers import onnx_sequence  # noqa: E402,F401  (registers Gather-by-ids, LSTM, GRU; needs the above)
