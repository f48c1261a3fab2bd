"""The backward step of every IR layer kind as ONNX ops: one relevance and one gradient emitter per kind.

Each emitter mirrors the layer's NumPy `relevance` / `gradient` in `ir/layers.py` (the reference) and returns,
for each dynamic input, the name of the tensor it receives (None: nothing). A kind missing from a registry
cannot be compiled for that method.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from lrp_cli.engines.onnx_builder import CompileError, GraphBuilder, registrar
from lrp_cli.engines.onnx_linear import window_adjoint
from lrp_cli.ir import layers as L
from lrp_cli.ir import windows
from lrp_cli.ir.sequence import Embedding

RELEVANCE: dict[type, Callable] = {}
GRADIENT: dict[type, Callable] = {}


#: Registers a backward emitter `fn(site) -> [name | None per input]` for layer kinds: @emitter(REGISTRY, *kinds).
emitter = registrar


class NodeSite:
    """One IR node in the compiled graph: its input/output tensor names, static shapes, and the incoming r."""

    def __init__(self, b: GraphBuilder, node, xs: list[str], y: str, r: str, shapes: dict, params: dict,
                 nonnegative: set, rule=None, method: str = "lrp"):
        self.b, self.node, self.layer, self.rule, self.method = b, node, node.layer, rule, method
        self.xs, self.y, self.r = xs, y, r
        self.x_shapes = [tuple(shapes[t]) for t in node.inputs]
        self.y_shape = tuple(shapes[node.output])
        self.params = params
        self.nonnegative = nonnegative

    def fail(self, why: str) -> CompileError:
        """Returns the error for a node that cannot be compiled."""
        return CompileError(f"cannot compile node {self.node.name} ({self.node.op}): {why}")


def find_emitter(registry: dict, layer: L.Layer):
    """Returns the emitter for a layer's kind (the closest registered base class), or None."""
    for kind in type(layer).__mro__:
        if kind in registry:
            return registry[kind]
    return None


def unbroadcast(b: GraphBuilder, r: str, r_shape, shape) -> str:
    """Returns r summed over the axes along which an operand of the given shape was broadcast."""
    shape = tuple(shape)
    if tuple(r_shape) == shape:
        return r
    extra = len(r_shape) - len(shape)
    full = (1,) * extra + shape
    axes = [k for k in range(len(r_shape)) if full[k] == 1 and r_shape[k] != 1]
    total = b.reduce_sum(r, axes) if axes else r
    return b.reshape(total, shape)


def _proportional(site: NodeSite) -> str:
    """Returns r / stab(y) with the parameter-free rules' stabilizer."""
    return site.b.div(site.r, site.b.stabilize(site.y, L.NORM_STABILIZER))


# --- parameter-free and routing kinds (relevance and gradient alike where the layer says so) ---------------

@emitter(RELEVANCE, L.PassThrough)
def _pass(site):
    return [site.r]


@emitter(RELEVANCE, L.Reshape)
@emitter(GRADIENT, L.Reshape)
def _reshape(site):
    return [site.b.reshape(site.r, site.x_shapes[0])]


@emitter(RELEVANCE, L.Transpose)
@emitter(GRADIENT, L.Transpose)
def _transpose(site):
    return [site.b.op("Transpose", [site.r], perm=[int(p) for p in np.argsort(site.layer.perm)])]


@emitter(RELEVANCE, L.Concat)
@emitter(GRADIENT, L.Concat)
def _concat(site):
    layer, axis = site.layer, site.layer.axis
    out, start = [None] * len(site.xs), 0
    for part in layer.parts:
        size = (site.x_shapes[part] if isinstance(part, int) else part.shape)[axis]
        if isinstance(part, int):
            out[part] = site.b.slice(site.r, [start], [start + size], [axis])
        start += size
    return out


#: Above this many copies of one input element, an index map's adjoint is not unrolled into gathers.
MAX_COPIES = 8


def _contiguous_start(index: np.ndarray) -> int | None:
    """Returns the first input position when an index map copies one contiguous run of the flat input in order
    (a Slice or Gather of a leading block: attention's q/k/v split, the class token), else None."""
    if index.size == 0 or index[0] < 0:
        return None
    start = int(index[0])
    return start if np.array_equal(index, np.arange(start, start + index.size)) else None


@emitter(RELEVANCE, L.IndexMap)
@emitter(GRADIENT, L.IndexMap)
def _index_map(site):
    """The adjoint of a traced index map: a contiguous run is padded back to the input with zeros; otherwise
    every input element gathers the output elements that copy it (one Gather per copy; a sentinel index reads an
    appended zero)."""
    b, index = site.b, site.layer.index.reshape(-1)
    size = int(np.prod(site.x_shapes[0]))
    start = _contiguous_start(index)
    if start is not None:
        padded = b.pad(b.reshape(site.r, [-1]), [start, size - start - index.size])
        return [b.reshape(padded, site.x_shapes[0])]
    valid = np.flatnonzero(index >= 0)
    sources = index[valid]
    copies = np.bincount(sources, minlength=size)
    most = int(copies.max(initial=0))
    if most > MAX_COPIES:
        raise site.fail(f"an index map that copies one element {most} times is not compiled")
    flat = b.op("Concat", [b.reshape(site.r, [-1]), b.const(np.zeros(1), "zero")], axis=0)
    order = np.argsort(sources, kind="stable")
    rank = np.arange(order.size) - np.repeat(np.cumsum(copies) - copies, copies)
    total = None
    for k in range(most):
        gather = np.full(size, index.size, dtype=np.int64)
        chosen = order[rank == k]
        gather[sources[chosen]] = valid[chosen]
        term = b.op("Gather", [flat, b.const(gather, "inverse_index", np.int64)], axis=0)
        total = term if total is None else b.add(total, term)
    if total is None:
        total = b.const(np.zeros(size), "zero")
    return [b.reshape(total, site.x_shapes[0])]


@emitter(RELEVANCE, L.Add)
def _add(site):
    c = _proportional(site)
    return [unbroadcast(site.b, site.b.mul(x, c), site.y_shape, shape) for x, shape in zip(site.xs, site.x_shapes)]


@emitter(GRADIENT, L.Add)
def _add_gradient(site):
    return [unbroadcast(site.b, site.r, site.y_shape, shape) for shape in site.x_shapes]


def _spatial_count(site) -> float:
    return float(np.prod(site.x_shapes[0][2:]))


@emitter(RELEVANCE, L.GlobalAvgPool)
def _global_avgpool(site):
    c = site.b.div(_proportional(site), site.b.scalar(_spatial_count(site)))
    return [site.b.mul(site.xs[0], c)]


@emitter(GRADIENT, L.GlobalAvgPool)
def _global_avgpool_gradient(site):
    g = site.b.div(site.r, site.b.scalar(_spatial_count(site)))
    return [site.b.op("Expand", [g, site.b.ints(site.x_shapes[0])])]


def _reduce_mean_spread(site, c: str) -> str:
    layer, shape = site.layer, site.x_shapes[0]
    count = float(np.prod([shape[a] for a in layer.axes]))
    kept = [1 if k in layer.axes else n for k, n in enumerate(shape)]
    return site.b.div(c if layer.keepdims else site.b.reshape(c, kept), site.b.scalar(count))


@emitter(RELEVANCE, L.ReduceMean)
def _reduce_mean(site):
    return [site.b.mul(site.xs[0], _reduce_mean_spread(site, _proportional(site)))]


@emitter(GRADIENT, L.ReduceMean)
def _reduce_mean_gradient(site):
    return [site.b.op("Expand", [_reduce_mean_spread(site, site.r), site.b.ints(site.x_shapes[0])])]


def _window_spread(site, c: str) -> str:
    """Returns the adjoint of the node's window sum applied to output-shaped c (a grouped ConvTranspose by ones)."""
    window, channels = site.layer.window, site.x_shapes[0][1]
    ones = site.b.const(np.ones((channels, 1) + window.kernel), "ones")
    return window_adjoint(site.b, c, ones, window, channels, site.y_shape[2:], site.x_shapes[0][2:])


def _avgpool_adjoint(site, c: str) -> str:
    """Returns the adjoint of the averaging map applied to output-shaped c (as AvgPool._transposed)."""
    divisor = site.layer._divisor(*site.x_shapes[0][2:])
    return _window_spread(site, site.b.div(c, site.b.const(divisor, "divisor")))


def proportional_kind(kind: type, adjoint) -> None:
    """Registers a linear parameter-free layer kind given the adjoint of its map: relevance x * A^T(r / stab(y))
    (the z-rule), gradient A^T g."""
    RELEVANCE[kind] = lambda site: [site.b.mul(site.xs[0], adjoint(site, _proportional(site)))]
    GRADIENT[kind] = lambda site: [adjoint(site, site.r)]


proportional_kind(L.AvgPool, _avgpool_adjoint)


def _powers(site) -> str:
    """Returns |x|^p of an LpPool's input."""
    return site.b.op("Pow", [site.b.op("Abs", [site.xs[0]]), site.b.scalar(site.layer.p)])


@emitter(RELEVANCE, L.LpPool)
def _lppool(site):
    """Each input's share of its windows' p-th powers, as LpPool.relevance."""
    b = site.b
    total = b.op("Pow", [site.y, b.scalar(site.layer.p)])
    return [b.mul(_powers(site), _window_spread(site, b.div(site.r, b.stabilize(total, L.NORM_STABILIZER))))]


@emitter(GRADIENT, L.LpPool)
def _lppool_gradient(site):
    """sign(x) |x|^(p-1) times the spread of g / y^(p-1) (zero where a window is all zero), as LpPool.gradient."""
    b, p = site.b, site.layer.p
    y = site.y
    alive = b.op("Greater", [y, b.scalar(0.0)])
    safe = b.op("Where", [alive, y, b.scalar(1.0)])
    scale = b.mul(b.div(site.r, b.op("Pow", [safe, b.scalar(p - 1)])), b.indicator(alive))
    slope = b.mul(b.op("Sign", [site.xs[0]]), b.op("Pow", [b.op("Abs", [site.xs[0]]), b.scalar(p - 1)]))
    return [b.mul(slope, _window_spread(site, scale))]


def _pooled(site) -> list[int]:
    """Returns the spatial output size of a max pooling's windows (its output may have dropped those axes)."""
    return list(site.layer.window.output_size(*site.x_shapes[0][2:]))


def _maxpool_windows(site) -> tuple[str, str]:
    """Returns (the 0/1 mask [N, C, K, *out] of window elements equal to the window's maximum, the per-kernel
    channel one-hot weights [C*K, 1, *kernel] that scatter such columns back)."""
    b, window = site.b, site.layer.window
    n, channels = site.x_shapes[0][:2]
    sizes, out = site.x_shapes[0][2:], _pooled(site)
    full = window.padded_shape(*sizes)
    rank = window.rank
    padded = site.xs[0]
    if full != tuple(sizes):
        ends = [full[k] - sizes[k] - window.begins[k] for k in range(rank)]
        padded = b.pad(padded, [0, 0] + list(window.begins) + [0, 0] + ends, float("-inf"))
    views = []
    for offset in windows.offsets(window):
        starts = [i * window.dilations[k] for k, i in enumerate(offset)]
        ends = [starts[k] + window.strides[k] * (out[k] - 1) + 1 for k in range(rank)]
        view = b.slice(padded, starts, ends, list(range(2, 2 + rank)), list(window.strides))
        views.append(b.reshape(view, [n, channels, 1] + out))
    cols = b.op("Concat", views, axis=2)
    kernel = len(views)
    mask = b.indicator(b.op("Equal", [cols, b.reshape(site.y, [n, channels, 1] + out)]))
    scatter = np.zeros((channels * kernel, 1) + window.kernel)
    for k, offset in enumerate(windows.offsets(window)):
        scatter[(slice(k, None, kernel), 0) + tuple(offset)] = 1.0
    return mask, b.const(scatter, "scatter")


def _maxpool_scatter(site, cols: str, weights: str) -> str:
    n, channels = site.x_shapes[0][:2]
    kernel = int(np.prod(site.layer.window.kernel))
    flat = site.b.reshape(cols, [n, channels * kernel] + _pooled(site))
    return window_adjoint(site.b, flat, weights, site.layer.window, channels, _pooled(site),
                          site.x_shapes[0][2:])


def _maxpool_route(site, split_ties: bool) -> str:
    """Returns r routed to each window's first maximum, or shared evenly between its tied maxima, as
    MaxPool.route."""
    b = site.b
    mask, weights = _maxpool_windows(site)
    n, channels = site.x_shapes[0][:2]
    r = site.r
    if split_ties:
        r = b.div(r, b.reshape(b.reduce_sum(mask, [2]), site.y_shape))
    else:
        running = b.op("CumSum", [mask, b.const(np.array(2), "axis", np.int64)])
        mask = b.mul(mask, b.indicator(b.op("Equal", [running, b.scalar(1.0)])))
    cols = b.mul(mask, b.reshape(r, [n, channels, 1] + _pooled(site)))
    return _maxpool_scatter(site, cols, weights)


@emitter(RELEVANCE, L.MaxPool)
def _maxpool(site):
    """Relevance follows the node's MaxPool tie rule (first maximum unless `maxpool:split`)."""
    return [_maxpool_route(site, getattr(site.rule, "policy", "first") == "split")]


@emitter(GRADIENT, L.MaxPool)
def _maxpool_gradient(site):
    """The gradient goes to the first maximum of each window only, as MaxPool.gradient."""
    return [_maxpool_route(site, split_ties=False)]


@emitter(RELEVANCE, L.GatedProduct)
def _gated_product(site):
    out = [None, None]
    signal = site.layer.signal
    out[signal] = unbroadcast(site.b, site.r, site.y_shape, site.x_shapes[signal])
    return out


@emitter(GRADIENT, L.GatedProduct)
def _gated_product_gradient(site):
    a, b_ = site.xs
    return [unbroadcast(site.b, site.b.mul(site.r, b_), site.y_shape, site.x_shapes[0]),
            unbroadcast(site.b, site.b.mul(site.r, a), site.y_shape, site.x_shapes[1])]


def _resize_adjoint(site, c: str) -> str:
    b = site.b
    rows_t = b.const(site.layer.rows.T, "rows_t")
    return b.op("MatMul", [b.op("MatMul", [rows_t, c]), b.const(site.layer.cols, "cols")])


proportional_kind(L.Resize, _resize_adjoint)


@emitter(GRADIENT, L.Affine)
def _affine_gradient(site):
    scale = np.asarray(site.layer.scale)
    return [unbroadcast(site.b, site.b.mul(site.r, site.b.const(scale, "scale")),
                        np.broadcast_shapes(site.x_shapes[0], scale.shape), site.x_shapes[0])]


# --- activations: the gradient needs the derivative of the source op -----------------------------------------

def _relu_slope(site, x, y):
    return site.b.indicator(site.b.op("Greater", [x, site.b.scalar(0.0)]))


def _clip_slope(site, x, y):
    low, high = site.params.get("min", -np.inf), site.params.get("max", np.inf)
    b = site.b
    above = b.indicator(b.op("Greater", [x, b.scalar(low)])) if np.isfinite(low) else None
    below = b.indicator(b.op("Less", [x, b.scalar(high)])) if np.isfinite(high) else None
    parts = [p for p in (above, below) if p is not None]
    if not parts:
        return b.op("Expand", [b.scalar(1.0), b.ints(site.x_shapes[0])])
    return parts[0] if len(parts) == 1 else b.mul(*parts)


def _leaky_slope(site, x, y):
    b = site.b
    alpha = site.params.get("alpha", 0.01)
    return b.op("Where", [b.op("Greater", [x, b.scalar(0.0)]), b.scalar(1.0), b.scalar(alpha)])


def _sigmoid_slope(site, x, y):
    return site.b.mul(y, site.b.sub(site.b.scalar(1.0), y))


def _tanh_slope(site, x, y):
    return site.b.sub(site.b.scalar(1.0), site.b.mul(y, y))


def _softplus_slope(site, x, y):
    return site.b.op("Sigmoid", [x])


def _prelu_slope(site, x, y):
    b = site.b
    return b.op("Where", [b.op("Greater", [x, b.scalar(0.0)]), b.scalar(1.0),
                          b.const(site.layer.attrs["slope"], "slope")])


def _hard_sigmoid_slope(site, x, y):
    """alpha where 0 < alpha x + beta < 1, else 0."""
    b, attrs = site.b, site.layer.attrs
    alpha = float(attrs.get("alpha", 0.2))
    linear = b.add(b.mul(x, b.scalar(alpha)), b.scalar(float(attrs.get("beta", 0.5))))
    inside = b.op("And", [b.op("Greater", [linear, b.scalar(0.0)]), b.op("Less", [linear, b.scalar(1.0)])])
    return b.mul(b.indicator(inside), b.scalar(alpha))


def _hard_swish_slope(site, x, y):
    """0 below -3, 1 above 3, x / 3 + 1/2 between."""
    b = site.b
    middle = b.add(b.div(x, b.scalar(3.0)), b.scalar(0.5))
    upper = b.op("Where", [b.op("Greater", [x, b.scalar(3.0)]), b.scalar(1.0), middle])
    return b.op("Where", [b.op("Less", [x, b.scalar(-3.0)]), b.scalar(0.0), upper])


def _elu_slope(site, x, y, gamma=1.0, alpha=1.0):
    """gamma where x > 0, else gamma alpha exp(x) (Selu: Elu with its own gamma and alpha)."""
    b, attrs = site.b, site.layer.attrs
    gamma, alpha = float(attrs.get("gamma", gamma)), float(attrs.get("alpha", alpha))
    below = b.mul(b.op("Exp", [b.negative(x)]), b.scalar(alpha))
    return b.mul(b.op("Where", [b.op("Greater", [x, b.scalar(0.0)]), b.scalar(1.0), below]), b.scalar(gamma))


def _selu_slope(site, x, y):
    return _elu_slope(site, x, y, 1.05070102214813232421875, 1.67326319217681884765625)


SLOPES = {"Relu": _relu_slope, "Clip": _clip_slope, "LeakyRelu": _leaky_slope, "Sigmoid": _sigmoid_slope,
          "Tanh": _tanh_slope, "Softplus": _softplus_slope, "PRelu": _prelu_slope,
          "HardSigmoid": _hard_sigmoid_slope, "HardSwish": _hard_swish_slope, "Elu": _elu_slope, "Selu": _selu_slope}


@emitter(GRADIENT, L.Activation)
def _activation_gradient(site):
    slope = SLOPES.get(site.layer.op)
    if slope is None:
        raise site.fail("no compiled derivative for this activation")
    return [site.b.mul(site.r, slope(site, site.xs[0], site.y))]


def _per_token(site, values: str) -> str:
    """Returns values [..., T, D] summed over the embedding axis, zero at padding ids (as Embedding.kept)."""
    b = site.b
    total = b.reduce_sum(values, [-1], keepdims=False)
    padding = site.layer.padding
    if not padding:
        return total
    ids = b.op("Cast", [site.xs[0]], to=onnx.TensorProto.INT64)
    table = b.const(np.asarray(padding).reshape((-1,) + (1,) * len(site.x_shapes[0])), "padding", np.int64)
    hit = b.reduce_sum(b.indicator(b.op("Equal", [ids, table])), [0], keepdims=False)  # padding ids are distinct
    return b.mul(total, b.sub(b.scalar(1.0), hit))


@emitter(RELEVANCE, Embedding)
def _embedding(site):
    """Each token gets the sum of its vector's relevance, a padding id none, as Embedding.relevance."""
    return [_per_token(site, site.r)]


@emitter(GRADIENT, Embedding)
def _embedding_gradient(site):
    """The squared norm of each token's vector gradient (Embedding.gradient), or for gradient x input the vector
    dotted with its gradient (methods.gradient.gradient_x_input)."""
    values = site.y if site.method == "gradient-x-input" else site.r
    return [_per_token(site, site.b.mul(values, site.r))]
