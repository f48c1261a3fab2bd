"""Quantized (QDQ) and float16 / bfloat16 exports: what loads, how it is computed, and what is refused."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from conftest import onnx_model, save_model, tiny_cnn
from lrp_cli import api
from lrp_cli.cli import main
from lrp_cli.errors import ModelLoadError
from lrp_cli.importers.onnx_import import import_onnx


def qdq_cnn():
    """Returns (a QDQ Conv-Relu-GlobalAvgPool-Dense model, its float twin with the dequantized weights)."""
    rng = np.random.default_rng(1)
    w1 = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    w1_scale = rng.uniform(0.002, 0.01, 4).astype(np.float32)
    b1 = rng.integers(-500, 500, 4).astype(np.int32)
    w2 = rng.integers(-127, 128, (4, 5)).astype(np.int8)
    inits = {"w1_q": w1, "w1_s": w1_scale, "w1_z": np.zeros(4, np.int8), "b1_q": b1,
             "b1_s": (w1_scale * 0.02).astype(np.float32), "w2_q": w2, "w2_s": np.float32(0.01),
             "a_s": np.float32(0.02), "a_z": np.uint8(128), "h_s": np.float32(0.05), "h_z": np.uint8(0)}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "a_s", "a_z"], ["xq"], name="x_q"),
        helper.make_node("DequantizeLinear", ["xq", "a_s", "a_z"], ["xd"], name="x_dq"),
        helper.make_node("DequantizeLinear", ["w1_q", "w1_s", "w1_z"], ["w1"], name="w1_dq", axis=0),
        helper.make_node("DequantizeLinear", ["b1_q", "b1_s"], ["b1"], name="b1_dq", axis=0),
        helper.make_node("Conv", ["xd", "w1", "b1"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("QuantizeLinear", ["r1", "h_s", "h_z"], ["rq"], name="r_q"),
        helper.make_node("DequantizeLinear", ["rq", "h_s", "h_z"], ["rd"], name="r_dq"),
        helper.make_node("GlobalAveragePool", ["rd"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("DequantizeLinear", ["w2_q", "w2_s"], ["w2"], name="w2_dq"),
        helper.make_node("MatMul", ["f", "w2"], ["y"], name="fc"),
    ]
    f32 = np.float32   # (q - zero) * scale in float32, as the ONNX spec dequantizes
    float_inits = {"w1": w1.astype(f32) * w1_scale[:, None, None, None], "b1": b1.astype(f32) * inits["b1_s"],
                   "w2": w2.astype(f32) * inits["w2_s"]}
    twin = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
            helper.make_node("GlobalAveragePool", ["r1"], ["g"], name="gap"),
            helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
            helper.make_node("MatMul", ["f", "w2"], ["y"], name="fc")]
    return (onnx_model(nodes, [1, 3, 8, 8], initializers=inits),
            onnx_model(twin, [1, 3, 8, 8], initializers=float_inits))


def unit_input(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


def test_qdq_model_is_its_float_twin_and_reports_the_rounding(tmp_path):
    qdq, twin = qdq_cnn()
    model = api.load_model(save_model(qdq, tmp_path / "qdq.onnx"))
    float_model = api.load_model(save_model(twin, tmp_path / "twin.onnx"))
    assert any("QuantizeLinear/DequantizeLinear" in note for note in model.graph.notes)
    x = unit_input((1, 3, 8, 8))
    settings = api.Settings(precision="float64", target="0")
    ours = api.explain_array(model, x, settings)[0]
    twin_expl = api.explain_array(float_model, x, settings)[0]
    # weights dequantized exactly at import, activation QDQ a clip that cuts nothing here: the float twin
    np.testing.assert_allclose(ours.relevance, twin_expl.relevance, rtol=1e-12, atol=1e-15)
    ir_out = model.graph_for("float64").forward(x.astype(np.float64))[model.graph.output_name]
    quantized = model.run_onnxruntime(x)[1]
    assert ours.ir_max_abs_diff == pytest.approx(float(np.abs(ir_out - quantized).max()))
    assert 1e-4 < ours.ir_diff_relative < 0.1      # the activation rounding onnxruntime does and the IR does not


def test_qoperator_ops_are_refused_naming_the_node(tmp_path):
    inits = {"s": np.float32(0.02), "z": np.uint8(0), "w": np.ones((2, 3, 1, 1), np.int8), "ws": np.float32(0.1),
             "wz": np.int8(0), "ys": np.float32(0.05), "yz": np.uint8(0)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("QLinearConv", ["xq", "s", "z", "w", "ws", "wz", "ys", "yz"], ["yq"], name="qconv"),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"], name="dq")]
    path = save_model(onnx_model(nodes, [1, 3, 4, 4], initializers=inits), tmp_path / "qop.onnx")
    with pytest.raises(ModelLoadError, match=r"node 'qconv' \(QLinearConv\): integer-arithmetic .* QDQ format"):
        api.load_model(path)
    np.save(tmp_path / "x.npy", unit_input((1, 3, 4, 4)))
    result = CliRunner().invoke(main, ["explain", str(tmp_path / "x.npy"), "--model", str(path),
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 3 and "qconv" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_onnxruntime_quantize_static_qdq_explains_and_qoperator_is_refused(tmp_path):
    quantization = pytest.importorskip("onnxruntime.quantization")
    float_path = save_model(tiny_cnn(softmax=False), tmp_path / "float.onnx")

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": unit_input((1, 3, 16, 16), seed)} for seed in range(4)])

        def get_next(self):
            return next(self.batches, None)

    for fmt in ("QDQ", "QOperator"):
        quantization.quantize_static(str(float_path), str(tmp_path / f"{fmt}.onnx"), Reader(),
                                     quant_format=getattr(quantization.QuantFormat, fmt))
    ops = {n.op_type for n in onnx.load(str(tmp_path / "QDQ.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    model = api.load_model(tmp_path / "QDQ.onnx")
    expl = api.explain_array(model, unit_input((1, 3, 16, 16), 9), api.Settings(target="pred"))[0]
    # 1.8e-2 measured (onnxruntime rounds every activation); as the identity, the QDQ after the dropped ReLU
    # would not clip negatives and the logits would be off by 0.97
    assert np.isfinite(expl.relevance).all() and 0 < expl.ir_diff_relative < 0.05
    with pytest.raises(ModelLoadError, match="QDQ format"):
        api.load_model(tmp_path / "QOperator.onnx")


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Returns the model with float16 initializers, input and output."""
    half = onnx.ModelProto()
    half.CopyFrom(model)
    for k, init in enumerate(half.graph.initializer):
        half.graph.initializer[k].CopyFrom(
            numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for value in list(half.graph.input) + list(half.graph.output):
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    return half


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_float16_model_computes_in_float_and_casts_the_input(tmp_path, precision):
    base = tiny_cnn(softmax=False)
    half = api.load_model(save_model(to_float16(base), tmp_path / "half.onnx"))
    # the same weights rounded to float16, stored as float32: the reference for our float computation
    rounded = to_float16(base)
    for k, init in enumerate(rounded.graph.initializer):
        rounded.graph.initializer[k].CopyFrom(numpy_helper.from_array(
            numpy_helper.to_array(init).astype(np.float32), init.name))
    for value in list(rounded.graph.input) + list(rounded.graph.output):
        value.type.tensor_type.elem_type = TensorProto.FLOAT
    wide = api.load_model(save_model(rounded, tmp_path / "rounded.onnx"))
    x = unit_input((1, 3, 16, 16))
    settings = api.Settings(precision=precision, target="1", engine="numpy")  # float16 models run on NumPy
    ours, reference = api.explain_array(half, x, settings)[0], api.explain_array(wide, x, settings)[0]
    assert ours.relevance.dtype == np.dtype(precision)
    np.testing.assert_allclose(ours.relevance, reference.relevance, rtol=1e-6, atol=1e-9)
    assert half.run_onnxruntime(x)[0].dtype == np.float16           # onnxruntime got float16
    assert ours.ir_diff_relative < 5e-3                               # float16 rounding in onnxruntime only


def test_bfloat16_initializers_load_and_cli_explains(tmp_path):
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    bf16 = helper.make_tensor("w_bf16", TensorProto.BFLOAT16, [4, 3, 1, 1], weight.ravel().tolist())
    nodes = [helper.make_node("Cast", ["w_bf16"], ["w"], to=TensorProto.FLOAT),
             helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["y"], name="flatten")]
    model = onnx_model(nodes, [1, 3, 4, 4])
    model.graph.initializer.append(bf16)
    path = save_model(model, tmp_path / "bf16.onnx")
    x = unit_input((1, 3, 4, 4))
    np.save(tmp_path / "x.npy", x)
    result = CliRunner().invoke(main, ["explain", str(tmp_path / "x.npy"), "--model", str(path), "--out",
                                       str(tmp_path / "out"), "--precision", "float64", "--rule", "z",
                                       "--target", "2", "--save-raw"])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "out" / "x.json").read_text())
    assert doc["ir_max_abs_diff"] < 1e-5
    w = numpy_helper.to_array(bf16).astype(np.float64)[2, :, 0, 0]     # the bfloat16-rounded weights
    want = x[0] * w[:, None, None] / 16     # LRP-0 of a bias-free linear map: x_i times its weight (1/16: pool)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "x.relevance.npy")[0], want, rtol=1e-5)


@pytest.mark.parametrize("attrs, scale_shape", [({"axis": 1}, (6,)), ({"axis": 0, "block_size": 2}, (2, 6)),
                                                ({}, ())])
def test_weight_dequantization_matches_onnx_reference_evaluator(attrs, scale_shape):
    """Per-axis and blocked (opset 21) weight dequantization against ONNX's own evaluator of the whole graph."""
    rng = np.random.default_rng(4)
    inits = {"w_q": rng.integers(-127, 128, (4, 6)).astype(np.int8),
             "w_s": rng.uniform(0.01, 0.1, scale_shape).astype(np.float32),
             "w_z": rng.integers(-3, 4, scale_shape).astype(np.int8)}
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], **attrs),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")]
    model = onnx_model(nodes, [1, 4], initializers=inits, opset=21)
    x = unit_input((1, 4))
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    graph = import_onnx("w.onnx", model=model)
    np.testing.assert_allclose(graph.forward(x)[graph.output_name], want, rtol=1e-6)
