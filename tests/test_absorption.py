"""Where relevance goes that does not reach the input: per-node shares absorbed by biases and stabilisers."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import onnx_model, save_model
from onnx import helper

from lrp_cli import absorption
from lrp_cli.cli import main
from lrp_cli.propagate import LayerRecord, Propagation

ENGINES = ["numpy", "onnxruntime"]


def two_layer_model(tmp_path):
    """x (2) -> fc1 (W1 x + b1) -> ReLU -> fc2 (W2 a + b2): class 0 scores 8 at x = (1, 2)."""
    inits = {
        "w1": np.array([[1, 0], [1, 1]], np.float32), "b1": np.array([1, -1], np.float32),
        "w2": np.array([[1, 2], [0, 0]], np.float32), "b2": np.array([2, -5], np.float32),
    }
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], name="fc2", transB=1)]
    return save_model(onnx_model(nodes, [1, 2], "y", inits), tmp_path / "two.onnx")


def explain_two_layers(tmp_path, engine):
    np.save(tmp_path / "x.npy", np.array([[1, 2]], np.float32))
    out = tmp_path / engine
    result = CliRunner().invoke(main, ["explain", str(tmp_path / "x.npy"), "--model", str(two_layer_model(tmp_path)),
                                       "--rule", "z", "--engine", engine, "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    return result.stdout, json.loads((out / "x.json").read_text())


# Worked by hand with LRP-0 (R_i = x_i w_ij / z_j R_j; the bias b_j keeps b_j / z_j R_j):
#   fc1: z = (1*1 + 2*0 + 1, 1*1 + 2*1 - 1) = (2, 2); ReLU passes both; fc2: f(x) = 2*1 + 2*2 + 2 = 8.
#   fc2 receives 8, passes 2/8*8 + 4/8*8 = 6 to a, its bias keeps 2:            absorbed 2/8 = 0.25.
#   relu receives 6 and passes 6:                                                absorbed 0.
#   fc1 unit 1 (R = 2, z = 2): inputs get 1 and 0, its bias +1 keeps 1;
#       unit 2 (R = 4, z = 2): inputs get 1/2*4 = 2 and 2/2*4 = 4, its bias -1 keeps -2;
#       fc1 receives 6 and passes 1 + 2 + 4 = 7:                                 absorbed -1/8 = -0.125.
#   Total: 0.25 - 0.125 = 0.125 = (f(x) - sum R) / f(x) = (8 - 7) / 8.
HAND = {"fc2": (8.0, 6.0, 0.25), "relu": (6.0, 6.0, 0.0), "fc1": (6.0, 7.0, -0.125)}


@pytest.mark.parametrize("engine", ENGINES)
def test_two_layer_shares_match_the_hand_worked_example(tmp_path, engine):
    stdout, doc = explain_two_layers(tmp_path, engine)
    # float32 arithmetic on small integers and halves: exact up to a few ulps of 8.
    tol = dict(rel=1e-6, abs=1e-6)
    layers = {layer["name"]: layer for layer in doc["layers"]}
    assert set(layers) == set(HAND)
    for name, (received, passed, share) in HAND.items():
        assert layers[name]["relevance_in"] == pytest.approx(received, **tol), name
        assert layers[name]["relevance_sum"] == pytest.approx(passed, **tol), name
        assert layers[name]["absorbed"] == pytest.approx(share, **tol), name
    absorbed = doc["relevance"]["absorbed"]
    assert absorbed["fraction"] == pytest.approx(0.125, **tol)
    assert absorbed["most"]["layer"] == "fc2" and absorbed["most"]["fraction"] == pytest.approx(0.25, **tol)
    assert absorbed["fraction"] == pytest.approx(1 - doc["relevance"]["sum"] / doc["f_x"], **tol)
    assert "sum R = 7 of f(x) = 8; 12.50 % absorbed by biases/stabilisers (most in 'fc2') ->" in stdout


def test_both_engines_give_the_same_shares_on_a_real_model(tmp_path):
    # shapes-cnn under its default composite (epsilon, z+, flat): every node, both engines.
    from conftest import REPO

    docs = {}
    for engine in ENGINES:
        out = tmp_path / engine
        result = CliRunner().invoke(main, ["explain", str(REPO / "sample_images" / "shapes" / "circle_0.png"),
                                           "--model", str(REPO / "models" / "shapes-cnn.onnx"), "--engine", engine,
                                           "--out", str(out), "--no-progress"])
        assert result.exit_code == 0, result.output
        docs[engine] = json.loads((out / "circle_0.json").read_text())
    numpy_doc, compiled_doc = docs["numpy"], docs["onnxruntime"]
    assert [layer["name"] for layer in numpy_doc["layers"]] == [layer["name"] for layer in compiled_doc["layers"]]
    # float32 in both engines, summed in other orders: shares of f(x) agree to ~1e-5 of f(x).
    shares = [[layer["absorbed"] for layer in doc["layers"]] for doc in (numpy_doc, compiled_doc)]
    np.testing.assert_allclose(shares[0], shares[1], atol=1e-4)
    assert numpy_doc["relevance"]["absorbed"]["fraction"] == pytest.approx(
        compiled_doc["relevance"]["absorbed"]["fraction"], abs=1e-4)
    assert numpy_doc["relevance"]["absorbed"]["most"]["layer"] == compiled_doc["relevance"]["absorbed"]["most"]["layer"]
    for doc in docs.values():
        assert doc["relevance"]["absorbed"]["fraction"] == pytest.approx(
            1 - doc["relevance"]["sum"] / doc["f_x"], abs=1e-4)


def _document(total: float, f_x: float, shares: dict[str, float]) -> dict:
    layers = [LayerRecord(name, "Gemm", "z", 0.0, share * f_x) for name, share in shares.items()]
    propagation = Propagation(np.zeros(1), f_x, layers)
    return {"f_x": f_x, "relevance": {"sum": total, "conservation_error": abs(total - f_x) / abs(f_x),
                                      "absorbed": absorption.summary(propagation, "lrp")}}


def test_a_node_that_adds_relevance_is_named_as_adding():
    doc = _document(24.0, 22.0, {"fc": -2 / 22})
    assert absorption.describe(doc) == "sum R = 24 of f(x) = 22; 9.09 % added by biases/stabilisers (most in 'fc')"


def test_negligible_shares_name_no_node():
    assert absorption.describe(_document(1.0, 1.0, {"fc": 1e-5})) == (
        "sum R = 1 of f(x) = 1; 0.00 % absorbed by biases/stabilisers")


def test_methods_other_than_lrp_and_zero_scores_keep_the_conservation_error():
    record = LayerRecord("fc", "Gemm", None, 1.0, 2.0)
    assert absorption.summary(Propagation(np.zeros(1), 2.0, [record]), "gradient") is None
    assert absorption.summary(Propagation(np.zeros(1), 0.0, [record]), "lrp") is None
    assert absorption.layer_documents(Propagation(np.zeros(1), 2.0, [record]), "gradient")[0]["absorbed"] is None
    doc = {"f_x": 2.0, "relevance": {"sum": 1.0, "conservation_error": 0.5, "absorbed": None}}
    assert absorption.describe(doc) == "f(x)=2, conservation error 5.00e-01"
