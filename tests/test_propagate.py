"""Fixed-behaviour layers, the graph backward pass and conservation (Eq 2)."""

import numpy as np
import pytest
from onnx import helper

from conftest import compiled_relevance, onnx_model, save_model
from lrp_cli import api
from lrp_cli.importers.onnx_import import import_onnx
from lrp_cli.ir.layers import Add, AvgPool, Concat, GlobalAvgPool, MaxPool
from lrp_cli.ir.windows import Window
from lrp_cli.propagate import propagate
from lrp_cli.rules import Epsilon, MaxPoolTies


@pytest.mark.parametrize("engine", ["numpy", "onnxruntime"])
def test_maxpool_winner_takes_all_and_ties_follow_the_policy(engine):
    x = np.array([[[[1.0, 5.0, 2.0, 2.0],
                    [0.0, 3.0, 2.0, 2.0]]]])
    if engine == "numpy":
        layer = MaxPool(Window((2, 2), (2, 2)))
        y = layer.forward(x)
        r = np.array([[[[8.0, 4.0]]]])
        split = layer.relevance([x], y, r, MaxPoolTies("split"))[0]
        np.testing.assert_array_equal(split, [[[[0, 8, 1, 1], [0, 0, 1, 1]]]])
        for rule in (MaxPoolTies("first"), None):
            first = layer.relevance([x], y, r, rule)[0]
            np.testing.assert_array_equal(first, [[[[0, 8, 4, 0], [0, 0, 0, 0]]]])
        return
    # compiled: the start relevance is f(x) at the target (5 or 2); the gradient takes the first maximum only
    model = onnx_model([helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2],
                                         strides=[2, 2])], [1, 1, 2, 4], "y")
    split = compiled_relevance(model, x, rules={"pool": MaxPoolTies("split")})
    first = compiled_relevance(model, x, rules={"pool": MaxPoolTies("first")})
    gradient = compiled_relevance(model, x, "gradient")
    np.testing.assert_array_equal(split(0), [[[[0, 5, 0, 0], [0, 0, 0, 0]]]])
    np.testing.assert_array_equal(split(1), [[[[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]]]])
    np.testing.assert_array_equal(first(1), [[[[0, 0, 2, 0], [0, 0, 0, 0]]]])
    np.testing.assert_array_equal(gradient(1), [[[[0, 0, 1, 0], [0, 0, 0, 0]]]])


def test_avgpool_is_the_proportional_rule_of_its_averaging_matrix():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 1.0, (1, 2, 5, 5))
    layer = AvgPool(Window((3, 3), (2, 2), (1, 1, 1, 1)), count_include_pad=False)
    y = layer.forward(x)
    r = rng.standard_normal(y.shape)
    got = layer.relevance([x], y, r, None)[0].ravel()
    size = x.size
    matrix = np.array([layer.forward(np.eye(size)[k].reshape(x.shape)).ravel() for k in range(size)])
    contrib = x.ravel()[:, None] * matrix
    want = (contrib / (contrib.sum(0) + 1e-6) * r.ravel()).sum(1)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_global_avgpool_and_add_split_proportionally():
    x = np.array([[[[1.0, 3.0]]]])
    gap = GlobalAvgPool()
    got = gap.relevance([x], gap.forward(x), np.array([[[[4.0]]]]), None)[0]
    np.testing.assert_allclose(got, [[[[1.0, 3.0]]]], rtol=1e-6)
    a, b = np.array([[2.0, -1.0]]), np.array([[2.0, 3.0]])
    add = Add()
    ra, rb = add.relevance([a, b], add.forward(a, b), np.array([[8.0, 4.0]]), None)
    np.testing.assert_allclose(ra, [[4.0, -2.0]], rtol=1e-6)
    np.testing.assert_allclose(rb, [[4.0, 6.0]], rtol=1e-6)


def test_add_with_broadcast_operand_sums_its_relevance():
    a, b = np.ones((1, 2, 2, 2)), np.full((1, 2, 1, 1), 1.0)
    add = Add()
    _, rb = add.relevance([a, b], add.forward(a, b), np.ones((1, 2, 2, 2)), None)
    np.testing.assert_allclose(rb, np.full((1, 2, 1, 1), 2.0), rtol=1e-6)


def test_concat_splits_by_slice_and_drops_constant_parts():
    a, b = np.ones((1, 2)), np.ones((1, 3))
    layer = Concat(1, [0, np.zeros((1, 1)), 1])
    ra, rb = layer.relevance([a, b], layer.forward(a, b), np.arange(6.0).reshape(1, 6), None)
    np.testing.assert_array_equal(ra, [[0, 1]])
    np.testing.assert_array_equal(rb, [[3, 4, 5]])


def bias_free_dag(rng):
    """Conv -> Relu -> (branch: Conv) + skip -> MaxPool -> Flatten -> Dense, all without biases."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Add", ["r2", "r1"], ["s"]),
        helper.make_node("AveragePool", ["s"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "w3"], ["y"], name="fc"),
    ]
    inits = {"w1": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "w2": rng.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.3,
             "w3": rng.standard_normal((4 * 4 * 4, 5)).astype(np.float32) * 0.2}
    return onnx_model(nodes, [1, 3, 8, 8], "y", inits)


@pytest.mark.parametrize("engine,precision", [("numpy", "float64"), ("onnxruntime", "float32")])
@pytest.mark.parametrize("rule", ["z", "epsilon:1e-9"])
def test_bias_free_network_conserves(tmp_path, rule, engine, precision):
    rng = np.random.default_rng(5)
    model = api.load_model(save_model(bias_free_dag(rng), tmp_path / "dag.onnx"))
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    expl = api.explain_array(model, x, api.Settings(rule=rule, precision=precision, engine=engine))[0]
    assert expl.extra["engine"] == engine
    assert expl.propagation.f_x > 0
    assert abs(expl.relevance.sum() - expl.propagation.f_x) <= 1e-5 * abs(expl.propagation.f_x)
    for record in expl.propagation.layers:
        if record.op != "Add":  # the Add's relevance_sum covers both operands; the skip branch rejoins later
            continue
        assert record.relevance_sum == pytest.approx(expl.propagation.f_x, rel=1e-5)


def test_layer_records_agree_with_an_independent_sum(tmp_path):
    rng = np.random.default_rng(6)
    path = save_model(bias_free_dag(rng), tmp_path / "dag.onnx")
    graph = import_onnx(path).astype(np.float64)
    x = rng.standard_normal((1, 3, 8, 8))
    values = graph.forward(x)
    rules = {n.name: Epsilon(0.01) for n in graph.linear_nodes()}
    result = propagate(graph, values, 2, rules)
    fc = graph.nodes[-1]
    scores = values[graph.output_name][0]
    r_out = np.zeros_like(scores)
    r_out[2] = scores[2]
    independent = Epsilon(0.01).relevance(fc.layer, values[fc.inputs[0]], values[fc.output], r_out[None]).sum()
    assert result.layers[0].name == fc.name
    assert result.layers[0].relevance_sum == pytest.approx(independent, rel=1e-12)
    assert result.f_x == pytest.approx(scores[2])


@pytest.mark.parametrize("engine,precision,rtol,atol", [("numpy", "float64", 1e-5, 1e-7),
                                                        ("onnxruntime", "float32", 1e-4, 1e-5)])
def test_gradient_methods_match_finite_differences(tmp_path, engine, precision, rtol, atol):
    rng = np.random.default_rng(7)
    model = api.load_model(save_model(bias_free_dag(rng), tmp_path / "dag.onnx"))
    x = rng.standard_normal((1, 3, 8, 8))
    graph = model.graph_for("float64")
    target = 1

    def score(v):
        return graph.forward(v)[graph.output_name][0, target]
    step = 1e-6
    numeric = np.zeros(x.size)
    for k in range(x.size):
        e = np.zeros(x.size)
        e[k] = step
        numeric[k] = (score(x + e.reshape(x.shape)) - score(x - e.reshape(x.shape))) / (2 * step)
    settings = api.Settings(method="gradient", target=str(target), precision=precision, engine=engine)
    gradient = api.explain_array(model, x.astype(np.float32), settings)[0].relevance
    np.testing.assert_allclose(gradient.ravel(), numeric, rtol=rtol, atol=atol)
    settings.method = "gradient-x-input"
    gxi = api.explain_array(model, x.astype(np.float32), settings)[0].relevance
    np.testing.assert_allclose(gxi, gradient * x.astype(np.float32), rtol=1e-12 if engine == "numpy" else 1e-6)
