"""Transformers on the compiled engine: the golden ViT, RMSNorm ViT, ConvNeXt and Swin V1/V2 fixtures
(tests/fixtures/transformers) under both transformer composites and the gradient methods, `--layer-rule` overrides
of the norm/softmax/product rules, `lrp compile` of a tiny ViT in a bare onnxruntime session, `lrp inspect`.

Bounds: the compiled float32 relevance is within 5x the fixture's recorded float32 floor (the PyTorch reference's
own float32/float64 relative L2, 3e-7 to 1.2e-6) of its float64 reference; measured 0.7x to 2.1x. Gradient methods
and overrides (no PyTorch reference): within 1e-5 of the NumPy engine's float64 backward on onnxruntime's own
forward values (ort_agreement.py; measured up to 2.7e-7). Not against NumPy's own float64 forward: `*=epsilon:0.001`
on vit_legacy17 puts denominators z + eps sign(z) of 11 layers within 1e-3 while z's float32 round-off is 1e-7 of a
scale of 0.5 to 2.5, so the relevance moves by 2e-4 (NumPy float32) to 2.3e-3 (onnxruntime on AVX-512) with the
summation order (docs/testing.md).
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import helper

from conftest import onnx_model, save_model
from lrp_cli import api
from lrp_cli.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "transformers"
SLOW = pytest.mark.slow
FAST_STEMS = ["vit_legacy17", "vit_dynamo18", "vit_rms_dynamo23", "convnext_legacy17", "swinv2_legacy17"]
STEMS = FAST_STEMS + [pytest.param(s, marks=SLOW) for s in (
    "vit_legacy14", "vit_tanh17", "vit_rms_dynamo18", "vit_rms_legacy17", "convnext_dynamo18", "swin_legacy17",
    "swin_dynamo18", "swinv2_dynamo18")]
RUN = CliRunner()
_MODELS = {}
pytestmark = pytest.mark.numeric  # nearly every test here holds onnxruntime float32 results to a bound


def rel_l2(got, want):
    want = np.asarray(want, np.float64)
    return float(np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want))


def fixture(stem):
    """Returns (the loaded model, its golden npz); each stem is imported once (Swin folds ~1000 constants)."""
    if stem not in _MODELS:
        _MODELS[stem] = api.load_model(FIXTURES / f"{stem}.onnx")
    return _MODELS[stem], np.load(FIXTURES / f"{stem}.npz")


def explain(model, x, **settings):
    return api.explain_array(model, x, api.Settings(**settings))[0]


@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("composite", ["cp-lrp", "attnlrp"])
def test_compiled_engine_matches_the_pytorch_golden_relevance(stem, composite):
    model, ref = fixture(stem)
    got = explain(model, ref["input"], engine="onnxruntime", composite=composite, target=str(int(ref["target"])))
    assert got.extra["engine"] == "onnxruntime" and got.relevance.dtype == np.float32
    want = ref[f"{composite}_float64"]
    floor = rel_l2(ref[f"{composite}_float32"], want)
    assert rel_l2(got.relevance, want) <= 5 * floor
    assert got.propagation.f_x == pytest.approx(float(ref[f"{composite}_float64_f_x"]), rel=1e-5)


def assert_matches_numpy_float64(model, x, **settings):
    """The compiled float32 run against the NumPy engine's float64 backward on onnxruntime's own forward values,
    relevance and per-node sums, and the engine's own session against that run (ort_agreement bounds)."""
    import tempfile

    import ort_agreement
    target = int(settings.pop("target", -1))
    settings = api.Settings(engine="onnxruntime", target=str(target) if target >= 0 else "pred", **settings)
    with tempfile.TemporaryDirectory() as folder:
        agreement = ort_agreement.probe(model, x, settings, Path(folder), target)
    fast = api.explain_array(model, x, settings)[0]
    ort_agreement.assert_agrees(agreement, fast)
    return fast


@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("method", ["gradient", "gradient-x-input"])
def test_compiled_gradient_methods_match_numpy_float64(stem, method):
    model, ref = fixture(stem)
    assert_matches_numpy_float64(model, ref["input"], method=method, target=str(int(ref["target"])))


@pytest.mark.parametrize("stem, overrides", [
    ("vit_dynamo18", ("node_softmax=constant", "node_matmul_1=uniform:0.01", "node_layer_norm*=z")),
    ("vit_legacy17", ("*=epsilon:0.001", "*Softmax=constant", "*attn/MatMul_1=value:0.001", "*norm*=identity")),
    ("swinv2_legacy17", ("*=epsilon:0.01", "*attn/Div_*=identity")),
    pytest.param("vit_rms_legacy17", ("*=z", "*=uniform"), marks=SLOW),
])
def test_layer_rules_on_norm_softmax_and_product_compile_as_numpy_computes_them(stem, overrides):
    model, ref = fixture(stem)
    composite = "cp-lrp" if "value" in " ".join(overrides) else "attnlrp"
    fast = assert_matches_numpy_float64(model, ref["input"], composite=composite, layer_rules=overrides,
                                        target=str(int(ref["target"])))
    rules = {r.rule for r in fast.propagation.layers}
    assert rules & {"z", "identity", "uniform:0.01", "value:0.001", "taylor", "constant", "epsilon:0.01"}


def test_compiled_tiny_vit_in_a_bare_session_reproduces_explain_save_raw(tmp_path):
    path = FIXTURES / "vit_dynamo18.onnx"
    ref = np.load(FIXTURES / "vit_dynamo18.npz")
    np.save(tmp_path / "x.npy", ref["input"])
    target = int(ref["target"])
    for composite in ("attnlrp", "cp-lrp"):
        out = tmp_path / f"{composite}.lrp.onnx"
        result = RUN.invoke(main, ["compile", str(path), "-o", str(out), "--composite", composite])
        assert result.exit_code == 0, result.output
        result = RUN.invoke(main, ["explain", str(tmp_path / "x.npy"), "--model", str(path), "--out",
                                   str(tmp_path / composite), "--save-raw", "--engine", "numpy", "--preset", "none",
                                   "--composite", composite, "--target", str(target)])
        assert result.exit_code == 0, result.output
        reference = np.load(tmp_path / composite / "x.relevance.npy")
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        relevance, scores, index = session.run(["relevance", "scores", "target_index"],
                                               {"image": ref["input"], "target": np.array([target], dtype=np.int64)})
        assert index[0] == target
        assert rel_l2(relevance, reference) <= 5 * rel_l2(ref[f"{composite}_float32"], ref[f"{composite}_float64"])
        doc = json.loads((tmp_path / composite / "x.json").read_text())
        assert scores[0, target] == pytest.approx(doc["f_x"], rel=1e-5) and doc["composite"] == composite


def test_inspect_says_a_vit_compiles():
    result = RUN.invoke(main, ["inspect", str(FIXTURES / "vit_legacy14.onnx"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["engine"] == "onnxruntime" and report["compile_errors"] == {}
    ops = {n["op"] for n in report["nodes"] if n["compiles"]}
    assert {"LayerNormalization", "Softmax", "MatMul", "Gelu"} <= ops
    table = RUN.invoke(main, ["inspect", str(FIXTURES / "vit_legacy14.onnx")]).output
    assert "engine under --engine auto: onnxruntime" in table and "not compiled" not in table


# --- single kinds: the activations' derivatives (transformer-era and the CNN ones), Einsum products, Where ------


def _activation_model(tmp_path, act_nodes, opset=20):
    """x [1, 2, 6] -> MatMul -> the activation nodes (a -> act) -> Einsum attention-like product -> MatMul."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), *act_nodes,
             helper.make_node("Einsum", ["act", "x"], ["p"], equation="bti,btj->bij"),
             helper.make_node("Reshape", ["p", "flat"], ["f"]), helper.make_node("MatMul", ["f", "w2"], ["y"])]
    inits = {"w1": rng.standard_normal((6, 6)).astype(np.float32) * 0.7, "flat": np.array([1, 36]),
             "w2": rng.standard_normal((36, 3)).astype(np.float32), "p3": np.array(3.0, np.float32),
             "root2": np.array(np.sqrt(2), np.float32), "one": np.array(1.0, np.float32),
             "slope": np.linspace(-0.5, 0.5, 6).astype(np.float32)}
    return api.load_model(save_model(onnx_model(nodes, [1, 2, 6], "y", inits, opset=opset), tmp_path / "a.onnx"))


@pytest.mark.parametrize("act_nodes", [
    [helper.make_node("Gelu", ["a"], ["act"])],
    [helper.make_node("Gelu", ["a"], ["act"], approximate="tanh")],
    [helper.make_node("Erf", ["a"], ["act"])],
    [helper.make_node("Pow", ["a", "p3"], ["act"])],
    [helper.make_node("Div", ["a", "root2"], ["h"]), helper.make_node("Erf", ["h"], ["e"]),  # 2 GELU(a)
     helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["a", "e1"], ["act"])],
    [helper.make_node("HardSigmoid", ["a"], ["act"], alpha=0.3, beta=0.4)],
    [helper.make_node("HardSwish", ["a"], ["act"])],
    [helper.make_node("Elu", ["a"], ["act"], alpha=0.7)],
    [helper.make_node("Selu", ["a"], ["act"])],
    [helper.make_node("PRelu", ["a", "slope"], ["act"])],
], ids=["gelu", "gelu-tanh", "erf", "pow", "scaled-erf-gelu", "hardsigmoid", "hardswish", "elu", "selu", "prelu"])
@pytest.mark.parametrize("method", ["gradient", "lrp"])
def test_activation_derivatives_and_einsum_compile(tmp_path, act_nodes, method):
    model = _activation_model(tmp_path, act_nodes)
    x = np.random.default_rng(6).standard_normal((1, 2, 6)).astype(np.float32)
    fast = assert_matches_numpy_float64(model, x, method=method)
    assert {r.op for r in fast.propagation.layers} >= {"Einsum"}


def test_where_by_a_constant_mask_compiles_for_relevance_and_gradient(tmp_path):
    rng = np.random.default_rng(8)
    inits = {"codes": np.array([[1, 0, 1, 1, 0, 0]]), "zero_i": np.array(0, np.int64), "two": np.array(2.0, np.float32),
             "fill": np.array([[-1.0, 3.0, 0.5, 0.0, 2.0, -4.0]], np.float32),
             "w": rng.standard_normal((6, 3)).astype(np.float32)}
    nodes = [helper.make_node("Mul", ["x", "two"], ["doubled"]), helper.make_node("Equal", ["codes", "zero_i"], ["z"]),
             helper.make_node("Not", ["z"], ["cond"]),
             helper.make_node("Where", ["cond", "doubled", "x"], ["both"], name="both"),
             helper.make_node("Where", ["cond", "fill", "both"], ["picked"], name="filled"),
             helper.make_node("Gemm", ["picked", "w"], ["y"])]
    model = api.load_model(save_model(onnx_model(nodes, [1, 6], "y", inits, opset=17), tmp_path / "w.onnx"))
    x = rng.standard_normal((1, 6)).astype(np.float32)
    for method in ("lrp", "gradient"):
        fast = assert_matches_numpy_float64(model, x, method=method, rule="epsilon:1e-9")
        assert {r.op for r in fast.propagation.layers} >= {"Where"}


def test_an_uncompilable_node_of_an_attention_graph_falls_back_and_is_a_one_line_error(tmp_path):
    """Every transformer kind compiles; an Expand of the pooled attention output to 16 copies per element (an index
    map whose adjoint would need 16 gathers) does not: auto runs NumPy, --engine onnxruntime is exit 3."""
    rng = np.random.default_rng(9)
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]),
             helper.make_node("Transpose", ["x"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["logits"]), helper.make_node("Softmax", ["logits"], ["att"]),
             helper.make_node("MatMul", ["att", "x"], ["mixed"]),
             helper.make_node("ReduceMean", ["mixed"], ["pooled"], axes=[1]),
             helper.make_node("Expand", ["pooled", "wide"], ["copies"], name="expand"),
             helper.make_node("Reshape", ["copies", "flat"], ["f"]), helper.make_node("MatMul", ["f", "head"], ["y"])]
    inits = {"wq": rng.standard_normal((8, 8)).astype(np.float32), "wide": np.array([1, 16, 8]),
             "flat": np.array([1, 128]), "head": rng.standard_normal((128, 3)).astype(np.float32)}
    path = save_model(onnx_model(nodes, [1, 4, 8], "y", inits), tmp_path / "pooled.onnx")
    report = json.loads(RUN.invoke(main, ["inspect", str(path), "--json"]).output)
    assert report["engine"] == "numpy" and list(report["compile_errors"]) == ["expand"]
    x = tmp_path / "x.npy"
    np.save(x, rng.standard_normal((1, 4, 8)).astype(np.float32))
    auto = RUN.invoke(main, ["explain", str(x), "--model", str(path), "--out", str(tmp_path / "auto")])
    assert auto.exit_code == 0, auto.output
    assert json.loads((tmp_path / "auto" / "x.json").read_text())["engine"] == "numpy"
    refused = RUN.invoke(main, ["explain", str(x), "--model", str(path), "--engine", "onnxruntime",
                                "--out", str(tmp_path / "out")])
    lines = refused.output.strip().splitlines()
    assert refused.exit_code == 3 and len(lines) == 1
    assert lines[0].startswith("error:") and "cannot compile node expand (Expand)" in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("stem", ["vit_dynamo18", pytest.param("swin_legacy17", marks=SLOW)])
def test_a_batch_of_transformer_inputs_compiles_and_equals_its_batch_one_runs(stem):
    from lrp_cli import batched
    model, ref = fixture(stem)
    rng = np.random.default_rng(4)
    xs = [ref["input"], rng.standard_normal(ref["input"].shape).astype(np.float32)]
    settings = api.Settings(engine="onnxruntime", target="top:2")
    per_item = batched.explain_arrays(model, xs, settings, [Path(f"item{k}.npy") for k in range(2)], [None, None])
    got = [e for item in per_item for e in item]
    want = [e for x in xs for e in api.explain_array(model, x, settings)]
    assert [e.target for e in got] == [e.target for e in want] and len(got) == 4
    for a, b in zip(got, want):
        assert a.extra["engine"] == "onnxruntime"
        assert np.abs(a.relevance - b.relevance).max() <= 1e-5 * np.abs(b.relevance).max()


def test_a_contiguous_slice_or_gather_goes_back_by_a_pad_and_a_strided_one_by_gathers(tmp_path):
    """The q/k/v split (Gather of one index of a leading axis) and a Slice of a leading block copy one contiguous
    run of the input: their adjoint is a Pad; a Slice along the last axis is not contiguous and keeps the Gathers."""
    from lrp_cli.engines.onnx_compiler import compile_relevance
    from lrp_cli.importers.onnx_import import load_onnx
    rng = np.random.default_rng(11)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["qkv"]), helper.make_node("Reshape", ["qkv", "split"], ["parts"]),
             helper.make_node("Transpose", ["parts"], ["heads"], perm=[1, 0, 2]),
             helper.make_node("Gather", ["heads", "one"], ["k"], axis=0, name="take_k"),
             helper.make_node("Slice", ["k", "s0", "s1", "ax0"], ["tokens"], name="leading_block"),
             helper.make_node("Slice", ["tokens", "s0", "s1", "ax1"], ["narrow"], name="last_axis"),
             helper.make_node("Reshape", ["narrow", "flat"], ["f"]), helper.make_node("MatMul", ["f", "head"], ["y"])]
    inits = {"w": rng.standard_normal((6, 18)).astype(np.float32), "split": np.array([4, 3, 6]),
             "one": np.array(1), "s0": np.array([1]), "s1": np.array([3]), "ax0": np.array([0]),
             "ax1": np.array([1]), "flat": np.array([1, 4]), "head": rng.standard_normal((4, 3)).astype(np.float32)}
    path = save_model(onnx_model(nodes, [1, 4, 6], "y", inits), tmp_path / "split.onnx")
    model = api.load_model(path)
    x = rng.standard_normal((1, 4, 6)).astype(np.float32)
    for method in ("lrp", "gradient"):
        assert_matches_numpy_float64(model, x, method=method, rule="epsilon:1e-9")
    graph = compile_relevance(load_onnx(path), model.graph, "gradient", {}).model.graph
    appended = [n.op_type for n in graph.node if n.name.startswith("lrp/")]
    assert appended.count("Pad") == 2 and appended.count("Gather") == 1
