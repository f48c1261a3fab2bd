"""The two maps every rule is written against (`Linear.apply` and `Linear.apply_transposed`), as ONNX ops.

Conv runs as Conv and its adjoint as ConvTranspose; ConvTranspose the other way round; Dense as MatMul and its
adjoint as Gemm by the transposed weight (transB, so no transposed copy of the weight is stored), or by the model's
own [out, in] copy of the weight where it has one (a Gemm with transB=1, as torch exports Linear).
"""

from __future__ import annotations

import numpy as np

from lrp_cli.engines.onnx_builder import CompileError, GraphBuilder
from lrp_cli.ir.layers import Conv, ConvTranspose, Dense, Linear
from lrp_cli.ir.windows import Window


def window_attrs(window: Window) -> dict:
    """Returns the Conv attributes of a window (kernel, strides, explicit pads, dilations)."""
    return {"kernel_shape": list(window.kernel), "strides": list(window.strides), "pads": list(window.pads),
            "dilations": list(window.dilations)}


def window_adjoint(b: GraphBuilder, c: str, weight: str, window: Window, group: int, out_size, in_size) -> str:
    """Returns the ConvTranspose of output-shaped c by weight, cropped or zero-extended to the input size in_size
    (the adjoint of the window's gather, explicit pads and any ceil-mode overhang included)."""
    attrs = window_attrs(window)
    rank, begins = window.rank, window.begins
    need = [(out_size[k] - 1) * window.strides[k] + window.extent(k) for k in range(rank)]
    crop = [max(need[k] - begins[k] - in_size[k], 0) for k in range(rank)]
    attrs["pads"] = list(begins) + crop
    spread = b.op("ConvTranspose", [c, weight], group=group, **attrs)
    short = [in_size[k] - (need[k] - begins[k] - crop[k]) for k in range(rank)]
    if any(short):
        spread = b.pad(spread, [0] * (rank + 2) + [0, 0] + short)
    return spread


class Weight:
    """A (modified) weight array and the initializers made from it on demand (as is, or rearranged)."""

    def __init__(self, b: GraphBuilder, value: np.ndarray):
        self.b, self.value = b, value
        self._names: dict[str, str] = {}

    def existing(self, form: str, make) -> str | None:
        """Returns the initializer already holding make(weight) in float32 (the model's own, or made before), if any:
        a map that can use that form instead of making the as-is one stores no copy."""
        if form not in self._names:
            name = self.b.existing(np.ascontiguousarray(make(self.value), dtype=np.float32))
            if name is None:
                return None
            self._names[form] = name
        return self._names[form]

    def name(self, form: str = "as_is", make=None) -> str:
        """Returns the initializer of the weight, or of make(weight) for another form, created once."""
        if form not in self._names:
            self._names[form] = self.b.const(self.value if make is None else make(self.value), "weight")
        return self._names[form]


def flipped_adjoint_kernel(weight: np.ndarray, group: int) -> np.ndarray:
    """Returns the kernel [C, O/g, *kernel] whose stride-1 convolution is the adjoint of one by weight
    [O, C/g, *kernel]: input and output channels swapped within each group, spatially flipped."""
    out, per_group = weight.shape[:2]
    spatial = tuple(range(3, weight.ndim + 1))
    grouped = weight.reshape(group, out // group, per_group, *weight.shape[2:]).transpose(0, 2, 1, *spatial)
    flipped = grouped.reshape(group * per_group, out // group, *weight.shape[2:])
    return np.flip(flipped, axis=tuple(range(2, weight.ndim)))


class LinearOps:
    """apply(x, W, b) and apply_transposed(c, W) of one IR linear layer, emitted into a builder."""

    channel_axis = 1

    def __init__(self, b: GraphBuilder, layer: Linear, x_shape, y_shape):
        self.b, self.layer = b, layer
        self.x_shape, self.y_shape = tuple(x_shape), tuple(y_shape)

    def apply(self, x: str, weight: Weight, bias: str | None) -> str:
        """Returns the layer's map of x with the given weight and bias initializer."""
        raise NotImplementedError

    def transposed(self, c: str, weight: Weight) -> str:
        """Returns the adjoint map of output-shaped c (input-shaped)."""
        raise NotImplementedError


class ConvOps(LinearOps):
    """Conv forward; the adjoint is a Conv by the flipped kernel for stride 1 (onnxruntime's Conv kernels are
    faster than its ConvTranspose, depthwise above all), else ConvTranspose."""

    def apply(self, x, weight, bias):
        inputs = [x, weight.name()] + ([bias] if bias else [])
        return self.b.op("Conv", inputs, group=self.layer.group, **window_attrs(self.layer.window))

    def transposed(self, c, weight):
        window, group = self.layer.window, self.layer.group
        pads = [window.extent(k % window.rank) - 1 - window.pads[k] for k in range(2 * window.rank)]
        if all(s == 1 for s in window.strides) and min(pads) >= 0:
            attrs = window_attrs(window) | {"pads": pads}
            kernel = weight.name("adjoint", lambda w: flipped_adjoint_kernel(w, group))
            return self.b.op("Conv", [c, kernel], group=group, **attrs)
        return window_adjoint(self.b, c, weight.name(), window, group, self.y_shape[2:], self.x_shape[2:])


class ConvTransposeOps(LinearOps):
    """ConvTranspose forward, Conv (cropped to the input size) adjoint."""

    def apply(self, x, weight, bias):
        conv = self.layer.conv
        attrs = window_attrs(conv.window)
        window = conv.window
        full = [(self.x_shape[2 + k] - 1) * window.strides[k] + window.extent(k) - window.begins[k] - window.ends[k]
                for k in range(window.rank)]
        attrs["output_padding"] = [self.y_shape[2 + k] - full[k] for k in range(window.rank)]
        inputs = [x, weight.name()] + ([bias] if bias else [])
        return self.b.op("ConvTranspose", inputs, group=conv.group, **attrs)

    def transposed(self, c, weight):
        conv = self.layer.conv
        out = self.b.op("Conv", [c, weight.name()], group=conv.group, **window_attrs(conv.window))
        rank = conv.window.rank
        return self.b.slice(out, [0] * rank, list(self.x_shape[2:]), list(range(2, 2 + rank)))


class DenseOps(LinearOps):
    """MatMul forward over the last axis, Gemm(transB) adjoint."""

    channel_axis = -1

    def apply(self, x, weight, bias):
        z = self.b.op("MatMul", [x, weight.name()])
        return self.b.add(z, bias) if bias else z

    def transposed(self, c, weight):
        flat = c if len(self.y_shape) == 2 else self.b.reshape(c, [-1, self.y_shape[-1]])
        stored = weight.existing("transposed", lambda w: w.T)  # the model's own [out, in] weight (Gemm transB=1)
        out = self.b.op("Gemm", [flat, stored]) if stored else self.b.op("Gemm", [flat, weight.name()], transB=1)
        return out if len(self.y_shape) == 2 else self.b.reshape(out, self.x_shape)


LINEAR_OPS = {Conv: ConvOps, ConvTranspose: ConvTransposeOps, Dense: DenseOps}


def linear_ops(b: GraphBuilder, layer: Linear, x_shape, y_shape, where: str) -> LinearOps:
    """Returns the ONNX maps of a linear layer (CompileError for a kind without them)."""
    if type(layer) not in LINEAR_OPS:
        raise CompileError(f"cannot compile node {where}: no ONNX form of {type(layer).__name__}")
    return LINEAR_OPS[type(layer)](b, layer, x_shape, y_shape)
