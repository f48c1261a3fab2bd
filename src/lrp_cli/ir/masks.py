"""Where with a constant condition: a routing layer that picks each element from one of two operands.

Exporters write masked fills this way (Swin's padding masks, `masked_fill` by a constant mask): the condition
and any constant operand are known at import, so every output element is a copy of one operand's element.
Relevance goes back to the operand each element was taken from; the share taken from a constant stays there,
as a constant part of a Concat keeps its own.
"""

from __future__ import annotations

import numpy as np

from lrp_cli.ir.layers import Routing, unbroadcast


class Where(Routing):
    """y = where(condition, first, second); `operands` holds, for first and second, the index of the dynamic
    input it is or the constant array it is."""

    op = "Where"

    def __init__(self, condition: np.ndarray, operands: list):
        self.condition = np.asarray(condition, dtype=bool)
        self.operands = operands

    def _value(self, k: int, xs, dtype):
        part = self.operands[k]
        return xs[part] if isinstance(part, int) else np.asarray(part, dtype=dtype)

    def forward(self, *xs):
        return np.where(self.condition, self._value(0, xs, xs[0].dtype), self._value(1, xs, xs[0].dtype))

    def relevance(self, xs, y, r, rule):
        out = [None] * len(xs)
        for k, picked in enumerate((self.condition, ~self.condition)):
            part = self.operands[k]
            if isinstance(part, int):
                share = unbroadcast(np.where(picked, r, 0).astype(r.dtype), xs[part].shape)
                out[part] = share if out[part] is None else out[part] + share
        return out

    def describe(self):
        kept = float(self.condition.mean())
        return f"condition picks the first operand at {kept:.0%} of {self.condition.size} elements"
