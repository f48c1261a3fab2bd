"""Transformer layer kinds: LayerNorm (and RMSNorm), an in-graph Softmax and the product of two activations (attention).

Their relevance is rule-driven like a linear layer's: each names its `rule_kind` and hands relevance to the rule
object `rules.py` assigns it ("norm", "softmax" or "product"), so `--layer-rule` and the composites reach them.
"""

from __future__ import annotations

import numpy as np

from lrp_cli.ir.layers import Layer, unbroadcast


class FrozenNorm:
    """A LayerNorm at one input as the linear map it is when its standard deviation is a constant.

    y = (x - mean(x)) / std * weight + bias over the normalized axes; `apply`/`apply_transposed` make it look like
    a Linear layer to the epsilon rule (Ali et al. 2022; AttnLRP's identity rule on 1/std, Achtibat et al. 2024).
    """

    def __init__(self, norm: "LayerNorm", x: np.ndarray):
        self.norm = norm
        self.std = norm.std(x)
        self.weight = norm.scale_for(x)
        self.bias = norm.bias

    def apply(self, x, weight, bias):
        """Returns the frozen map of x with the given scale and bias."""
        y = self.norm.centre(x) / self.std * weight
        return y if bias is None else y + bias

    def apply_transposed(self, c, weight, input_shape):
        """Returns the adjoint of the frozen map (centring is symmetric) applied to output-shaped c."""
        return self.norm.centre(c * weight / self.std)


class LayerNorm(Layer):
    """Normalization over the axes from `axis` to the last, then an element-wise scale and bias (ONNX semantics)."""

    op = "LayerNormalization"
    params = ("scale", "bias")
    rule_kind = "norm"
    #: False for RMSNorm, which divides by the root mean square without subtracting the mean
    centred = True

    def __init__(self, axis: int, scale: np.ndarray | None, bias: np.ndarray | None, epsilon: float):
        self.axis = axis
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float64)
        self.bias = None if bias is None else np.asarray(bias, dtype=np.float64)
        self.epsilon = float(epsilon)

    def axes(self, x: np.ndarray) -> tuple[int, ...]:
        """Returns the normalized axes of x."""
        return tuple(range(self.axis % x.ndim, x.ndim))

    def centre(self, x: np.ndarray) -> np.ndarray:
        """Returns x minus its mean over the normalized axes (x itself for RMSNorm)."""
        return x - x.mean(axis=self.axes(x), keepdims=True) if self.centred else x

    def std(self, x: np.ndarray) -> np.ndarray:
        """Returns the standard deviation (RMSNorm: root mean square) with epsilon over the normalized axes, kept
        as broadcastable dims."""
        centred = self.centre(x)
        return np.sqrt((centred * centred).mean(axis=self.axes(x), keepdims=True) + x.dtype.type(self.epsilon))

    def scale_for(self, x: np.ndarray) -> np.ndarray:
        """Returns the element-wise scale (1 when the node has none)."""
        return np.ones((1,), dtype=x.dtype) if self.scale is None else self.scale

    def forward(self, x):
        return FrozenNorm(self, x).apply(x, self.scale_for(x), self.bias)

    def relevance(self, xs, y, r, rule):
        return [rule.relevance(FrozenNorm(self, xs[0]), xs[0], y, r)]

    def gradient(self, xs, y, g):
        x = xs[0]
        axes = self.axes(x)
        std = self.std(x)
        normed = self.centre(x) / std
        gn = g * self.scale_for(x)
        mean_gn = (gn * normed).mean(axis=axes, keepdims=True)
        return [(self.centre(gn) - normed * mean_gn) / std]

    def describe(self):
        return f"axis={self.axis} eps={self.epsilon:g}"


class RMSNorm(LayerNorm):
    """RMS normalization (ONNX RMSNormalization, opset 23): x / sqrt(mean(x^2) + eps) * scale over the axes from
    `axis` to the last; the same frozen-map rules as LayerNorm, without the centring."""

    op = "RMSNormalization"
    centred = False


class Softmax(Layer):
    """Softmax over one axis inside the network (attention weights)."""

    op = "Softmax"
    rule_kind = "softmax"

    def __init__(self, axis: int):
        self.axis = axis

    def forward(self, x):
        shifted = np.exp(x - x.max(axis=self.axis, keepdims=True))
        return shifted / shifted.sum(axis=self.axis, keepdims=True)

    def relevance(self, xs, y, r, rule):
        return [rule.softmax(xs[0], y, r, self.axis)]

    def gradient(self, xs, y, g):
        return [y * (g - (g * y).sum(axis=self.axis, keepdims=True))]

    def describe(self):
        return f"axis={self.axis}"


#: ONNX MatMul (batch dimensions broadcast) as an einsum equation.
MATMUL = "...ij,...jk->...ik"


class Product(Layer):
    """A bilinear product of two activations written as an einsum (MatMul Q K^T and A V, Einsum).

    `weights_operand` is the input that holds attention weights (a Softmax output), or None.
    """

    op = "MatMul"
    rule_kind = "product"

    def __init__(self, equation: str, weights_operand: int | None = None, op: str = "MatMul"):
        self.equation = equation
        self.weights_operand = weights_operand
        self.op = op
        inputs, self.out_spec = equation.split("->")
        self.a_spec, self.b_spec = inputs.split(",")

    def forward(self, a, b):
        if self.equation == MATMUL:
            return np.matmul(a, b)
        return np.einsum(self.equation, a, b, optimize=True)

    def transposed(self, c: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns (c . B^T, A^T . c): the gradients of sum(c * (A B)) w.r.t. each operand, in its shape."""
        if self.equation == MATMUL:  # batched BLAS; einsum's ellipsis path is much slower
            ga, gb = np.matmul(c, np.swapaxes(b, -1, -2)), np.matmul(np.swapaxes(a, -1, -2), c)
        else:
            ga = np.einsum(f"{self.out_spec},{self.b_spec}->{self.a_spec}", c, b, optimize=True)
            gb = np.einsum(f"{self.a_spec},{self.out_spec}->{self.b_spec}", a, c, optimize=True)
        return unbroadcast(ga, a.shape), unbroadcast(gb, b.shape)

    def relevance(self, xs, y, r, rule):
        return rule.product(self, xs[0], xs[1], y, r)

    def gradient(self, xs, y, g):
        return list(self.transposed(g, *xs))

    def describe(self):
        weights = "" if self.weights_operand is None else f" weights=input{self.weights_operand}"
        return self.equation + weights
