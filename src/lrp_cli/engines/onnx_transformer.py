"""The transformer layer kinds as ONNX ops: LayerNorm/RMSNorm, L2Normalize, in-graph Softmax, products of two
activations, Where by a constant mask, and the derivatives of GELU, Erf and Pow for the gradient methods.

Each emitter mirrors the NumPy `relevance` / `gradient` of `ir/transformer.py`, `ir/l2norm.py` and `ir/masks.py`
and the rule objects of `rules.py` term for term, registered into the registries of `onnx_nodes.py`. A norm's
statistic (standard deviation, root mean square, L2 norm) is computed in the graph from the forward's own tensor
and then only multiplies and divides, as the NumPy rule's frozen linear map uses it: relevance never flows
through it. Reductions are ReduceSum (its axes an input since opset 13) so that one graph serves every opset.
"""

from __future__ import annotations

import numpy as np

from lrp_cli.engines.onnx_builder import registrar
from lrp_cli.engines.onnx_nodes import GRADIENT, RELEVANCE, SLOPES, emitter, unbroadcast
from lrp_cli.ir.l2norm import L2Normalize
from lrp_cli.ir.masks import Where
from lrp_cli.ir.transformer import MATMUL, LayerNorm, Product, Softmax
from lrp_cli.rules import ConstantWeights, Epsilon, Identity, SoftmaxTaylor, Uniform, ValuePath

#: rule class -> emitter `fn(site, rule) -> [name | None per input]`, one table per rule-driven kind.
NORM_RULES: dict = {}
SOFTMAX_RULES: dict = {}
PRODUCT_RULES: dict = {}


def _by_rule(table: dict, site):
    """Returns what the emitter of the node's rule in table sends down (CompileError for a rule without one)."""
    rule = site.rule
    if type(rule) not in table:
        spec = rule.spec() if rule is not None else "none"
        raise site.fail(f"no compiled form of rule {spec}")
    return table[type(rule)](site, rule)


# --- normalizations: LayerNorm / RMSNorm over the trailing axes, L2Normalize over one axis ------------------

def _norm_axes(site) -> list[int]:
    rank = len(site.x_shapes[0])
    if isinstance(site.layer, L2Normalize):
        return [site.layer.axis % rank]
    return list(range(site.layer.axis % rank, rank))


def _mean(site, x: str, axes: list[int]) -> str:
    count = float(np.prod([site.x_shapes[0][a] for a in axes]))
    return site.b.div(site.b.reduce_sum(x, axes), site.b.scalar(count))


def _centre(site, x: str) -> str:
    """Returns x minus its mean over the normalized axes (x itself for RMSNorm), as LayerNorm.centre."""
    if not site.layer.centred:
        return x
    return site.b.sub(x, _mean(site, x, _norm_axes(site)))


def _statistic(site, centred: str | None = None) -> str:
    """Returns the divisor of the frozen map from the forward input: LayerNorm's sqrt(mean(centred^2) + eps)
    (RMSNorm: of x^2), L2Normalize's max(||x||_2, eps), kept as broadcastable dims (`centred`: the centred input
    when the caller has it already)."""
    b, x, axes = site.b, site.xs[0], _norm_axes(site)
    if isinstance(site.layer, L2Normalize):
        norm = b.op("Sqrt", [b.reduce_sum(b.mul(x, x), axes)])
        return b.op("Max", [norm, b.scalar(site.layer.epsilon)])
    centred = centred or _centre(site, x)
    variance = _mean(site, b.mul(centred, centred), axes)
    return b.op("Sqrt", [b.add(variance, b.scalar(site.layer.epsilon))])


def _scale(site) -> str | None:
    scale = getattr(site.layer, "scale", None)
    return None if scale is None else site.b.const(scale, "scale")


def _frozen_transposed(site, c: str) -> str:
    """Returns the adjoint of the frozen map on output-shaped c: centre(c * scale / statistic)
    (FrozenNorm.apply_transposed; FrozenScale's has no centring and no scale)."""
    b = site.b
    scale = _scale(site)
    scaled = c if scale is None else b.mul(c, scale)
    out = b.div(scaled, _statistic(site))
    return out if isinstance(site.layer, L2Normalize) else _centre(site, out)


@registrar(NORM_RULES, Epsilon)
def _norm_epsilon(site, rule):
    """The epsilon rule on the frozen linear map: x * A^T (r / stab(y))."""
    c = site.b.div(site.r, site.b.stabilize(site.y, rule.epsilon))
    return [site.b.mul(site.xs[0], _frozen_transposed(site, c))]


@registrar(NORM_RULES, Identity)
def _norm_identity(site, rule):
    return [site.r]


@emitter(RELEVANCE, LayerNorm, L2Normalize)
def _norm(site):
    return _by_rule(NORM_RULES, site)


@emitter(GRADIENT, LayerNorm)
def _layernorm_gradient(site):
    """(centre(g * scale) - n * mean(g * scale * n)) / std with n = centre(x) / std, as LayerNorm.gradient."""
    b = site.b
    centred = _centre(site, site.xs[0])
    std = _statistic(site, centred)
    normed = b.div(centred, std)
    scale = _scale(site)
    gn = site.r if scale is None else b.mul(site.r, scale)
    mean_gn = _mean(site, b.mul(gn, normed), _norm_axes(site))
    return [b.div(b.sub(_centre(site, gn), b.mul(normed, mean_gn)), std)]


@emitter(GRADIENT, L2Normalize)
def _l2norm_gradient(site):
    """(g - y * sum(g * y)) / n, the radial term dropped where the norm is clipped at eps, as
    L2Normalize.gradient."""
    b = site.b
    n = _statistic(site)
    radial = b.reduce_sum(b.mul(site.r, site.y), _norm_axes(site))
    radial = b.op("Where", [b.op("Greater", [n, b.scalar(site.layer.epsilon)]), radial, b.scalar(0.0)])
    return [b.div(b.sub(site.r, b.mul(site.y, radial)), n)]


# --- Softmax -------------------------------------------------------------------------------------------------

def _softmax_axis(site) -> list[int]:
    return [site.layer.axis % len(site.x_shapes[0])]


@registrar(SOFTMAX_RULES, SoftmaxTaylor)
def _softmax_taylor(site, rule):
    """x * (r - s * sum r) along the axis (AttnLRP's Taylor rule with the bias term)."""
    b = site.b
    total = b.reduce_sum(site.r, _softmax_axis(site))
    return [b.mul(site.xs[0], b.sub(site.r, b.mul(site.y, total)))]


@registrar(SOFTMAX_RULES, ConstantWeights)
def _softmax_constant(site, rule):
    return [None]


@emitter(RELEVANCE, Softmax)
def _softmax(site):
    return _by_rule(SOFTMAX_RULES, site)


@emitter(GRADIENT, Softmax)
def _softmax_gradient(site):
    """s * (g - sum(g * s)) along the axis."""
    b = site.b
    total = b.reduce_sum(b.mul(site.r, site.y), _softmax_axis(site))
    return [b.mul(site.y, b.sub(site.r, total))]


# --- products of two activations ----------------------------------------------------------------------------

def _swap_last(b, x: str, rank: int) -> str:
    return b.op("Transpose", [x], perm=list(range(rank - 2)) + [rank - 1, rank - 2])


def _product_transposed(site, c: str) -> tuple[str, str]:
    """Returns (c . B^T, A^T . c) in each operand's shape, as Product.transposed: batched MatMuls with the
    broadcast batch axes summed away, or the two adjoint Einsums."""
    b, layer = site.b, site.layer
    (a_shape, b_shape), (a, b_op) = site.x_shapes, site.xs
    if layer.equation != MATMUL:
        ga = b.op("Einsum", [c, b_op], equation=f"{layer.out_spec},{layer.b_spec}->{layer.a_spec}")
        gb = b.op("Einsum", [a, c], equation=f"{layer.a_spec},{layer.out_spec}->{layer.b_spec}")
        return ga, gb
    if min(len(a_shape), len(b_shape)) < 2:
        raise site.fail("a MatMul of a vector operand is not compiled")
    batch = np.broadcast_shapes(a_shape[:-2], b_shape[:-2])
    ga = b.op("MatMul", [c, _swap_last(b, b_op, len(b_shape))])
    gb = b.op("MatMul", [_swap_last(b, a, len(a_shape)), c])
    return (unbroadcast(b, ga, batch + a_shape[-2:], a_shape), unbroadcast(b, gb, batch + b_shape[-2:], b_shape))


@registrar(PRODUCT_RULES, Uniform)
def _product_uniform(site, rule):
    """Each operand takes half: a * (c B^T), b * (A^T c) with c = r / (2 stab(y))."""
    b = site.b
    c = b.div(site.r, b.mul(b.stabilize(site.y, rule.epsilon), b.scalar(2.0)))
    ga, gb = _product_transposed(site, c)
    return [b.mul(site.xs[0], ga), b.mul(site.xs[1], gb)]


@registrar(PRODUCT_RULES, ValuePath)
def _product_value(site, rule):
    """The attention weights are constants: the epsilon rule gives the values (the other operand) everything."""
    weights = site.layer.weights_operand
    if weights is None:
        raise site.fail(f"rule {rule.spec()} needs a product with attention weights (a Softmax output)")
    b = site.b
    ga, gb = _product_transposed(site, b.div(site.r, b.stabilize(site.y, rule.epsilon)))
    return [None, b.mul(site.xs[1], gb)] if weights == 0 else [b.mul(site.xs[0], ga), None]


@emitter(RELEVANCE, Product)
def _product(site):
    return _by_rule(PRODUCT_RULES, site)


@emitter(GRADIENT, Product)
def _product_gradient(site):
    return list(_product_transposed(site, site.r))


# --- Where by a constant condition (relevance and gradient alike) ------------------------------------------

@emitter(RELEVANCE, Where)
@emitter(GRADIENT, Where)
def _where(site):
    """Each dynamic operand gets r where the condition picked it, zero elsewhere, summed over its broadcast axes."""
    b, layer = site.b, site.layer
    condition = b.const(np.broadcast_to(layer.condition, site.y_shape), "condition", np.bool_)
    zero = b.scalar(0.0)
    out = [None] * len(site.xs)
    for k, part in enumerate(layer.operands):
        if not isinstance(part, int):
            continue
        picked = b.op("Where", [condition, site.r, zero] if k == 0 else [condition, zero, site.r])
        share = unbroadcast(b, picked, site.y_shape, site.x_shapes[part])
        out[part] = share if out[part] is None else b.add(out[part], share)
    return out


# --- derivatives of the transformer-era activations (the relevance passes unchanged, Eq 63) ----------------

SQRT_2PI = float(np.sqrt(2 * np.pi))
TANH_GELU_K, TANH_GELU_CUBIC = float(np.sqrt(2 / np.pi)), 0.044715


def _gelu_slope(site, x, y):
    """scale * GELU'(x): Phi(x) + x phi(x) for the erf form; the tanh approximation's own derivative."""
    b = site.b
    form = getattr(site.layer, "attrs", {})
    square = b.mul(x, x)
    if form.get("approximate") == "tanh":
        inner = b.mul(b.scalar(TANH_GELU_K), b.mul(x, b.add(b.scalar(1.0), b.mul(b.scalar(TANH_GELU_CUBIC),
                                                                                  square))))
        t = b.op("Tanh", [inner])
        d_inner = b.mul(b.scalar(TANH_GELU_K), b.add(b.scalar(1.0), b.mul(b.scalar(3 * TANH_GELU_CUBIC), square)))
        slope = b.add(b.mul(b.scalar(0.5), b.add(b.scalar(1.0), t)),
                      b.mul(b.mul(b.scalar(0.5), x), b.mul(b.sub(b.scalar(1.0), b.mul(t, t)), d_inner)))
    else:
        cdf = b.mul(b.scalar(0.5), b.add(b.scalar(1.0), b.op("Erf", [b.mul(x, b.scalar(float(1 / np.sqrt(2))))])))
        pdf = b.div(b.op("Exp", [b.mul(square, b.scalar(-0.5))]), b.scalar(SQRT_2PI))
        slope = b.add(cdf, b.mul(x, pdf))
    scale = float(form.get("scale", 1.0))
    return slope if scale == 1.0 else b.mul(slope, b.scalar(scale))


def _erf_slope(site, x, y):
    b = site.b
    return b.mul(b.scalar(float(2 / np.sqrt(np.pi))), b.op("Exp", [b.op("Neg", [b.mul(x, x)])]))


def _pow_slope(site, x, y):
    p = float(site.layer.attrs["exponent"])
    return site.b.mul(site.b.scalar(p), site.b.op("Pow", [x, site.b.scalar(p - 1)]))


SLOPES.update({"Gelu": _gelu_slope, "Erf": _erf_slope, "Pow": _pow_slope})
