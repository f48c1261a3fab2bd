"""Ops with no test before issue 12: IR forward == onnxruntime, and the relevance behaviour docs/ops.md gives.

Element routing (DepthToSpace, SpaceToDepth, Tile, Expand, Upsample) moves relevance by the same index map,
copies of one input summing on it; Sum splits in proportion; constant Sub/Div/Mul fold into the preceding
linear layer or stay an affine pass-through; LogSoftmax at the output, Identity and Size disappear; a
HardSigmoid output is a gate whose product sends all relevance to the signal.
"""

import numpy as np
import pytest
from onnx import helper

from conftest import onnx_model, save_model
from lrp_cli.errors import ModelLoadError
from lrp_cli.importers.onnx_import import import_onnx
from test_onnx_import import assert_matches_onnxruntime, f32

I64 = np.int64
RNG = np.random.default_rng(12)


def only_layer(graph):
    """Returns the single layer of a one-node graph."""
    assert len(graph.nodes) == 1, [n.op for n in graph.nodes]
    return graph.nodes[0].layer


def input_relevance(layer, x, r):
    return layer.relevance([x], layer.forward(x), r, None)[0]


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space_and_back_route_relevance_by_position(tmp_path, mode):
    d2s = assert_matches_onnxruntime(
        onnx_model([helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode=mode)], [1, 8, 2, 3]),
        tmp_path)
    layer = only_layer(d2s)
    x = RNG.standard_normal((1, 8, 2, 3))
    r = RNG.standard_normal((1, 2, 4, 6))
    # DCR: y[c, 2h + i, 2w + j] = x[(2i + j) * C + c, h, w]; CRD: x[c * 4 + 2i + j, h, w].
    blocks = r.reshape(1, 2, 2, 2, 3, 2).transpose(0, 3, 5, 1, 2, 4)  # [n, i, j, c, h, w]
    if mode == "CRD":
        blocks = blocks.transpose(0, 3, 1, 2, 4, 5)  # [n, c, i, j, h, w]
    np.testing.assert_array_equal(input_relevance(layer, x, r), blocks.reshape(1, 8, 2, 3))
    s2d = assert_matches_onnxruntime(
        onnx_model([helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2)], [1, 2, 4, 6]), tmp_path)
    back = only_layer(s2d)
    # SpaceToDepth is DCR DepthToSpace's inverse: relevance goes back the way the elements came.
    r_small = RNG.standard_normal((1, 8, 2, 3))
    if mode == "DCR":
        np.testing.assert_array_equal(input_relevance(back, layer.forward(r_small), r_small),
                                      layer.forward(r_small))


def test_tile_sums_the_relevance_of_every_copy(tmp_path):
    node = helper.make_node("Tile", ["x", "reps"], ["y"])
    graph = assert_matches_onnxruntime(onnx_model([node], [1, 2, 3], initializers={"reps": np.array([1, 2, 3], I64)}),
                                       tmp_path)
    layer = only_layer(graph)
    x = RNG.standard_normal((1, 2, 3))
    r = RNG.standard_normal((1, 4, 9))
    want = r.reshape(1, 2, 2, 3, 3).sum(axis=(1, 3))  # [n, copy_h, h, copy_w, w]
    np.testing.assert_allclose(input_relevance(layer, x, r), want, rtol=1e-12)


def test_expand_sums_the_relevance_over_the_broadcast_axes(tmp_path):
    node = helper.make_node("Expand", ["x", "shape"], ["y"])
    graph = assert_matches_onnxruntime(onnx_model([node], [1, 3, 1], initializers={"shape": np.array([2, 1, 3, 4],
                                                                                                    I64)}), tmp_path)
    layer = only_layer(graph)
    r = RNG.standard_normal((2, 1, 3, 4))
    np.testing.assert_allclose(input_relevance(layer, RNG.standard_normal((1, 3, 1)), r),
                               r.sum(axis=(0, 3)).reshape(1, 3, 1), rtol=1e-12)


# Upsample is read through ONNX's reference evaluator, which runs only the opset-9 form (scales as an input) in
# nearest mode: opset-7 attribute scales and mode="linear" are refused at load time (docs/ops.md: Upsample nearest).
def test_upsample_nearest_gives_each_pixel_its_block(tmp_path):
    model = onnx_model([helper.make_node("Upsample", ["x", "s"], ["y"], mode="nearest")], [1, 2, 3, 2], opset=9,
                       initializers={"s": np.array([1, 1, 2, 3], np.float32)})
    layer = only_layer(assert_matches_onnxruntime(model, tmp_path))
    x = RNG.uniform(0.5, 1.5, (1, 2, 3, 2))
    r = RNG.standard_normal((1, 2, 6, 6))
    # z-rule with copies: each input pixel gets the sum over its 2x3 block (up to the 1e-6-relative stabilizer).
    np.testing.assert_allclose(input_relevance(layer, x, r), r.reshape(1, 2, 3, 2, 2, 3).sum(axis=(3, 5)),
                               rtol=1e-5, atol=1e-6)


def test_upsample_linear_is_refused_with_the_node_named(tmp_path):
    model = onnx_model([helper.make_node("Upsample", ["x", "s"], ["y"], name="up", mode="linear")], [1, 1, 3, 4],
                       opset=9, initializers={"s": np.array([1, 1, 2, 2], np.float32)})
    with pytest.raises(ModelLoadError, match="node 'up' \\(Upsample\\): cannot evaluate"):
        import_onnx(save_model(model, tmp_path / "m.onnx"))


def test_sum_of_activations_splits_relevance_in_proportion(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"]),
             helper.make_node("Sum", ["a", "b", "x"], ["y"], name="sum3")]
    graph = assert_matches_onnxruntime(onnx_model(nodes, [1, 5]), tmp_path)
    assert [n.op for n in graph.nodes] == ["Relu", "Sigmoid", "Sum"]
    layer = graph.nodes[-1].layer
    x = np.array([[1.0, -2.0, 0.5, 3.0, -0.1]])
    parts = [np.maximum(x, 0), 1 / (1 + np.exp(-x)), x]
    y = layer.forward(*parts)
    r = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]])
    shares = layer.relevance(parts, y, r, None)
    for part, share in zip(parts, shares):  # z-rule; the stabilizer shifts y by ~1e-6 relative
        np.testing.assert_allclose(share, part / y * r, rtol=1e-5)
    np.testing.assert_allclose(sum(shares), r, rtol=1e-5)


def test_sum_with_a_constant_folds_into_the_dense_bias(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Sum", ["m", "c", "d"], ["y"])]
    inits = {"w": f32(4, 3), "c": f32(3), "d": f32(1, 3)}
    graph = assert_matches_onnxruntime(onnx_model(nodes, [1, 4], initializers=inits), tmp_path)
    assert [n.layer.op for n in graph.nodes] == ["Dense"]


@pytest.mark.parametrize("op,constant_first", [("Sub", False), ("Sub", True), ("Div", False), ("Mul", False),
                                               ("Mul", True)])
def test_sub_div_mul_by_a_per_channel_constant_fold_into_the_conv(tmp_path, op, constant_first):
    const = (np.abs(f32(1, 4, 1, 1)) + 0.5).astype(np.float32)
    operands = ["k", "c"] if constant_first else ["c", "k"]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node(op, operands, ["y"])]
    model = onnx_model(nodes, [1, 3, 5, 5], initializers={"w": f32(4, 3, 3, 3), "b": f32(4), "k": const})
    graph = assert_matches_onnxruntime(model, tmp_path)
    assert [n.layer.op for n in graph.nodes] == ["Conv"]
    assert graph.output_name == "y"


@pytest.mark.parametrize("op,constant_first", [("Sub", False), ("Sub", True), ("Div", False), ("Mul", True)])
def test_constant_scalings_of_an_activation_pass_relevance_unchanged(tmp_path, op, constant_first):
    operands = ["k", "r"] if constant_first else ["r", "k"]
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node(op, operands, ["y"], name="scale")]
    graph = assert_matches_onnxruntime(onnx_model(nodes, [1, 3, 2, 2], initializers={"k": np.float32(2.5)}),
                                       tmp_path)
    layer = graph.nodes[-1].layer
    assert [n.op for n in graph.nodes] == ["Relu", op] and layer.op == op
    r = RNG.standard_normal((1, 3, 2, 2))
    np.testing.assert_array_equal(input_relevance(layer, RNG.standard_normal((1, 3, 2, 2)), r), r)


def test_constant_divided_by_an_activation_is_an_error(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Div", ["k", "r"], ["y"], name="inv")]
    with pytest.raises(ModelLoadError, match="'inv'.*division of a constant by an activation"):
        import_onnx(save_model(onnx_model(nodes, [1, 4], initializers={"k": np.float32(1)}), tmp_path / "m.onnx"))


def test_log_softmax_at_the_output_is_stripped(tmp_path):
    nodes = [helper.make_node("Gemm", ["x", "w"], ["z"], name="fc"),
             helper.make_node("LogSoftmax", ["z"], ["y"], name="logp", axis=1)]
    path = save_model(onnx_model(nodes, [1, 5], initializers={"w": f32(5, 3)}), tmp_path / "m.onnx")
    graph = import_onnx(path)
    assert [n.layer.op for n in graph.nodes] == ["Dense"] and graph.output_name == "z"
    assert graph.notes == ["stripped output LogSoftmax 'logp': explaining the pre-softmax score"]
    inner = [helper.make_node("LogSoftmax", ["x"], ["s"], name="inner"), helper.make_node("Relu", ["s"], ["y"])]
    with pytest.raises(ModelLoadError, match="node 'inner' \\(LogSoftmax\\)"):
        import_onnx(save_model(onnx_model(inner, [1, 4]), tmp_path / "inner.onnx"))


def test_identity_is_removed(tmp_path):
    nodes = [helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Relu", ["i"], ["j"]),
             helper.make_node("Identity", ["j"], ["y"])]
    graph = assert_matches_onnxruntime(onnx_model(nodes, [1, 4]), tmp_path)
    assert [n.op for n in graph.nodes] == ["Relu"] and graph.nodes[0].inputs == ["x"]


def test_size_folds_to_a_constant(tmp_path):
    # x.view(1, x.numel()): Size -> Unsqueeze -> Concat -> Reshape, all folded but the Reshape.
    nodes = [helper.make_node("Size", ["x"], ["n"]), helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
             helper.make_node("Concat", ["one", "n1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    inits = {"ax": np.array([0], I64), "one": np.array([1], I64)}
    graph = assert_matches_onnxruntime(onnx_model(nodes, [1, 2, 3, 4], initializers=inits), tmp_path)
    assert [n.op for n in graph.nodes] == ["Reshape"] and graph.shapes[graph.output_name] == (1, 24)


@pytest.mark.parametrize("gate_first", [False, True])
def test_hard_sigmoid_gate_sends_all_relevance_to_the_signal(tmp_path, gate_first):
    operands = ["g", "x"] if gate_first else ["x", "g"]
    nodes = [helper.make_node("HardSigmoid", ["x"], ["g"], alpha=0.3, beta=0.4),
             helper.make_node("Mul", operands, ["y"], name="gated")]
    graph = assert_matches_onnxruntime(onnx_model(nodes, [1, 6]), tmp_path)
    layer = graph.nodes[-1].layer
    assert layer.op == "Mul" and layer.signal == operands.index("x")
    x = np.array([[-4.0, -1.0, 0.0, 0.5, 1.5, 3.0]])
    gate = np.clip(0.3 * x + 0.4, 0, 1)
    r = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    xs = [gate, x] if gate_first else [x, gate]
    shares = layer.relevance(xs, layer.forward(*xs), r, None)
    np.testing.assert_array_equal(shares[operands.index("x")], r)
    assert shares[operands.index("g")] is None
