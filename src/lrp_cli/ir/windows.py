"""Sliding-window geometry shared by convolution and pooling layers, for any number of spatial axes (1-D signals
and sequences, 2-D images, 3-D volumes).

A window operation is expressed as "gather" (input -> columns [N, C, *kernel, *out]) followed by a reduction,
and its adjoint as "scatter" (columns -> input). Both loop only over the kernel offsets; every offset moves a
whole strided view at once.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """Kernel size, strides, explicit pads (all begins, then all ends, as ONNX writes them) and dilations of a
    window over the spatial axes (as many as the kernel has)."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...] | None = None
    pads: tuple[int, ...] | None = None
    dilations: tuple[int, ...] | None = None
    ceil_mode: bool = False

    def __post_init__(self):
        rank = len(self.kernel)
        # frozen: defaults that depend on the rank are set once here
        object.__setattr__(self, "kernel", tuple(int(k) for k in self.kernel))
        for name, default in (("strides", (1,) * rank), ("pads", (0,) * 2 * rank), ("dilations", (1,) * rank)):
            value = getattr(self, name)
            object.__setattr__(self, name, default if value is None else tuple(int(v) for v in value))
        if len(self.strides) != rank or len(self.pads) != 2 * rank or len(self.dilations) != rank:
            raise ValueError(f"a {rank}-D window needs {rank} strides and dilations and {2 * rank} pads")

    @property
    def rank(self) -> int:
        """Returns the number of spatial axes."""
        return len(self.kernel)

    @property
    def begins(self) -> tuple[int, ...]:
        """Returns the leading pad of every spatial axis."""
        return self.pads[:self.rank]

    @property
    def ends(self) -> tuple[int, ...]:
        """Returns the trailing pad of every spatial axis."""
        return self.pads[self.rank:]

    def extent(self, axis: int) -> int:
        """Returns the span in input elements that one window covers along spatial axis `axis`."""
        return (self.kernel[axis] - 1) * self.dilations[axis] + 1

    def output_size(self, *sizes: int) -> tuple[int, ...]:
        """Returns the output size of every spatial axis for an input of the given spatial sizes."""
        return tuple(self._out(size, axis) for axis, size in enumerate(sizes))

    def _out(self, size: int, axis: int) -> int:
        padded = size + self.begins[axis] + self.ends[axis]
        span = padded - self.extent(axis)
        stride = self.strides[axis]
        if not self.ceil_mode:
            return span // stride + 1
        out = math.ceil(span / stride) + 1
        # As in ONNX/PyTorch: the last window must start inside the input or the leading pad.
        if (out - 1) * stride >= size + self.begins[axis]:
            out -= 1
        return out

    def padded_shape(self, *sizes: int) -> tuple[int, ...]:
        """Returns the size of the padded input, including the overhang a ceil-mode window needs."""
        outs = self.output_size(*sizes)
        return tuple(max((out - 1) * self.strides[k] + self.extent(k), size + self.begins[k] + self.ends[k])
                     for k, (out, size) in enumerate(zip(outs, sizes)))


def _interior(window: Window, sizes) -> tuple[slice, ...]:
    return (slice(None), slice(None)) + tuple(slice(b, b + n) for b, n in zip(window.begins, sizes))


def pad(x: np.ndarray, window: Window, value: float = 0.0) -> np.ndarray:
    """Returns x [N, C, *spatial] padded for the window (explicit pads plus any ceil-mode overhang) with value."""
    sizes = x.shape[2:]
    full = window.padded_shape(*sizes)
    if full == tuple(sizes):
        return x
    out = np.full(x.shape[:2] + full, value, dtype=x.dtype)
    out[_interior(window, sizes)] = x
    return out


def unpad(xp: np.ndarray, window: Window, *sizes: int) -> np.ndarray:
    """Returns the interior [N, C, *sizes] of a padded array."""
    if xp.shape[2:] == tuple(sizes):
        return xp
    return xp[_interior(window, sizes)]


def offset_view(xp: np.ndarray, window: Window, offset: tuple[int, ...], out: tuple[int, ...]) -> np.ndarray:
    """Returns the strided view of the padded input that kernel offset `offset` sees at every output position."""
    index = [slice(None), slice(None)]
    for k, (i, n) in enumerate(zip(offset, out)):
        first = i * window.dilations[k]
        index.append(slice(first, first + window.strides[k] * (n - 1) + 1, window.strides[k]))
    return xp[tuple(index)]


def offsets(window: Window):
    """Returns an iterator over the kernel offsets (tuples, row-major) of the window."""
    return itertools.product(*(range(k) for k in window.kernel))


def is_pointwise(window: Window, padded, out) -> bool:
    """Returns True for a 1x..x1, stride-1 window whose output covers the whole padded input (no copy needed)."""
    return (all(k == 1 for k in window.kernel) and all(s == 1 for s in window.strides)
            and tuple(padded) == tuple(out))


def _column(window: Window, offset) -> tuple:
    return (slice(None), slice(None)) + tuple(offset)


def gather(xp: np.ndarray, window: Window, out: tuple[int, ...]) -> np.ndarray:
    """Returns the window columns [N, C, *kernel, *out] of an already padded input."""
    if is_pointwise(window, xp.shape[2:], out):
        return xp.reshape(xp.shape[:2] + (1,) * window.rank + xp.shape[2:])
    cols = np.empty(xp.shape[:2] + window.kernel + tuple(out), dtype=xp.dtype)
    for offset in offsets(window):
        cols[_column(window, offset)] = offset_view(xp, window, offset, out)
    return cols


def scatter(cols: np.ndarray, window: Window, padded: tuple[int, ...]) -> np.ndarray:
    """Returns the padded-input-sized sum of window columns [N, C, *kernel, *out] (the adjoint of gather)."""
    out = cols.shape[2 + window.rank:]
    if is_pointwise(window, padded, out):
        return cols.reshape(cols.shape[:2] + tuple(out))
    xp = np.zeros(cols.shape[:2] + tuple(padded), dtype=cols.dtype)
    for offset in offsets(window):
        offset_view(xp, window, offset, out)[...] += cols[_column(window, offset)]
    return xp


def same_pads(size: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, ...],
              dilations: tuple[int, ...], upper: bool) -> tuple[int, ...]:
    """Returns explicit pads (all begins, then all ends) for ONNX auto_pad SAME_UPPER (upper) or SAME_LOWER."""
    begins, ends = [], []
    for axis in range(len(size)):
        out = math.ceil(size[axis] / strides[axis])
        total = max((out - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis] + 1 - size[axis], 0)
        small, large = total // 2, total - total // 2
        begins.append(small if upper else large)
        ends.append(large if upper else small)
    return tuple(begins + ends)


def tile_positions(length: int, tile: int, stride: int) -> list:
    """Return tile origins along one axis: every `stride` px, plus one flush with the far border."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts
