"""Sequence models: embeddings of token ids, ONNX LSTM and GRU (Arras et al. 2017's rule), 1-D convolutions.

- Golden fixtures (tests/fixtures/sequences, from scripts/make_sequence_fixtures.py): torch models exported by both
  torch exporters against an independent float64 NumPy reference of the rules: float64 within 1e-6 relative L2;
  float32 (NumPy and compiled engines) within 5x the reference's own float32/float64 gap (never tighter than
  1e-6); gradients against torch's float64 autograd, 1e-9 relative L2 (compiled float32: 1e-5).
- LSTM/GRU forward against onnxruntime (layout 0) or ONNX's reference evaluator (layout 1, which onnxruntime does
  not run), 1e-5 (float32 inputs, float64 IR).
- Conservation (zero biases and initial states, epsilon 1e-12: nothing may absorb relevance): 1e-8 of sum |R|.
- Gradients against central finite differences (step 1e-6, float64): 1e-6.
- Embeddings: per-token sums, padding, gradient x input by Euler's theorem on a bias-free ReLU network.
"""

import json

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from conftest import REPO, compiled_relevance, onnx_model, save_model
from lrp_cli import api
from lrp_cli.importers.onnx_import import import_onnx
from lrp_cli.ir.sequence import GRU, LSTM
from lrp_cli.methods.gradient import gradient_x_input, input_gradient
from lrp_cli.propagate import propagate
from lrp_cli.rules import Epsilon, assign_rules

FIXTURES = REPO / "tests" / "fixtures" / "sequences"
REFERENCES = json.loads((FIXTURES / "references.json").read_text())
CASES = [(name, f) for name, ref in REFERENCES.items() for f in ref["models"]]


def relative_l2(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("name,file", CASES, ids=[f for _, f in CASES])
def test_golden_relevance(name, file):
    ref, data = REFERENCES[name], np.load(FIXTURES / f"{name}.npz")
    model = api.load_model(FIXTURES / file)
    settings = dict(rule="epsilon:0.001", engine="numpy", target=ref["target"])
    r64 = api.explain_array(model, data["x"], api.Settings(precision="float64", **settings))[0]
    assert r64.propagation.f_x == pytest.approx(ref["f_x"], rel=1e-6)
    assert r64.relevance.shape == data["relevance"].shape == data["x"].shape[:2 if name in ("text_cnn", "bilstm2")
                                                                                 else 3]
    assert relative_l2(r64.relevance, data["relevance"]) <= 1e-6
    for engine in ("numpy", "onnxruntime"):
        r32 = api.explain_array(model, data["x"], api.Settings(precision="float32", **(settings | {"engine": engine})))
        assert r32[0].extra["engine"] == engine
        assert relative_l2(r32[0].relevance, data["relevance"]) <= max(5 * ref["float32_gap"], 1e-6), engine


@pytest.mark.parametrize("name,file", [c for c in CASES if "gradient" in np.load(FIXTURES / f"{c[0]}.npz")],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_golden_gradient(name, file):
    data = np.load(FIXTURES / f"{name}.npz")
    graph = import_onnx(FIXTURES / file)
    values = graph.forward(data["x"].astype(np.float64))
    got = input_gradient(graph, values, REFERENCES[name]["target"]).relevance
    assert relative_l2(got, data["gradient"]) <= 1e-9
    compiled = api.explain_array(api.load_model(FIXTURES / file), data["x"], api.Settings(
        method="gradient", engine="onnxruntime", target=REFERENCES[name]["target"]))[0]
    assert compiled.extra["engine"] == "onnxruntime"
    assert relative_l2(compiled.relevance, data["gradient"]) <= 1e-5  # float32 all through: ~1e-7 measured


def recurrent_model(op, direction, layout, out, seed=0, lbr=0, zero_bias=False, initial=True, lengths=None):
    """Returns (ONNX model of one LSTM/GRU node writing output `out` (0: Y, 1: Y_h), its input shape); `lengths`
    gives a constant sequence_lens for the 2 batch items."""
    rng = np.random.default_rng(seed)
    steps, batch, size, hidden = 5, 2, 3, 4
    gates, dirs = (4 if op == "LSTM" else 3), (2 if direction == "bidirectional" else 1)
    inits = {"W": rng.standard_normal((dirs, gates * hidden, size)), "R": rng.standard_normal((dirs, gates * hidden,
                                                                                                 hidden)),
             "B": rng.standard_normal((dirs, 2 * gates * hidden)) * (0 if zero_bias else 1)}
    names = ["x", "W", "R", "B", "lens" if lengths is not None else ""]
    if initial:
        state = (dirs, batch, hidden) if layout == 0 else (batch, dirs, hidden)
        inits |= {"h0": rng.standard_normal(state), "c0": rng.standard_normal(state)}
        names += ["h0"] + (["c0"] if op == "LSTM" else [])
    attrs = dict(hidden_size=hidden, direction=direction, layout=layout)
    if op == "GRU":
        attrs["linear_before_reset"] = lbr
    node = helper.make_node(op, names, ["Y", "Y_h"], name="rnn", **attrs)
    shape = (steps, batch, size) if layout == 0 else (batch, steps, size)
    inits = {k: v.astype(np.float32) for k, v in inits.items()}
    if lengths is not None:
        inits["lens"] = np.asarray(lengths, np.int32)
    return onnx_model([node], shape, ["Y", "Y_h"][out], inits, opset=14), shape


VARIANTS = [(op, d, layout, lbr) for op in ("LSTM", "GRU") for d in ("forward", "reverse", "bidirectional")
            for layout in (0, 1) for lbr in ((0, 1) if op == "GRU" else (0,))]


@pytest.mark.parametrize("lengths", [None, (3, 5)], ids=["full", "lens3,5"])
@pytest.mark.parametrize("op,direction,layout,lbr", VARIANTS)
def test_recurrent_forward_matches_onnx(op, direction, layout, lbr, lengths):
    if lengths and layout == 1:
        pytest.skip("neither onnxruntime nor ONNX's reference evaluator runs sequence_lens with layout 1")
    x = np.random.default_rng(1).standard_normal((5, 2, 3) if layout == 0 else (2, 5, 3)).astype(np.float32)
    for out in (0, 1):
        model, shape = recurrent_model(op, direction, layout, out, lbr=lbr, lengths=lengths)
        graph = import_onnx("<memory>", model=model, input_shape=shape)
        got = graph.forward(x.astype(np.float64))[graph.output_name]
        if layout == 0:
            session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            want = session.run(None, {"x": x})[0]
        else:
            want = ReferenceEvaluator(model).run(None, {"x": x})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lengths", [None, (3, 5)], ids=["full", "lens3,5"])
@pytest.mark.parametrize("op,direction,layout,lbr", VARIANTS)
def test_recurrent_relevance_is_conserved_without_biases(op, direction, layout, lbr, lengths):
    """With zero biases and zero initial states nothing absorbs relevance: the input gets all of it (and no step
    beyond an item's length gets any)."""
    model, shape = recurrent_model(op, direction, layout, 0, lbr=lbr, zero_bias=True, initial=False,
                                   lengths=lengths)
    graph = import_onnx("<memory>", model=model, input_shape=shape)
    layer = graph.nodes[0].layer
    x = np.random.default_rng(2).standard_normal(shape)
    y = layer.forward(x)
    r = np.random.default_rng(3).standard_normal(y.shape) * y
    got = layer.relevance([x], y, r, Epsilon(1e-12))[0]
    assert got.shape == x.shape
    if lengths:
        assert not np.any((got if layout == 0 else got.transpose(1, 0, 2))[3:, 0])
    assert abs(got.sum() - r.sum()) <= 1e-8 * np.abs(r).sum()  # relative to the terms: their sum may cancel


@pytest.mark.parametrize("lengths", [None, (3, 5)], ids=["full", "lens3,5"])
@pytest.mark.parametrize("op,direction,layout,lbr", VARIANTS)
def test_recurrent_gradient_matches_finite_differences(op, direction, layout, lbr, lengths):
    model, shape = recurrent_model(op, direction, layout, 0, lbr=lbr, lengths=lengths)
    layer = import_onnx("<memory>", model=model, input_shape=shape).nodes[0].layer
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape)
    y = layer.forward(x)
    g = rng.standard_normal(y.shape)
    got = layer.gradient([x], y, g)[0]
    step, want = 1e-6, np.zeros(x.size)
    for k in range(x.size):
        e = np.zeros(x.size)
        e[k] = step
        e = e.reshape(shape)
        want[k] = ((layer.forward(x + e) - layer.forward(x - e)) * g).sum() / (2 * step)
    np.testing.assert_allclose(got.ravel(), want, rtol=1e-6, atol=1e-6)


def test_hand_worked_lstm_step():
    """One step, one unit, zero initial state: c = i g, h = o tanh(c); R_h passes to c, all of c's relevance goes
    to the term i g (c_prev = 0), then to g's pre-activation z_g = w x + b by epsilon: R_x = w x / (w x + b) R."""
    w = np.array([[[0.5], [1.0], [-2.0], [0.8]]])  # gates i, o, f, c
    r = np.zeros((1, 4, 1))
    b = np.array([[0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.0, 0.0]])
    layer = LSTM(w, r, b, None, None, 1, "forward", 0)
    x = np.array([[[1.5]]])
    y = layer.forward(x)
    got = layer.relevance([x], y, np.array([[[[2.0]]]]), Epsilon(1e-9))[0]
    assert got[0, 0, 0] == pytest.approx(0.8 * 1.5 / (0.8 * 1.5 + 0.4) * 2.0, rel=1e-8)


def test_hand_worked_gru_step():
    """One step, one unit, initial state h0 = 1: h = (1 - z) n + z h0 split by epsilon; n's pre-activation
    w_n x + b_n + r (u h0 + b_u) gives x its share w_n x / z_n, and U h its share of the gated term by epsilon."""
    w = np.array([[[0.3], [0.7], [1.2]]])  # gates z, r, h
    rec = np.array([[[0.4], [0.5], [0.9]]])
    b = np.array([[0.1, -0.2, 0.05, 0.0, 0.0, 0.25]])
    layer = GRU(w, rec, b, np.array([[[1.0]]]), 1, "forward", 0, True)
    x = np.array([[[0.8]]])
    y = layer.forward(x)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    z, r = sig(0.3 * 0.8 + 0.1 + 0.4), sig(0.7 * 0.8 - 0.2 + 0.5)
    u = 0.9 * 1.0 + 0.25
    zn = 1.2 * 0.8 + 0.05 + r * u
    n = np.tanh(zn)
    h = (1 - z) * n + z * 1.0
    assert y[0, 0, 0, 0] == pytest.approx(h, rel=1e-12)
    got = layer.relevance([x], y, np.array([[[[3.0]]]]), Epsilon(1e-9))[0]
    assert got[0, 0, 0] == pytest.approx((1 - z) * n / h * 3.0 * (1.2 * 0.8) / zn, rel=1e-8)


def embedding_model(table, steps, bias_free=True, pad_row=None):
    """Returns ids [1, T] -> Gather -> Transpose -> Conv1d -> Relu -> ReduceMax -> MatMul (2 classes)."""
    rng = np.random.default_rng(5)
    table = table.copy()
    if pad_row is not None:
        table[pad_row] = 0
    inits = {"E": table.astype(np.float32), "w": rng.standard_normal((3, table.shape[1], 2)).astype(np.float32),
             "d": rng.standard_normal((3, 2)).astype(np.float32)}
    nodes = [helper.make_node("Gather", ["E", "x"], ["e"], name="embed"),
             helper.make_node("Transpose", ["e"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Conv", ["t", "w"], ["c"], name="conv", pads=[1, 0]),
             helper.make_node("Relu", ["c"], ["a"]),
             helper.make_node("ReduceMax", ["a"], ["m"], axes=[2], keepdims=0, name="max"),
             helper.make_node("MatMul", ["m", "d"], ["y"], name="dense")]
    model = onnx_model(nodes, [1, steps], initializers=inits)
    model.graph.input[0].type.tensor_type.elem_type = 7  # int64 ids
    return model


def test_embedding_token_relevance_is_the_sum_of_its_vector():
    rng = np.random.default_rng(6)
    model = embedding_model(rng.standard_normal((9, 4)), 6, pad_row=0)
    graph = import_onnx("<memory>", model=model)
    ids = np.array([[3, 5, 0, 8, 3, 1]], dtype=np.float64)
    values = graph.forward(ids)
    target = int(values["y"].argmax())
    rules = {"conv": Epsilon(1e-9), "dense": Epsilon(1e-9)}
    got = propagate(graph, values, target, rules).relevance
    conv = next(n for n in graph.nodes if n.name == "conv")
    r_conv_input = conv.layer.relevance([values["t"]], values["c"], _relevance_at(graph, values, target, "c", rules),
                                        rules["conv"])[0]
    want = r_conv_input.sum(axis=1) * (ids != 0)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert got[0, 2] == 0.0 and graph.nodes[0].layer.padding == (0,)
    # bias-free and homogeneous: the epsilon rule conserves f(x) (padding rows are zero and receive none)
    assert got.sum() == pytest.approx(values["y"][0, target], rel=1e-6)


def _relevance_at(graph, values, target, tensor, rules):
    """Returns the relevance reaching `tensor` (the walk stopped there)."""
    from lrp_cli.propagate import backward, initial_relevance
    start, _ = initial_relevance(values[graph.output_name], target)
    return backward(graph, values, start, lambda n, xs, y, r: n.layer.relevance(xs, y, r, rules.get(n.name)),
                    until=tensor)[0]


def test_embedding_gradient_methods():
    """Gradient x input per token sums to f(x) on a bias-free ReLU network (Euler: f is 1-homogeneous in the
    embedding vectors); the gradient per token is the squared L2 norm of the gradient w.r.t. the vector."""
    rng = np.random.default_rng(7)
    model = embedding_model(rng.standard_normal((9, 4)), 5)
    graph = import_onnx("<memory>", model=model)
    ids = np.array([[1, 2, 3, 4, 2]], dtype=np.float64)
    values = graph.forward(ids)
    target = int(values["y"].argmax())
    gxi = gradient_x_input(graph, values, target)
    assert gxi.relevance.shape == (1, 5)
    assert gxi.relevance.sum() == pytest.approx(values["y"][0, target], rel=1e-9)
    sensitivity = input_gradient(graph, values, target).relevance
    step, table = 1e-6, graph.nodes[0].layer.table
    for t in range(5):
        grad = np.zeros(4)
        for k in range(4):
            moved = table.copy()
            graph.nodes[0].layer.table = moved
            moved[int(ids[0, t]), k] += step
            up = graph.forward(ids)["y"][0, target]
            moved[int(ids[0, t]), k] -= 2 * step
            down = graph.forward(ids)["y"][0, target]
            grad[k] = (up - down) / (2 * step)
        graph.nodes[0].layer.table = table
        if ids[0, t] != 2:  # token 2 occurs twice: moving its row moves both positions
            assert sensitivity[0, t] == pytest.approx((grad ** 2).sum(), rel=1e-5)


def test_non_integer_or_out_of_range_ids_fail(tmp_path):
    model = embedding_model(np.random.default_rng(8).standard_normal((9, 4)), 4)
    graph = import_onnx("<memory>", model=model)
    for ids in ([[1.5, 2, 3, 4]], [[1, 2, 3, 9]]):
        with pytest.raises(ValueError, match="token ids"):
            graph.forward(np.array(ids))


def test_int64_ids_through_the_api_save_raw(tmp_path):
    """An int64 .npy goes in as is; --save-raw writes [1, T] per-token relevance; LSTMs compile (except forms the
    compiled engine does not write, a short sequence_lens: lrp inspect says why) but --engine auto runs them on
    NumPy, which is faster, and lrp inspect says so."""
    from click.testing import CliRunner

    from lrp_cli.cli import main
    path = FIXTURES / "text_cnn_legacy.onnx"
    ids = np.load(FIXTURES / "text_cnn.npz")["x"]
    np.save(tmp_path / "ids.npy", ids)
    result = CliRunner().invoke(main, ["explain", str(tmp_path / "ids.npy"), "--model", str(path), "--out",
                                       str(tmp_path / "out"), "--save-raw", "--composite", "sequence-epsilon"])
    assert result.exit_code == 0, result.output
    raw = np.load(tmp_path / "out" / "ids.relevance.npy")
    assert raw.shape == ids.shape and raw[0, -1] == 0.0  # the last token is padding
    table = CliRunner().invoke(main, ["inspect", str(FIXTURES / "lstm1_legacy.onnx")]).output
    assert "engine under --engine auto: numpy" in table and "epsilon:0.001" in table
    assert "numpy preferred: LSTM/GRU layers run faster on the NumPy engine" in table and "not compiled" not in table
    short = save_model(recurrent_model("LSTM", "forward", 0, 1, lengths=(3, 5))[0], tmp_path / "short.onnx")
    table = CliRunner().invoke(main, ["inspect", str(short)]).output
    assert "engine under --engine auto: numpy" in table and "sequence_lens shorter than the input runs on" in table


def test_recurrent_rules_are_selectable():
    graph = import_onnx(FIXTURES / "lstm2_legacy.onnx")
    nodes = [(n.name, n.layer) for n in graph.rule_nodes()]
    specs = assign_rules(nodes, layer_rules=("*LSTM_1*=epsilon:0.01",))
    recurrent = {name: spec for name, spec in specs.items() if dict(nodes)[name].rule_kind == "recurrent"}
    assert sorted(recurrent.values()) == ["epsilon:0.001", "epsilon:0.01"]
    assert specs["/fc/Gemm"] == "epsilon:0.001"  # the sequence-epsilon default: no flat output layer


def test_sidecar_padding_id(tmp_path):
    """[text] padding_id replaces the all-zero-row guess: those positions get no relevance."""
    import shutil
    path = shutil.copy(FIXTURES / "text_cnn_legacy.onnx", tmp_path / "m.onnx")
    (tmp_path / "m.lrp.toml").write_text("[text]\npadding_id = [3, 9]\n")
    model = api.load_model(path)
    assert model.graph.nodes[0].layer.padding == (3, 9)
    ids = np.load(FIXTURES / "text_cnn.npz")["x"]
    got = api.explain_array(model, ids, api.Settings(composite="sequence-epsilon", engine="numpy"))[0].relevance
    assert np.all(got[np.isin(ids, [3, 9])] == 0) and np.any(got[~np.isin(ids, [0, 3, 9])] != 0)
    (tmp_path / "m.lrp.toml").write_text("[text]\npadding_id = 'x'\n")
    with pytest.raises(Exception, match="padding_id"):
        api.load_model(path)


def test_backward_reuses_the_forward_states_and_lets_them_go():
    """The relevance from the states the forward kept equals the relevance from a recomputed recurrence (a copy of
    Y has no kept states), bit for bit; the kept states go with their Y."""
    import gc

    from lrp_cli.ir import sequence
    model, shape = recurrent_model("GRU", "bidirectional", 0, 0, lbr=1)
    layer = import_onnx("<memory>", model=model, input_shape=shape).nodes[0].layer
    x = np.random.default_rng(9).standard_normal(shape)
    y = layer.forward(x)
    assert id(y) in sequence._STATES
    r = np.random.default_rng(10).standard_normal(y.shape)
    kept = layer.relevance([x], y, r, Epsilon(1e-3))[0]
    np.testing.assert_array_equal(kept, layer.relevance([x], y.copy(), r, Epsilon(1e-3))[0])
    key = id(y)
    del y
    gc.collect()
    assert key not in sequence._STATES


def test_signal_outputs(tmp_path):
    """A [1, C, T] input read by a Conv: the heatmap is the C x T raster (one block per value, the colour of the
    value's normalized relevance), the overlay draws C traces, the JSON sums relevance per channel and window; the
    same run writes the same bytes."""
    from PIL import Image

    from lrp_cli import render, signals
    model = api.load_model(FIXTURES / "eeg_legacy.onnx")
    x = np.load(FIXTURES / "eeg.npz")["x"]
    expl = api.explain_array(model, x, api.Settings(composite="sequence-epsilon", engine="numpy"))[0]
    docs = [api.save_explanation(model, expl, tmp_path / name, "eeg") for name in ("a", "b")]
    heat = expl.relevance[0].astype(np.float64)
    picture = np.asarray(Image.open(tmp_path / "a" / "eeg.heatmap.png"))
    height, width = signals._blocks(*heat.shape)
    assert picture.shape == (4 * height, 16 * width, 3)
    np.testing.assert_array_equal(picture[::height, ::width], render.colorize(render.normalize(heat)))
    summary = docs[0]["signal"]
    np.testing.assert_allclose(summary["per_channel"], heat.sum(axis=1), rtol=1e-6)
    assert sum(w["relevance"] for w in summary["per_window"]) == pytest.approx(heat.sum(), rel=1e-5, abs=1e-7)
    assert [w["start"] for w in summary["per_window"]] == list(range(0, 16, 2))
    for kind in ("heatmap", "overlay"):
        assert (tmp_path / "a" / f"eeg.{kind}.png").read_bytes() == (tmp_path / "b" / f"eeg.{kind}.png").read_bytes()
    assert not signals.is_signal(import_onnx(FIXTURES / "lstm1_legacy.onnx"))


def _with(model, **changes):
    """Returns a copy of a one-node recurrent model with attributes set and inputs/outputs replaced."""
    from onnx import ModelProto
    copy = ModelProto()
    copy.CopyFrom(model)
    node = copy.graph.node[0]
    for name, value in changes.get("attrs", {}).items():
        node.attribute.append(helper.make_attribute(name, value))
    for index, name in changes.get("inputs", {}).items():
        while len(node.input) <= index:
            node.input.append("")
        node.input[index] = name
    for name, value in changes.get("inits", {}).items():
        copy.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return copy


@pytest.mark.parametrize("change,message", [
    (dict(attrs={"clip": 3.0}), "clip and input_forget"),
    (dict(attrs={"activations": ["Sigmoid", "Relu", "Tanh"]}), "default activations"),
    (dict(inputs={7: "P"}, inits={"P": np.ones((1, 12), np.float32)}), "peepholes"),
    (dict(inputs={4: "lens"}, inits={"lens": np.array([0, 5], np.int32)}), "sequence_lens"),
    (dict(inputs={4: "lens"}, inits={"lens": np.array([3, 6], np.int32)}), "sequence_lens"),
    (dict(inputs={5: "x"}), "must be a constant"),
])
def test_unsupported_recurrent_forms_are_load_errors(change, message):
    from lrp_cli.errors import ModelLoadError
    model, shape = recurrent_model("LSTM", "forward", 0, 0, initial=False)
    with pytest.raises(ModelLoadError, match=message):
        import_onnx("<memory>", model=_with(model, **change), input_shape=shape)


def test_full_length_sequence_lens_and_unused_cell_state_are_accepted():
    model, shape = recurrent_model("LSTM", "bidirectional", 0, 1, initial=False)
    model = _with(model, inputs={4: "lens"}, inits={"lens": np.array([5, 5], np.int32)})
    model.graph.node[0].output.append("Y_c")  # written, read by nothing
    graph = import_onnx("<memory>", model=model, input_shape=shape)
    assert graph.shapes[graph.output_name] == (2, 2, 4)


def test_cell_state_output_and_other_gathers_are_load_errors():
    from lrp_cli.errors import ModelLoadError
    model, shape = recurrent_model("LSTM", "forward", 0, 0, initial=False)
    model.graph.node[0].output.append("Y_c")
    model.graph.output[0].name = "Y_c"
    with pytest.raises(ModelLoadError, match="Y_c"):
        import_onnx("<memory>", model=model, input_shape=shape)
    gather = helper.make_node("Gather", ["E", "x"], ["y"], axis=1)
    table = onnx_model([gather], [1, 3], initializers={"E": np.ones((4, 5), np.float32)})
    table.graph.input[0].type.tensor_type.elem_type = 7
    with pytest.raises(ModelLoadError, match="axis 0"):
        import_onnx("<memory>", model=table)
    reduce = onnx_model([helper.make_node("ReduceMax", ["x"], ["y"], axes=[1])], [1, 3, 4])
    with pytest.raises(ModelLoadError, match="trailing axes"):
        import_onnx("<memory>", model=reduce)


@pytest.mark.parametrize("composite", ["epsilon-plus", "sequence-epsilon", "epsilon-alpha2-beta1"])
def test_synthetic_eeg_evidence_lies_on_the_known_channel_and_window(composite):
    """A Conv1d net trained on synthetic signals whose class-1 evidence is a burst on one channel in one time
    window (scripts/make_sequence_fixtures.py, 87% held-out accuracy): over five correctly classified class-1
    examples, that channel carries the most relevance on average and in at least four of them, and at least 75% of
    its positive relevance lies in the window widened by the kernel's reach (2 steps each side)."""
    from lrp_cli import signals
    data = np.load(FIXTURES / "eeg_demo.npz")
    model = api.load_model(FIXTURES / "eeg_demo_legacy.onnx")
    channel, (start, end) = int(data["channel"]), data["steps"]
    per_channel, winners = [], 0
    for x in data["x"]:
        heat = api.explain_array(model, x[None], api.Settings(composite=composite, engine="numpy", target=1)
                                 )[0].relevance[0].astype(np.float64)
        summary = signals.signal_summary(heat)["per_channel"]
        per_channel.append(summary)
        winners += int(np.argmax(summary) == channel)
        positive = np.clip(heat[channel], 0, None)
        assert positive[start - 2:end + 2].sum() >= 0.75 * positive.sum()
    assert np.argmax(np.mean(per_channel, axis=0)) == channel and winners >= 4


@pytest.mark.parametrize("method", ["lrp", "gradient", "gradient-x-input"])
@pytest.mark.parametrize("file", ["text_cnn_legacy.onnx", "text_cnn_dynamo.onnx"])
def test_compiled_engine_runs_token_id_models(file, method):
    """The compiled pass of an embedding model (int64 ids in, per-token relevance out, padding none) against the
    NumPy engine's float64 pass: 1e-5 of max |R| (float32 compiled)."""
    model = api.load_model(FIXTURES / file)
    ids = np.load(FIXTURES / "text_cnn.npz")["x"]
    settings = dict(method=method, composite="sequence-epsilon" if method == "lrp" else None, target=0)
    fast = api.explain_array(model, ids, api.Settings(engine="onnxruntime", **settings))[0]
    reference = api.explain_array(model, ids, api.Settings(engine="numpy", precision="float64", **settings))[0]
    assert fast.extra["engine"] == "onnxruntime" and fast.relevance.shape == ids.shape
    want = reference.relevance
    np.testing.assert_allclose(fast.relevance, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert fast.relevance[0, -1] == 0.0  # the padding token


@pytest.mark.parametrize("method", ["lrp", "gradient"])
@pytest.mark.parametrize("op,direction,layout,lbr", VARIANTS)
def test_compiled_recurrent_matches_numpy(op, direction, layout, lbr, method):
    """The unrolled compiled LRP and gradient of every LSTM/GRU form (initial states given, both outputs feeding a
    dense head) against the NumPy walk in float64 on the same float32 weights: 1e-4 of max |R| (float32
    compiled). Layout 1, which onnxruntime cannot run, is a compile error with that reason."""
    model, _ = recurrent_model(op, direction, layout, 0, lbr=lbr)
    rng = np.random.default_rng(11)
    node = model.graph.node[0]
    steps, size = 5, 3
    for name in ("h0", "c0"):  # one batch item: the head explains it
        init = next((i for i in model.graph.initializer if i.name == name), None)
        if init is not None:
            value = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(value[:, :1] if layout == 0 else value[:1], name))
    head = [helper.make_node("Reshape", ["Y", "flat"], ["f"]), helper.make_node("Reshape", ["Y_h", "flat"], ["fh"]),
            helper.make_node("Concat", ["f", "fh"], ["both"], axis=1),
            helper.make_node("MatMul", ["both", "d"], ["y"], name="dense")]
    nodes = ([helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2])] if layout == 0 else []) + [node] + head
    if layout == 0:
        node.input[0] = "xt"
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dirs = 2 if direction == "bidirectional" else 1
    width = (steps + 1) * dirs * 4
    inits |= {"d": rng.standard_normal((width, 3)).astype(np.float32), "flat": np.array([1, -1], np.int64)}
    full = onnx_model(nodes, [1, steps, size], initializers=inits, opset=14)
    graph = import_onnx("<memory>", model=full)
    x = rng.standard_normal((1, steps, size)).astype(np.float32)
    values = graph.forward(x.astype(np.float64))
    target = int(values["y"].argmax())
    rules = {n.name: Epsilon(1e-3) for n in graph.rule_nodes()}
    if method == "lrp":
        want = propagate(graph, values, target, rules).relevance
    else:
        want = input_gradient(graph, values, target).relevance
    if layout == 1:
        from lrp_cli.engines.onnx_compiler import node_errors
        assert "layout 1" in " ".join(node_errors(full, graph, method, rules).values())
        return
    got = compiled_relevance(full, x, method, rules=rules)(target)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_zbox_on_a_signal_needs_explicit_bounds(tmp_path):
    """epsilon-gamma-box puts z^B on a first Conv1d: the image preset's pixel box does not apply to a signal, so the
    command says which bounds to give (one line, usage error) instead of failing inside the pass; given bounds run."""
    from click.testing import CliRunner

    from lrp_cli.cli import main
    np.save(tmp_path / "s.npy", np.load(FIXTURES / "eeg.npz")["x"])
    args = ["explain", str(tmp_path / "s.npy"), "--model", str(FIXTURES / "eeg_legacy.onnx"), "--out",
            str(tmp_path / "out"), "--composite", "epsilon-gamma-box"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "zbox:LOW,HIGH" in result.output and "Traceback" not in result.output
    assert CliRunner().invoke(main, args + ["--layer-rule", "*conv*=zbox:-4,4"]).exit_code == 0


def unrolled_lstm(w, r, b, d, steps):
    """Returns an LSTM written out as torch unrolls a cell (per step: Gather, Gemm(x, W, b_W) + Gemm(h, R, b_R),
    Slice, Sigmoid, Tanh, Mul, Add; zero initial states), with a dense head on the last state; w, r [4H, ...] and b
    [8H] in ONNX's i, o, f, c gate order."""
    hidden = r.shape[1]
    inits = {"wt": w.T, "rt": r.T, "wb": b[:4 * hidden], "rb": b[4 * hidden:], "d": d, "h0": np.zeros((1, hidden)),
             "c0": np.zeros((1, hidden))}
    nodes, h, c = [], "h0", "c0"
    for t in range(steps):
        inits[f"t{t}"] = np.array(t, np.int64)
        p = f"s{t}_"
        nodes += [helper.make_node("Gather", ["x", f"t{t}"], [p + "x"], axis=1),
                  helper.make_node("Gemm", [p + "x", "wt", "wb"], [p + "zx"], name=p + "wx"),
                  helper.make_node("Gemm", [h, "rt", "rb"], [p + "zh"], name=p + "rh"),
                  helper.make_node("Add", [p + "zx", p + "zh"], [p + "z"])]
        for k, gate in enumerate("iofg"):
            inits[f"{gate}_lo"], inits[f"{gate}_hi"] = np.array([k * hidden]), np.array([(k + 1) * hidden])
            inits["axis1"] = np.array([1])
            nodes.append(helper.make_node("Slice", [p + "z", f"{gate}_lo", f"{gate}_hi", "axis1"], [p + "z" + gate]))
            nodes.append(helper.make_node("Tanh" if gate == "g" else "Sigmoid", [p + "z" + gate], [p + gate]))
        nodes += [helper.make_node("Mul", [p + "f", c], [p + "fc"]), helper.make_node("Mul", [p + "i", p + "g"],
                                                                                     [p + "ig"]),
                  helper.make_node("Add", [p + "fc", p + "ig"], [p + "c"]),
                  helper.make_node("Tanh", [p + "c"], [p + "tc"]), helper.make_node("Mul", [p + "o", p + "tc"],
                                                                                    [p + "h"])]
        h, c = p + "h", p + "c"
    nodes.append(helper.make_node("MatMul", [h, "d"], ["y"], name="dense"))
    return onnx_model(nodes, [1, steps, w.shape[1]], initializers={k: np.asarray(v, np.float32) if v.dtype.kind == "f"
                                                                   else v for k, v in inits.items()})


def test_unrolled_lstm_gets_the_same_relevance_as_the_lstm_op():
    """An exporter's unrolled LSTM goes through the general rules (a Sigmoid gate times a signal: signal-take-all;
    Add: proportional with the fixed stabilizer 1e-6; Gemm: epsilon with its bias absorbing), which compose to
    Arras et al.'s rule: the same relevance as the LSTM op under epsilon 1e-6, to 1e-4 relative L2 (the
    stabilizers sit in different denominators)."""
    rng = np.random.default_rng(12)
    steps, size, hidden = 4, 3, 5
    w, r = rng.standard_normal((4 * hidden, size)), rng.standard_normal((4 * hidden, hidden))
    b, d = rng.standard_normal(8 * hidden) * 0.3, rng.standard_normal((hidden, 2))
    op_nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
                helper.make_node("LSTM", ["xt", "W", "R", "B"], ["", "yh"], hidden_size=hidden, name="lstm"),
                helper.make_node("Reshape", ["yh", "flat"], ["h"]), helper.make_node("MatMul", ["h", "d"], ["y"],
                                                                                     name="dense")]
    op_model = onnx_model(op_nodes, [1, steps, size], initializers={
        "W": w[None].astype(np.float32), "R": r[None].astype(np.float32), "B": b[None].astype(np.float32),
        "d": d.astype(np.float32), "flat": np.array([1, hidden], np.int64)})
    x = rng.standard_normal((1, steps, size))
    results = []
    for model in (op_model, unrolled_lstm(w, r, b, d, steps)):
        graph = import_onnx("<memory>", model=model)
        values = graph.forward(x)
        rules = {n.name: Epsilon(1e-6) for n in graph.rule_nodes() if n.layer.rule_kind in ("linear", "recurrent")}
        results.append((values["y"], propagate(graph, values, 0, rules).relevance))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
    assert relative_l2(results[1][1], results[0][1]) <= 1e-4


def test_bad_token_ids_fail_that_input_only(tmp_path):
    """An id beyond the table or a fractional id is a one-line error for that input (exit 1, the others still
    explained), found before onnxruntime would fail on it without naming the file."""
    from click.testing import CliRunner

    from lrp_cli.cli import main
    ids = np.load(FIXTURES / "text_cnn.npz")["x"]
    np.save(tmp_path / "good.npy", ids)
    np.save(tmp_path / "beyond.npy", np.where(ids == 9, 99, ids))
    np.save(tmp_path / "fraction.npy", ids.astype(np.float32) + 0.5)
    files = [str(tmp_path / f"{n}.npy") for n in ("good", "beyond", "fraction")]
    result = CliRunner().invoke(main, ["explain", *files, "--model", str(FIXTURES / "text_cnn_legacy.onnx"), "--out",
                                       str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "beyond.npy: token ids must be integers in [0, 12)" in result.output and "fraction.npy" in result.output
    assert (tmp_path / "out" / "good.json").exists() and not (tmp_path / "out" / "beyond.json").exists()


def test_csv_signal_input(tmp_path):
    """A .csv given by name, one column per channel (and a header row), explains as the same [1, C, T] .npy does;
    a folder's .csv files are not inputs (they are often metadata); a ragged table is a one-line error."""
    from click.testing import CliRunner

    from lrp_cli.cli import main
    x = np.load(FIXTURES / "eeg.npz")["x"]
    folder = tmp_path / "in"
    folder.mkdir()
    np.save(folder / "a.npy", x)
    rows = ["c0,c1,c2,c3"] + [",".join(repr(float(v)) for v in x[0, :, t]) for t in range(x.shape[2])]
    (folder / "b.csv").write_text("\n".join(rows) + "\n")
    (folder / "c.csv").write_text("1,2\n3\n")
    result = CliRunner().invoke(main, ["explain", str(folder), "--model", str(FIXTURES / "eeg_legacy.onnx"), "--out",
                                       str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 0 and not (tmp_path / "out" / "b.json").exists()
    inputs = [str(folder / n) for n in ("a.npy", "b.csv", "c.csv")]
    result = CliRunner().invoke(main, ["explain", *inputs, "--model", str(FIXTURES / "eeg_legacy.onnx"), "--out",
                                       str(tmp_path / "out"), "--save-raw", "--no-progress"])
    assert result.exit_code == 1 and "c.csv: not a readable signal .csv" in result.output
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "b.relevance.npy"),
                                  np.load(tmp_path / "out" / "a.relevance.npy"))
