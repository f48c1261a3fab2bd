"""Swin (Liu et al. 2021) and Swin V2 as torchvision exports them: shifted windows, relative position bias,
attention mask, cosine attention (L2-normalized queries and keys).

Golden files (tests/fixtures/transformers/swin*, made by scripts/make_transformer_fixtures.py from torchvision's
own SwinTransformer at toy size, V1 and V2) hold float64/float32 PyTorch references of cp-lrp and attnlrp; the
mask's Where and the L2 normalization are checked against explicit sums on small inputs built here.
"""

import functools
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
from lrp_cli.ir.l2norm import L2Normalize
from lrp_cli.ir.layers import Add, Concat, IndexMap, Reshape, Transpose
from lrp_cli.ir.masks import Where
from lrp_cli.ir.transformer import Product, Softmax
from lrp_cli.methods.gradient import input_gradient
from lrp_cli.propagate import backward, initial_relevance
from lrp_cli.rules import assign_rules, parse_rule
from test_transformers import rel_l2, relevance

FIXTURES = Path(__file__).parent / "fixtures" / "transformers"
STEMS = ["swin_legacy17", "swin_dynamo18", "swinv2_legacy17", "swinv2_dynamo18"]
RNG = np.random.default_rng(21)
RUN = CliRunner()


@functools.cache
def fixture_graph(stem):
    """Returns the imported fixture graph (import folds ~1000 constant nodes: done once per stem)."""
    return import_onnx(FIXTURES / f"{stem}.onnx")


@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("composite", ["cp-lrp", "attnlrp"])
def test_tiny_swin_matches_pytorch_reference(stem, composite):
    ref = np.load(FIXTURES / f"{stem}.npz")
    graph = fixture_graph(stem)
    target = int(ref["target"])
    want = ref[f"{composite}_float64"]
    got64 = relevance(graph, ref["input"], target, composite, np.float64)
    assert rel_l2(got64.relevance, want) <= 1e-6
    assert got64.f_x == pytest.approx(float(ref[f"{composite}_float64_f_x"]), rel=1e-6)
    noise = rel_l2(ref[f"{composite}_float32"], want)  # the reference's own float32/float64 difference
    got32 = relevance(graph, ref["input"], target, composite, np.float32)
    assert got32.relevance.dtype == np.float32
    assert rel_l2(got32.relevance, want) <= 4 * noise


@pytest.mark.parametrize("stem", STEMS)
def test_tiny_swin_forward_matches_onnxruntime(stem):
    graph = fixture_graph(stem)
    kinds = {type(n.layer) for n in graph.nodes}
    assert {Softmax, Product, Concat, IndexMap, Reshape, Transpose} <= kinds
    # Swin V2's cosine attention: F.normalize of the queries and keys fused, 4 blocks x 2
    assert sum(isinstance(n.layer, L2Normalize) for n in graph.nodes) == (8 if stem.startswith("swinv2") else 0)
    x = np.load(FIXTURES / f"{stem}.npz")["input"]
    session = ort.InferenceSession(str(FIXTURES / f"{stem}.onnx"), providers=["CPUExecutionProvider"])
    want = session.run(None, {graph.input_name: x})[0]
    np.testing.assert_allclose(graph.forward(x)[graph.output_name], want, rtol=1e-5, atol=1e-5)


def _bias_and_mask_adds(graph):
    """Returns the Adds of a constant that varies over attention logits' axes: position biases and masks."""
    return [n for n in graph.nodes if isinstance(n.layer, Add) and n.layer.constant is not None
            and np.shape(n.layer.constant)[-2:] == (16, 16)]


@pytest.mark.parametrize("stem", STEMS)
def test_relative_position_bias_and_mask_are_constants_added_to_the_logits(stem):
    graph = fixture_graph(stem)
    constants = [np.asarray(n.layer.constant) for n in _bias_and_mask_adds(graph)]
    masks = [c for c in constants if c.min() <= -100]
    # 4 blocks of 2 or 4 heads take a relative position bias; the one shifted block also takes the mask
    assert len(constants) - len(masks) == 4 and len(masks) == 1
    assert set(np.unique(masks[0])) == {-100.0, 0.0} and masks[0].size == 4 * 16 * 16


@pytest.mark.parametrize("composite", ["cp-lrp", "attnlrp"])
def test_routing_conserves_and_constant_adds_absorb_their_share(composite):
    """Rolls, window partitions and patch merging move relevance unchanged; an Add of the position bias or the
    mask keeps R * c / stab(x + c) for itself (the z-rule, stabilizer 1e-6), as a bias does."""
    ref = np.load(FIXTURES / "swin_legacy17.npz")
    graph = fixture_graph("swin_legacy17").astype(np.float64)
    specs = assign_rules([(n.name, n.layer) for n in graph.rule_nodes()], composite)
    rules = {k: parse_rule(v) for k, v in specs.items()}
    values = graph.forward(ref["input"].astype(np.float64))
    seen = {}

    def step(node, xs, y, r):
        seen[node.name] = (xs, y, r)
        return node.layer.relevance(xs, y, r, rules.get(node.name))
    start, _ = initial_relevance(values[graph.output_name], int(ref["target"]))
    _, records = backward(graph, values, start, step)
    given = {rec.name: rec.relevance_sum for rec in records}
    routed = [n for n in graph.nodes if isinstance(n.layer, (Concat, IndexMap, Reshape, Transpose)) and n.name in seen]
    assert len(routed) > 20
    for node in routed:
        assert given[node.name] == pytest.approx(seen[node.name][2].sum(), rel=1e-9, abs=1e-12), node.name
    adds = [n for n in _bias_and_mask_adds(graph) if n.name in seen]
    assert len(adds) == (5 if composite == "attnlrp" else 0)  # cp-lrp: no relevance reaches the logits at all
    for node in adds:
        (x,), y, r = seen[node.name]
        z = y + np.where(y >= 0, 1e-6, -1e-6)
        assert given[node.name] == pytest.approx((r * x / z).sum(), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("stem", ["swin_legacy17", "swinv2_dynamo18"])
def test_gradient_through_windows_masks_and_cosine_attention_is_the_finite_difference(stem):
    graph = fixture_graph(stem).astype(np.float64)
    x = np.load(FIXTURES / f"{stem}.npz")["input"].astype(np.float64)
    target = int(np.load(FIXTURES / f"{stem}.npz")["target"])
    gradient = input_gradient(graph, graph.forward(x), target).relevance

    def score(image):
        return graph.forward(image)[graph.output_name][0, target]
    for direction in RNG.standard_normal((3,) + x.shape):  # directional derivatives, central differences
        numeric = (score(x + 1e-5 * direction) - score(x - 1e-5 * direction)) / 2e-5
        assert (gradient * direction).sum() == pytest.approx(numeric, rel=1e-6, abs=1e-9)


# --- Where by a constant mask ---------------------------------------------------------------------------------


def _where_model(tmp_path, condition, second=None, dynamic_condition=False):
    """Returns the path of x [1, 6] -> Where(condition, x * 2, second or x) -> Gemm to 3 classes, and W."""
    w = RNG.standard_normal((6, 3)).astype(np.float32)
    inits = {"w": w, "two": np.array(2.0, np.float32)}
    nodes = [helper.make_node("Mul", ["x", "two"], ["doubled"])]
    if dynamic_condition:
        inits["zero"] = np.array(0.0, np.float32)
        nodes.append(helper.make_node("Greater", ["x", "zero"], ["cond"]))
    else:  # built from constants through Equal/Not, as exporters write masks: folded at import
        inits.update(codes=condition.reshape(1, 6).astype(np.int64), zero_i=np.array(0, np.int64))
        nodes += [helper.make_node("Equal", ["codes", "zero_i"], ["is_zero"]),
                  helper.make_node("Not", ["is_zero"], ["cond"])]
    if second is not None:
        inits["fill"] = second
    nodes += [helper.make_node("Where", ["cond", "doubled", "fill" if second is not None else "x"], ["picked"]),
              helper.make_node("Gemm", ["picked", "w"], ["logits"])]
    path = tmp_path / "where.onnx"
    save_model(onnx_model(nodes, [1, 6], "logits", inits, opset=17, output_shape=[1, 3]), path)
    return path, w


@pytest.mark.parametrize("second", [None, np.array([[-1.0, 3.0, 0.5, 0.0, 2.0, -4.0]], dtype=np.float32)],
                         ids=["two-activations", "constant-fill"])
def test_where_by_a_constant_mask_routes_relevance_to_the_picked_operand(tmp_path, second):
    condition = np.array([1, 0, 1, 1, 0, 0])
    path, w = _where_model(tmp_path, condition, second)
    graph = import_onnx(path).astype(np.float64)
    assert sum(isinstance(n.layer, Where) for n in graph.nodes) == 1
    x = RNG.standard_normal((1, 6))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(graph.forward(x.astype(np.float32))[graph.output_name],
                               session.run(None, {"x": x.astype(np.float32)})[0], rtol=1e-5, atol=1e-6)
    got = relevance(graph, x, 1, "epsilon-plus", np.float64, layer_rules=("*=epsilon:1e-9",)).relevance
    # by hand: picked_i = 2 x_i where the mask holds, else x_i (or the constant, which keeps its share)
    picked = np.where(condition == 1, 2 * x, x if second is None else second)
    z = picked @ w
    r_picked = picked * w[:, 1] * z[0, 1] / (z[0, 1] + 1e-9 * np.sign(z[0, 1]))
    want = np.where(condition == 1, r_picked, r_picked if second is None else 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_where_whose_condition_depends_on_the_input_is_an_error_naming_the_node(tmp_path):
    path, _ = _where_model(tmp_path, None, dynamic_condition=True)
    with pytest.raises(ModelLoadError, match="node 'cond'"):  # a mask computed from the input: no rule
        import_onnx(path)


# --- L2 normalization (Swin V2's cosine attention) --------------------------------------------------------------


def test_l2normalize_rules_hold_the_norm_constant():
    x = RNG.standard_normal((2, 3, 5))
    x[1, 2] = 0.0  # a zero row: the norm is the floor epsilon, y = 0
    layer = L2Normalize(axis=2, epsilon=1e-12)
    y = layer.forward(x)
    np.testing.assert_allclose(np.linalg.norm(y[0], axis=-1), 1.0, rtol=1e-12)
    r = RNG.standard_normal(y.shape)
    got = layer.relevance([x], y, r, parse_rule("epsilon:0.01"))[0]
    # the diagonal map x -> x / n with n fixed: R_i = (x_i / n) R_i / stab(y_i)
    n = np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    np.testing.assert_allclose(got, (x / n) * r / (y + 0.01 * np.where(y >= 0, 1, -1)), rtol=1e-12, atol=1e-15)
    assert layer.relevance([x], y, r, parse_rule("identity"))[0] is r


def test_l2normalize_gradient_is_the_finite_difference():
    x = RNG.standard_normal((1, 4, 6))
    layer, g = L2Normalize(axis=2, epsilon=1e-12), RNG.standard_normal((1, 4, 6))
    got = layer.gradient([x], layer.forward(x), g)[0]
    want = np.zeros_like(x)
    for k in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[k] = 1e-6
        want[k] = ((layer.forward(x + step) - layer.forward(x - step)) * g).sum() / 2e-6
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def _normalize_model(tmp_path, axis=-1, ceiling=None, floor_op="Clip"):
    """Returns the path of x [1, 4, 6] -> F.normalize as exporters write it (ReduceL2, Clip, Expand, Div) -> MatMul."""
    inits = {"floor": np.array(1e-12, np.float32), "w": RNG.standard_normal((6, 3)).astype(np.float32)}
    bounds = ["norm", "floor"]
    if ceiling is not None:
        inits["ceiling"] = np.array(ceiling, np.float32)
        bounds.append("ceiling")
    nodes = [helper.make_node("ReduceL2", ["x"], ["norm"], axes=[axis], keepdims=1),
             helper.make_node(floor_op, bounds, ["floored"]), helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Expand", ["floored", "shape"], ["wide"]),
             helper.make_node("Div", ["x", "wide"], ["unit"], name="unit_div"),
             helper.make_node("MatMul", ["unit", "w"], ["y"])]
    return save_model(onnx_model(nodes, [1, 4, 6], "y", inits, opset=17, output_shape=[1, 4, 3]), tmp_path / "n.onnx")


@pytest.mark.parametrize("floor_op", ["Clip", "Max"])
def test_f_normalize_fuses_into_one_layer_that_matches_onnxruntime(tmp_path, floor_op):
    path = _normalize_model(tmp_path, floor_op=floor_op)
    graph = import_onnx(path)
    assert [type(n.layer).__name__ for n in graph.nodes] == ["L2Normalize", "Dense"]
    x = RNG.standard_normal((1, 4, 6)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(graph.forward(x)["y"], session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", [{"axis": 1}, {"ceiling": 10.0}], ids=["leading-axis", "clip-ceiling"])
def test_other_normalizations_of_activations_stay_errors_naming_the_node(tmp_path, variant):
    with pytest.raises(ModelLoadError, match="unsupported op ReduceL2 at node 'norm'"):
        import_onnx(_normalize_model(tmp_path, **variant))


# --- engines --------------------------------------------------------------------------------------------------


def test_inspect_says_it_compiles_and_both_engines_explain_it(tmp_path):
    """Swin compiles (engines/onnx_transformer.py); what still cannot compile is tested in test_compiled_engine."""
    model = str(FIXTURES / "swin_dynamo18.onnx")
    shown = RUN.invoke(main, ["inspect", model])
    assert shown.exit_code == 0 and "engine under --engine auto: onnxruntime" in shown.output
    image = tmp_path / "x.npy"
    np.save(image, np.load(FIXTURES / "swin_dynamo18.npz")["input"])
    maps = {}
    for engine in ("onnxruntime", "numpy"):
        ran = RUN.invoke(main, ["explain", str(image), "--model", model, "--engine", engine, "--save-raw",
                                "--out", str(tmp_path / engine)])
        assert ran.exit_code == 0, ran.output
        assert json.loads((tmp_path / engine / "x.json").read_text())["engine"] == engine
        maps[engine] = np.load(tmp_path / engine / "x.relevance.npy")
    assert rel_l2(maps["onnxruntime"], maps["numpy"].astype(np.float64)) <= 1e-5
