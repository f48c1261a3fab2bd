"""L2 normalization over the last axis (`F.normalize`, as Swin V2's cosine attention writes it for queries and keys).

y = x / max(||x||_2, eps) along one axis. Its relevance is rule-driven like LayerNorm's (`rule_kind` "norm"): with
the norm held constant the layer is a diagonal linear map, so the epsilon rule sends R * y / stab(y) down (CP-LRP's
constant normalization statistics, Ali et al. 2022) and AttnLRP's identity rule on the scaling passes R unchanged.
"""

from __future__ import annotations

import numpy as np

from lrp_cli.ir.layers import Layer


class FrozenScale:
    """y = x * weight / norm with the norm a constant: the linear map a rule sees (weight: ones)."""

    def __init__(self, norm: np.ndarray, dtype):
        self.norm = norm
        self.weight = np.ones((1,), dtype=dtype)
        self.bias = None

    def apply(self, x, weight, bias):
        """Returns the frozen map of x with the given scale and bias."""
        y = x * weight / self.norm
        return y if bias is None else y + bias

    def apply_transposed(self, c, weight, input_shape):
        """Returns the adjoint of the frozen (diagonal) map applied to output-shaped c."""
        return c * weight / self.norm


class L2Normalize(Layer):
    """x / max(||x||_2, epsilon) over `axis` (ONNX ReduceL2 -> Clip -> Expand -> Div, fused at import)."""

    op = "L2Normalize"
    rule_kind = "norm"

    def __init__(self, axis: int, epsilon: float):
        self.axis = axis
        self.epsilon = float(epsilon)

    def norm(self, x: np.ndarray) -> np.ndarray:
        """Returns max(||x||_2, epsilon) along the axis, kept as a broadcastable dimension."""
        return np.maximum(np.sqrt((x * x).sum(axis=self.axis, keepdims=True)), x.dtype.type(self.epsilon))

    def forward(self, x):
        return x / self.norm(x)

    def relevance(self, xs, y, r, rule):
        return [rule.relevance(FrozenScale(self.norm(xs[0]), xs[0].dtype), xs[0], y, r)]

    def gradient(self, xs, y, g):
        x = xs[0]
        n = self.norm(x)
        radial = np.where(n > self.epsilon, (g * y).sum(axis=self.axis, keepdims=True), 0)
        return [(g - y * radial) / n]

    def describe(self):
        return f"axis={self.axis} eps={self.epsilon:g}"
