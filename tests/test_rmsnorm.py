"""RMS normalization: the ONNX RMSNormalization op (opset 23) and the forms exporters write out, as one layer
with LayerNorm's rules (cp-lrp: the RMS a constant, epsilon on the frozen map; attnlrp: identity).

Golden files (tests/fixtures/transformers/vit_rms_*, made by scripts/make_transformer_fixtures.py) hold the tiny
ViT with torch's nn.RMSNorm in place of every LayerNorm, exported by dynamo at opset 23 (RMSNormalization) and 18
(written out with Reciprocal) and, written out by hand, by the legacy exporter at opset 17 (Div(1, Sqrt)).
"""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

from conftest import onnx_model, save_model
from lrp_cli.errors import ModelLoadError
from lrp_cli.importers.onnx_import import import_onnx
from lrp_cli.ir.transformer import RMSNorm
from lrp_cli.propagate import propagate
from lrp_cli.rules import assign_rules, parse_rule

FIXTURES = Path(__file__).parent / "fixtures" / "transformers"
STEMS = ["vit_rms_dynamo23", "vit_rms_dynamo18", "vit_rms_legacy17"]
RNG = np.random.default_rng(23)


def f64(*shape):
    return RNG.standard_normal(shape)


def rel_l2(got, want):
    return float(np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want))


def relevance(graph, x, target, composite, dtype):
    graph = graph.astype(dtype)
    specs = assign_rules([(n.name, n.layer) for n in graph.rule_nodes()], composite)
    return propagate(graph, graph.forward(x.astype(dtype)), target, {k: parse_rule(v) for k, v in specs.items()})


# --- golden files: float64 <= 1e-6 relative L2 against the PyTorch reference --------------------------------


@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("composite", ["cp-lrp", "attnlrp"])
def test_rmsnorm_vit_matches_pytorch_reference(stem, composite):
    ref = np.load(FIXTURES / f"{stem}.npz")
    graph = import_onnx(FIXTURES / f"{stem}.onnx")
    assert sum(n.layer.op == "RMSNormalization" for n in graph.nodes) == 5  # 2 blocks x 2 + final
    assert not {"LayerNormalization", "Sqrt", "Pow", "ReduceMean"} & {n.layer.op for n in graph.nodes}
    logits = graph.forward(ref["input"])[graph.output_name]
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-5, atol=1e-5)  # torch's float32 logits
    want = ref[f"{composite}_float64"]
    got64 = relevance(graph, ref["input"], int(ref["target"]), composite, np.float64)
    assert rel_l2(got64.relevance, want) <= 1e-6
    assert got64.f_x == pytest.approx(float(ref[f"{composite}_float64_f_x"]), rel=1e-6)
    noise = rel_l2(ref[f"{composite}_float32"], want)  # the reference's own float32/float64 difference
    got32 = relevance(graph, ref["input"], int(ref["target"]), composite, np.float32)
    assert rel_l2(got32.relevance, want) <= 4 * noise


def test_composites_give_rmsnorm_its_rules():
    graph = import_onnx(FIXTURES / "vit_rms_dynamo23.onnx")
    nodes = [(n.name, n.layer) for n in graph.rule_nodes()]
    norms = [name for name, layer in nodes if layer.op == "RMSNormalization"]
    assert {assign_rules(nodes, "attnlrp")[n] for n in norms} == {"identity"}
    assert {assign_rules(nodes, "cp-lrp")[n] for n in norms} == {"epsilon"}
    # a LayerNorm keeps attnlrp's epsilon on the frozen map (the centring is not element-wise)
    vit = import_onnx(FIXTURES / "vit_legacy17.onnx")
    ln_nodes = [(n.name, n.layer) for n in vit.rule_nodes()]
    specs = assign_rules(ln_nodes, "attnlrp")
    assert {specs[name] for name, layer in ln_nodes if layer.op == "LayerNormalization"} == {"epsilon"}


# --- the rules, brute force -----------------------------------------------------------------------------------


def test_rmsnorm_epsilon_is_the_frozen_diagonal_map_and_identity_passes_relevance():
    x = f64(1, 3, 6)
    scale = 1 + 0.3 * f64(6)
    layer = RMSNorm(-1, scale, None, 1e-5)
    y = layer.forward(x)
    r = f64(1, 3, 6)
    eps = 1e-3  # large enough that the epsilon rule visibly differs from identity
    got = layer.relevance([x], y, r, parse_rule(f"epsilon:{eps}"))[0]
    for t in range(3):
        rms = np.sqrt((x[0, t] ** 2).mean() + 1e-5)
        jac = np.diag(scale) / rms  # y = J x with the RMS constant: no centring, a diagonal map
        np.testing.assert_allclose(jac @ x[0, t], y[0, t], rtol=1e-12)
        z = y[0, t] + np.where(y[0, t] >= 0, eps, -eps)
        want = np.array([sum(x[0, t, i] * jac[j, i] * r[0, t, j] / z[j] for j in range(6)) for i in range(6)])
        np.testing.assert_allclose(got[0, t], want, rtol=1e-12, atol=1e-15)
    assert not np.allclose(got, r, rtol=1e-6)
    np.testing.assert_allclose(layer.relevance([x], y, r, parse_rule("epsilon:1e-12"))[0], r, rtol=1e-9)
    np.testing.assert_array_equal(layer.relevance([x], y, r, parse_rule("identity"))[0], r)


@pytest.mark.parametrize("axis, shape", [(-1, (2, 3, 5)), (1, (1, 3, 2, 2))])
def test_rmsnorm_forward_and_gradient_by_brute_force(axis, shape):
    x = f64(*shape)
    scale = 1 + 0.3 * f64(*shape[axis % len(shape):])
    layer = RMSNorm(axis, scale, None, 1e-3)
    axes = tuple(range(axis % len(shape), len(shape)))
    want = x / np.sqrt((x ** 2).mean(axis=axes, keepdims=True) + 1e-3) * scale
    np.testing.assert_allclose(layer.forward(x), want, rtol=1e-12)
    g = f64(*shape)
    numeric = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        bumped = x.copy()
        bumped[idx] += 1e-6
        numeric[idx] = ((layer.forward(bumped) - want) * g).sum() / 1e-6
    np.testing.assert_allclose(layer.gradient([x], want, g)[0], numeric, rtol=1e-4, atol=1e-5)


# --- import: the op and the written-out forms ------------------------------------------------------------------


def assert_imports_like_onnxruntime(model, tmp_path):
    """Returns the imported graph after checking its forward pass against onnxruntime's on a random input (this
    module's RNG: test_transformers' own draws stay as they are)."""
    path = save_model(model, tmp_path / "m.onnx")
    graph = import_onnx(path)
    x = RNG.standard_normal(graph.input_shape).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {graph.input_name: x})[0]
    np.testing.assert_allclose(graph.forward(x)[graph.output_name], want, rtol=1e-5, atol=1e-5)
    return graph


@pytest.mark.parametrize("axis", [-1, 1])
def test_rmsnormalization_op_any_axis(tmp_path, axis):
    shape = [1, 4, 3, 5]
    nodes = [helper.make_node("RMSNormalization", ["x", "g"], ["y"], axis=axis, epsilon=1e-3)]
    inits = {"g": (1 + RNG.standard_normal(shape[axis % 4:])).astype(np.float32)}
    graph = assert_imports_like_onnxruntime(onnx_model(nodes, shape, initializers=inits, opset=23), tmp_path)
    assert [n.layer.op for n in graph.nodes] == ["RMSNormalization"]
    assert graph.nodes[0].layer.axis == axis


WRITTEN_OUT = {  # the square, then how x is divided by the root mean square
    "mul-div": [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Div", ["x", "s"], ["n"])],
    "pow-reciprocal": [helper.make_node("Pow", ["x", "two"], ["sq"]), helper.make_node("Reciprocal", ["s"], ["inv"]),
                       helper.make_node("Mul", ["inv", "x"], ["n"])],
    "pow-div-one": [helper.make_node("Pow", ["x", "two"], ["sq"]), helper.make_node("Div", ["one", "s"], ["inv"]),
                    helper.make_node("Mul", ["x", "inv"], ["n"])],
}


def written_out_rmsnorm(form: str, one: float = 1.0):
    square, *divide = WRITTEN_OUT[form]
    nodes = [square, helper.make_node("ReduceMean", ["sq"], ["v"], axes=[-1]),
             helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["s"]), *divide,
             helper.make_node("Mul", ["n", "g"], ["y"], name="rms_out")]
    inits = {"eps": np.array(1e-5, np.float32), "two": np.array(2.0, np.float32), "one": np.array(one, np.float32),
             "g": (1 + RNG.standard_normal(6)).astype(np.float32)}
    return onnx_model(nodes, [1, 3, 6], initializers=inits)


@pytest.mark.parametrize("form", WRITTEN_OUT)
def test_written_out_rmsnorm_is_one_layer(tmp_path, form):
    graph = assert_imports_like_onnxruntime(written_out_rmsnorm(form), tmp_path)
    assert [n.layer.op for n in graph.nodes] == ["RMSNormalization"]
    assert graph.nodes[0].name == "rms_out" and "fused" in graph.notes[0]
    np.testing.assert_allclose(graph.nodes[0].layer.epsilon, 1e-5, rtol=1e-6)


def test_written_out_rmsnorm_dividing_a_constant_other_than_one_is_an_error_naming_the_node(tmp_path):
    path = save_model(written_out_rmsnorm("pow-div-one", one=2.0), tmp_path / "m.onnx")
    with pytest.raises(ModelLoadError, match="not an RMSNorm over the trailing axes.*'rms_out'|'rms_out'.*RMSNorm"):
        import_onnx(path)
