"""Every rule on Dense and Conv layers against an independent float64 brute force over the explicit weight matrix.

The brute force writes each rule as messages R_{i<-j} = (contribution_ij / denominator_j) R_j over a dense [I, J]
matrix (Eqs 56-62 and zennit's definitions), with explicit loops over output neurons; the layer's matrix is
obtained by pushing unit vectors through the forward pass. Tolerance: 1e-9 relative (float64 both sides).
"""

import numpy as np
import pytest
from onnx import helper

from conftest import compiled_relevance, onnx_model
from lrp_cli.ir.layers import Conv, ConvTranspose, Dense
from lrp_cli.ir.windows import Window
from lrp_cli.rules import (AlphaBeta, Epsilon, Flat, Gamma, RuleError, WSquare, ZBox, ZPlus, assign_rules,
                           composite_specs, parse_rule)

EPS = 1e-6


def stab(z, eps=EPS):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def explicit_matrix(layer, x_shape):
    """Returns (M [I, J], bias [J]) with layer(x).ravel() == x.ravel() @ M + bias."""
    size = int(np.prod(x_shape))
    bias = layer.forward(np.zeros(x_shape)).ravel()
    rows = [layer.forward(np.eye(size)[k].reshape(x_shape)).ravel() - bias for k in range(size)]
    return np.array(rows), bias


def connectivity(layer, x_shape):
    """Returns the [I, J] 0/1 mask of which input feeds which output (weights set to one, bias zero)."""
    ones = type(layer).__new__(type(layer))
    ones.__dict__.update(layer.__dict__, weight=np.ones_like(layer.weight), bias=None)
    return explicit_matrix(ones, x_shape)[0]


def messages(contrib, denom, r):
    """Returns R_i = sum_j contrib_ij / denom_j R_j with a loop over output neurons j."""
    out = np.zeros(contrib.shape[0])
    for j in range(contrib.shape[1]):
        out += contrib[:, j] / denom[j] * r[j]
    return out


def brute_force(rule, layer, x, r):
    m, b = explicit_matrix(layer, x.shape)
    xf, r = x.ravel(), r.ravel()
    y = xf @ m + b
    xp, xn = np.maximum(xf, 0)[:, None], np.minimum(xf, 0)[:, None]
    mp, mn = np.maximum(m, 0), np.minimum(m, 0)
    bp, bn = np.maximum(b, 0), np.minimum(b, 0)
    if isinstance(rule, Epsilon):
        contrib = xf[:, None] * m
        return messages(contrib, stab(contrib.sum(0) + b, rule.epsilon), r)
    if isinstance(rule, ZPlus):
        contrib = xp * mp + xn * mn
        return messages(contrib, stab(contrib.sum(0) + bp), r)
    if isinstance(rule, AlphaBeta):
        pos, neg = xp * mp + xn * mn, xp * mn + xn * mp
        return (rule.alpha * messages(pos, stab(pos.sum(0) + bp), r)
                - rule.beta * messages(neg, stab(neg.sum(0) + bn), r))
    if isinstance(rule, Gamma):
        g = rule.gamma
        up, down = xp * (m + g * mp) + xn * (m + g * mn), xp * (m + g * mn) + xn * (m + g * mp)
        return (messages(up, stab(up.sum(0) + b + g * bp), r * (y > 0))
                + messages(down, stab(down.sum(0) + b + g * bn), r * (y < 0)))
    if isinstance(rule, Flat):
        mask = connectivity(layer, x.shape)
        return messages(mask, stab(mask.sum(0)), r)
    if isinstance(rule, WSquare):
        return messages(m ** 2, stab((m ** 2).sum(0) + b ** 2), r)
    if isinstance(rule, ZBox):
        per_channel = (1, -1) + (1,) * (x.ndim - 2)
        low = np.broadcast_to(np.asarray(rule.low).reshape(per_channel) if np.ndim(rule.low) else rule.low,
                              x.shape).ravel()[:, None]
        high = np.broadcast_to(np.asarray(rule.high).reshape(per_channel) if np.ndim(rule.high) else rule.high,
                               x.shape).ravel()[:, None]
        contrib = xf[:, None] * m - low * mp - high * mn
        return messages(contrib, stab(contrib.sum(0)), r)
    raise AssertionError(rule)


RULES = [Epsilon(1e-6), Epsilon(0.5), Epsilon(1e-12, name="z"), ZPlus(), AlphaBeta(2, 1), AlphaBeta(1, 0),
         Gamma(0.25), Gamma(1.0), Flat(), WSquare(), ZBox(-1.5, 2.0), ZBox(np.array([-2.0, -1.0, -0.5]),
                                                                          np.array([2.0, 1.5, 3.0]))]


def dense_layers(rng):
    return [Dense(rng.standard_normal((7, 5)), rng.standard_normal(5)), Dense(rng.standard_normal((7, 5)), None)]


def conv_layers(rng):
    def conv(out, cin, k, group=1, bias=True, **window):
        w = rng.standard_normal((out, cin // group, k, k))
        return Conv(w, rng.standard_normal(out) if bias else None, Window((k, k), **window), group)
    return [
        conv(4, 3, 3, pads=(1, 1, 1, 1)),
        conv(4, 3, 3, bias=False, strides=(2, 2), pads=(0, 1, 1, 0)),
        conv(3, 3, 3, group=3, pads=(1, 1, 1, 1)),                    # depthwise
        conv(6, 3, 2, group=3, strides=(2, 1)),                        # grouped, channel multiplier 2
        conv(2, 3, 3, dilations=(2, 2), pads=(2, 2, 2, 2)),
    ]


def conv_transpose_layers(rng):
    # input 1x3x6x7, stride 2, pads (1, 0, 1, 1): output height 2*5+3-2 = 11, width 2*6+3-1 = 14
    return [ConvTranspose(rng.standard_normal((3, 4, 3, 3)), rng.standard_normal(4),
                          Window((3, 3), (2, 2), (1, 0, 1, 1)), 1, (11, 14))]


def one_layer_model(layer, x_shape):
    """Returns an ONNX model of one IR linear layer (MatMul + Add, Conv or ConvTranspose)."""
    f32 = np.float32
    inits = {"w": layer.weight.astype(f32)}
    if layer.bias is not None:
        inits["b"] = layer.bias.astype(f32)
    if isinstance(layer, Dense):
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m" if layer.bias is not None else "y"], name="layer")]
        nodes += [helper.make_node("Add", ["m", "b"], ["y"], name="bias")] if layer.bias is not None else []
        return onnx_model(nodes, x_shape, "y", inits)
    window = layer.conv.window if isinstance(layer, ConvTranspose) else layer.window
    group = layer.conv.group if isinstance(layer, ConvTranspose) else layer.group
    attrs = dict(kernel_shape=list(window.kernel), strides=list(window.strides), pads=list(window.pads),
                 dilations=list(window.dilations), group=group)
    op = "ConvTranspose" if isinstance(layer, ConvTranspose) else "Conv"
    inputs = ["x", "w"] + (["b"] if layer.bias is not None else [])
    return onnx_model([helper.make_node(op, inputs, ["y"], name="layer", **attrs)], x_shape, "y", inits)


@pytest.mark.parametrize("engine", ["numpy", "onnxruntime"])
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.spec())
@pytest.mark.parametrize("kind", ["dense", "conv", "conv-transpose"])
def test_rule_matches_brute_force(rule, kind, engine):
    """NumPy: any output relevance, 1e-9. Compiled (float32 weights and input; the start relevance is one-hot at
    a target valued y_target): against the brute force on the same float32-rounded numbers, 1e-4 of max |R|."""
    rng = np.random.default_rng(1)
    layers = {"dense": dense_layers, "conv": conv_layers, "conv-transpose": conv_transpose_layers}[kind](rng)
    for k, layer in enumerate(layers):
        if isinstance(rule, ZBox) and np.ndim(rule.low) and kind == "dense":
            continue
        check_against_brute_force(rule, layer, rng.standard_normal((1, 7) if kind == "dense" else (1, 3, 6, 7)),
                                  engine, k, targets=3)


def check_against_brute_force(rule, layer, x, engine, seed, targets):
    """Checks one rule on one layer: NumPy for a random output relevance (1e-9), or the compiled pass for one-hot
    starts at `targets` outputs (1e-4 of max |R|, float32-rounded weights and input on both sides)."""
    if isinstance(rule, ZBox):
        x = np.clip(x, -0.4, 0.9)
    if engine == "onnxruntime":
        layer, x = layer.astype(np.float32).astype(np.float64), x.astype(np.float32).astype(np.float64)
    y = layer.forward(x)
    if engine == "numpy":
        r = np.random.default_rng(seed).standard_normal(y.shape)
        got = rule.relevance(layer, x, y, r).ravel()
        want = brute_force(rule, layer, x, r)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
        return
    compiled = compiled_relevance(one_layer_model(layer, x.shape), x, rules={"*": rule})
    for target in np.random.default_rng(seed).choice(y.size, targets, replace=False):
        r = np.zeros(y.size)
        r[target] = y.ravel()[target]
        got = compiled(int(target)).ravel()
        want = brute_force(rule, layer, x, r.reshape(y.shape))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_epsilon_conserves_on_bias_free_layer():
    rng = np.random.default_rng(3)
    layer = Dense(rng.standard_normal((10, 4)), None)
    x = rng.standard_normal((1, 10))
    y = layer.forward(x)
    r = layer.forward(x) * (np.arange(4) == 2)
    got = Epsilon(1e-9).relevance(layer, x, y, r)
    assert got.sum() == pytest.approx(r.sum(), rel=1e-6)


def test_hand_worked_zplus_example():
    # Two inputs, one output: contributions 1*2=2 and 3*(-1)=-3 (input x- with W-? no: x2=3>0, w=-1 so dropped);
    # z+ = 2 + b+ = 2 + 1 = 3; R=6 -> R1 = 2/3*6 = 4, R2 = 0; the bias absorbs 2.
    layer = Dense(np.array([[2.0], [-1.0]]), np.array([1.0]))
    x = np.array([[1.0, 3.0]])
    got = ZPlus().relevance(layer, x, layer.forward(x), np.array([[6.0]]))
    np.testing.assert_allclose(got, [[4.0, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("spec,expected", [
    ("z", "z"), ("epsilon", "epsilon:1e-06"), ("epsilon:0.01", "epsilon:0.01"), ("zplus", "zplus"),
    ("alphabeta", "alphabeta:2,1"), ("alphabeta:1,0", "alphabeta:1,0"), ("gamma:0.5", "gamma:0.5"),
    ("flat", "flat"), ("wsquare", "wsquare"), ("zbox:-1,1", "zbox:-1,1"),
    ("zbox:-1/-2/-3,1/2/3", "zbox:-1/-2/-3,1/2/3"),
])
def test_parse_rule_round_trips(spec, expected):
    assert parse_rule(spec).spec() == expected


@pytest.mark.parametrize("spec", ["nope", "epsilon:a", "alphabeta:3,1", "alphabeta:2", "zbox:1", "flat:1",
                                  "gamma:1,2"])
def test_parse_rule_rejects_bad_specs(spec):
    with pytest.raises(RuleError):
        parse_rule(spec)


def test_composites_map_first_conv_and_dense():
    rng = np.random.default_rng(0)
    nodes = [("c1", conv_layers(rng)[0]), ("c2", conv_layers(rng)[0]), ("d1", dense_layers(rng)[0])]
    assert composite_specs("epsilon-plus-flat", nodes) == {"c1": "flat", "c2": "zplus", "d1": "epsilon"}
    assert composite_specs("epsilon-gamma-box", nodes) == {"c1": "zbox", "c2": "gamma", "d1": "epsilon"}
    assert composite_specs("epsilon-alpha2-beta1", nodes)["c1"] == "alphabeta:2,1"
    # zennit gives z^B only to a first *convolution*; a first dense layer keeps the dense rule.
    dense_first = [("d0", dense_layers(rng)[0])] + nodes
    assert composite_specs("epsilon-gamma-box", dense_first)["d0"] == "epsilon"
    assert composite_specs("epsilon-plus-flat", dense_first)["d0"] == "flat"
    specs = assign_rules(nodes, rule="epsilon:0.1", layer_rules=("c*=alphabeta:1,0",))
    assert specs == {"c1": "alphabeta:1,0", "c2": "alphabeta:1,0", "d1": "epsilon:0.1"}
    with pytest.raises(RuleError, match="no Conv/Dense layer matches"):
        assign_rules(nodes, layer_rules=("zzz=flat",))
