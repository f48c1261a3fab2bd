"""The LRP and gradient steps of ONNX LSTM and GRU layers as ONNX ops, unrolled over the (static) time steps.

They mirror `lrp` / `backprop` of `LSTM` and `GRU` in `ir/sequence.py` (Arras et al. 2017; back-propagation
through time): the gates are recomputed step by step from the layer's weights (the model's own node gives only Y),
then relevance or the gradient walks back in time. A layer with a sequence_lens shorter than its input or with
layout 1 (which onnxruntime does not run) is not compiled (the NumPy engine runs it).
"""

from __future__ import annotations

import numpy as np

from lrp_cli.engines.onnx_nodes import GRADIENT, RELEVANCE, emitter
from lrp_cli.ir.sequence import GRU, LSTM, RECURRENT_EPSILON


class Unrolled:
    """One direction of a recurrent node in the compiled graph: its constants and per-step input slices."""

    def __init__(self, site, d: int, x_tm: str, r_tm: str):
        self.site, self.b, self.layer, self.d = site, site.b, site.layer, d
        steps, batch = site.x_shapes[0][:2] if self.layer.layout == 0 else site.x_shapes[0][1::-1]
        self.steps, self.batch, self.hidden = steps, batch, self.layer.hidden
        self.order = np.arange(steps)[::-1] if self.layer.reverse(d) else np.arange(steps)
        self.w, self.r = self.layer.w[d], self.layer.r[d]
        gh = self.layer.gates * self.hidden
        self.wb, self.rb = self.layer.b[d, :gh], self.layer.b[d, gh:]
        width = site.x_shapes[0][2]
        self.xs = [self._at(x_tm, t, width) for t in self.order]
        r_d = self.b.op("Gather", [r_tm, self.b.ints([d])], axis=1)  # [T, 1, N, H]
        self.r_y = [self._at(r_d, t, self.hidden) for t in self.order]

    def _at(self, seq: str, t: int, width: int) -> str:
        """Returns step t [N, width] of a time-major sequence."""
        return self.b.reshape(self.b.op("Gather", [seq, self.b.ints([int(t)])], axis=0), [self.batch, width])

    def initial(self, state) -> str:
        """Returns the [N, H] initial state (zero when the model gives none)."""
        value = np.zeros((self.batch, self.hidden)) if state is None else state[self.d]
        return self.b.const(value, "state")

    def rows(self, matrix: np.ndarray, k: int) -> np.ndarray:
        """Returns gate k's rows of a [G*H, ...] matrix or vector."""
        return matrix[k * self.hidden:(k + 1) * self.hidden]

    def gate_slice(self, z: str, first: int, last: int) -> str:
        """Returns gates first..last-1 of a [N, G*H] tensor."""
        return self.b.slice(z, [first * self.hidden], [last * self.hidden], [1])

    def matmul(self, x: str, matrix: np.ndarray, hint: str) -> str:
        """Returns x @ matrix for a constant matrix."""
        return self.b.op("MatMul", [x, self.b.const(matrix, hint)])

    def in_time_order(self, per_step: list[str], width: int) -> str:
        """Returns the [T, N, width] stack of per-processing-step [N, width] tensors, in time order."""
        by_time = dict(zip(self.order, per_step))
        return self.b.op("Concat", [self.b.reshape(by_time[t], [1, self.batch, width]) for t in range(self.steps)],
                         axis=0)


def _backward(site, backward) -> list[str]:
    """Returns what the input of a recurrent node receives (relevance or gradient): each direction's
    `backward(unrolled, eps)` in time order, summed, in the node's layout."""
    layer, b = site.layer, site.b
    if layer.lengths is not None:
        raise site.fail("a sequence_lens shorter than the input runs on the NumPy engine")
    if layer.layout == 1:  # the compiled graph runs the model's own forward, and onnxruntime has no layout 1
        raise site.fail("onnxruntime does not run batch-major (layout 1) LSTM/GRU")
    eps = RECURRENT_EPSILON if site.rule is None else site.rule.epsilon
    x_tm = site.xs[0] if layer.layout == 0 else b.op("Transpose", [site.xs[0]], perm=[1, 0, 2])
    r_tm = site.r if layer.layout == 0 else b.op("Transpose", [site.r], perm=[1, 2, 0, 3])
    width = site.x_shapes[0][2]
    total = None
    for d in range(layer.directions):
        unrolled = Unrolled(site, d, x_tm, r_tm)
        r_x = unrolled.in_time_order(backward(unrolled, eps), width)
        total = r_x if total is None else b.add(total, r_x)
    return [total if layer.layout == 0 else b.op("Transpose", [total], perm=[1, 0, 2])]


def _lstm_steps(u: Unrolled) -> list[dict]:
    """Returns the forward states of each processing step (gates i, o, f, g, g's pre-activation, c and h before
    and after)."""
    b, steps = u.b, []
    h, c = u.initial(u.layer.h0), u.initial(u.layer.c0)
    bias = b.const(u.wb + u.rb, "bias")
    for x in u.xs:
        z = b.add(b.add(u.matmul(x, u.w.T, "w_t"), bias), u.matmul(h, u.r.T, "r_t"))
        gates = b.op("Sigmoid", [u.gate_slice(z, 0, 3)])
        i, o, f = (u.gate_slice(gates, k, k + 1) for k in range(3))
        zg = u.gate_slice(z, 3, 4)
        g = b.op("Tanh", [zg])
        c_new = b.add(b.mul(f, c), b.mul(i, g))
        h_new = b.mul(o, b.op("Tanh", [c_new]))
        steps.append({"x": x, "i": i, "o": o, "f": f, "g": g, "zg": zg, "c_prev": c, "c": c_new, "h_prev": h})
        h, c = h_new, c_new
    return steps


@emitter(RELEVANCE, LSTM)
def _lstm(site):
    """As LSTM.lrp: R_h to c, the cell sum split by epsilon, g's pre-activation over [x_t, h_{t-1}] by epsilon."""
    def backward(u: Unrolled, eps: float) -> list[str]:
        b, states = u.b, _lstm_steps(u)
        w_g, u_g = u.rows(u.w, 3), u.rows(u.r, 3)
        r_h = r_c = None
        r_x = [None] * len(states)
        for s in reversed(range(len(states))):
            st = states[s]
            total = u.r_y[s]
            for extra in (r_c, r_h):
                total = total if extra is None else b.add(total, extra)
            share = b.div(total, b.stabilize(st["c"], eps))
            r_g = b.mul(b.mul(st["i"], st["g"]), share)
            r_c = b.mul(b.mul(st["f"], st["c_prev"]), share)
            q = b.div(r_g, b.stabilize(st["zg"], eps))
            r_x[s] = b.mul(st["x"], u.matmul(q, w_g, "w_g"))
            r_h = b.mul(st["h_prev"], u.matmul(q, u_g, "u_g"))
        return r_x
    return _backward(site, backward)


def _one_minus(b, a: str) -> str:
    return b.sub(b.scalar(1.0), a)


def _sigmoid_slope(b, a: str) -> str:
    """Returns a (1 - a), the sigmoid's derivative at its output a."""
    return b.mul(a, _one_minus(b, a))


@emitter(GRADIENT, LSTM)
def _lstm_gradient(site):
    """As LSTM.backprop: back-propagation through time."""
    def backward(u: Unrolled, eps: float) -> list[str]:
        b, states = u.b, _lstm_steps(u)
        d_h = d_c = None
        g_x = [None] * len(states)
        for s in reversed(range(len(states))):
            st = states[s]
            d_h = u.r_y[s] if d_h is None else b.add(d_h, u.r_y[s])
            tc = b.op("Tanh", [st["c"]])
            d_cell = b.mul(b.mul(d_h, st["o"]), _one_minus(b, b.mul(tc, tc)))
            d_cell = d_cell if d_c is None else b.add(d_c, d_cell)
            d_z = b.op("Concat", [b.mul(b.mul(d_cell, st["g"]), _sigmoid_slope(b, st["i"])),
                                  b.mul(b.mul(d_h, tc), _sigmoid_slope(b, st["o"])),
                                  b.mul(b.mul(d_cell, st["c_prev"]), _sigmoid_slope(b, st["f"])),
                                  b.mul(b.mul(d_cell, st["i"]), _one_minus(b, b.mul(st["g"], st["g"])))], axis=1)
            g_x[s] = u.matmul(d_z, u.w, "w")
            d_h = u.matmul(d_z, u.r, "r")
            d_c = b.mul(d_cell, st["f"])
        return g_x
    return _backward(site, backward)


def _gru_steps(u: Unrolled) -> list[dict]:
    """Returns the forward states of each processing step (z, r, n, n's pre-activation, u, h before and after)."""
    b, steps = u.b, []
    lbr = u.layer.linear_before_reset
    h = u.initial(u.layer.h0)
    wb = b.const(u.wb, "bias")
    rb_zr = b.const(np.concatenate([u.rows(u.rb, 0), u.rows(u.rb, 1)]), "bias")
    rb_n = b.const(u.rows(u.rb, 2), "bias")
    for x in u.xs:
        wx = b.add(u.matmul(x, u.w.T, "w_t"), wb)
        gates = b.op("Sigmoid", [b.add(b.add(u.gate_slice(wx, 0, 2), u.matmul(h, u.r[:2 * u.hidden].T, "r_t")),
                                       rb_zr)])
        z, r = u.gate_slice(gates, 0, 1), u.gate_slice(gates, 1, 2)
        if lbr:
            gated = b.add(u.matmul(h, u.rows(u.r, 2).T, "r_t"), rb_n)  # U h + b, which r multiplies
            zn = b.add(u.gate_slice(wx, 2, 3), b.mul(r, gated))
        else:
            gated = b.mul(r, h)  # r * h, which U multiplies
            zn = b.add(b.add(u.gate_slice(wx, 2, 3), u.matmul(gated, u.rows(u.r, 2).T, "r_t")), rb_n)
        new, keep = b.mul(b.sub(b.scalar(1.0), z), b.op("Tanh", [zn])), b.mul(z, h)
        h_new = b.add(new, keep)
        steps.append({"x": x, "z": z, "r": r, "zn": zn, "gated": gated, "h_prev": h, "h": h_new, "new": new,
                      "keep": keep})
        h = h_new
    return steps


@emitter(RELEVANCE, GRU)
def _gru(site):
    """As GRU.lrp: h_t split by epsilon between (1 - z) n and z h_{t-1}; n's pre-activation by epsilon, the reset
    gate passing its term's share on to U h (+ b) or h."""
    def backward(u: Unrolled, eps: float) -> list[str]:
        b, states = u.b, _gru_steps(u)
        w_n, u_n = u.rows(u.w, 2), u.rows(u.r, 2)
        r_h = None
        r_x = [None] * len(states)
        for s in reversed(range(len(states))):
            st = states[s]
            r_out = u.r_y[s] if r_h is None else b.add(u.r_y[s], r_h)
            share = b.div(r_out, b.stabilize(st["h"], eps))
            q = b.div(b.mul(st["new"], share), b.stabilize(st["zn"], eps))
            r_x[s] = b.mul(st["x"], u.matmul(q, w_n, "w_n"))
            r_h = b.mul(st["keep"], share)
            if u.layer.linear_before_reset:
                term = b.div(b.mul(b.mul(st["r"], st["gated"]), q), b.stabilize(st["gated"], eps))
                r_h = b.add(r_h, b.mul(st["h_prev"], u.matmul(term, u_n, "u_n")))
            else:
                r_h = b.add(r_h, b.mul(st["gated"], u.matmul(q, u_n, "u_n")))
        return r_x
    return _backward(site, backward)


@emitter(GRADIENT, GRU)
def _gru_gradient(site):
    """As GRU.backprop: back-propagation through time."""
    def backward(u: Unrolled, eps: float) -> list[str]:
        b, states = u.b, _gru_steps(u)
        hsize = u.hidden
        w_n, u_n = u.rows(u.w, 2), u.rows(u.r, 2)
        d_h = None
        g_x = [None] * len(states)
        for s in reversed(range(len(states))):
            st = states[s]
            z, r, h_prev = st["z"], st["r"], st["h_prev"]
            n = b.op("Tanh", [st["zn"]])
            d_h = u.r_y[s] if d_h is None else b.add(d_h, u.r_y[s])
            d_zn = b.mul(b.mul(d_h, _one_minus(b, z)), _one_minus(b, b.mul(n, n)))
            if u.layer.linear_before_reset:
                d_r, d_prev = b.mul(d_zn, st["gated"]), u.matmul(b.mul(d_zn, r), u_n, "u_n")
            else:
                d_rh = u.matmul(d_zn, u_n, "u_n")
                d_r, d_prev = b.mul(d_rh, h_prev), b.mul(d_rh, r)
            d_zr = b.op("Concat", [b.mul(b.mul(d_h, b.sub(h_prev, n)), _sigmoid_slope(b, z)),
                                   b.mul(d_r, _sigmoid_slope(b, r))], axis=1)
            g_x[s] = b.add(u.matmul(d_zr, u.w[:2 * hsize], "w_zr"), u.matmul(d_zn, w_n, "w_n"))
            d_h = b.add(b.add(b.mul(d_h, z), d_prev), u.matmul(d_zr, u.r[:2 * hsize], "r_zr"))
        return g_x
    return _backward(site, backward)
