"""Writes tests/fixtures/sequences/: small torch sequence models exported to ONNX with both torch exporters, and
reference relevances from an independent float64 NumPy implementation of the rules written from the papers.

Run with the dev-only torch environment: /work/torchenv/bin/python scripts/make_sequence_fixtures.py
(it does not import lrp_cli). Models:
- text_cnn: nn.Embedding (padding_idx 0) + nn.Conv1d + ReLU + max over time + nn.Linear (Arras et al. 2016/2017's
  CNN over word embeddings), fed int64 token ids;
- lstm1 / lstm2 / bilstm1 / bilstm2 / gru1 / bigru2: nn.LSTM and nn.GRU, uni- and bidirectional, 1 and 2 layers,
  batch_first, a Linear on the last output or on the final states; bilstm2 reads token ids through an embedding;
- eeg: Conv1d over (channels, time) + ReLU + MaxPool1d + Linear;
- eeg_demo: such a network trained on synthetic signals whose class-1 evidence sits on one known channel and time
  window (see synthetic_eeg), with held-out class-1 examples: the heatmaps must put the evidence there.
Reference rules (Arras et al. 2017, "Explaining recurrent neural network predictions in sentiment analysis"): every
linear map by the epsilon rule, R_i = sum_j x_i w_ij / (z_j + eps sign(z_j)) R_j with eps = 0.001 and biases
absorbing their share; products gate * signal send all relevance to the signal; the LSTM cell sum
c = f c_prev + i g and GRU's h = (1 - z) n + z h_prev split between their two terms by the same epsilon rule;
tanh and ReLU pass relevance through; max over time sends it to the first maximum; a token's relevance is the sum
over its embedding vector, a padding token's is zero. Each reference is a message-passing loop over explicit weight
matrices (torch's gate order i, f, g, o and r, z, n), not a port of lrp-cli's code.
Saved per model: the input, the explained class, f(x), the float64 reference relevance, the gap between the same
reference run in float32 and in float64 (relative L2), and torch's float64 autograd gradient of the class score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "sequences"
EPS = 1e-3
VOCAB, EMBED, STEPS = 12, 5, 7


def stab(z):
    return z + EPS * np.where(z >= 0, 1.0, -1.0).astype(z.dtype)


def lrp_linear(x, w, b, r_out):
    """Epsilon rule for z = w @ x + b (w [out, in]) by explicit messages x_i w_ji / stab(z_j) R_j."""
    z = w @ x + b
    messages = x[None, :] * w / stab(z)[:, None] * r_out[:, None]
    return messages.sum(axis=0)


def split_sum(a, b, r):
    """Epsilon rule for the element-wise sum a + b: each term's share of r."""
    total = stab(a + b)
    return a / total * r, b / total * r


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# --- recurrent layers, one direction, time-major [T, features], batch 1 ---------------------------------------


def lstm_direction(x, p, r_out):
    """Returns (outputs [T, H], input relevance [T, I]) of one LSTM direction with torch's parameters."""
    w_ih, w_hh, b = p["w_ih"], p["w_hh"], p["b_ih"] + p["b_hh"]
    hsize = w_hh.shape[1]
    rows = {k: slice(n * hsize, (n + 1) * hsize) for n, k in enumerate("ifgo")}
    h, c = [np.zeros(hsize, x.dtype)], [np.zeros(hsize, x.dtype)]
    gates = []
    for t in range(len(x)):
        z = w_ih @ x[t] + w_hh @ h[-1] + b
        i, f, g, o = sigmoid(z[rows["i"]]), sigmoid(z[rows["f"]]), np.tanh(z[rows["g"]]), sigmoid(z[rows["o"]])
        c.append(f * c[-1] + i * g)
        h.append(o * np.tanh(c[-1]))
        gates.append((i, f, g))
    if r_out is None:
        return np.array(h[1:]), None
    r_x = np.zeros_like(x)
    r_h, r_c = np.zeros(hsize, x.dtype), np.zeros(hsize, x.dtype)
    for t in reversed(range(len(x))):
        i, f, g = gates[t]
        r_c = r_c + r_h + r_out[t]
        r_c, r_g = split_sum(f * c[t], i * g, r_c)
        both = lrp_linear(np.concatenate([x[t], h[t]]), np.concatenate([w_ih[rows["g"]], w_hh[rows["g"]]], axis=1),
                          b[rows["g"]], r_g)
        r_x[t], r_h = both[:x.shape[1]], both[x.shape[1]:]
    return np.array(h[1:]), r_x


def gru_direction(x, p, r_out):
    """Returns (outputs [T, H], input relevance [T, I]) of one GRU direction with torch's parameters."""
    w_ih, w_hh, b_ih, b_hh = p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"]
    hsize = w_hh.shape[1]
    rows = {k: slice(n * hsize, (n + 1) * hsize) for n, k in enumerate("rzn")}
    h, steps = [np.zeros(hsize, x.dtype)], []
    for t in range(len(x)):
        a, m = w_ih @ x[t] + b_ih, w_hh @ h[-1] + b_hh
        r, z = sigmoid(a[rows["r"]] + m[rows["r"]]), sigmoid(a[rows["z"]] + m[rows["z"]])
        u = m[rows["n"]]
        n = np.tanh(a[rows["n"]] + r * u)
        h.append((1 - z) * n + z * h[-1])
        steps.append((r, z, n, u))
    if r_out is None:
        return np.array(h[1:]), None
    r_x = np.zeros_like(x)
    r_h = np.zeros(hsize, x.dtype)
    for t in reversed(range(len(x))):
        r, z, n, u = steps[t]
        r_n, r_h = split_sum((1 - z) * n, z * h[t], r_out[t] + r_h)
        # n's pre-activation: W_in x + b_in + s with s = r * u one more input of weight 1 per unit
        w = np.concatenate([w_ih[rows["n"]], np.eye(hsize)], axis=1)
        both = lrp_linear(np.concatenate([x[t], r * u]), w, b_ih[rows["n"]], r_n)
        r_x[t], r_u = both[:x.shape[1]], both[x.shape[1]:]  # r * u: the gate r passes its share to u
        r_h = r_h + lrp_linear(h[t], w_hh[rows["n"]], b_hh[rows["n"]], r_u)
    return np.array(h[1:]), r_x


def recurrent_stack(module, x, r_top, dtype):
    """Returns (per-layer outputs, input relevance) of a stacked (bi)directional torch LSTM/GRU on x [T, I],
    r_top being the relevance of the top layer's outputs [T, D*H] (None: forward only)."""
    cell = lstm_direction if isinstance(module, nn.LSTM) else gru_direction
    dirs = 2 if module.bidirectional else 1
    params = [[{k: getattr(module, f"{k}_l{layer}{'_reverse' if d else ''}").detach().numpy().astype(dtype)
                for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")} for d in range(dirs)]
              for layer in range(module.num_layers)]
    params = [[{k.replace("weight", "w").replace("bias", "b"): v for k, v in p.items()} for p in layer]
              for layer in params]
    inputs = [x]
    for layer in params:
        outs = [cell(inputs[-1][::-1] if d else inputs[-1], p, None)[0] for d, p in enumerate(layer)]
        inputs.append(np.concatenate([o[::-1] if d else o for d, o in enumerate(outs)], axis=1))
    if r_top is None:
        return inputs, None
    r = r_top
    hsize = module.hidden_size
    for k in reversed(range(module.num_layers)):
        parts = [cell(inputs[k][::-1] if d else inputs[k], p,
                      r[:, d * hsize:(d + 1) * hsize][::-1] if d else r[:, d * hsize:(d + 1) * hsize])[1]
                 for d, p in enumerate(params[k])]
        r = sum(part[::-1] if d else part for d, part in enumerate(parts))
    return inputs, r


# --- models --------------------------------------------------------------------------------------------------


class TextCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMBED, padding_idx=0)
        self.conv = nn.Conv1d(EMBED, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, ids):
        a = torch.relu(self.conv(self.embed(ids).transpose(1, 2)))
        return self.fc(a.max(dim=2).values)


class Recurrent(nn.Module):
    """A (bi)directional LSTM/GRU with a Linear on the last output (`last`) or on the final states (`states`)."""

    def __init__(self, kind, layers, bidirectional, head, embed=False):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 4, padding_idx=0) if embed else None
        self.rnn = kind(4, 5, num_layers=layers, bidirectional=bidirectional, batch_first=True)
        self.head = head
        self.fc = nn.Linear(5 * (2 if bidirectional else 1), 3)

    def forward(self, x):
        x = self.embed(x) if self.embed is not None else x
        out, state = self.rnn(x)
        h = state[0] if isinstance(state, tuple) else state
        last = out[:, -1] if self.head == "last" else torch.cat(list(h[-2 if self.rnn.bidirectional else -1:]), 1)
        return self.fc(last)


class EEGNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 5, padding=2)
        self.pool = nn.MaxPool1d(4)
        self.fc = nn.Linear(6 * 4, 2)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


# --- references ----------------------------------------------------------------------------------------------


def np_params(module, dtype):
    return {k: v.detach().numpy().astype(dtype) for k, v in module.state_dict().items()}


def conv1d_columns(x, kernel, pad):
    """Returns the [T_out, C*k] unfolded windows of x [C, T] (zero padding)."""
    xp = np.pad(x, ((0, 0), (pad, pad)))
    return np.array([xp[:, t:t + kernel].ravel() for t in range(xp.shape[1] - kernel + 1)])


def conv1d_lrp(x, weight, bias, pad, r_out):
    """Epsilon rule of a Conv1d as one linear map per output time step over its window; returns [C, T]."""
    out_c, in_c, kernel = weight.shape
    cols = conv1d_columns(x, kernel, pad)
    r_pad = np.zeros((in_c, x.shape[1] + 2 * pad), x.dtype)
    for t, col in enumerate(cols):
        r_pad[:, t:t + kernel] += lrp_linear(col, weight.reshape(out_c, -1), bias, r_out[:, t]).reshape(in_c, kernel)
    return r_pad[:, pad:pad + x.shape[1]]


def text_cnn_reference(model, ids, dtype):
    p = np_params(model, dtype)
    e = p["embed.weight"][ids[0]].T  # [E, T]
    w, b = p["conv.weight"], p["conv.bias"]
    a = np.maximum(conv1d_columns(e, 3, 1) @ w.reshape(6, -1).T + b, 0).T  # [6, T]
    pooled = a.max(axis=1)
    logits = p["fc.weight"] @ pooled + p["fc.bias"]
    k = int(np.argmax(logits))
    r_pooled = lrp_linear(pooled, p["fc.weight"], p["fc.bias"], np.eye(3, dtype=dtype)[k] * logits[k])
    r_a = np.zeros_like(a)
    r_a[np.arange(6), a.argmax(axis=1)] = r_pooled  # max over time: the first maximum takes all
    r_e = conv1d_lrp(e, w, b, 1, r_a)
    return k, logits[k], (r_e.sum(axis=0) * (ids[0] != 0))[None]


def recurrent_reference(model, x, dtype):
    p = np_params(model, dtype)
    seq = p["embed.weight"][x[0]] if model.embed is not None else x[0].astype(dtype)
    layers, _ = recurrent_stack(model.rnn, seq, None, dtype)
    top, hsize = layers[-1], model.rnn.hidden_size
    bi = model.rnn.bidirectional
    if model.head == "last":
        feature = top[-1]
    else:  # final states: the forward direction's last step, the reverse direction's first
        feature = np.concatenate([top[-1, :hsize]] + ([top[0, hsize:]] if bi else []))
    logits = p["fc.weight"] @ feature + p["fc.bias"]
    k = int(np.argmax(logits))
    r_feature = lrp_linear(feature, p["fc.weight"], p["fc.bias"], np.eye(3, dtype=dtype)[k] * logits[k])
    r_top = np.zeros_like(top)
    if model.head == "last":
        r_top[-1] = r_feature
    else:
        r_top[-1, :hsize] = r_feature[:hsize]
        if bi:
            r_top[0, hsize:] = r_feature[hsize:]
    _, r_x = recurrent_stack(model.rnn, seq, r_top, dtype)
    if model.embed is not None:
        return k, logits[k], (r_x.sum(axis=1) * (x[0] != 0))[None]
    return k, logits[k], r_x[None]


def eeg_reference(model, x, dtype):
    p = np_params(model, dtype)
    signal = x[0].astype(dtype)
    w, b = p["conv.weight"], p["conv.bias"]
    a = np.maximum(conv1d_columns(signal, 5, 2) @ w.reshape(6, -1).T + b, 0).T  # [6, T]
    windows = a.reshape(6, -1, 4)
    pooled = windows.max(axis=2)
    logits = p["fc.weight"] @ pooled.ravel() + p["fc.bias"]
    k = int(np.argmax(logits))
    r_pooled = lrp_linear(pooled.ravel(), p["fc.weight"], p["fc.bias"], np.eye(2, dtype=dtype)[k] * logits[k])
    r_windows = np.zeros_like(windows)
    first = windows.argmax(axis=2)
    r_windows[np.arange(6)[:, None], np.arange(windows.shape[1])[None], first] = r_pooled.reshape(6, -1)
    return k, logits[k], conv1d_lrp(signal, w, b, 2, r_windows.reshape(6, -1))[None]


def relative_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def export(model, x, name):
    """Writes NAME_legacy.onnx and, when the dynamo exporter works offline, NAME_dynamo.onnx; returns their names."""
    written = []
    args = (torch.from_numpy(x),)
    torch.onnx.export(model, args, OUT / f"{name}_legacy.onnx", dynamo=False, input_names=["x"], output_names=["y"],
                      opset_version=17)
    written.append(f"{name}_legacy.onnx")
    try:
        program = torch.onnx.export(model, args, dynamo=True, input_names=["x"], output_names=["y"],
                                    optimize=True, verbose=False)
        program.save(str(OUT / f"{name}_dynamo.onnx"), external_data=False)
        written.append(f"{name}_dynamo.onnx")
    except Exception as exc:  # the dynamo exporter is optional here: record why it was skipped
        print(f"{name}: dynamo export skipped: {str(exc).splitlines()[0]}")
    return written


#: The synthetic EEG task: class 1 carries a burst on this channel during these steps; class 0 only noise.
BURST_CHANNEL, BURST_STEPS, EEG_SHAPE = 2, (12, 20), (4, 32)


def synthetic_eeg(rng, count):
    """Returns (signals [count, 4, 32] float32, labels): unit Gaussian noise on every channel; class 1 adds a
    sinusoid of period 4 steps and amplitude 1.5 on channel 2 during steps 12..19."""
    labels = rng.integers(0, 2, count)
    x = rng.standard_normal((count,) + EEG_SHAPE)
    start, end = BURST_STEPS
    burst = 1.5 * np.sin(np.arange(end - start) * np.pi / 2 + 0.5)
    x[labels == 1, BURST_CHANNEL, start:end] += burst
    return x.astype(np.float32), labels


def train_eeg_demo():
    """Writes eeg_demo_legacy.onnx (a Conv1d classifier trained on synthetic_eeg) and eeg_demo.npz (held-out
    class-1 examples it classifies correctly)."""
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    x, y = synthetic_eeg(rng, 2000)
    model = nn.Sequential(nn.Conv1d(4, 8, 5, padding=2), nn.ReLU(), nn.MaxPool1d(4), nn.Flatten(),
                          nn.Linear(8 * 8, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(300):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        optimizer.step()
    test_x, test_y = synthetic_eeg(rng, 200)
    with torch.no_grad():
        predicted = model(torch.from_numpy(test_x)).argmax(1).numpy()
    accuracy = float((predicted == test_y).mean())
    chosen = np.flatnonzero((test_y == 1) & (predicted == 1))[:5]
    torch.onnx.export(model.eval(), (torch.from_numpy(test_x[:1]),), OUT / "eeg_demo_legacy.onnx", dynamo=False,
                      input_names=["x"], output_names=["y"], opset_version=17)
    np.savez(OUT / "eeg_demo.npz", x=test_x[chosen], channel=BURST_CHANNEL, steps=np.array(BURST_STEPS))
    print(f"eeg_demo: held-out accuracy {accuracy:.3f}, {len(chosen)} class-1 examples saved")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    train_eeg_demo()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    ids = np.array([[3, 7, 1, 9, 4, 11, 0]], dtype=np.int64)  # the last token is padding
    signal = rng.standard_normal((1, 4, 16)).astype(np.float32)
    seq = rng.standard_normal((1, STEPS, 4)).astype(np.float32)
    cases = {
        "text_cnn": (TextCNN(), ids, text_cnn_reference),
        "lstm1": (Recurrent(nn.LSTM, 1, False, "last"), seq, recurrent_reference),
        "lstm2": (Recurrent(nn.LSTM, 2, False, "states"), seq, recurrent_reference),
        "bilstm1": (Recurrent(nn.LSTM, 1, True, "last"), seq, recurrent_reference),
        "bilstm2": (Recurrent(nn.LSTM, 2, True, "states", embed=True), ids, recurrent_reference),
        "gru1": (Recurrent(nn.GRU, 1, False, "states"), seq, recurrent_reference),
        "bigru2": (Recurrent(nn.GRU, 2, True, "last"), seq, recurrent_reference),
        "eeg": (EEGNet(), signal, eeg_reference),
    }
    index = {}
    for name, (model, x, reference) in cases.items():
        model.eval()
        with torch.no_grad():  # biases are small at init; make them matter
            for param in model.parameters():
                param.add_(0.1 * torch.randn_like(param))
            if getattr(model, "embed", None) is not None:
                model.embed.weight[0] = 0
        k, f_x, r64 = reference(model, x, np.float64)
        k32, _, r32 = reference(model, x, np.float32)
        want = model.double()(torch.from_numpy(x if x.dtype == np.int64 else x.astype(np.float64)))[0]
        assert k == k32 == int(want.argmax()) and abs(float(want[k]) - f_x) < 1e-9 * max(1, abs(f_x)), name
        gradient = None
        if x.dtype != np.int64:
            xt = torch.from_numpy(x.astype(np.float64)).requires_grad_()
            model(xt)[0, k].backward()
            gradient = xt.grad.numpy()
        model.float()
        files = export(model, x, name)
        np.savez(OUT / f"{name}.npz", x=x, relevance=r64, **({"gradient": gradient} if gradient is not None else {}))
        index[name] = {"models": files, "target": k, "f_x": float(f_x), "float32_gap": relative_l2(r32, r64),
                       "relevance_sum": float(r64.sum())}
        gap = index[name]["float32_gap"]
        print(name, files, f"target {k} f(x) {f_x:.4f} sum R {r64.sum():.4f} float32 gap {gap:.2e}")
    (OUT / "references.json").write_text(json.dumps(index, indent=1) + "\n")


if __name__ == "__main__":
    main()
