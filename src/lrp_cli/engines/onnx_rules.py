"""Every rule of `rules.py` as ONNX ops, term for term: one emitter per rule class, in a registry.

Modified weights (W+, W-, ones, w^2, gamma-shifted) are initializers computed once from the float64 IR
parameters. Terms that do not depend on the input (the denominators of flat and w^2, the bound terms of z^B)
are computed at compile time in float64. When the layer input is non-negative by construction (it comes out of
a ReLU, a pooling of one, ...), the x- terms of z+/alpha-beta/gamma are exactly zero and are left out, as the
NumPy rule leaves them out at run time.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from lrp_cli.engines.onnx_builder import registrar
from lrp_cli.engines.onnx_linear import LinearOps, Weight
from lrp_cli.ir.layers import stabilize
from lrp_cli.rules import STABILIZER, AlphaBeta, Epsilon, Flat, Gamma, Rule, WSquare, ZBox, ZPlus, _neg, _pos

RULE_EMITTERS: dict[type, Callable] = {}


def rule_emitter(*kinds: type):
    """Returns a decorator registering an emitter `fn(site, rule) -> input relevance name` for rule classes."""
    return registrar(RULE_EMITTERS, *kinds)


class RuleSite:
    """What a rule emitter needs about one linear node: builder, maps, tensor names and float64 parameters."""

    def __init__(self, ops: LinearOps, x: str, y: str, r: str, nonnegative_input: bool):
        self.ops, self.b = ops, ops.b
        self.layer = ops.layer
        self.x, self.y, self.r = x, y, r
        self.nonnegative_input = nonnegative_input

    def weight(self, value: np.ndarray) -> Weight:
        """Returns a (modified) weight, its initializers made when a map needs them."""
        return Weight(self.b, value)

    def bias(self, value: np.ndarray | None) -> str | None:
        """Returns an initializer for a bias, None when there is none."""
        return None if value is None else self.b.const(value, "bias")

    def propagate(self, x: str, weight: Weight, c: str) -> str:
        """Returns x * (W^T c)."""
        return self.b.mul(x, self.ops.transposed(c, weight))

    def constant_z(self, x_value: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """Returns layer.apply on a constant input, in float64."""
        return self.layer.apply(np.broadcast_to(x_value, self.ops.x_shape).astype(np.float64), weight, bias)


def emit_rule(site: RuleSite, rule: Rule) -> str:
    """Returns the name of the input relevance of a linear node under rule."""
    if type(rule) not in RULE_EMITTERS:
        raise KeyError(type(rule).__name__)
    return RULE_EMITTERS[type(rule)](site, rule)


@rule_emitter(Epsilon)
def _epsilon(site, rule):
    c = site.b.div(site.r, site.b.stabilize(site.y, rule.epsilon))
    return site.propagate(site.x, site.weight(site.layer.weight), c)


def _signed_terms(site: RuleSite, r: str, weights, bias, sign: int = 0) -> str:
    """Returns x+ (W_a^T c) + x- (W_b^T c), c = R / stab(x+ W_a + x- W_b + bias), as rules._signed_terms.

    sign = +1 / -1 when every term of z has that sign (z+ and the two alpha-beta terms): stab(z) is then
    z + sign * eps, folded into the bias of the first convolution (zero where stab's sign(0) = +1 differs: z = 0
    there only when every term x_i w_ij is 0, so that each input's share is 0 either way)."""
    b = site.b
    w_a = site.weight(weights[0])
    xp = site.x if site.nonnegative_input else b.positive(site.x)
    if sign:
        shift = np.full(site.ops.y_shape[1 if site.ops.channel_axis == 1 else -1], sign * STABILIZER)
        bias = shift if bias is None else bias + shift
    z = site.ops.apply(xp, w_a, site.bias(bias))
    if not site.nonnegative_input:
        w_b = site.weight(weights[1])
        xn = b.negative(site.x)
        z = b.add(z, site.ops.apply(xn, w_b, None))
    c = b.div(r, z if sign else b.stabilize(z, STABILIZER))
    out = site.propagate(xp, w_a, c)
    return out if site.nonnegative_input else b.add(out, site.propagate(xn, w_b, c))


@rule_emitter(ZPlus)
def _zplus(site, rule):
    w = site.layer.weight
    return _signed_terms(site, site.r, (_pos(w), _neg(w)), _pos(site.layer.bias), +1)


@rule_emitter(AlphaBeta)
def _alphabeta(site, rule):
    w, bias = site.layer.weight, site.layer.bias
    positive = _signed_terms(site, site.r, (_pos(w), _neg(w)), _pos(bias), +1)
    if rule.beta == 0:
        return positive
    negative = _signed_terms(site, site.r, (_neg(w), _pos(w)), _neg(bias), -1)
    b = site.b
    return b.sub(b.mul(positive, b.scalar(rule.alpha)), b.mul(negative, b.scalar(rule.beta)))


@rule_emitter(Gamma)
def _gamma(site, rule):
    b, g = site.b, rule.gamma
    w, bias = site.layer.weight, site.layer.bias
    up_w, down_w = w + g * _pos(w), w + g * _neg(w)
    up_b = None if bias is None else bias + g * _pos(bias)
    down_b = None if bias is None else bias + g * _neg(bias)
    rising_r = b.mul(site.r, b.indicator(b.op("Greater", [site.y, b.scalar(0.0)])))
    falling_r = b.mul(site.r, b.indicator(b.op("Less", [site.y, b.scalar(0.0)])))
    rising = _signed_terms(site, rising_r, (up_w, down_w), up_b)
    return b.add(rising, _signed_terms(site, falling_r, (down_w, up_w), down_b))


def _constant_denominator(site: RuleSite, weight: np.ndarray, bias) -> str:
    """Returns r / stab(z) for an input-independent z = apply(1, weight, bias), the denominator made at compile
    time."""
    z = stabilize(site.constant_z(np.ones(()), weight, bias), STABILIZER)
    return site.b.div(site.r, site.b.const(z, "denominator"))


@rule_emitter(Flat)
def _flat(site, rule):
    ones = np.ones_like(site.layer.weight)
    return site.ops.transposed(_constant_denominator(site, ones, None), site.weight(ones))


@rule_emitter(WSquare)
def _wsquare(site, rule):
    square = site.layer.weight ** 2
    bias = None if site.layer.bias is None else site.layer.bias ** 2
    return site.ops.transposed(_constant_denominator(site, square, bias), site.weight(square))


@rule_emitter(ZBox)
def _zbox(site, rule):
    b = site.b
    zeros = np.zeros(site.ops.x_shape)
    low, high = rule._bound(rule.low, zeros), rule._bound(rule.high, zeros)
    w, bias = site.layer.weight, site.layer.bias
    w_pos, w_neg = _pos(w), _neg(w)
    bounds = site.constant_z(low, w_pos, _pos(bias)) + site.constant_z(high, w_neg, _neg(bias))
    z = b.sub(site.y, b.const(bounds, "zbox_bounds"))
    c = b.div(site.r, b.stabilize(z, STABILIZER))
    out = site.propagate(site.x, site.weight(w), c)
    out = b.sub(out, site.propagate(b.const(low, "zbox_low"), site.weight(w_pos), c))
    return b.sub(out, site.propagate(b.const(high, "zbox_high"), site.weight(w_neg), c))
