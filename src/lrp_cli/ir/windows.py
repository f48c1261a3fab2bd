"""Sliding-window geometry shared by convolution and pooling layers.

A window operation is expressed as "gather" (input -> columns [N, C, kh, kw, Ho, Wo]) followed by a reduction,
and its adjoint as "scatter" (columns -> input). Both loop only over the kh*kw kernel offsets; every offset
moves a whole strided view at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """Kernel size, strides, explicit pads (top, left, bottom, right) and dilations of a 2-D window."""

    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    ceil_mode: bool = False

    def extent(self, axis: int) -> int:
        """Returns the span in input pixels that one window covers along axis 0 (height) or 1 (width)."""
        return (self.kernel[axis] - 1) * self.dilations[axis] + 1

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Returns the (Ho, Wo) output size for an input of the given size."""
        return self._out(height, 0), self._out(width, 1)

    def _out(self, size: int, axis: int) -> int:
        padded = size + self.pads[axis] + self.pads[axis + 2]
        span = padded - self.extent(axis)
        stride = self.strides[axis]
        if not self.ceil_mode:
            return span // stride + 1
        out = math.ceil(span / stride) + 1
        # As in ONNX/PyTorch: the last window must start inside the input or the leading pad.
        if (out - 1) * stride >= size + self.pads[axis]:
            out -= 1
        return out

    def padded_shape(self, height: int, width: int) -> tuple[int, int]:
        """Returns the size of the padded input, including the overhang a ceil-mode window needs."""
        out_h, out_w = self.output_size(height, width)
        need_h = (out_h - 1) * self.strides[0] + self.extent(0)
        need_w = (out_w - 1) * self.strides[1] + self.extent(1)
        return (max(need_h, height + self.pads[0] + self.pads[2]),
                max(need_w, width + self.pads[1] + self.pads[3]))


def pad(x: np.ndarray, window: Window, value: float = 0.0) -> np.ndarray:
    """Returns x [N, C, H, W] padded for the window (explicit pads plus any ceil-mode overhang) with value."""
    height, width = x.shape[2:]
    full_h, full_w = window.padded_shape(height, width)
    if (full_h, full_w) == (height, width):
        return x
    top, left = window.pads[0], window.pads[1]
    out = np.full(x.shape[:2] + (full_h, full_w), value, dtype=x.dtype)
    out[:, :, top:top + height, left:left + width] = x
    return out


def unpad(xp: np.ndarray, window: Window, height: int, width: int) -> np.ndarray:
    """Returns the interior [N, C, height, width] of a padded array."""
    if xp.shape[2:] == (height, width):
        return xp
    top, left = window.pads[0], window.pads[1]
    return xp[:, :, top:top + height, left:left + width]


def offset_view(xp: np.ndarray, window: Window, i: int, j: int, out_h: int, out_w: int) -> np.ndarray:
    """Returns the strided view of the padded input that kernel offset (i, j) sees at every output position."""
    top = i * window.dilations[0]
    left = j * window.dilations[1]
    sh, sw = window.strides
    return xp[:, :, top:top + sh * (out_h - 1) + 1:sh, left:left + sw * (out_w - 1) + 1:sw]


def offsets(window: Window):
    """Returns an iterator over the (i, j) kernel offsets of the window."""
    return ((i, j) for i in range(window.kernel[0]) for j in range(window.kernel[1]))


def is_pointwise(window: Window, padded_hw, out_hw) -> bool:
    """Returns True for a 1x1, stride-1 window whose output covers the whole padded input (no copy needed)."""
    return window.kernel == (1, 1) and window.strides == (1, 1) and tuple(padded_hw) == tuple(out_hw)


def gather(xp: np.ndarray, window: Window, out_hw: tuple[int, int]) -> np.ndarray:
    """Returns the window columns [N, C, kh, kw, Ho, Wo] of an already padded input."""
    if is_pointwise(window, xp.shape[2:], out_hw):
        return xp[:, :, None, None]
    cols = np.empty(xp.shape[:2] + window.kernel + tuple(out_hw), dtype=xp.dtype)
    for i, j in offsets(window):
        cols[:, :, i, j] = offset_view(xp, window, i, j, *out_hw)
    return cols


def scatter(cols: np.ndarray, window: Window, padded_hw: tuple[int, int]) -> np.ndarray:
    """Returns the padded-input-sized sum of window columns [N, C, kh, kw, Ho, Wo] (the adjoint of gather)."""
    out_hw = cols.shape[4:]
    if is_pointwise(window, padded_hw, out_hw):
        return cols[:, :, 0, 0]
    xp = np.zeros(cols.shape[:2] + tuple(padded_hw), dtype=cols.dtype)
    for i, j in offsets(window):
        offset_view(xp, window, i, j, *out_hw)[...] += cols[:, :, i, j]
    return xp


def same_pads(size: tuple[int, int], kernel: tuple[int, int], strides: tuple[int, int],
              dilations: tuple[int, int], upper: bool) -> tuple[int, int, int, int]:
    """Returns explicit (top, left, bottom, right) pads for ONNX auto_pad SAME_UPPER (upper) or SAME_LOWER."""
    begins, ends = [], []
    for axis in range(2):
        out = math.ceil(size[axis] / strides[axis])
        total = max((out - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis] + 1 - size[axis], 0)
        small, large = total // 2, total - total // 2
        begins.append(small if upper else large)
        ends.append(large if upper else small)
    return begins[0], begins[1], ends[0], ends[1]


def tile_positions(length: int, tile: int, stride: int) -> list:
    """Return tile origins along one axis: every `stride` px, plus one flush with the far border."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts
