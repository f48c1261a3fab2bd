"""Transformers: LayerNorm, in-graph Softmax, products of activations, GELU forms; cp-lrp and attnlrp rules.

Golden files (tests/fixtures/transformers, made by scripts/make_transformer_fixtures.py with PyTorch) hold a tiny
ViT exported four ways, a tiny ConvNeXt exported two ways, and float64/float32 reference relevances of both
composites; the rules are also checked one by one against explicit brute-force sums.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import helper

from conftest import onnx_model, save_model
from lrp_cli.cli import main
from lrp_cli.errors import ModelLoadError
from lrp_cli.importers.onnx_import import import_onnx
from lrp_cli.ir.transformer import LayerNorm, Product, Softmax
from lrp_cli.propagate import propagate
from lrp_cli.rules import RuleError, assign_rules, parse_rule

FIXTURES = Path(__file__).parent / "fixtures" / "transformers"
STEMS = ["vit_legacy17", "vit_legacy14", "vit_tanh17", "vit_dynamo18", "convnext_legacy17", "convnext_dynamo18"]
RNG = np.random.default_rng(9)
RUN = CliRunner()


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def relevance(graph, x, target, composite, dtype, layer_rules=()):
    graph = graph.astype(dtype)
    specs = assign_rules([(n.name, n.layer) for n in graph.rule_nodes()], composite, layer_rules=layer_rules)
    values = graph.forward(x.astype(dtype))
    return propagate(graph, values, target, {k: parse_rule(v) for k, v in specs.items()})


def rel_l2(got, want):
    return float(np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want))


# --- golden files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("composite", ["cp-lrp", "attnlrp"])
def test_tiny_vit_matches_pytorch_reference(stem, composite):
    ref = np.load(FIXTURES / f"{stem}.npz")
    graph = import_onnx(FIXTURES / f"{stem}.onnx")
    target = int(ref["target"])
    want = ref[f"{composite}_float64"]
    got64 = relevance(graph, ref["input"], target, composite, np.float64)
    assert rel_l2(got64.relevance, want) <= 1e-6
    assert got64.f_x == pytest.approx(float(ref[f"{composite}_float64_f_x"]), rel=1e-6)
    # float32: within a small multiple of the reference's own float32/float64 difference
    noise = rel_l2(ref[f"{composite}_float32"], want)
    got32 = relevance(graph, ref["input"], target, composite, np.float32)
    assert got32.relevance.dtype == np.float32
    assert rel_l2(got32.relevance, want) <= 4 * noise


@pytest.mark.parametrize("stem", STEMS)
def test_tiny_vit_forward_matches_onnxruntime(stem):
    graph = import_onnx(FIXTURES / f"{stem}.onnx")
    ops = {n.layer.op for n in graph.nodes}
    assert {"LayerNormalization", "Gelu"} <= ops and ("Softmax" in ops) == stem.startswith("vit")
    x = np.load(FIXTURES / f"{stem}.npz")["input"]
    session = ort.InferenceSession(str(FIXTURES / f"{stem}.onnx"), providers=["CPUExecutionProvider"])
    want = session.run(None, {graph.input_name: x})[0]
    np.testing.assert_allclose(graph.forward(x)[graph.output_name], want, rtol=1e-5, atol=1e-5)


def test_composites_give_transformer_layers_their_rules():
    graph = import_onnx(FIXTURES / "vit_legacy17.onnx")
    nodes = [(n.name, n.layer) for n in graph.rule_nodes()]
    by_op = {}
    for composite in ("attnlrp", "cp-lrp"):
        specs = assign_rules(nodes, composite)
        by_op[composite] = {(layer.op, getattr(layer, "weights_operand", None)): specs[name]
                            for name, layer in nodes}
    assert by_op["attnlrp"][("Conv", None)] == "gamma"
    assert by_op["attnlrp"][("Softmax", None)] == "taylor"
    assert by_op["attnlrp"][("MatMul", 0)] == by_op["attnlrp"][("MatMul", None)] == "uniform"
    assert by_op["cp-lrp"][("Softmax", None)] == "constant"
    assert by_op["cp-lrp"][("MatMul", 0)] == "value"
    assert by_op["cp-lrp"][("LayerNormalization", None)] == by_op["attnlrp"][("LayerNormalization", None)]
    # no composite named: a graph with attention gets attnlrp
    assert assign_rules(nodes) == assign_rules(nodes, "attnlrp")


def test_cp_lrp_sends_no_relevance_through_queries_and_keys():
    ref = np.load(FIXTURES / "vit_legacy17.npz")
    graph = import_onnx(FIXTURES / "vit_legacy17.onnx")
    records = {r.name: r for r in relevance(graph, ref["input"], int(ref["target"]), "cp-lrp", np.float64).layers}
    assert records["/blocks.0/attn/MatMul_1"].rule == "value:1e-06"  # A V: the values took it all
    # the attention weights are constants: nothing reaches the Softmax, Q K^T or the query/key slices
    assert not {"/blocks.0/attn/Softmax", "/blocks.0/attn/MatMul", "/blocks.0/attn/Gather"} & set(records)
    assert records["/blocks.0/attn/Gather_2"].relevance_sum != 0.0


# --- rules one by one, against explicit sums ----------------------------------------------------------------


def test_softmax_taylor_rule_is_the_explicit_jacobian_sum():
    x, r = f32(2, 5).astype(np.float64), f32(2, 5).astype(np.float64)
    layer = Softmax(axis=1)
    s = layer.forward(x)
    got = layer.relevance([x], s, r, parse_rule("taylor"))[0]
    want = np.zeros_like(x)
    for n in range(2):
        jac = np.diag(s[n]) - np.outer(s[n], s[n])  # d s_i / d x_j
        want[n] = x[n] * (jac.T @ (r[n] / s[n]))  # x_j sum_i J_ij R_i / s_i: Taylor at x with the bias term
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_uniform_rule_splits_a_matrix_product_in_halves():
    a, b = f32(1, 3, 4).astype(np.float64), f32(1, 4, 2).astype(np.float64)
    layer = Product("...ij,...jk->...ik")
    y = layer.forward(a, b)
    r = f32(1, 3, 2).astype(np.float64)
    ra, rb = layer.relevance([a, b], y, r, parse_rule("uniform:1e-9"))
    want_a, want_b = np.zeros_like(a), np.zeros_like(b)
    for i, j, k in np.ndindex(3, 4, 2):
        share = a[0, i, j] * b[0, j, k] / (2 * (y[0, i, k] + 1e-9 * np.sign(y[0, i, k]))) * r[0, i, k]
        want_a[0, i, j] += share
        want_b[0, j, k] += share
    np.testing.assert_allclose(ra, want_a, rtol=1e-10)
    np.testing.assert_allclose(rb, want_b, rtol=1e-10)
    assert ra.sum() + rb.sum() == pytest.approx(r.sum(), rel=1e-8)


def test_value_rule_gives_the_values_everything_and_conserves():
    a, v = f32(2, 3, 3).astype(np.float64), f32(2, 3, 4).astype(np.float64)
    layer = Product("...ij,...jk->...ik", weights_operand=0)
    y = layer.forward(a, v)
    r = f32(2, 3, 4).astype(np.float64)
    ra, rv = layer.relevance([a, v], y, r, parse_rule("value:1e-12"))
    want = np.einsum("hij,hjk,hik->hjk", a, v, r / y)
    assert ra is None
    np.testing.assert_allclose(rv, want, rtol=1e-9)
    assert rv.sum() == pytest.approx(r.sum(), rel=1e-9)
    with pytest.raises(RuleError, match="attention weights"):
        Product("...ij,...jk->...ik").relevance([a, v], y, r, parse_rule("value"))


def test_layernorm_epsilon_is_the_frozen_linear_map_and_conserves_without_bias():
    x = f32(1, 3, 6).astype(np.float64)
    scale = 1 + 0.3 * f32(6).astype(np.float64)
    layer = LayerNorm(-1, scale, None, 1e-5)
    y = layer.forward(x)
    r = f32(1, 3, 6).astype(np.float64)
    got = layer.relevance([x], y, r, parse_rule("epsilon:1e-12"))[0]
    for t in range(3):
        std = np.sqrt(x[0, t].var() + 1e-5)
        jac = np.diag(scale) @ (np.eye(6) - 1 / 6) / std  # y = J x with the standard deviation constant
        np.testing.assert_allclose(jac @ x[0, t], y[0, t], rtol=1e-12)
        want = x[0, t] * (jac.T @ (r[0, t] / y[0, t]))
        np.testing.assert_allclose(got[0, t], want, rtol=1e-9, atol=1e-12)
    assert got.sum() == pytest.approx(r.sum(), rel=1e-9)
    np.testing.assert_array_equal(layer.relevance([x], y, r, parse_rule("identity"))[0], r)


@pytest.mark.parametrize("layer, shapes", [
    (LayerNorm(-2, None, None, 1e-5), [(2, 3, 4)]),
    (Softmax(axis=1), [(2, 5)]),
    (Product("bhid,bhjd->bhij"), [(1, 2, 3, 4), (1, 2, 5, 4)]),
])
def test_gradients_match_finite_differences(layer, shapes):
    xs = [f32(*s).astype(np.float64) for s in shapes]
    y = layer.forward(*xs)
    g = f32(*y.shape).astype(np.float64)
    grads = layer.gradient(xs, y, g)
    for k, x in enumerate(xs):
        numeric = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            bumped = [v.copy() for v in xs]
            bumped[k][idx] += 1e-6
            numeric[idx] = ((layer.forward(*bumped) - y) * g).sum() / 1e-6
        np.testing.assert_allclose(grads[k], numeric, rtol=1e-4, atol=1e-5)


def test_rule_of_the_wrong_kind_is_refused():
    graph = import_onnx(FIXTURES / "vit_legacy17.onnx")
    nodes = [(n.name, n.layer) for n in graph.rule_nodes()]
    with pytest.raises(RuleError, match="'zplus' does not apply to node '/blocks.0/attn/Softmax'.*taylor"):
        assign_rules(nodes, "attnlrp", layer_rules=("*Softmax=zplus",))
    specs = assign_rules(nodes, "attnlrp", layer_rules=("/blocks.0/attn/Softmax=constant",))
    assert specs["/blocks.0/attn/Softmax"] == "constant" and specs["/blocks.1/attn/Softmax"] == "taylor"


# --- import: forms exporters write --------------------------------------------------------------------------


def assert_imports_like_onnxruntime(model, tmp_path, tol=1e-5):
    path = save_model(model, tmp_path / "m.onnx")
    graph = import_onnx(path)
    x = f32(*graph.input_shape)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {graph.input_name: x})[0]
    np.testing.assert_allclose(graph.forward(x)[graph.output_name], want, rtol=tol, atol=tol)
    return graph


@pytest.mark.parametrize("axis", [1, -1, 2])
def test_layernormalization_any_axis(tmp_path, axis):
    shape = [1, 4, 3, 5]
    norm_shape = shape[axis % 4:]
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=axis, epsilon=1e-3)]
    inits = {"g": 1 + f32(*norm_shape), "b": f32(*norm_shape)}
    graph = assert_imports_like_onnxruntime(onnx_model(nodes, shape, initializers=inits, opset=17), tmp_path)
    assert graph.nodes[0].layer.op == "LayerNormalization"


def test_channels_last_layernorm_between_transposes(tmp_path):
    """ConvNeXt's block: depthwise conv, then LayerNorm over channels in NHWC, then back to NCHW."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], group=4, pads=[3, 3, 3, 3]),
        helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["t", "g", "b"], ["n"], axis=-1, epsilon=1e-6),
        helper.make_node("Transpose", ["n"], ["y"], perm=[0, 3, 1, 2]),
    ]
    inits = {"w": f32(4, 1, 7, 7), "g": 1 + f32(4), "b": f32(4)}
    graph = assert_imports_like_onnxruntime(onnx_model(nodes, [1, 4, 6, 6], initializers=inits, opset=17), tmp_path)
    assert [n.layer.op for n in graph.nodes] == ["Conv", "Transpose", "LayerNormalization", "Transpose"]


@pytest.mark.parametrize("inverse", [helper.make_node("Reciprocal", ["s"], ["inv"]),
                                     helper.make_node("Div", ["one", "s"], ["inv"])], ids=["reciprocal", "div-1"])
def test_decomposed_layernorm_with_reciprocal_is_one_layer(tmp_path, inverse):
    """1 / std as Reciprocal or as Div(1, std) (the form the legacy exporter writes for rsqrt), then times x - mean."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1]),
        helper.make_node("Sub", ["x", "m"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["v"], axes=[-1]),
        helper.make_node("Add", ["v", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["s"]),
        inverse,
        helper.make_node("Mul", ["d", "inv"], ["n"]),
        helper.make_node("Mul", ["n", "g"], ["ng"]),
        helper.make_node("Add", ["ng", "b"], ["y"], name="ln_out"),
    ]
    inits = {"eps": np.array(1e-5, np.float32), "one": np.array(1.0, np.float32), "g": 1 + f32(6), "b": f32(6)}
    graph = assert_imports_like_onnxruntime(onnx_model(nodes, [1, 3, 6], initializers=inits), tmp_path)
    assert [n.layer.op for n in graph.nodes] == ["LayerNormalization"]
    assert graph.nodes[0].name == "ln_out" and "fused 10 nodes" in graph.notes[0]


def test_decomposed_layernorm_over_a_leading_axis_is_not_fused(tmp_path):
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1]),
        helper.make_node("Sub", ["x", "m"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["v"], axes=[1]),
        helper.make_node("Add", ["v", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["s"]),
        helper.make_node("Div", ["d", "s"], ["y"], name="norm_div"),
    ]
    inits = {"eps": np.array(1e-5, np.float32), "two": np.array(2.0, np.float32)}
    with pytest.raises(ModelLoadError, match="node 'norm_div' \\(Div\\)"):
        import_onnx(save_model(onnx_model(nodes, [1, 3, 6], initializers=inits), tmp_path / "m.onnx"))


def test_product_that_is_no_gelu_stays_an_error_naming_it(tmp_path):
    nodes = [helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Mul", ["x", "t"], ["y"], name="xtanh")]
    with pytest.raises(ModelLoadError, match="node 'xtanh' \\(Mul\\)"):
        import_onnx(save_model(onnx_model(nodes, [1, 8]), tmp_path / "m.onnx"))


def test_einsum_attention_and_elementwise_einsum(tmp_path):
    nodes = [helper.make_node("Einsum", ["x", "x"], ["y"], equation="bhid,bhjd->bhij")]
    graph = assert_imports_like_onnxruntime(onnx_model(nodes, [1, 2, 3, 4]), tmp_path)
    assert graph.nodes[0].layer.op == "Einsum"
    nodes = [helper.make_node("Einsum", ["x", "x"], ["y"], name="hadamard", equation="ij,ij->ij")]
    with pytest.raises(ModelLoadError, match="'hadamard' \\(Einsum\\).*element-wise product"):
        import_onnx(save_model(onnx_model(nodes, [2, 3]), tmp_path / "e.onnx"))


def test_pow_erf_and_opset11_softmax(tmp_path):
    nodes = [helper.make_node("Pow", ["x", "p"], ["a"]), helper.make_node("Erf", ["a"], ["e"]),
             helper.make_node("Softmax", ["e"], ["s"], axis=1), helper.make_node("Relu", ["s"], ["y"])]
    inits = {"p": np.array(3.0, np.float32)}
    graph = assert_imports_like_onnxruntime(onnx_model(nodes, [1, 5], initializers=inits, opset=11), tmp_path)
    assert [n.layer.op for n in graph.nodes] == ["Pow", "Erf", "Softmax", "Relu"]
    nodes[2] = helper.make_node("Softmax", ["e"], ["s"], axis=1, name="old_sm")
    with pytest.raises(ModelLoadError, match="'old_sm' \\(Softmax\\).*opset 13"):
        import_onnx(save_model(onnx_model(nodes, [1, 4, 5], initializers=inits, opset=11), tmp_path / "o.onnx"))


# --- command line -------------------------------------------------------------------------------------------


def test_cli_explains_a_vit_with_each_composite(tmp_path):
    ref = np.load(FIXTURES / "vit_dynamo18.npz")
    x = tmp_path / "x.npy"
    np.save(x, ref["input"])
    for composite in ("cp-lrp", "attnlrp"):
        out = tmp_path / composite
        result = RUN.invoke(main, ["explain", str(x), "--model", str(FIXTURES / "vit_dynamo18.onnx"), "--out",
                                   str(out), "--composite", composite, "--precision", "float64", "--save-raw",
                                   "--preset", "none", "--target", str(int(ref["target"]))])
        assert result.exit_code == 0, result.output
        doc = json.loads((out / "x.json").read_text())
        assert doc["composite"] == composite
        ops = {layer["op"] for layer in doc["layers"]}
        assert ops >= {"LayerNormalization", "MatMul", "Gelu"} and ("Softmax" in ops) == (composite == "attnlrp")
        assert rel_l2(np.load(out / "x.relevance.npy"), ref[f"{composite}_float64"]) <= 1e-6
    result = RUN.invoke(main, ["inspect", str(FIXTURES / "vit_legacy14.onnx")])
    assert result.exit_code == 0 and "composite attnlrp" in result.output
    assert "taylor" in result.output and "uniform" in result.output
