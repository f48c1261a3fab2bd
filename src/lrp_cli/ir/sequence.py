"""Sequence layer kinds: an embedding lookup of integer token ids, and the ONNX LSTM and GRU.

Embedding: the relevance of a token is the sum of the relevance of its embedding vector; padding ids get none.
LSTM and GRU follow Arras et al. 2017 ("Explaining recurrent neural network predictions in sentiment analysis"):
the epsilon rule (stabilizer epsilon * sign(z)) on every linear map, biases and initial states absorbing their
share; a sum of two terms (the cell update c_t = f * c_{t-1} + i * g, GRU's h_t = (1 - z) * n + z * h_{t-1}) split
between them by epsilon; a product of a gate and a signal sends all relevance to the signal (signal-take-all);
the element-wise tanh passes relevance unchanged. Their rule is a `--layer-rule` (`rule_kind` "recurrent"): the
epsilon rule with its own epsilon.

Shapes follow ONNX: X is [T, N, I] (layout 0) or [N, T, I] (layout 1); Y is [T, D, N, H] or [N, T, D, H] with D = 2
for a bidirectional layer. Internally both directions are stacked on a leading axis D of time-major arrays in
their processing order ([T, D, N, ...]; the reverse direction on X flipped in time), so that what does not depend
on the recurrence (input projections, biases, the LRP shares of each step) is one vectorised operation for all steps
and directions; the loop over time steps is vectorised over batch and hidden units (LSTM: one direction after the
other; GRU: both directions in one loop with batched products).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from lrp_cli.ir.layers import Layer, stabilize

#: Arras et al. 2017's epsilon (their code's default), used when a recurrent layer is run without a rule object.
RECURRENT_EPSILON = 1e-3


class Embedding(Layer):
    """Rows of a constant table gathered by integer ids (ONNX Gather on axis 0 of an initializer, nn.Embedding).

    The ids arrive as floats (the IR computes in float; ids below 2^24 are exact in float32). Relevance: each
    token gets the sum of its vector's relevance, a padding id none. Gradient: each token gets the squared L2 norm
    of the gradient w.r.t. its vector (sensitivity analysis as Arras et al. 2017 compare it); gradient x input
    is computed at the embedding output by `methods.gradient` (the vector dotted with its gradient).
    """

    op = "Gather"
    params = ("table",)

    def __init__(self, table: np.ndarray, padding: tuple[int, ...] = ()):
        self.table = np.asarray(table, dtype=np.float64)
        self.padding = tuple(int(p) for p in padding)

    def ids(self, x: np.ndarray) -> np.ndarray:
        """Returns the float ids as int64 indices into the table (ValueError for a non-integer or out-of-range id)."""
        ids = np.asarray(x).astype(np.int64)
        if not np.array_equal(ids, x) or ids.size and (ids.min() < -len(self.table) or ids.max() >= len(self.table)):
            raise ValueError(f"token ids must be integers in [0, {len(self.table)}) for an embedding of "
                             f"{len(self.table)} rows")
        return ids

    def forward(self, x):
        return self.table.astype(x.dtype, copy=False)[self.ids(x)]

    def kept(self, x: np.ndarray) -> np.ndarray:
        """Returns 1 at the positions of non-padding tokens and 0 at padding ones, in x's shape and dtype."""
        return (~np.isin(self.ids(x) % len(self.table), self.padding)).astype(x.dtype)

    def relevance(self, xs, y, r, rule):
        return [r.sum(axis=-1) * self.kept(xs[0])]

    def gradient(self, xs, y, g):
        return [(g * g).sum(axis=-1) * self.kept(xs[0])]

    def describe(self):
        pad = f" padding {','.join(map(str, self.padding))}" if self.padding else ""
        return f"{self.table.shape[0]}x{self.table.shape[1]}{pad}"


def token_embedding(graph):
    """Returns the Embedding node that reads the graph's input (token ids), or None."""
    return next((n for n in graph.nodes if graph.input_name in n.inputs and isinstance(n.layer, Embedding)), None)


@dataclass
class Weights:
    """Both directions' parameters stacked on a leading axis D: input weights W [D, G*H, I], recurrent weights R
    [D, G*H, H] and R transposed [D, H, G*H] (contiguous: every step reads it), input and recurrent biases
    [D, 1, G*H] each, initial states [D, N, H] (zero when the model gives none), and with sequence_lens the
    [T, 1, N, 1] boolean mask of the processing steps each batch item really has (None: all of them; a reverse
    direction processes an item's real steps first, so the mask is the same for both directions)."""

    w: np.ndarray
    r: np.ndarray
    rt: np.ndarray
    wb: np.ndarray
    rb: np.ndarray
    h0: np.ndarray
    c0: np.ndarray
    mask: np.ndarray | None = None

    def step(self, t: int) -> np.ndarray | None:
        """Returns the [N, 1] mask of processing step t (None: every item has it), the same for each direction."""
        return None if self.mask is None else self.mask[t, 0]

    def gate(self, k: int, hidden: int):
        """Returns (W, R, Wb, Rb) rows of gate k, each direction's on the leading axis."""
        rows = slice(k * hidden, (k + 1) * hidden)
        return self.w[:, rows], self.r[:, rows], self.wb[..., rows], self.rb[..., rows]


def _carry(valid: np.ndarray | None, new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Returns new where a batch item has this step, old (carried unchanged) where its sequence has ended."""
    return new if valid is None else np.where(valid, new, old)


def _masked(p: Weights, per_step: np.ndarray) -> np.ndarray:
    """Returns a [T, D, N, ...] array of every step with 0 at the steps beyond each item's length."""
    return per_step if p.mask is None else np.where(p.mask, per_step, 0.0)


def _all_steps(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Returns a @ m for every step at once: a [T, D, N, K] times each direction's m [D, K, M] -> [T, D, N, M]
    (one matrix product per direction over all T * N rows)."""
    steps, dirs, batch, k = a.shape
    out = np.empty((steps, dirs, batch, m.shape[2]), dtype=np.result_type(a, m))
    for d in range(dirs):
        out[:, d] = (a[:, d].reshape(steps * batch, k) @ m[d]).reshape(steps, batch, -1)
    return out


def _sigmoid_(z: np.ndarray) -> None:
    """Applies the logistic sigmoid to z in place, as 0.5 * (tanh(0.5 * z) + 1): exact, no overflow in exp."""
    z *= 0.5
    np.tanh(z, out=z)
    z += 1.0
    z *= 0.5


class Recurrent(Layer):
    """An ONNX LSTM or GRU layer (one or two directions) writing the sequence output Y."""

    rule_kind = "recurrent"
    params = ("w", "r", "b", "h0", "c0")
    gates = 0

    def __init__(self, w, r, b, h0, c0, hidden: int, direction: str, layout: int, lengths=None):
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)  # [N], sequence_lens
        self.w = np.asarray(w, dtype=np.float64)
        self.r = np.asarray(r, dtype=np.float64)
        self.b = np.zeros((self.w.shape[0], 2 * self.w.shape[1])) if b is None else np.asarray(b, np.float64)
        self.h0 = None if h0 is None else np.asarray(h0, dtype=np.float64)
        self.c0 = None if c0 is None else np.asarray(c0, dtype=np.float64)
        self.hidden = hidden
        self.direction = direction
        self.layout = layout

    @property
    def directions(self) -> int:
        """Returns the number of directions D."""
        return 2 if self.direction == "bidirectional" else 1

    def _weights(self, steps: int, batch: int, dtype) -> Weights:
        gh = self.gates * self.hidden
        zeros = np.zeros((self.directions, batch, self.hidden), dtype=dtype)
        h0 = zeros if self.h0 is None else self.h0.astype(dtype)
        c0 = zeros if self.c0 is None else self.c0.astype(dtype)
        mask = None if self.lengths is None else (np.arange(steps)[:, None] < self.lengths[None, :])[:, None, :, None]
        return Weights(self.w.astype(dtype, copy=False), self.r.astype(dtype, copy=False), self._r_t(dtype),
                       self.b[:, None, :gh].astype(dtype, copy=False), self.b[:, None, gh:].astype(dtype, copy=False),
                       h0, c0, mask)

    def _r_t(self, dtype) -> np.ndarray:
        """Returns R transposed to [D, H, G*H], contiguous, in dtype; kept with the R it came from, since copying it
        costs as much as several time steps and every forward pass reads it."""
        kept = self.__dict__.get("_kept_r_t")
        if kept is None or kept[0] is not self.r or kept[1].dtype != dtype:
            kept = self._kept_r_t = (self.r, np.ascontiguousarray(self.r.transpose(0, 2, 1), dtype=dtype))
        return kept[1]

    def __getstate__(self):
        """Returns the layer's state without the transposed R, which a worker rebuilds rather than receives."""
        return {k: v for k, v in self.__dict__.items() if k != "_kept_r_t"}

    def order(self, d: int, steps: int) -> np.ndarray:
        """Returns the [T, N] time index of each processing step of direction d for each batch item: a reverse
        direction starts at the item's last step (steps beyond an item's length stay in place, masked)."""
        batch = 1 if self.lengths is None else len(self.lengths)
        s = np.broadcast_to(np.arange(steps)[:, None], (steps, batch))
        if not self.reverse(d):
            return s
        last = np.full(batch, steps) if self.lengths is None else self.lengths
        return np.where(s < last[None, :], last[None, :] - 1 - s, s)

    def reverse(self, d: int) -> bool:
        """Returns True when direction d runs backwards in time."""
        return self.direction == "reverse" or d == 1

    def _time_major(self, x: np.ndarray) -> np.ndarray:
        return x if self.layout == 0 else x.transpose(1, 0, 2)

    def _stacked(self, x: np.ndarray):
        """Returns (X of every direction in its processing order [T, D, N, I], the stacked weights)."""
        xt = self._time_major(x)
        seq = np.stack([self._process(d, xt) for d in range(self.directions)], axis=1)
        return seq, self._weights(*xt.shape[:2], x.dtype)

    def _process(self, d: int, seq: np.ndarray) -> np.ndarray:
        """Returns a time-major [T, N, ...] array in direction d's processing order."""
        if self.lengths is None:
            return seq[::-1] if self.reverse(d) else seq
        return seq[self.order(d, len(seq)), np.arange(seq.shape[1])[None, :]]

    def _unprocess(self, seq: np.ndarray) -> np.ndarray:
        """Returns a processing-order [T, D, N, ...] array back in time order (the inverse of _process)."""
        out = np.empty_like(seq)
        for d in range(seq.shape[1]):
            if self.lengths is None:
                out[:, d] = seq[::-1, d] if self.reverse(d) else seq[:, d]
            else:
                out[self.order(d, len(seq)), d, np.arange(seq.shape[2])[None, :]] = seq[:, d]
        return out

    def _output(self, h: np.ndarray) -> np.ndarray:
        """Returns Y in the layer's layout from the [T, D, N, H] outputs in time order."""
        return h if self.layout == 0 else h.transpose(2, 0, 1, 3)

    def _per_direction(self, y: np.ndarray, p: Weights) -> np.ndarray:
        """Returns the [T, D, N, H] processing-order form of a Y-shaped array, zero at the steps beyond an item's
        length (Y is the constant 0 there)."""
        ytm = y if self.layout == 0 else y.transpose(1, 2, 0, 3)
        seq = np.stack([self._process(d, ytm[:, d]) for d in range(self.directions)], axis=1)
        return seq if p.mask is None else seq * p.mask

    def _input(self, stacked: np.ndarray) -> np.ndarray:
        """Returns the input-shaped sum over directions of a processing-order [T, D, N, I] array."""
        total = self._unprocess(stacked).sum(axis=1)
        return total if self.layout == 0 else total.transpose(1, 0, 2)

    def forward(self, x):
        xs, p = self._stacked(x)
        s = self.run(xs, p)
        y = self._output(self._unprocess(s["h"][1:] if p.mask is None else s["h"][1:] * p.mask))
        _remember(y, x, s)
        return y

    def _states(self, x, y, xs, p) -> dict:
        """Returns the forward states: those the forward pass that wrote y kept, else recomputed."""
        kept = _STATES.get(id(y))
        if kept is not None and kept[0]() is y and kept[1]() is x:
            return kept[2]
        return self.run(xs, p)

    def relevance(self, xs, y, r, rule):
        eps = RECURRENT_EPSILON if rule is None else rule.epsilon
        seq, p = self._stacked(xs[0])
        return [self._input(self.lrp(seq, p, self._states(xs[0], y, seq, p), self._per_direction(r, p), eps))]

    def gradient(self, xs, y, g):
        seq, p = self._stacked(xs[0])
        return [self._input(self.backprop(seq, p, self._states(xs[0], y, seq, p), self._per_direction(g, p)))]

    def run(self, x: np.ndarray, p: Weights) -> dict:
        """Returns the forward states of both directions at once over X [T, D, N, I] in processing order: "h"
        [T+1, D, N, H] (initial state first) and whatever the cell's backward passes need."""
        raise NotImplementedError

    def lrp(self, x, p: Weights, s: dict, r_y: np.ndarray, eps: float) -> np.ndarray:
        """Returns the relevance of X [T, D, N, I] given the relevance of the outputs r_y [T, D, N, H]."""
        raise NotImplementedError

    def backprop(self, x, p: Weights, s: dict, g_y: np.ndarray) -> np.ndarray:
        """Returns the gradient w.r.t. X [T, D, N, I] given that w.r.t. the outputs g_y [T, D, N, H]."""
        raise NotImplementedError

    def describe(self):
        return f"{self.w.shape[2]}->{self.hidden} {self.direction} layout {self.layout}"


#: id(Y) -> (weak Y, weak X, states) of recent forward passes, so that the backward pass that reads the same Y does
#: not run the recurrence again; an entry goes when its Y is garbage collected. Module-level (not on the layer) so
#: that layers stay picklable; ids are unique among live arrays, and the weak references guard against a reused id.
_STATES: dict[int, tuple] = {}


def _remember(y: np.ndarray, x: np.ndarray, states: dict) -> None:
    key = id(y)
    _STATES[key] = (weakref.ref(y), weakref.ref(x), states)
    weakref.finalize(y, _STATES.pop, key, None)


class LSTM(Recurrent):
    """ONNX LSTM (gates i, o, f, c; sigmoid gates, tanh cell and output activations, no peepholes).

    The element-wise work of every step that does not depend on the recurrence runs over all steps and both
    directions at once; the time loops run one direction after the other, because one direction's R (1 MB at
    hidden size 256 in float32) stays in cache through its loop and both directions' together do not."""

    op = "LSTM"
    gates = 4

    def run(self, x, p):
        hsize = self.hidden
        # every step's input part and both biases at once; the loop then writes each step's gates over it
        act = _all_steps(x, p.w.transpose(0, 2, 1))
        act += p.wb + p.rb
        h = np.empty((x.shape[0] + 1,) + p.h0.shape, dtype=act.dtype)
        c = np.empty_like(h)
        g = np.empty(act.shape[:-1] + (hsize,), dtype=act.dtype)
        h[0], c[0] = p.h0, p.c0
        for d in range(x.shape[1]):
            self._forward_steps(p, p.rt[d], act[:, d], g[:, d], h[:, d], c[:, d])
        gates = {k: act[..., j * hsize:(j + 1) * hsize] for j, k in enumerate("iof")}
        return gates | {"g": g, "zg": act[..., 3 * hsize:], "h": h, "c": c}

    def _forward_steps(self, p, rt, act, g, h, c) -> None:
        """Runs one direction's recurrence in place over its [T, N, ...] arrays: act holds each step's input part,
        then its gate activations i, o, f and g's pre-activation; g gets g, h and c [T+1, N, H] the states."""
        hsize = self.hidden
        for t in range(len(act)):
            z = act[t]
            z += h[t] @ rt
            _sigmoid_(z[:, :3 * hsize])
            np.tanh(z[:, 3 * hsize:], out=g[t])
            i, o, f = z[:, :hsize], z[:, hsize:2 * hsize], z[:, 2 * hsize:3 * hsize]
            valid = p.step(t)
            if valid is None:
                np.multiply(f, c[t], out=c[t + 1])
                c[t + 1] += i * g[t]
                np.tanh(c[t + 1], out=h[t + 1])
                h[t + 1] *= o
            else:
                c_new = f * c[t] + i * g[t]
                h[t + 1] = np.where(valid, o * np.tanh(c_new), h[t])
                c[t + 1] = np.where(valid, c_new, c[t])

    def lrp(self, x, p, s, r_y, eps):
        w_g, u_g, _, _ = p.gate(3, self.hidden)
        c = stabilize(s["c"][1:], eps)
        # the epsilon-rule shares of i * g (the signal g takes all) and f * c_{t-1} (c_{t-1} takes all) in c_t,
        # per unit of relevance; g's pre-activation over [x_t, h_{t-1}], the biases absorbing their share
        take_g = s["i"] * s["g"] / c
        take_prev = s["f"] * s["c"][:-1] / c
        zg = stabilize(s["zg"], eps)
        qs = np.empty(r_y.shape, dtype=np.result_type(r_y, zg))
        for d in range(x.shape[1]):
            self._lrp_steps(p, u_g[d], r_y[:, d], take_g[:, d], take_prev[:, d], zg[:, d], s["h"][:, d], qs[:, d])
        # x_t's share feeds nothing back: one product over all steps
        return _masked(p, x * _all_steps(qs, w_g)).astype(x.dtype, copy=False)

    @staticmethod
    def _lrp_steps(p, u_g, r_y, take_g, take_prev, zg, h, qs) -> None:
        """Runs one direction's relevance back through time over its [T, N, H] arrays, writing into qs each step's
        relevance of g's pre-activation per unit of it (what x_t and h_{t-1} share by their contributions)."""
        r_h = np.zeros_like(r_y[0])
        r_c = np.zeros_like(r_y[0])
        for t in reversed(range(len(r_y))):
            total = r_c + r_y[t] + r_h  # h = o * tanh(c): the gate o passes R_h to c
            np.divide(take_g[t] * total, zg[t], out=qs[t])
            valid = p.step(t)  # past an item's length h and c carry over unchanged, and so does their relevance
            r_h = _carry(valid, h[t] * (qs[t] @ u_g), r_h)
            r_c = _carry(valid, take_prev[t] * total, r_c)

    def backprop(self, x, p, s, g_y):
        hsize = self.hidden
        i, o, f, g = s["i"], s["o"], s["f"], s["g"]
        tc = np.tanh(s["c"][1:])
        # each gate's derivative per unit of d_cell (i, f, g) or of d_h (o), every step at once
        k_i, k_o, k_f, k_g = g * i * (1 - i), tc * o * (1 - o), s["c"][:-1] * f * (1 - f), i * (1 - g * g)
        k_cell = o * (1 - tc * tc)
        d_zs = np.empty(x.shape[:3] + (4 * hsize,), dtype=np.result_type(g_y, i))
        for d in range(x.shape[1]):
            d_h = np.zeros_like(g_y[0, d])
            d_c = np.zeros_like(g_y[0, d])
            for t in reversed(range(x.shape[0])):
                d_h = d_h + g_y[t, d]
                d_cell = d_c + d_h * k_cell[t, d]
                d_z = d_zs[t, d]
                for k, (gain, by) in enumerate(((k_i, d_cell), (k_o, d_h), (k_f, d_cell), (k_g, d_cell))):
                    np.multiply(by, gain[t, d], out=d_z[:, k * hsize:(k + 1) * hsize])
                valid = p.step(t)
                d_h = _carry(valid, d_z @ p.r[d], d_h)
                d_c = _carry(valid, d_cell * f[t, d], d_c)
        return _masked(p, _all_steps(d_zs, p.w)).astype(x.dtype, copy=False)  # the input's gradient feeds nothing back


class GRU(Recurrent):
    """ONNX GRU (gates z, r, h; sigmoid gates, tanh candidate), either linear_before_reset form."""

    op = "GRU"
    gates = 3

    def __init__(self, w, r, b, h0, hidden, direction, layout, linear_before_reset: bool, lengths=None):
        super().__init__(w, r, b, h0, None, hidden, direction, layout, lengths)
        self.linear_before_reset = bool(linear_before_reset)

    def run(self, x, p):
        hsize = self.hidden
        wx = _all_steps(x, p.w.transpose(0, 2, 1)) + p.wb
        r_zr, r_n = p.rt[..., :2 * hsize], p.rt[..., 2 * hsize:]
        rb_n = p.gate(2, hsize)[3]
        h = [p.h0]
        keys = ("z", "r", "n", "zn", "u")
        s = {k: [] for k in keys}
        for t in range(x.shape[0]):
            zr = wx[t, ..., :2 * hsize] + h[-1] @ r_zr + p.rb[..., :2 * hsize]
            _sigmoid_(zr)
            z, r = zr[..., :hsize], zr[..., hsize:]
            # u: what the reset gate multiplies (U h + b_Rh, or h itself without linear_before_reset)
            u = h[-1] @ r_n + rb_n if self.linear_before_reset else r * h[-1]
            zn = wx[t, ..., 2 * hsize:] + (r * u if self.linear_before_reset else u @ r_n + rb_n)
            n = np.tanh(zn)
            h.append(_carry(p.step(t), (1 - z) * n + z * h[-1], h[-1]))
            for k, v in zip(keys, (z, r, n, zn, u)):
                s[k].append(v)
        return {k: np.stack(v) for k, v in s.items()} | {"h": np.stack(h)}

    def lrp(self, x, p, s, r_y, eps):
        w_n, r_n, _, _ = p.gate(2, self.hidden)
        r_x = np.zeros_like(x)
        r_h = np.zeros_like(r_y[0])
        for t in reversed(range(x.shape[0])):
            r_out = r_y[t] + r_h
            h_prev, z, n, zn, u = s["h"][t], s["z"][t], s["n"][t], s["zn"][t], s["u"][t]
            h = s["h"][t + 1]
            r_n_out = _epsilon_share((1 - z) * n, h, r_out, eps)  # (1 - z) * n: the signal n takes all
            r_prev = _epsilon_share(z * h_prev, h, r_out, eps)  # z * h_{t-1}: the signal h_{t-1} takes all
            q = r_n_out / stabilize(zn, eps)
            if self.linear_before_reset:
                # r * (U h + b): the gate passes the term's share to U h + b, itself split by epsilon
                share = s["r"][t] * u * q
                r_prev = r_prev + h_prev * ((share / stabilize(u, eps)) @ r_n)
            else:
                r_prev = r_prev + u * (q @ r_n)  # (r * h) U^T: the gated input r * h passes all to h
            valid = p.step(t)  # past an item's length h carries over unchanged, and so does its relevance
            r_x[t] = _carry(valid, x[t] * (q @ w_n), 0.0)
            r_h = _carry(valid, r_prev, r_out)
        return r_x

    def backprop(self, x, p, s, g_y):
        hsize = self.hidden
        w_n, r_n, _, _ = p.gate(2, hsize)
        g_x = np.zeros_like(x)
        d_h = np.zeros_like(g_y[0])
        for t in reversed(range(x.shape[0])):
            h_prev, z, r, n, u = s["h"][t], s["z"][t], s["r"][t], s["n"][t], s["u"][t]
            d_h = d_h + g_y[t]
            d_zn = d_h * (1 - z) * (1 - n * n)
            if self.linear_before_reset:
                d_r, d_prev = d_zn * u, (d_zn * r) @ r_n
            else:
                d_rh = d_zn @ r_n
                d_r, d_prev = d_rh * h_prev, d_rh * r
            d_zr = np.concatenate([d_h * (h_prev - n) * z * (1 - z), d_r * r * (1 - r)], axis=-1)
            valid = p.step(t)
            g_x[t] = _carry(valid, d_zr @ p.w[:, :2 * hsize] + d_zn @ w_n, 0.0)
            d_h = _carry(valid, d_h * z + d_prev + d_zr @ p.r[:, :2 * hsize], d_h)
        return g_x


def _epsilon_share(term: np.ndarray, total: np.ndarray, r: np.ndarray, eps: float) -> np.ndarray:
    """Returns the epsilon-rule share of one summand of an element-wise sum: term / stab(total) * r."""
    return term / stabilize(total, eps) * r
