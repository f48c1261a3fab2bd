"""LRP rules for linear layers (Dense, Conv), MaxPool's tie policy, and the composites that assign them (DESIGN §4).

Every rule is written against two operations a linear layer offers: `apply(x, W, b)` (the forward map with
modified parameters) and `apply_transposed(c, W, shape)` (its adjoint). Definitions follow zennit 1.0 term for
term so that results agree number for number: z_j = sum_i x_i w_ij + b_j, c = R / stab(z), R_i = x_i (W^T c)_i.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np

from lrp_cli.ir.layers import Conv, Dense, Linear, stabilize
from lrp_cli.ir.transformer import RMSNorm

#: zennit's stabilizer for every rule other than Epsilon.
STABILIZER = 1e-6


class RuleError(ValueError):
    """A rule specification or composite name that cannot be used."""


def _pos(a):
    return None if a is None else np.maximum(a, 0)


def _neg(a):
    return None if a is None else np.minimum(a, 0)


def _propagate(layer: Linear, x, weight, c):
    """Returns x * (W^T c): the relevance one (input, weight) term of a rule sends down."""
    return x * layer.apply_transposed(c, weight, x.shape)


class Rule:
    """Base class: a rule turns a linear layer's output relevance into input relevance.

    `kinds` lists the layer kinds (`Layer.rule_kind`) it applies to: linear layers call `relevance`, LayerNorm
    calls it on its frozen linear map, a Softmax calls `softmax`, a product of two activations `product`.
    """

    name = "rule"
    kinds: tuple[str, ...] = ("linear",)

    def relevance(self, layer: Linear, x: np.ndarray, y: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Returns the input relevance of layer for input x, output y and output relevance r."""
        raise NotImplementedError

    def spec(self) -> str:
        """Returns the rule as a `--rule` specification string."""
        return self.name

    def __repr__(self):
        return self.spec()


class Epsilon(Rule):
    """Eq 58: R_i = x_i sum_j w_ij R_j / stab(z_j); epsilon 1e-12 gives LRP-0 (Eq 56)."""

    name = "epsilon"
    kinds = ("linear", "norm", "recurrent")

    def __init__(self, epsilon: float = 1e-6, name: str = "epsilon"):
        self.epsilon = float(epsilon)
        self.name = name

    def relevance(self, layer, x, y, r):
        return _propagate(layer, x, layer.weight, r / stabilize(y, self.epsilon))

    def spec(self):
        return "z" if self.name == "z" else f"epsilon:{self.epsilon:g}"


class ZPlus(Rule):
    """z+ rule: z = x+ W+ + x- W- + b+; R = x+ (W+^T c) + x- (W-^T c)."""

    name = "zplus"

    def relevance(self, layer, x, y, r):
        w = layer.weight
        return _signed_terms(layer, x, r, (_pos(w), _neg(w)), _pos(layer.bias))


def _signed_terms(layer, x, r, weights, bias):
    """Returns x+ (W_a^T c) + x- (W_b^T c), c = R / stab(x+ W_a + x- W_b + bias), the shared core of z+/alpha/gamma."""
    w_a, w_b = weights
    xp, xn = _pos(x), _neg(x)
    has_negative = bool((xn < 0).any())
    z = layer.apply(xp, w_a, bias)
    if has_negative:
        z = z + layer.apply(xn, w_b, None)
    c = r / stabilize(z, STABILIZER)
    out = _propagate(layer, xp, w_a, c)
    return out + _propagate(layer, xn, w_b, c) if has_negative else out


class AlphaBeta(Rule):
    """Eq 60: alpha times the positive-contribution term minus beta times the negative one (alpha - beta = 1)."""

    name = "alphabeta"

    def __init__(self, alpha: float = 2.0, beta: float = 1.0):
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1.0) > 1e-12:
            raise RuleError(f"alphabeta:{alpha:g},{beta:g}: alpha and beta must be >= 0 with alpha - beta = 1")
        self.alpha, self.beta = float(alpha), float(beta)

    def relevance(self, layer, x, y, r):
        w, b = layer.weight, layer.bias
        positive = _signed_terms(layer, x, r, (_pos(w), _neg(w)), _pos(b))
        if self.beta == 0:
            return positive
        negative = _signed_terms(layer, x, r, (_neg(w), _pos(w)), _neg(b))
        return self.alpha * positive - self.beta * negative

    def spec(self):
        return f"alphabeta:{self.alpha:g},{self.beta:g}"


class Gamma(Rule):
    """Generalized gamma rule (zennit's Gamma): positive outputs favour W + gamma W+, negative W + gamma W-."""

    name = "gamma"

    def __init__(self, gamma: float = 0.25):
        self.gamma = float(gamma)

    def relevance(self, layer, x, y, r):
        w, b, g = layer.weight, layer.bias, self.gamma
        up_w, down_w = w + g * _pos(w), w + g * _neg(w)
        up_b = None if b is None else b + g * _pos(b)
        down_b = None if b is None else b + g * _neg(b)
        rising = _signed_terms(layer, x, r * (y > 0), (up_w, down_w), up_b)
        falling = _signed_terms(layer, x, r * (y < 0), (down_w, up_w), down_b)
        return rising + falling

    def spec(self):
        return f"gamma:{self.gamma:g}"


class Flat(Rule):
    """Flat rule: all inputs and weights 1, bias 0; relevance spread uniformly over the receptive field."""

    name = "flat"

    def relevance(self, layer, x, y, r):
        ones = np.ones_like(layer.weight)
        z = layer.apply(np.ones_like(x), ones, None)
        return layer.apply_transposed(r / stabilize(z, STABILIZER), ones, x.shape)


class WSquare(Rule):
    """w^2 rule: R_i = sum_j w_ij^2 / (sum_i w_ij^2 + b_j^2) R_j, independent of the input."""

    name = "wsquare"

    def relevance(self, layer, x, y, r):
        square = layer.weight ** 2
        bias = None if layer.bias is None else layer.bias ** 2
        z = layer.apply(np.ones_like(x), square, bias)
        return layer.apply_transposed(r / stabilize(z, STABILIZER), square, x.shape)


class ZBox(Rule):
    """z^B rule for bounded inputs low <= x <= high: z = x W - low W+ - high W-."""

    name = "zbox"

    def __init__(self, low=None, high=None):
        self.low = low
        self.high = high

    def with_bounds(self, low, high) -> "ZBox":
        """Returns this rule with default bounds filled in where the spec gave none."""
        return ZBox(self.low if self.low is not None else low, self.high if self.high is not None else high)

    def _bound(self, value, x):
        if value is None:
            raise RuleError("zbox needs input bounds: give zbox:LOW,HIGH or a preset that implies them")
        value = np.asarray(value, dtype=x.dtype)
        if value.ndim == 1 and value.size > 1:
            if x.ndim < 3 or x.shape[1] != value.size:
                raise RuleError(f"zbox per-channel bounds of length {value.size} need a [N,{value.size},...] input")
            value = value.reshape((1, -1) + (1,) * (x.ndim - 2))
        return np.broadcast_to(value, x.shape)

    def relevance(self, layer, x, y, r):
        low, high = self._bound(self.low, x), self._bound(self.high, x)
        w, b = layer.weight, layer.bias
        w_pos, w_neg = _pos(w), _neg(w)
        z = y - layer.apply(low, w_pos, _pos(b)) - layer.apply(high, w_neg, _neg(b))
        c = r / stabilize(z, STABILIZER)
        return _propagate(layer, x, w, c) - _propagate(layer, low, w_pos, c) - _propagate(layer, high, w_neg, c)

    def spec(self):
        if self.low is None:
            return "zbox"
        return f"zbox:{_format_bound(self.low)},{_format_bound(self.high)}"


class MaxPoolTies(Rule):
    """Tie policy of MaxPool: `first` routes a window's relevance to its first maximum in row-major order (zennit's
    gradient, PyTorch's max_pool2d index), `split` shares it evenly between tied maxima (the LRP Toolbox)."""

    name = "maxpool"
    kinds = ("maxpool",)
    POLICIES = ("first", "split")

    def __init__(self, policy: str = "first"):
        if policy not in self.POLICIES:
            raise RuleError(f"rule 'maxpool:{policy}': the tie policy is one of {', '.join(self.POLICIES)}")
        self.policy = policy

    def relevance(self, layer, x, y, r):
        return layer.route(x, y, r, split_ties=self.policy == "split")

    def spec(self):
        return f"maxpool:{self.policy}"


class Identity(Rule):
    """Identity rule: a LayerNorm passes its relevance to its input unchanged (AttnLRP's rule for RMSNorm)."""

    name = "identity"
    kinds = ("norm",)

    def relevance(self, layer, x, y, r):
        return r


class SoftmaxTaylor(Rule):
    """AttnLRP's Softmax rule (Achtibat et al. 2024, Prop. 3.1): Taylor at the input with the bias term,
    R_in = x * (R - s * sum R) along the softmax axis (s the softmax output)."""

    name = "taylor"
    kinds = ("softmax",)

    def softmax(self, x, s, r, axis):
        """Returns the relevance of the softmax input."""
        return x * (r - s * r.sum(axis=axis, keepdims=True))


class ConstantWeights(Rule):
    """CP-LRP (Ali et al. 2022): the attention weights are constants of the forward pass; no relevance enters the
    Softmax, so none reaches the queries and keys."""

    name = "constant"
    kinds = ("softmax",)

    def softmax(self, x, s, r, axis):
        """Returns None: the softmax input receives no relevance."""
        return None


class Uniform(Rule):
    """AttnLRP's rule for a product of two activations (Prop. 3.3): the epsilon rule on the bilinear map, each
    operand taking half, R_a = a * (c B^T), R_b = b * (A^T c) with c = R / (2 stab(A B))."""

    name = "uniform"
    kinds = ("product",)

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = float(epsilon)

    def product(self, layer, a, b, y, r):
        """Returns the relevance of both operands."""
        ga, gb = layer.transposed(r / (2 * stabilize(y, self.epsilon)), a, b)
        return [a * ga, b * gb]

    def spec(self):
        return f"uniform:{self.epsilon:g}"


class ValuePath(Rule):
    """CP-LRP for attention times values: the attention weights are constants, so the product is linear in the
    values and the epsilon rule gives the values all the relevance."""

    name = "value"
    kinds = ("product",)

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = float(epsilon)

    def product(self, layer, a, b, y, r):
        """Returns (None for the attention weights, the epsilon-rule relevance of the values)."""
        if layer.weights_operand is None:
            raise RuleError("rule 'value' needs a product with attention weights (a Softmax output)")
        ga, gb = layer.transposed(r / stabilize(y, self.epsilon), a, b)
        return [None, b * gb] if layer.weights_operand == 0 else [a * ga, None]

    def spec(self):
        return f"value:{self.epsilon:g}"


def _format_bound(value) -> str:
    values = np.atleast_1d(np.asarray(value, dtype=float))
    values = values[:1] if np.all(values == values[0]) else values
    return "/".join(f"{v:g}" for v in values)


def _numbers(text: str, spec: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")] if text else []
    except ValueError:
        raise RuleError(f"rule '{spec}': parameters must be numbers") from None


def _bound_value(text: str, spec: str):
    try:
        values = [float(v) for v in text.split("/")]
    except ValueError:
        raise RuleError(f"rule '{spec}': zbox bounds must be numbers or a/b/c lists") from None
    return values[0] if len(values) == 1 else np.array(values)


#: rule name -> (most parameters, maker)
_MAKERS = {
    "z": (0, lambda: Epsilon(1e-12, name="z")),
    "epsilon": (1, lambda *v: Epsilon(*v)),
    "zplus": (0, ZPlus),
    "alphabeta": (2, lambda *v: AlphaBeta(*v)),
    "gamma": (1, lambda *v: Gamma(*v)),
    "flat": (0, Flat),
    "wsquare": (0, WSquare),
    "identity": (0, Identity),
    "taylor": (0, SoftmaxTaylor),
    "constant": (0, ConstantWeights),
    "uniform": (1, lambda *v: Uniform(*v)),
    "value": (1, lambda *v: ValuePath(*v)),
}


def parse_rule(spec: str) -> Rule:
    """Returns the rule object for a specification like `epsilon:0.01`, `alphabeta:2,1` or `zbox:-1,1`."""
    name, _, args = spec.strip().partition(":")
    name = name.lower()
    if name == "zbox":
        if not args:
            return ZBox()
        parts = args.split(",")
        if len(parts) != 2:
            raise RuleError(f"rule '{spec}': zbox takes LOW,HIGH")
        return ZBox(_bound_value(parts[0], spec), _bound_value(parts[1], spec))
    if name == "maxpool":
        return MaxPoolTies(args.strip().lower() or "first")
    values = _numbers(args, spec)
    if name not in _MAKERS:
        raise RuleError(f"unknown rule '{spec}'; rules: {', '.join(sorted(_MAKERS) + ['zbox', 'maxpool'])}")
    most, make = _MAKERS[name]
    if len(values) > most or (name == "alphabeta" and len(values) not in (0, 2)):
        raise RuleError(f"rule '{spec}': wrong number of parameters")
    return make(*values)


@dataclass(frozen=True)
class Composite:
    """Rule specs for the first linear layer, other convolutions and other dense layers, MaxPool ties, and the
    transformer layer kinds: LayerNorm, in-graph Softmax, products of two activations (`attention_product`: those
    reading attention weights, when it differs)."""

    first: str | None
    conv: str
    dense: str
    first_kinds: tuple[type, ...] = (Conv, Dense)
    norm: str = "epsilon"
    softmax: str = "taylor"
    product: str = "uniform"
    attention_product: str | None = None
    maxpool: str = "maxpool:first"
    rms_norm: str | None = None  # an RMSNorm's rule, when it differs from LayerNorm's
    recurrent: str = "epsilon:0.001"  # LSTM/GRU: Arras et al. 2017's epsilon rule and epsilon

    def spec_for(self, layer, first: bool) -> str:
        """Returns the rule spec this composite gives a rule-driven layer (`first`: the first linear layer)."""
        if layer.rule_kind == "linear":
            if first and self.first and isinstance(layer, self.first_kinds):
                return self.first
            return self.conv if isinstance(layer, Conv) else self.dense
        if layer.rule_kind == "product":
            weights = getattr(layer, "weights_operand", None) is not None
            return self.attention_product if weights and self.attention_product else self.product
        if self.rms_norm and isinstance(layer, RMSNorm):
            return self.rms_norm
        return {"norm": self.norm, "softmax": self.softmax, "maxpool": self.maxpool,
                "recurrent": self.recurrent}[layer.rule_kind]


COMPOSITES = {
    "epsilon-plus-flat": Composite("flat", "zplus", "epsilon"),
    "epsilon-plus": Composite("zplus", "zplus", "epsilon"),
    "epsilon-alpha2-beta1": Composite("alphabeta:2,1", "alphabeta:2,1", "epsilon"),
    "epsilon-alpha2-beta1-flat": Composite("flat", "alphabeta:2,1", "epsilon"),
    # As in zennit, only a first *convolution* gets z^B.
    "epsilon-gamma-box": Composite("zbox", "gamma", "epsilon", first_kinds=(Conv,)),
    "paper-epsilon": Composite("epsilon:0.01", "epsilon:0.01", "epsilon:0.01"),
    # Ali et al. 2022: LayerNorm std and attention weights are constants; relevance follows the value path.
    "cp-lrp": Composite(None, "epsilon", "epsilon", softmax="constant", attention_product="value"),
    # Achtibat et al. 2024: LayerNorm identity on 1/std and the scaling (epsilon on the centring), Softmax by its
    # Taylor rule, QK^T and AV uniform, gamma on the (patch-embedding) convolutions; RMSNorm (no centring) is
    # all element-wise scaling, so the identity rule.
    "attnlrp": Composite(None, "gamma", "epsilon", rms_norm="identity"),
    # Arras et al. 2017: the epsilon rule (eps = 0.001) on every linear map, recurrent layers included.
    "sequence-epsilon": Composite(None, "epsilon:0.001", "epsilon:0.001"),
}
DEFAULT_COMPOSITE = "epsilon-plus-flat"
#: The default for a graph with a LayerNorm, an in-graph Softmax or a product of two activations.
TRANSFORMER_COMPOSITE = "attnlrp"
#: The default for a graph with an LSTM/GRU layer.
SEQUENCE_COMPOSITE = "sequence-epsilon"
#: The layer kinds that make a graph a transformer's.
TRANSFORMER_KINDS = ("norm", "softmax", "product")
#: What each layer kind is called in messages.
KIND_NAMES = {"linear": "Conv/Dense", "maxpool": "MaxPool", "norm": "LayerNorm/RMSNorm", "softmax": "Softmax",
              "product": "product (MatMul/Einsum of two activations)", "recurrent": "LSTM/GRU"}


def default_composite(nodes: list[tuple[str, object]]) -> str:
    """Returns the composite used when none is given: attnlrp for a transformer graph, sequence-epsilon for one with
    an LSTM/GRU, else epsilon-plus-flat."""
    if any(layer.rule_kind in TRANSFORMER_KINDS for _, layer in nodes):
        return TRANSFORMER_COMPOSITE
    if any(layer.rule_kind == "recurrent" for _, layer in nodes):
        return SEQUENCE_COMPOSITE
    return DEFAULT_COMPOSITE


def composite_specs(composite: str, nodes: list[tuple[str, object]]) -> dict[str, str]:
    """Returns node name -> rule spec for the rule-driven nodes (in topological order) under a composite."""
    if composite not in COMPOSITES:
        raise RuleError(f"unknown composite '{composite}'; composites: {', '.join(COMPOSITES)}")
    comp = COMPOSITES[composite]
    linear = [name for name, layer in nodes if layer.rule_kind == "linear"]
    return {name: comp.spec_for(layer, bool(linear) and name == linear[0]) for name, layer in nodes}


def _fitting_rules(kind: str) -> str:
    return ", ".join(n for n in sorted([*_MAKERS, "zbox", "maxpool"]) if kind in parse_rule(n).kinds)


def assign_rules(nodes: list[tuple[str, object]], composite: str | None = None, rule: str | None = None,
                 layer_rules: tuple[str, ...] = ()) -> dict[str, str]:
    """Returns node name -> rule spec from a composite or a uniform rule, then `PATTERN=SPEC` overrides.

    `nodes` are the rule-driven (name, layer) pairs; `--rule` sets every Conv/Dense, the other kinds keep the
    composite's rules (MaxPool ties: zennit's first maximum). An override applies to the matching nodes of the
    kinds its rule is for; a pattern that matches only nodes of other kinds is an error naming one.
    """
    specs = composite_specs(composite or default_composite(nodes), nodes)
    if rule:
        if "linear" not in parse_rule(rule).kinds:
            raise RuleError(f"--rule '{rule}' is not a Conv/Dense rule (a MaxPool tie policy or a transformer "
                            f"rule): give it as --layer-rule 'GLOB={rule}'")
        specs.update({name: rule for name, layer in nodes if layer.rule_kind == "linear"})
    for override in layer_rules:
        pattern, sep, spec = override.partition("=")
        if not sep or not pattern or not spec:
            raise RuleError(f"--layer-rule '{override}': expected NAME_OR_GLOB=SPEC")
        kinds = parse_rule(spec).kinds
        named = [(name, layer) for name, layer in nodes if fnmatch.fnmatchcase(name, pattern)]
        matched = [name for name, layer in named if layer.rule_kind in kinds]
        if not matched and named:
            name, layer = named[0]
            raise RuleError(f"rule '{spec}' does not apply to node '{name}' ({layer.op}); "
                            f"rules for it: {_fitting_rules(layer.rule_kind)}")
        if not matched:
            raise RuleError(f"--layer-rule '{override}': no {KIND_NAMES[kinds[0]]} layer matches '{pattern}'")
        specs.update(dict.fromkeys(matched, spec))
    return specs
