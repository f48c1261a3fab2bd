"""Layer kinds of the IR: a NumPy forward pass and the relevance each one sends to its inputs.

Parameters are stored in float64 (folding BatchNorm and biases happens once, exactly); `astype` gives the copy a
run in float32 or float64 uses. Linear layers (Dense, Conv) hand relevance to a rule from `rules.py`; every other
kind has one fixed behaviour (DESIGN §3).
"""

from __future__ import annotations

import copy

import numpy as np

from lrp_cli.ir import windows
from lrp_cli.ir.windows import Window

#: Stabilizer of the parameter-free proportional (z) rules for Add and average pooling, as zennit's Norm.
NORM_STABILIZER = 1e-6


def stabilize(z: np.ndarray, epsilon: float) -> np.ndarray:
    """Returns z moved away from zero by epsilon in the direction of its sign (sign(0) = +1)."""
    return z + np.where(z >= 0, epsilon, -epsilon).astype(z.dtype)


def unbroadcast(r: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Returns r summed over the axes along which an operand of the given shape was broadcast."""
    extra = r.ndim - len(shape)
    r = r.sum(axis=tuple(range(extra))) if extra else r
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and r.shape[i] != 1)
    return r.sum(axis=axes, keepdims=True) if axes else r


class Layer:
    """Base class: a node's computation. Subclasses list their array parameters in `params`."""

    op = "Layer"
    params: tuple[str, ...] = ()
    is_linear = False
    #: What kind of rule decides the layer's relevance ("linear", "norm", "softmax", "product"); None: fixed.
    rule_kind: str | None = None

    def forward(self, *xs: np.ndarray) -> np.ndarray:
        """Returns the output of the layer for its dynamic inputs."""
        raise NotImplementedError

    def relevance(self, xs: list[np.ndarray], y: np.ndarray, r: np.ndarray, rule) -> list[np.ndarray | None]:
        """Returns the relevance of each dynamic input given the output relevance r (None: no relevance)."""
        raise NotImplementedError

    def gradient(self, xs: list[np.ndarray], y: np.ndarray, g: np.ndarray) -> list[np.ndarray | None]:
        """Returns the gradient of the explained score w.r.t. each dynamic input, given it w.r.t. the output."""
        raise NotImplementedError(f"{self.op} has no gradient")

    def astype(self, dtype) -> "Layer":
        """Returns a copy whose array parameters have the given dtype."""
        out = copy.copy(self)
        for name in self.params:
            value = getattr(self, name)
            if value is not None:
                setattr(out, name, np.asarray(value, dtype=dtype))
        return out

    def describe(self) -> str:
        """Returns a short description of the layer's attributes for `lrp inspect`."""
        return ""


class PassThrough(Layer):
    """Element-wise layers whose relevance passes unchanged (Eq 63: monotone activations, affine maps, LRN)."""

    def relevance(self, xs, y, r, rule):
        return [r]


class Routing(Layer):
    """Layers that only move elements: relevance and gradient both follow the same linear index map."""

    def gradient(self, xs, y, g):
        return self.relevance(xs, y, g, None)


class Activation(PassThrough):
    """An element-wise activation function; `derivative(x, y)` gives its slope for gradient methods; `attrs` the
    numbers that define it (GELU's form and scale, Pow's exponent) for engines that write the slope themselves."""

    params = ()

    def __init__(self, op: str, fn, derivative=None, attrs: dict | None = None):
        self.op = op
        self.fn = fn
        self.derivative = derivative
        self.attrs = attrs or {}

    def forward(self, x):
        return self.fn(x)

    def gradient(self, xs, y, g):
        if self.derivative is None:
            raise NotImplementedError(f"{self.op} has no gradient")
        return [g * self.derivative(xs[0], y)]


class Affine(PassThrough):
    """x * scale + shift with constants broadcast against x (BatchNorm that cannot be folded, scaling ops)."""

    op = "Affine"
    params = ("scale", "shift")

    def __init__(self, scale: np.ndarray, shift: np.ndarray, op: str = "Affine"):
        self.scale = np.asarray(scale, dtype=np.float64)
        self.shift = np.asarray(shift, dtype=np.float64)
        self.op = op

    def forward(self, x):
        return x * self.scale + self.shift

    def gradient(self, xs, y, g):
        return [g * self.scale]


class Linear(Layer):
    """A layer z = x W + b whose relevance a rule decides; subclasses define apply and apply_transposed."""

    is_linear = True
    rule_kind = "linear"
    params = ("weight", "bias")

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None):
        self.weight = np.asarray(weight, dtype=np.float64)
        self.bias = None if bias is None else np.asarray(bias, dtype=np.float64)

    def forward(self, x):
        return self.apply(x, self.weight, self.bias)

    def relevance(self, xs, y, r, rule):
        return [rule.relevance(self, xs[0], y, r)]

    def gradient(self, xs, y, g):
        return [self.apply_transposed(g, self.weight, xs[0].shape)]

    def apply(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """Returns the layer's linear map of x with the given (possibly modified) weight and bias."""
        raise NotImplementedError

    def apply_transposed(self, c: np.ndarray, weight: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
        """Returns the transposed linear map of output-shaped c: the gradient of (apply . c) w.r.t. the input."""
        raise NotImplementedError

    def fold_output_affine(self, scale: np.ndarray, shift: np.ndarray) -> None:
        """Folds an affine map of the output channels (BatchNorm, bias add) into weight and bias, in place."""
        raise NotImplementedError


class Dense(Linear):
    """Fully connected layer over the last axis; weight is [in, out]."""

    op = "Dense"

    def apply(self, x, weight, bias):
        z = x @ weight
        return z if bias is None else z + bias

    def apply_transposed(self, c, weight, input_shape):
        return c @ weight.T

    def fold_output_affine(self, scale, shift):
        bias = np.zeros(self.weight.shape[1]) if self.bias is None else self.bias
        self.weight = self.weight * scale[None, :]
        self.bias = bias * scale + shift

    def describe(self):
        return f"{self.weight.shape[0]}->{self.weight.shape[1]}"


def _channel_shape(rank: int) -> tuple:
    """Returns the index that broadcasts a per-channel vector against [N, C, *spatial] of the given rank."""
    return (None, slice(None)) + (None,) * rank


def _size_text(values) -> str:
    return "x".join(map(str, values))


class Conv(Linear):
    """Convolution over any number of spatial axes (grouped, strided, padded, dilated); weight is
    [out, in/group, *kernel]."""

    op = "Conv"

    def __init__(self, weight, bias, window: Window, group: int = 1):
        super().__init__(weight, bias)
        self.window = window
        self.group = group

    @property
    def depthwise(self) -> bool:
        """Returns True when every output channel reads exactly one input channel of its own."""
        return self.group > 1 and self.weight.shape[0] == self.group and self.weight.shape[1] == 1

    def apply(self, x, weight, bias):
        out = self.window.output_size(*x.shape[2:])
        xp = windows.pad(x, self.window)
        z = self._depthwise(xp, weight, out) if self.depthwise else self._grouped(xp, weight, out)
        return z if bias is None else z + bias[_channel_shape(self.window.rank)]

    def _kernel_weight(self, weight, offset):
        """Returns the depthwise weight of one kernel offset, shaped to broadcast against [N, C, *out]."""
        return weight[(slice(None), 0) + tuple(offset)][_channel_shape(self.window.rank)]

    def _depthwise(self, xp, weight, out):
        z = np.zeros(xp.shape[:2] + tuple(out), dtype=xp.dtype)
        for offset in windows.offsets(self.window):
            z += windows.offset_view(xp, self.window, offset, out) * self._kernel_weight(weight, offset)
        return z

    def _grouped(self, xp, weight, out):
        n, g = xp.shape[0], self.group
        cols = windows.gather(xp, self.window, out)
        cols = cols.reshape(n, g, -1, int(np.prod(out)))
        w = weight.reshape(g, weight.shape[0] // g, -1)
        z = np.matmul(w[0], cols[:, 0]) if g == 1 else np.matmul(w[None], cols)
        return z.reshape(n, weight.shape[0], *out)

    def apply_transposed(self, c, weight, input_shape):
        sizes = tuple(input_shape[2:])
        padded = self.window.padded_shape(*sizes)
        if self.depthwise:
            xp = np.zeros(c.shape[:2] + padded, dtype=c.dtype)
            for offset in windows.offsets(self.window):
                windows.offset_view(xp, self.window, offset, c.shape[2:])[...] += c * self._kernel_weight(weight,
                                                                                                       offset)
        else:
            xp = windows.scatter(self._transposed_cols(c, weight, input_shape[1]), self.window, padded)
        return windows.unpad(xp, self.window, *sizes)

    def _transposed_cols(self, c, weight, channels):
        n, g = c.shape[0], self.group
        out = c.shape[2:]
        w = weight.reshape(g, weight.shape[0] // g, -1).transpose(0, 2, 1)
        cg = c.reshape(n, g, -1, int(np.prod(out)))
        cols = np.matmul(w[0], cg[:, 0]) if g == 1 else np.matmul(w[None], cg)
        return cols.reshape(n, channels, *self.window.kernel, *out)

    def fold_output_affine(self, scale, shift):
        bias = np.zeros(self.weight.shape[0]) if self.bias is None else self.bias
        self.weight = self.weight * scale.reshape((-1,) + (1,) * (self.weight.ndim - 1))
        self.bias = bias * scale + shift

    def describe(self):
        o, cg = self.weight.shape[:2]
        w = self.window
        text = f"{cg * self.group}->{o} k{_size_text(w.kernel)} s{_size_text(w.strides)} p{','.join(map(str, w.pads))}"
        return text + (f" g{self.group}" if self.group > 1 else "")


def _spatial_axes(x: np.ndarray) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


def _kernel_axes(window: Window) -> tuple[int, ...]:
    return tuple(range(2, 2 + window.rank))


def _window_sum(xp: np.ndarray, window: Window, out) -> np.ndarray:
    """Returns the sum of every window of an already padded input."""
    total = np.zeros(xp.shape[:2] + tuple(out), dtype=xp.dtype)
    for offset in windows.offsets(window):
        total += windows.offset_view(xp, window, offset, out)
    return total


def _window_spread(c: np.ndarray, window: Window, x_shape) -> np.ndarray:
    """Returns the adjoint of the window sum applied to output-shaped c (input-shaped)."""
    spread = np.zeros(tuple(x_shape[:2]) + window.padded_shape(*x_shape[2:]), dtype=c.dtype)
    for offset in windows.offsets(window):
        windows.offset_view(spread, window, offset, c.shape[2:])[...] += c
    return windows.unpad(spread, window, *x_shape[2:])


class MaxPool(Layer):
    """Max pooling over any number of spatial axes; relevance goes to the winner of each window (Eq 32), ties as
    the node's MaxPool rule says."""

    op = "MaxPool"
    rule_kind = "maxpool"  # the tie policy is a rule (rules.MaxPoolTies)

    def __init__(self, window: Window, op: str = "MaxPool", keepdims: bool = True):
        self.window = window
        self.op = op
        self.keepdims = keepdims  # False: a ReduceMax over all spatial axes, which drops them

    def forward(self, x):
        out = self.window.output_size(*x.shape[2:])
        xp = windows.pad(x, self.window, -np.inf)
        views = (windows.offset_view(xp, self.window, offset, out) for offset in windows.offsets(self.window))
        y = np.maximum.reduce(list(views))
        return y if self.keepdims else y.reshape(y.shape[:2])

    def relevance(self, xs, y, r, rule):
        # No rule (a direct call outside a composite): the first maximum, as zennit and the gradient.
        if rule is None:
            return [self.route(xs[0], y, r, split_ties=False)]
        return [rule.relevance(self, xs[0], y, r)]

    def gradient(self, xs, y, g):
        # Like PyTorch and onnxruntime, the gradient goes to the first maximum of each window only.
        return [self.route(xs[0], y, g, split_ties=False)]

    def route(self, x: np.ndarray, y: np.ndarray, r: np.ndarray, split_ties: bool) -> np.ndarray:
        """Returns r sent back to the maxima of each window: all to the first one in flat row-major window order
        (PyTorch's max_pool2d index) or, with split_ties, shared evenly between all tied maxima."""
        pooled = x.shape[:2] + self.window.output_size(*x.shape[2:])
        y, r = y.reshape(pooled), r.reshape(pooled)
        xp = windows.pad(x, self.window, -np.inf)
        cols = windows.gather(xp, self.window, y.shape[2:])
        at_window = (slice(None), slice(None)) + (None,) * self.window.rank  # [N, C, *out] -> [N, C, 1.., *out]
        if split_ties:
            wins = cols == y[at_window]
            spread = wins * (r / wins.sum(axis=_kernel_axes(self.window)))[at_window]
        else:
            flat = cols.reshape(cols.shape[:2] + (-1,) + y.shape[2:])
            spread = np.zeros_like(flat)
            np.put_along_axis(spread, flat.argmax(axis=2)[:, :, None], r[:, :, None], axis=2)
            spread = spread.reshape(cols.shape)
        return windows.unpad(windows.scatter(spread, self.window, xp.shape[2:]), self.window, *x.shape[2:])

    def describe(self):
        return f"k{_size_text(self.window.kernel)} s{_size_text(self.window.strides)}"


def global_window(spatial: tuple[int, ...]) -> Window:
    """Returns the window covering all spatial positions at once (GlobalMaxPool as a MaxPool)."""
    return Window(tuple(spatial))


class AvgPool(Layer):
    """Average pooling; relevance is split in proportion to each input's share of the average (z-rule)."""

    op = "AveragePool"

    def __init__(self, window: Window, count_include_pad: bool):
        self.window = window
        self.count_include_pad = count_include_pad

    def _divisor(self, *sizes: int) -> np.ndarray:
        ones = np.ones((1, 1) + tuple(sizes))
        counted = windows.pad(ones, self.window)
        if self.count_include_pad:
            explicit = tuple(slice(0, b + n + e) for b, n, e in zip(self.window.begins, sizes, self.window.ends))
            counted[(slice(None), slice(None)) + explicit] = 1.0
        return _window_sum(counted, self.window, self.window.output_size(*sizes))

    def forward(self, x):
        out = self.window.output_size(*x.shape[2:])
        return _window_sum(windows.pad(x, self.window), self.window, out) / self._divisor(*x.shape[2:]).astype(x.dtype)

    def _transposed(self, c, x_shape):
        """Returns the adjoint of the averaging map applied to output-shaped c."""
        return _window_spread(c / self._divisor(*x_shape[2:]).astype(c.dtype), self.window, x_shape)

    def relevance(self, xs, y, r, rule):
        return [xs[0] * self._transposed(r / stabilize(y, NORM_STABILIZER), xs[0].shape)]

    def gradient(self, xs, y, g):
        return [self._transposed(g, xs[0].shape)]

    def describe(self):
        return f"k{_size_text(self.window.kernel)} s{_size_text(self.window.strides)}"


class LpPool(Layer):
    """Lp pooling y = (sum over a window of |x|^p)^(1/p); relevance by each input's share of the p-th powers,
    R_i = |x_i|^p / sum |x|^p R (the p-means decomposition whose p -> infinity limit is max pooling's winner-takes-
    all, Eq 32, and whose p = 1 case is the z-rule of a sum of non-negative inputs)."""

    op = "LpPool"

    def __init__(self, window: Window, p: float):
        self.window = window
        self.p = float(p)

    def forward(self, x):
        out = self.window.output_size(*x.shape[2:])
        return _window_sum(windows.pad(np.abs(x) ** self.p, self.window), self.window, out) ** (1.0 / self.p)

    def relevance(self, xs, y, r, rule):
        powers = np.abs(xs[0]) ** self.p
        return [powers * _window_spread(r / stabilize(y ** self.p, NORM_STABILIZER), self.window, xs[0].shape)]

    def gradient(self, xs, y, g):
        x = xs[0]
        # d y / d x_i = sign(x_i) |x_i|^(p-1) / y^(p-1); an all-zero window (y = 0) has no slope
        scale = np.divide(g, y ** (self.p - 1), out=np.zeros_like(g), where=y > 0)
        return [np.sign(x) * np.abs(x) ** (self.p - 1) * _window_spread(scale, self.window, x.shape)]

    def describe(self):
        return f"p{self.p:g} k{_size_text(self.window.kernel)} s{_size_text(self.window.strides)}"


class GlobalAvgPool(Layer):
    """Mean over all spatial axes; relevance in proportion to each input's share (z-rule)."""

    op = "GlobalAveragePool"

    def forward(self, x):
        return x.mean(axis=_spatial_axes(x), keepdims=True)

    def relevance(self, xs, y, r, rule):
        x = xs[0]
        count = int(np.prod(x.shape[2:]))
        return [x * (r / stabilize(y, NORM_STABILIZER)) / count]

    def gradient(self, xs, y, g):
        x = xs[0]
        return [np.broadcast_to(g / int(np.prod(x.shape[2:])), x.shape)]


class Add(Layer):
    """Sum of several tensors (and a constant); relevance split in proportion to each operand (z-rule)."""

    op = "Add"
    params = ("constant",)

    def __init__(self, constant: np.ndarray | None = None):
        self.constant = constant

    def forward(self, *xs):
        total = xs[0]
        for x in xs[1:]:
            total = total + x
        return total if self.constant is None else total + self.constant

    def relevance(self, xs, y, r, rule):
        c = r / stabilize(y, NORM_STABILIZER)
        return [unbroadcast(x * c, x.shape) for x in xs]

    def gradient(self, xs, y, g):
        return [unbroadcast(g, x.shape) for x in xs]


class Concat(Routing):
    """Concatenation along an axis; relevance is split by slice (constant parts keep theirs)."""

    op = "Concat"
    params = ()

    def __init__(self, axis: int, parts: list):
        self.axis = axis
        self.parts = parts  # an int indexes the dynamic inputs; an array is a constant part

    def forward(self, *xs):
        return np.concatenate([xs[p] if isinstance(p, int) else p.astype(xs[0].dtype) for p in self.parts],
                              axis=self.axis)

    def relevance(self, xs, y, r, rule):
        sizes = [(xs[p] if isinstance(p, int) else p).shape[self.axis] for p in self.parts]
        pieces = np.split(r, np.cumsum(sizes)[:-1], axis=self.axis)
        out = [None] * len(xs)
        for part, piece in zip(self.parts, pieces):
            if isinstance(part, int):
                out[part] = piece
        return out


class Reshape(Routing):
    """Any shape change that keeps element order (Reshape, Flatten, Squeeze, Unsqueeze); relevance follows."""

    op = "Reshape"

    def __init__(self, shape: tuple[int, ...], op: str = "Reshape"):
        self.shape = tuple(shape)
        self.op = op

    def forward(self, x):
        return x.reshape(self.shape)

    def relevance(self, xs, y, r, rule):
        return [r.reshape(xs[0].shape)]

    def describe(self):
        return "x".join(map(str, self.shape))


class Transpose(Routing):
    """Axis permutation; relevance is permuted back."""

    op = "Transpose"

    def __init__(self, perm: tuple[int, ...]):
        self.perm = tuple(perm)

    def forward(self, x):
        return x.transpose(self.perm)

    def relevance(self, xs, y, r, rule):
        return [r.transpose(np.argsort(self.perm))]

    def describe(self):
        return str(self.perm)


class IndexMap(Routing):
    """Any op that only moves or copies elements (Slice, Split, Pad, Gather by constant indices, Tile...).

    `index` has the output's shape and holds, for every output element, the flat input position it copies
    (-1: the constant `fill`). Relevance follows the same map back; copies of one input sum (Eq 62).
    """

    def __init__(self, index: np.ndarray, fill: float, op: str):
        self.index = index
        self.fill = fill
        self.op = op

    def forward(self, x):
        y = x.reshape(-1)[np.maximum(self.index, 0)]
        return np.where(self.index >= 0, y, np.asarray(self.fill, dtype=x.dtype)) if self.fill is not None else y

    def relevance(self, xs, y, r, rule):
        valid = self.index >= 0
        total = np.bincount(self.index[valid], weights=r[valid], minlength=xs[0].size)
        return [total.reshape(xs[0].shape).astype(r.dtype)]

    def describe(self):
        return "x".join(map(str, self.index.shape))


class ReduceMean(Layer):
    """Mean over some axes; relevance in proportion to each input's share (z-rule), as average pooling."""

    op = "ReduceMean"

    def __init__(self, axes: tuple[int, ...], keepdims: bool):
        self.axes = tuple(axes)
        self.keepdims = keepdims

    def forward(self, x):
        return x.mean(axis=self.axes, keepdims=self.keepdims)

    def relevance(self, xs, y, r, rule):
        x = xs[0]
        count = int(np.prod([x.shape[a] for a in self.axes]))
        c = r / stabilize(y, NORM_STABILIZER) / count
        return [x * (c if self.keepdims else np.expand_dims(c, self.axes))]

    def gradient(self, xs, y, g):
        x = xs[0]
        count = int(np.prod([x.shape[a] for a in self.axes]))
        return [np.broadcast_to((g if self.keepdims else np.expand_dims(g, self.axes)) / count, x.shape)]


class GatedProduct(Layer):
    """a * b where one operand is a gate (a Sigmoid/HardSigmoid, or a hard sigmoid written out as relu6(x + 3) / 6):
    the signal takes all the relevance (the signal-take-all rule for multiplicative connections, Arras et al.
    2017)."""

    op = "Mul"

    def __init__(self, signal: int):
        self.signal = signal

    def forward(self, a, b):
        return a * b

    def relevance(self, xs, y, r, rule):
        out = [None, None]
        out[self.signal] = unbroadcast(r, xs[self.signal].shape)
        return out

    def gradient(self, xs, y, g):
        a, b = xs
        return [unbroadcast(g * b, a.shape), unbroadcast(g * a, b.shape)]

    def describe(self):
        return f"signal=input{self.signal}"


class Resize(Layer):
    """Separable nearest/linear resizing y = Mh x Mw^T; relevance split by the interpolation weights (z-rule)."""

    op = "Resize"
    params = ("rows", "cols")

    def __init__(self, rows: np.ndarray, cols: np.ndarray):
        self.rows = rows  # [Ho, H]
        self.cols = cols  # [Wo, W]

    def forward(self, x):
        return self.rows @ x @ self.cols.T

    def relevance(self, xs, y, r, rule):
        c = r / stabilize(y, NORM_STABILIZER)
        return [xs[0] * (self.rows.T @ c @ self.cols)]

    def gradient(self, xs, y, g):
        return [self.rows.T @ g @ self.cols]

    def describe(self):
        return f"{self.rows.shape[1]}x{self.cols.shape[1]}->{self.rows.shape[0]}x{self.cols.shape[0]}"


class ConvTranspose(Linear):
    """Transposed convolution over any number of spatial axes; weight is [in, out/group, *kernel]; it runs a
    Conv's adjoint and vice versa."""

    op = "ConvTranspose"

    def __init__(self, weight, bias, window: Window, group: int, output_size: tuple[int, ...]):
        super().__init__(weight, bias)
        self.conv = Conv(self.weight, None, window, group)
        self.output_size = tuple(output_size)

    def apply(self, x, weight, bias):
        shape = (x.shape[0], weight.shape[1] * self.conv.group) + self.output_size
        z = self.conv.apply_transposed(x, weight, shape)
        return z if bias is None else z + bias[_channel_shape(len(self.output_size))]

    def apply_transposed(self, c, weight, input_shape):
        crop = tuple(slice(0, n) for n in input_shape[2:])
        return self.conv.apply(c, weight, None)[(slice(None), slice(None)) + crop]

    def fold_output_affine(self, scale, shift):
        bias = np.zeros(self.weight.shape[1] * self.conv.group) if self.bias is None else self.bias
        per_group = self.weight.shape[1]
        groups = self.conv.group
        weight = self.weight.reshape(groups, -1, per_group, *self.weight.shape[2:])
        weight = weight * scale.reshape((groups, 1, per_group) + (1,) * (self.weight.ndim - 2))
        self.weight = weight.reshape(self.weight.shape)
        self.conv = Conv(self.weight, None, self.conv.window, groups)
        self.bias = bias * scale + shift

    def describe(self):
        return f"{self.weight.shape[0]}->{self.weight.shape[1] * self.conv.group} k{_size_text(self.weight.shape[2:])}"
