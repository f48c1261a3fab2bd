"""Converters of the sequence ops: Gather from an embedding table by data-dependent ids, LSTM and GRU.

Registered into `onnx_import.CONVERTERS` when that module loads. A recurrent op's sequence output Y is one IR
node; its last-state output Y_h is a routing node reading Y (the last time step of each direction: the first in
time for the reverse one), so relevance and gradients reaching Y_h flow back through Y.
"""

from __future__ import annotations

import numpy as np

from lrp_cli.importers import onnx_import as imp
from lrp_cli.ir.layers import IndexMap, MaxPool, global_window
from lrp_cli.ir.sequence import GRU, LSTM, Embedding
from lrp_cli.preprocess import load_sidecar

#: The activations the recurrent layers implement (ONNX defaults), per direction.
ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh")}
DIRECTIONS = ("forward", "reverse", "bidirectional")


@imp.converter("Gather")
def _gather(ctx, node):
    """Gather rows of a constant table by dynamic ids (an embedding); any other Gather moves elements."""
    if not (ctx.is_constant(node.input[0]) and not ctx.is_constant(node.input[1])):
        return imp._index_map(ctx, node)
    if imp.attributes(node).get("axis", 0) != 0:
        raise ctx.error(node, "a Gather from a constant table by dynamic ids must gather rows (axis 0)")
    table = ctx.const(node, 0)
    if table.ndim != 2 or table.dtype.kind != "f":
        raise ctx.error(node, f"an embedding table must be a 2-D float matrix, got {table.dtype} {list(table.shape)}")
    ctx.add(node, Embedding(table, _padding_ids(ctx, table)), [node.input[1]])


def _padding_ids(ctx, table: np.ndarray) -> tuple[int, ...]:
    """Returns the padding ids: the sidecar's [text] padding_id, else the ids of all-zero rows (nn.Embedding keeps
    its padding_idx row at zero; the ONNX export drops the index itself)."""
    declared = load_sidecar(ctx.path).text.get("padding_id") if ctx.path.suffix else None
    if declared is not None:
        return tuple(int(k) for k in np.atleast_1d(declared))
    return tuple(int(k) for k in np.flatnonzero(~table.any(axis=1)))


@imp.converter("ReduceMax")
def _reduce_max(ctx, node):
    """A max over all spatial axes of [N, C, *spatial] (max over time, as the NLP CNN pools) is a global max
    pooling that may drop those axes."""
    shape = ctx.shape(node.input[0])
    axes = imp._axes(ctx, node)
    axes = sorted(a % len(shape) for a in (range(len(shape)) if axes is None else axes))
    if len(shape) < 3 or axes != list(range(2, len(shape))):
        raise ctx.error(node, f"only a max over the trailing axes 2.. of an [N, C, ...] input is supported, "
                              f"got axes {axes} of {list(shape)}")
    keepdims = bool(imp.attributes(node).get("keepdims", 1))
    ctx.add(node, MaxPool(global_window(shape[2:]), "ReduceMax", keepdims))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_attributes(ctx, node, attrs: dict, directions: int) -> None:
    acts = tuple(_text(a) for a in attrs.get("activations", ()))
    want = ACTIVATIONS[node.op_type]
    if acts and acts != want * directions:
        raise ctx.error(node, f"only the default activations {', '.join(want)} are supported, got {', '.join(acts)}")
    if "clip" in attrs or attrs.get("input_forget", 0):
        raise ctx.error(node, "clip and input_forget are not supported")
    peepholes = ctx.const(node, 7) if node.op_type == "LSTM" else None
    if peepholes is not None and np.any(peepholes):
        raise ctx.error(node, "LSTM peepholes (input P) are not supported")


def _initial_state(ctx, node, index: int, layout: int):
    state = ctx.const(node, index)
    if state is None:
        return None
    return state if layout == 0 else np.transpose(state, (1, 0, 2))  # [N, D, H] -> [D, N, H]


def _lengths(ctx, node, x_shape, layout: int) -> np.ndarray | None:
    """Returns the constant sequence_lens, or None when absent or every sequence has all the input's steps."""
    lengths = ctx.const(node, 4)
    if lengths is None:
        return None
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    steps, batch = x_shape[layout], x_shape[1 - layout]  # X is [T, N, I] in layout 0, [N, T, I] in layout 1
    if len(lengths) != batch or lengths.min(initial=1) < 1 or lengths.max(initial=0) > steps:
        raise ctx.error(node, f"sequence_lens {lengths.tolist()} must give 1..{steps} steps for each of the {batch} "
                              "batch items")
    return None if np.all(lengths == steps) else lengths


@imp.converter("LSTM", "GRU")
def _recurrent(ctx, node):
    attrs = imp.attributes(node)
    direction = _text(attrs.get("direction", "forward"))
    if direction not in DIRECTIONS:
        raise ctx.error(node, f"unknown direction {direction}")
    layout = int(attrs.get("layout", 0))
    directions = 2 if direction == "bidirectional" else 1
    _check_attributes(ctx, node, attrs, directions)
    x_shape = ctx.shape(node.input[0])
    lengths = _lengths(ctx, node, x_shape, layout)
    w, r, b = ctx.const(node, 1), ctx.const(node, 2), ctx.const(node, 3)
    hidden = int(attrs.get("hidden_size", r.shape[-1]))
    h0 = _initial_state(ctx, node, 5, layout)
    if node.op_type == "LSTM":
        layer = LSTM(w, r, b, h0, _initial_state(ctx, node, 6, layout), hidden, direction, layout, lengths)
    else:
        layer = GRU(w, r, b, h0, hidden, direction, layout, attrs.get("linear_before_reset", 0), lengths)
    outputs = list(node.output) + [""] * 3
    if outputs[2] and ctx.consumers[ctx.name(outputs[2])]:
        raise ctx.error(node, "the cell state output Y_c is not supported (use Y or Y_h)")
    y = outputs[0] or f"{outputs[1]}/Y"
    ctx.add(node, layer, [node.input[0]], output=y)
    if outputs[1]:
        ctx.add(node, IndexMap(_last_states(ctx.shape(y), layer), None, node.op_type), [y], output=outputs[1])


def _last_states(y_shape, layer) -> np.ndarray:
    """Returns the index map Y -> Y_h: each direction's output at its last processed step (a reverse direction's
    first in time; a forward one's at each item's length)."""
    positions = np.arange(int(np.prod(y_shape))).reshape(y_shape)
    time_major = positions if layer.layout == 0 else positions.transpose(1, 2, 0, 3)  # [T, D, N, H]
    steps, batch = time_major.shape[0], time_major.shape[2]
    ends = np.full(batch, steps) if layer.lengths is None else layer.lengths
    items = np.arange(batch)
    last = [time_major[0 if layer.reverse(d) else ends - 1, d, items] for d in range(layer.directions)]  # [N, H]
    states = np.stack(last)  # [D, N, H]
    return states if layer.layout == 0 else states.transpose(1, 0, 2)
