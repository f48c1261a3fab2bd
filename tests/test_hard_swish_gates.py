"""Hard-swish written out, x * relu6(x + 3) / 6, in every form the exporters write it (Paddle2ONNX, tf2onnx,
torch.onnx): the relu6(x + 3) / 6 factor is a gate, as a HardSigmoid is, so the product gets the signal-take-all
rule. Each form: its forward equals onnxruntime's, and its relevance equals the relevance of the same network
written with the HardSwish op (which passes relevance unchanged, Eq 63): the same rule."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import helper

from conftest import REPO, onnx_model, save_model
from lrp_cli import api
from lrp_cli.cli import main
from lrp_cli.errors import ModelLoadError

RNG = np.random.default_rng(17)
F32 = np.float32
SHAPE = [1, 3, 8, 10]  # not square, so H and W cannot be swapped unseen


def _c(value) -> np.ndarray:
    return np.asarray(value, dtype=F32)


def _clip(name, source, out, opset):
    """relu6 as Clip: bounds as inputs from opset 11, as attributes before."""
    if opset >= 11:
        return [helper.make_node("Clip", [source, "zero", "six"], [out], name=name)]
    return [helper.make_node("Clip", [source], [out], name=name, min=0.0, max=6.0)]


def _paddle(div: bool, swap_mul: bool, swap_add: bool, opset: int = 13):
    """Paddle2ONNX (and torch's x * hardtanh(x + 3, 0, 6) / 6): Mul(x, Clip(Add(x, 3), 0, 6)), then / 6."""
    add = ["three", "s"] if swap_add else ["s", "three"]
    mul = ["r", "s"] if swap_mul else ["s", "r"]
    scale = helper.make_node("Div", ["m", "six"], ["h"], name="div6") if div else \
        helper.make_node("Mul", ["sixth", "m"], ["h"], name="mul6")
    return [helper.make_node("Add", add, ["t"], name="add3"), *_clip("relu6", "t", "r", opset),
            helper.make_node("Mul", mul, ["m"], name="mul"), scale], opset


def _keras(min_max: bool, opset: int = 13):
    """tf2onnx of Keras's MobileNetV3: hard_sigmoid = relu6(x + 3) * (1/6) (relu6 as Clip, or as Maximum and
    Minimum), then Multiply([x, hard_sigmoid])."""
    relu6 = [helper.make_node("Max", ["t", "zero"], ["t0"], name="max0"),
             helper.make_node("Min", ["t0", "six"], ["r"], name="min6")] if min_max else _clip("relu6", "t", "r", opset)
    return [helper.make_node("Add", ["s", "three"], ["t"], name="add3"), *relu6,
            helper.make_node("Mul", ["r", "sixth"], ["g"], name="scale"),
            helper.make_node("Mul", ["s", "g"], ["h"], name="gate")], opset


def _torch_gate_side_div():
    """torch: x * (F.relu6(x + 3) / 6)."""
    return [helper.make_node("Add", ["s", "three"], ["t"], name="add3"), *_clip("relu6", "t", "r", 13),
            helper.make_node("Div", ["r", "six"], ["g"], name="div6"),
            helper.make_node("Mul", ["g", "s"], ["h"], name="gate")], 13


def _torch_hard_sigmoid():
    """torch.onnx before opset 14: HardSigmoid(alpha=1/6, beta=0.5)(x) * x."""
    return [helper.make_node("HardSigmoid", ["s"], ["g"], name="hsig", alpha=1 / 6, beta=0.5),
            helper.make_node("Mul", ["s", "g"], ["h"], name="gate")], 13


def _hard_swish_op():
    """torch.onnx from opset 14: the HardSwish op, the reference."""
    return [helper.make_node("HardSwish", ["s"], ["h"], name="hswish")], 14


def _squeeze_excite(gate: str):
    """MobileNetV3's squeeze-excite: x * hard_sigmoid(Conv1x1(GlobalAveragePool(x))), the hard sigmoid as Keras
    writes it (relu6(t + 3) * (1/6); the Add folds into the Conv's bias) or as the HardSigmoid op."""
    if gate == "written":
        hard = [helper.make_node("Add", ["q", "three"], ["t"], name="add3"), *_clip("relu6", "t", "r", 13),
                helper.make_node("Mul", ["r", "sixth"], ["g"], name="scale")]
    else:
        hard = [helper.make_node("HardSigmoid", ["q"], ["g"], name="hsig", alpha=1 / 6, beta=0.5)]
    return [helper.make_node("GlobalAveragePool", ["s"], ["se"], name="squeeze"),
            helper.make_node("Conv", ["se", "wse", "bse"], ["q"], name="excite"), *hard,
            helper.make_node("Mul", ["s", "g"], ["h"], name="gate")], 13


FORMS = {
    "paddle div": lambda: _paddle(True, False, False),
    "paddle mul 1/6, operands swapped": lambda: _paddle(False, True, True),
    "paddle opset 10 clip attributes": lambda: _paddle(True, True, False, 10),
    "keras clip": lambda: _keras(False),
    "keras clip opset 10": lambda: _keras(False, 10),
    "keras max min": lambda: _keras(True),
    "torch gate-side div": _torch_gate_side_div,
    "torch hardsigmoid": _torch_hard_sigmoid,
}


def network(form, input_dims=None):
    """Conv -> BatchNorm -> hard-swish (the given form) -> GlobalAveragePool -> Dense 5 -> Softmax, the same
    weights for every form (seeded); `input_dims` may hold symbolic names."""
    rng = np.random.default_rng(5)
    inits = {
        "w": rng.standard_normal((4, 3, 3, 3)).astype(F32) * 0.8, "b": rng.standard_normal(4).astype(F32),
        "gamma": rng.uniform(0.5, 2, 4).astype(F32), "beta": rng.standard_normal(4).astype(F32),
        "mean": rng.standard_normal(4).astype(F32) * 0.1, "var": rng.uniform(0.5, 1.5, 4).astype(F32),
        "fc": rng.standard_normal((4, 5)).astype(F32), "three": _c(3), "six": _c(6), "zero": _c(0),
        "sixth": _c(1 / 6), "wse": rng.standard_normal((4, 4, 1, 1)).astype(F32) * 0.3,
        "bse": _c([-5.0, 0.0, 2.0, 6.0]),  # with the folded + 3: one channel below 0, two inside, one above 6
    }
    middle, opset = form()
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["s"], name="bn"),
             *middle,
             helper.make_node("GlobalAveragePool", ["h"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc"], ["l"], name="fc"),
             helper.make_node("Softmax", ["l"], ["y"], name="softmax", axis=1)]
    used = {t for n in nodes for t in n.input}
    model = onnx_model(nodes, input_dims or SHAPE, "y", {k: v for k, v in inits.items() if k in used}, opset=opset)
    return model


def _x():
    return RNG.uniform(-2, 2, SHAPE).astype(F32)  # BN outputs cross -3 and 3: every piece of relu6 is used


def _relevance(model, x, engine="numpy", method="lrp"):
    settings = api.Settings(method=method, target="2", precision="float64" if engine == "numpy" else "float32",
                            engine=engine, preprocess={"preset": "unit"})
    return api.explain_array(model, x, settings)[0].relevance


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = save_model(network(_hard_swish_op), tmp_path_factory.mktemp("ref") / "hswish.onnx")
    return api.load_model(path)


@pytest.mark.parametrize("form", list(FORMS))
def test_written_hard_swish_is_a_gate_with_the_hard_swish_relevance(form, reference, tmp_path):
    model = api.load_model(save_model(network(FORMS[form]), tmp_path / "m.onnx"))
    x = _x()
    values = model.graph.forward(x.astype(np.float64))
    assert (values["s"] < -3).any() and (values["s"] > 3).any() and (np.abs(values["s"]) < 3).any()
    # float32 onnxruntime vs the IR in float64 on logits of size ~10: 1e-5 is float32 round-off, not a rule
    np.testing.assert_allclose(values[model.graph.output_name], model.run_onnxruntime(x)[1], rtol=1e-5, atol=1e-5)
    gated = [n for n in model.graph.nodes if type(n.layer).__name__ == "GatedProduct"]
    assert len(gated) == 1 and gated[0].inputs[gated[0].layer.signal] == "s"
    r, expected = _relevance(model, x), _relevance(reference, x)
    scale = np.abs(expected).max()
    assert scale > 0
    # The two graphs differ only in how the same function is written; a stored 1/6 is float32 (0.16666667, 2e-8
    # relative off), so the forms agree to 1e-7 of the largest value; another rule is off by far more.
    np.testing.assert_allclose(r, expected, rtol=0, atol=1e-7 * scale)


def test_squeeze_excite_gate_written_out_is_the_hard_sigmoid_gate(tmp_path):
    # The gate is a function of the pooled features, not of the signal, and its Add folds into the Conv's bias:
    # still a hard sigmoid, so the same rule as the HardSigmoid op's gate.
    written = api.load_model(save_model(network(lambda: _squeeze_excite("written")), tmp_path / "w.onnx"))
    op = api.load_model(save_model(network(lambda: _squeeze_excite("op")), tmp_path / "o.onnx"))
    x = _x()
    gates = {n.inputs[n.layer.signal] for n in written.graph.nodes if type(n.layer).__name__ == "GatedProduct"}
    assert gates == {"s"}
    t = written.graph.forward(x.astype(np.float64))["t"]  # the excite Conv writes t once the Add is folded into it
    assert (t < 0).any() and ((t > 0) & (t < 6)).any() and (t > 6).any()  # both bounds and the slope are used
    np.testing.assert_allclose(written.graph.forward(x)[written.graph.output_name], written.run_onnxruntime(x)[1],
                               rtol=1e-5, atol=1e-5)
    expected = _relevance(op, x)
    np.testing.assert_allclose(_relevance(written, x), expected, rtol=0, atol=1e-7 * np.abs(expected).max())


@pytest.mark.parametrize("form", ["keras max min", "paddle opset 10 clip attributes"])
@pytest.mark.parametrize("method", ["lrp", "gradient"])
def test_compiled_engine_agrees_on_the_written_forms(form, method, tmp_path):
    model = api.load_model(save_model(network(FORMS[form]), tmp_path / "m.onnx"))
    x = _x()
    compiled, numpy = _relevance(model, x, "onnxruntime", method), _relevance(model, x, "numpy", method)
    scale = np.abs(numpy).max()
    # float32 (compiled) vs float64 on a network of 3 layers: round-off of order 1e-6 of the largest value
    np.testing.assert_allclose(compiled, numpy, rtol=0, atol=1e-4 * scale)


def test_a_relu_or_an_unbounded_factor_is_still_no_gate(tmp_path):
    # x * relu(x + 3) is a product of two activations, not a gated signal: still refused, naming the node.
    def relu_form():
        return [helper.make_node("Add", ["s", "three"], ["t"], name="add3"),
                helper.make_node("Relu", ["t"], ["r"], name="relu"),
                helper.make_node("Mul", ["s", "r"], ["h"], name="product")], 13
    path = save_model(network(relu_form), tmp_path / "m.onnx")
    with pytest.raises(ModelLoadError, match=r"node 'product' \(Mul\): a product of two activations"):
        api.load_model(path)


def test_min_max_of_two_activations_is_refused(tmp_path):
    def two():
        return [helper.make_node("Max", ["s", "c"], ["h"], name="max2")], 13
    path = save_model(network(two), tmp_path / "m.onnx")
    with pytest.raises(ModelLoadError, match=r"node 'max2' \(Max\): Max has an LRP rule only of one activation"):
        api.load_model(path)


def test_paddle_ocr_like_classifier_with_symbolic_height_width_explains_by_the_cli(tmp_path):
    # PaddleOCR's text-direction classifier: input [N, 3, H, W] symbolic, hard-swish written out; a .npy fixes H, W.
    model = network(lambda: _paddle(True, False, False), ["N", 3, "H", "W"])
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["N", "", "H", "W"]
    save_model(model, tmp_path / "cls.onnx")
    x = RNG.uniform(-2, 2, (1, 3, 12, 40)).astype(F32)
    np.save(tmp_path / "line.npy", x)
    result = CliRunner().invoke(main, ["explain", "--model", str(tmp_path / "cls.onnx"), str(tmp_path / "line.npy"),
                                       "--out", str(tmp_path / "out"), "--save-raw", "--preset", "unit"])
    assert result.exit_code == 0, result.output
    relevance = np.load(tmp_path / "out" / "line.relevance.npy")
    assert relevance.shape == (1, 3, 12, 40) and np.isfinite(relevance).all() and np.abs(relevance).max() > 0



FIXTURES = REPO / "tests" / "fixtures" / "hardswish"  # scripts/make_hardswish_fixtures.py: real torch.onnx exports


@pytest.mark.parametrize("stem", ["relu6_op13", "relu6_op9", "hardtanh_op13", "gate_side_op13", "hardsigmoid_op13"])
def test_torch_onnx_exports_of_hard_swish_get_the_hard_swish_op_relevance(stem):
    model, reference = api.load_model(FIXTURES / f"{stem}.onnx"), api.load_model(FIXTURES / "reference.onnx")
    assert any(n.op == "HardSwish" for n in reference.graph.nodes)
    assert [type(n.layer).__name__ for n in model.graph.nodes].count("GatedProduct") == 1
    x = RNG.uniform(-6, 6, SHAPE).astype(F32)
    conv = model.graph.forward(x.astype(np.float64))[model.graph.nodes[0].output]
    assert (conv < -3).any() and (conv > 3).any() and (np.abs(conv) < 3).any()  # every piece of relu6 is used
    np.testing.assert_allclose(model.graph.forward(x)[model.graph.output_name], model.run_onnxruntime(x)[1],
                               rtol=1e-5, atol=1e-5)  # float32 round-off
    expected = _relevance(reference, x)
    np.testing.assert_allclose(_relevance(model, x), expected, rtol=0, atol=1e-7 * np.abs(expected).max())
