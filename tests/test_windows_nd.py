"""Convolutions and poolings over 1 and 3 spatial axes (signals, sequences, volumes), as well as 2.

- Every Conv/ConvTranspose rule against the float64 brute force of test_rules (explicit weight matrix, a loop
  over output neurons): NumPy 1e-9 relative, compiled 1e-4 of max |R| (float32 weights and input).
- Poolings against brute forces written over the explicit window membership (which input feeds which output):
  max (first maximum or split ties), average (z-rule), Lp (|x|^p shares), global max/average. 1e-9 (float64).
- The ONNX forward against onnxruntime (1e-5), and the compiled engine against the NumPy engine (float32, 1e-4 of
  max |R|) for LRP and the gradient.
"""

import numpy as np
import pytest
from onnx import helper

from conftest import compiled_relevance, onnx_model, save_model
from lrp_cli.importers.onnx_import import import_onnx
from lrp_cli.ir import layers as L
from lrp_cli.ir.windows import Window
from lrp_cli.methods.gradient import input_gradient
from lrp_cli.propagate import propagate
from lrp_cli.rules import Epsilon, MaxPoolTies
from test_onnx_import import assert_matches_onnxruntime
from test_rules import RULES, check_against_brute_force, explicit_matrix, messages, stab

SHAPES = {1: (1, 3, 11), 3: (1, 3, 4, 5, 6)}


def _conv(rng, rank, out, group=1, bias=True, kernel=3, **window):
    w = rng.standard_normal((out, 3 // group) + (kernel,) * rank)
    return L.Conv(w, rng.standard_normal(out) if bias else None, Window((kernel,) * rank, **window), group)


def conv_layers(rng, rank):
    """Returns Conv layers over `rank` spatial axes: padded, strided, depthwise, dilated."""
    return [
        _conv(rng, rank, 4, pads=(1,) * 2 * rank),
        _conv(rng, rank, 4, bias=False, strides=(2,) * rank, pads=(0,) * rank + (1,) * rank),
        _conv(rng, rank, 3, group=3, pads=(1,) * 2 * rank),
        _conv(rng, rank, 2, kernel=2, dilations=(2,) * rank, pads=(1,) * 2 * rank),
    ]


def conv_transpose_layer(rng, rank):
    """Returns a strided, padded ConvTranspose over `rank` axes and the input shape it reads."""
    shape = SHAPES[rank]
    window = Window((3,) * rank, (2,) * rank, (1,) * rank + (0,) * rank)
    out = tuple(2 * (n - 1) + 3 - 1 for n in shape[2:])
    return L.ConvTranspose(rng.standard_normal((3, 2) + (3,) * rank), rng.standard_normal(2), window, 1, out)


@pytest.mark.parametrize("rank,engine", [(1, "numpy"), (3, "numpy"), (1, "onnxruntime"),
                                         pytest.param(3, "onnxruntime", marks=pytest.mark.slow)])
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.spec())
def test_conv_rules_match_brute_force(rule, rank, engine):
    rng = np.random.default_rng(rank)
    layers = conv_layers(rng, rank) + [conv_transpose_layer(rng, rank)]
    if engine == "onnxruntime":
        layers = layers[::2]  # one plain and one depthwise conv, and the transposed one: enough for the emitters
    for k, layer in enumerate(layers):
        x = rng.standard_normal(SHAPES[rank])
        if rank == 3 and engine == "numpy":
            x = x[:, :, :3, :4, :4]  # the brute force's dense matrix grows as the square of the input
        check_against_brute_force(rule, layer, x, engine, k, targets=2)


def membership(window: Window, x_shape) -> np.ndarray:
    """Returns the [I, J] 0/1 matrix of which input element each window (output element) covers, from a
    depthwise convolution of ones (padding covers nothing)."""
    channels = x_shape[1]
    ones = L.Conv(np.ones((channels, 1) + window.kernel), None, window, channels)
    return explicit_matrix(ones, x_shape)[0]


def brute_pool(layer, x, r, policy="first"):
    """Returns each pooling's relevance from the explicit window membership, a loop over windows."""
    window = L.global_window(x.shape[2:]) if layer.op == "GlobalMaxPool" else getattr(layer, "window", None)
    xf, rf = x.ravel(), r.ravel()
    if isinstance(layer, L.MaxPool):
        m = membership(window, x.shape)
        out = np.zeros_like(xf)
        for j in range(m.shape[1]):
            inside = np.flatnonzero(m[:, j])
            best = inside[xf[inside] == xf[inside].max()]
            out[best if policy == "split" else best[:1]] += rf[j] / (len(best) if policy == "split" else 1)
        return out
    if isinstance(layer, L.LpPool):
        contrib = np.abs(xf)[:, None] ** layer.p * membership(window, x.shape)
        return messages(contrib, stab(contrib.sum(0)), rf)
    m, _ = explicit_matrix(layer, x.shape)  # average poolings are linear: the z-rule on their matrix
    contrib = xf[:, None] * m
    return messages(contrib, stab(contrib.sum(0)), rf)


def pool_layers(rank):
    """Returns pooling layers over `rank` spatial axes (strided, padded, ceil mode, count_include_pad)."""
    k, s = (2,) * rank, (2,) * rank
    padded = Window((3,) * rank, s, (1,) * 2 * rank)
    return [
        L.MaxPool(Window(k, s)), L.MaxPool(Window((3,) * rank, s, (1,) * 2 * rank, ceil_mode=True)),
        L.AvgPool(padded, count_include_pad=False), L.AvgPool(padded, count_include_pad=True),
        L.LpPool(Window(k, (1,) * rank), 2.0), L.LpPool(padded, 3.0),
        L.GlobalAvgPool(), "global-max",
    ]


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_pools_match_brute_force(rank):
    rng = np.random.default_rng(10 + rank)
    smooth = rng.standard_normal(SHAPES.get(rank, (1, 2, 5, 6)))
    for layer in pool_layers(rank):
        if layer == "global-max":
            layer = L.MaxPool(L.global_window(smooth.shape[2:]), "GlobalMaxPool")
        # rounding makes ties for max pooling; sums near zero would leave the z-rule's stabilizer sign to chance
        x = np.round(smooth, 1) if isinstance(layer, L.MaxPool) else smooth
        y = layer.forward(x)
        r = rng.standard_normal(y.shape)
        policies = MaxPoolTies.POLICIES if isinstance(layer, L.MaxPool) else ("first",)
        for policy in policies:
            got = layer.relevance([x], y, r, MaxPoolTies(policy))[0]
            want = brute_pool(layer, x, r, policy)
            np.testing.assert_allclose(got.ravel(), want, rtol=1e-9, atol=1e-9, err_msg=f"{layer.op} {policy}")


def test_lppool_gradient_matches_finite_differences():
    """Central differences of a p = 3 Lp pool, step 1e-6, agree to 1e-6 (float64, no input near zero)."""
    rng = np.random.default_rng(4)
    layer = L.LpPool(Window((3,), (2,), (1, 1)), 3.0)
    x = rng.uniform(0.2, 1.0, (1, 2, 9)) * rng.choice([-1, 1], (1, 2, 9))
    y = layer.forward(x)
    g = rng.standard_normal(y.shape)
    got = layer.gradient([x], y, g)[0].ravel()
    step = 1e-6
    want = [((layer.forward(x + step * e.reshape(x.shape)) - layer.forward(x - step * e.reshape(x.shape))) * g)
            .sum() / (2 * step) for e in np.eye(x.size)]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


def pooling_nodes(rank):
    """Returns ONNX pooling nodes over `rank` spatial axes reading x and writing y."""
    k, s, p = [2] * rank, [2] * rank, [1] * 2 * rank
    return [
        helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3] * rank, strides=s, pads=p, ceil_mode=1),
        helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3] * rank, strides=s, pads=p),
        helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=k, strides=s, count_include_pad=1, pads=p),
        helper.make_node("LpPool", ["x"], ["y"], kernel_shape=k, strides=[1] * rank, p=2),
        helper.make_node("GlobalMaxPool", ["x"], ["y"]),
        helper.make_node("GlobalAveragePool", ["x"], ["y"]),
    ]


@pytest.mark.parametrize("rank", [1, 3])
def test_onnx_windows_match_onnxruntime(tmp_path, rank):
    rng = np.random.default_rng(rank)
    shape = list(SHAPES[rank])
    w = rng.standard_normal((4, 3) + (3,) * rank).astype(np.float32)
    convs = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 2 * rank, strides=[2] * rank),
             helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2] * rank),
             helper.make_node("ConvTranspose", ["x", "wt"], ["y"], strides=[2] * rank, output_padding=[1] * rank)]
    inits = {"w": w, "wt": rng.standard_normal((3, 2) + (3,) * rank).astype(np.float32)}
    for node in convs + pooling_nodes(rank):
        used = {k: v for k, v in inits.items() if k in node.input}
        graph = assert_matches_onnxruntime(onnx_model([node], shape, initializers=used), tmp_path)
        assert graph.nodes[0].op == node.op_type


def pool_net(rank, pool):
    """Returns Conv -> Relu -> pool -> Flatten -> Gemm over `rank` spatial axes, 3 classes."""
    rng = np.random.default_rng(rank)
    shape = list(SHAPES[rank])
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1] * 2 * rank),
             helper.make_node("Relu", ["c"], ["a"]), pool,
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "d"], ["y"], name="dense")]
    inits = {"w": rng.standard_normal((4, 3) + (3,) * rank).astype(np.float32),
             "b": rng.standard_normal(4).astype(np.float32)}
    flat = int(np.prod(import_onnx("<memory>", model=onnx_model(nodes[:3], shape, "p", inits)).shapes["p"]))
    inits["d"] = rng.standard_normal((flat, 3)).astype(np.float32)
    return onnx_model(nodes, shape, initializers=inits), rng.standard_normal(shape).astype(np.float32)


def _pools(rank):
    """Returns the pooling nodes reading a and writing p, and a max over all spatial axes that drops them (max over
    time, as the NLP CNN pools)."""
    max_all = helper.make_node("ReduceMax", ["a"], ["p"], name="pool", axes=list(range(2, 2 + rank)), keepdims=0)
    return [helper.make_node(n.op_type, ["a"], ["p"], name="pool", **{a.name: helper.get_attribute_value(a)
                                                                      for a in n.attribute})
            for n in pooling_nodes(rank)] + [max_all]


@pytest.mark.parametrize("method", ["lrp", "gradient"])
@pytest.mark.parametrize("rank", [1, 3])
def test_compiled_matches_numpy(tmp_path, rank, method):
    """float32 compiled pass against the NumPy walk in float64 on the same float32 weights: 1e-4 of max |R|."""
    for pool in _pools(rank):
        model, x = pool_net(rank, pool)
        graph = import_onnx(save_model(model, tmp_path / "m.onnx"))
        values = graph.forward(x.astype(np.float64))
        target = int(np.argmax(values[graph.output_name]))
        if method == "lrp":
            rules = {"conv": Epsilon(0.01), "dense": Epsilon(0.01), "pool": MaxPoolTies("split")}
            want = propagate(graph, values, target, rules).relevance
            got = compiled_relevance(model, x, rules=rules)(target)
        else:
            want = input_gradient(graph, values, target).relevance
            got = compiled_relevance(model, x, "gradient")(target)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=pool.op_type)


@pytest.mark.parametrize("rank", [1, 3])
def test_bias_free_epsilon_net_conserves(rank):
    """LRP-0 through conv, ReLU, a max or Lp or average pool and a dense layer without biases keeps the sum of
    relevance equal to f(x): 1e-5 relative (float64), as the poolings' fixed stabilizer 1e-6 (zennit's Norm) absorbs
    about 1e-6 / |y| of a window's relevance."""
    for pool in _pools(rank):
        model, x = pool_net(rank, pool)
        model.graph.node[0].input.pop()
        graph = import_onnx("<memory>", model=model)
        values = graph.forward(x.astype(np.float64))
        target = int(np.argmax(values[graph.output_name]))
        result = propagate(graph, values, target, {"conv": Epsilon(1e-12), "dense": Epsilon(1e-12)})
        assert result.relevance.sum() == pytest.approx(result.f_x, rel=1e-5), pool.op_type
