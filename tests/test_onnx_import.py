"""ONNX import: every converter's IR forward equals onnxruntime; folding; errors that name the node."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from conftest import REPO, onnx_model, save_model, shared_path, tiny_cnn
from lrp_cli.errors import ModelLoadError
from lrp_cli.importers.onnx_import import import_onnx

RNG = np.random.default_rng(0)


def f32(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def assert_matches_onnxruntime(model, tmp_path, tol=1e-5):
    path = save_model(model, tmp_path / "m.onnx")
    graph = import_onnx(path)
    x = f32(*graph.input_shape)
    got = graph.forward(x)[graph.output_name]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = session.run(None, {graph.input_name: x})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, np.abs(want).max()))
    return graph


CONV_CASES = [
    dict(pads=[1, 1, 1, 1]),
    dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(auto_pad="SAME_LOWER", strides=[2, 2]),
    dict(auto_pad="VALID", dilations=[2, 2]),
    dict(pads=[0, 1, 2, 1], strides=[2, 1]),
]


@pytest.mark.parametrize("attrs", CONV_CASES, ids=str)
@pytest.mark.parametrize("group", [1, 2, 4])
def test_conv_variants(tmp_path, attrs, group):
    w, b = f32(8, 4 // group, 3, 3), f32(8)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], group=group, **attrs)
    assert_matches_onnxruntime(onnx_model([node], [1, 4, 11, 10], initializers={"w": w, "b": b}), tmp_path)


def test_depthwise_conv_without_bias(tmp_path):
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=6, pads=[2, 2, 2, 2])
    assert_matches_onnxruntime(onnx_model([node], [1, 6, 9, 9], initializers={"w": f32(6, 1, 5, 5)}), tmp_path)


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[2, 2], strides=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2]),
], ids=str)
def test_maxpool_variants(tmp_path, attrs):
    node = helper.make_node("MaxPool", ["x"], ["y"], **attrs)
    assert_matches_onnxruntime(onnx_model([node], [1, 3, 10, 9]), tmp_path)


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[2, 2], strides=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0),
    dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, pads=[1, 0, 1, 0], count_include_pad=1),
], ids=str)
def test_avgpool_variants(tmp_path, attrs):
    node = helper.make_node("AveragePool", ["x"], ["y"], **attrs)
    assert_matches_onnxruntime(onnx_model([node], [1, 3, 10, 9]), tmp_path)


@pytest.mark.parametrize("attrs,a_shape,b_shape", [
    (dict(), (1, 6), (6, 4)),
    (dict(transB=1, alpha=0.5, beta=2.0), (1, 6), (4, 6)),
    (dict(transA=1), (6, 1), (6, 4)),
])
def test_gemm(tmp_path, attrs, a_shape, b_shape):
    node = helper.make_node("Gemm", ["x", "w", "c"], ["y"], **attrs)
    model = onnx_model([node], list(a_shape), initializers={"w": f32(*b_shape), "c": f32(1, 4)})
    assert_matches_onnxruntime(model, tmp_path)


def test_matmul_bias_folds_into_dense(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    graph = assert_matches_onnxruntime(onnx_model(nodes, [1, 5], initializers={"w": f32(5, 3), "b": f32(3)}),
                                       tmp_path)
    assert [n.layer.op for n in graph.nodes] == ["Dense"]


def test_batchnorm_folds_into_conv_and_stays_affine_elsewhere(tmp_path):
    bn = {"g": f32(3) + 2, "be": f32(3), "mu": f32(3), "var": np.abs(f32(3)) + 0.5}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "be", "mu", "var"], ["n"], epsilon=1e-3),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("BatchNormalization", ["r", "g", "be", "mu", "var"], ["y"]),
    ]
    graph = assert_matches_onnxruntime(onnx_model(nodes, [1, 3, 5, 5], initializers={"w": f32(3, 3, 3, 3), **bn}),
                                       tmp_path)
    assert [n.layer.op for n in graph.nodes] == ["Conv", "Relu", "BatchNormalization"]


def test_conv_feeding_two_consumers_is_not_folded(tmp_path):
    bn = {"g": f32(3) + 2, "be": f32(3), "mu": f32(3), "var": np.abs(f32(3)) + 0.5}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("BatchNormalization", ["c", "g", "be", "mu", "var"], ["n"]),
        helper.make_node("Add", ["c", "n"], ["y"]),
    ]
    graph = assert_matches_onnxruntime(onnx_model(nodes, [1, 3, 5, 5], initializers={"w": f32(3, 3, 1, 1), **bn}),
                                       tmp_path)
    assert [n.layer.op for n in graph.nodes] == ["Conv", "BatchNormalization", "Add"]


@pytest.mark.parametrize("op,attrs", [("Relu", {}), ("Tanh", {}), ("Sigmoid", {}), ("LeakyRelu", {"alpha": 0.2})])
def test_activations(tmp_path, op, attrs):
    assert_matches_onnxruntime(onnx_model([helper.make_node(op, ["x"], ["y"], **attrs)], [1, 4, 3, 3]), tmp_path)


def test_clip_with_attributes_and_with_inputs(tmp_path):
    old = onnx_model([helper.make_node("Clip", ["x"], ["y"], min=0.0, max=0.5)], [1, 8], opset=6)
    assert_matches_onnxruntime(old, tmp_path)
    new = onnx_model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], [1, 8],
                     initializers={"lo": np.float32(0), "hi": np.float32(6)})
    assert_matches_onnxruntime(new, tmp_path)


def test_shape_subgraph_reshape_folds(tmp_path):
    # The exporter pattern x.view(x.size(0), -1): Shape -> Gather -> Unsqueeze -> Concat -> Reshape.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    inits = {"zero": np.array(0, np.int64), "axes": np.array([0], np.int64), "minus1": np.array([-1], np.int64)}
    graph = assert_matches_onnxruntime(onnx_model(nodes, ["N", 2, 3, 4], initializers=inits), tmp_path)
    assert graph.shapes[graph.output_name] == (1, 24)
    assert [n.layer.op for n in graph.nodes] == ["Reshape"]


def test_squeeze_unsqueeze_transpose_flatten(tmp_path):
    nodes = [
        helper.make_node("Unsqueeze", ["x", "ax"], ["u"]),
        helper.make_node("Transpose", ["u"], ["t"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Squeeze", ["t", "ax2"], ["s"]),
        helper.make_node("Flatten", ["s"], ["y"], axis=2),
    ]
    inits = {"ax": np.array([1], np.int64), "ax2": np.array([2], np.int64)}
    assert_matches_onnxruntime(onnx_model(nodes, [1, 3, 4, 5], initializers=inits), tmp_path)


def test_residual_add_and_concat(tmp_path):
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Add", ["r", "x"], ["s"]),
        helper.make_node("Concat", ["s", "x"], ["y"], axis=1),
    ]
    graph = assert_matches_onnxruntime(onnx_model(nodes, [1, 3, 5, 5], initializers={"w": f32(3, 3, 3, 3)}),
                                       tmp_path)
    assert [n.layer.op for n in graph.nodes] == ["Conv", "Relu", "Add", "Concat"]


def test_softmax_at_output_is_stripped(tmp_path):
    path = save_model(tiny_cnn(), tmp_path / "t.onnx")
    graph = import_onnx(path)
    # The bias Add folded into the MatMul, so the explained tensor is the Dense output.
    assert graph.output_name == graph.nodes[-1].output and graph.nodes[-1].layer.op == "Dense"
    assert "stripped output Softmax" in graph.notes[0]


def test_log_softmax_inside_the_network_is_an_error(tmp_path):
    nodes = [helper.make_node("LogSoftmax", ["x"], ["s"], name="inner"), helper.make_node("Relu", ["s"], ["y"])]
    with pytest.raises(ModelLoadError, match="node 'inner' \\(LogSoftmax\\)"):
        import_onnx(save_model(onnx_model(nodes, [1, 4]), tmp_path / "m.onnx"))


def test_unsupported_op_names_op_node_and_supported_list(tmp_path):
    nodes = [helper.make_node("Hardmax", ["x"], ["y"], name="weird")]
    with pytest.raises(ModelLoadError) as info:
        import_onnx(save_model(onnx_model(nodes, [1, 4], opset=13), tmp_path / "m.onnx"))
    message = str(info.value)
    assert "unsupported op Hardmax at node 'weird'" in message and "Conv" in message and "\n" not in message


def test_unreadable_model_is_a_load_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not protobuf at all" * 10)
    with pytest.raises(ModelLoadError, match="bad.onnx"):
        import_onnx(bad)


def test_opset7_graph_inputs_listing_initializers(tmp_path):
    w = f32(2, 3, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)])
    model.ir_version = 3
    assert_matches_onnxruntime(model, tmp_path)


BUNDLED = sorted((REPO / "models").glob("*.onnx"))


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_bundled_models_match_onnxruntime(path):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()
    # batch 1; any other symbolic dimension (a text model's length) 12 tokens
    shape = tuple(d if isinstance(d, int) else 1 if axis == 0 else 12 for axis, d in enumerate(given.shape))
    graph = import_onnx(path, input_shape=shape)
    if given.type == "tensor(int64)":  # token ids into an embedding table
        table = next(node.layer for node in graph.nodes if node.op == "Gather")
        fed = RNG.integers(0, table.table.shape[0], shape)
        x = fed.astype(np.float32)  # the IR reads ids as exact floats
    else:
        fed = x = RNG.uniform(0, 1, graph.input_shape).astype(np.float32)
    want = session.run(None, {graph.input_name: fed})[0]
    got = graph.forward(x)[graph.output_name]
    if any(note.startswith("stripped") for note in graph.notes):  # stripped softmax: compare probabilities
        got = np.exp(got - got.max(axis=1, keepdims=True))
        got /= got.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-5 * max(1, np.abs(want).max()))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lenet5_mnist.onnx", "squeezenet1.1.onnx", "mobilenet_v2_1.0_224.onnx"])
def test_shared_models_match_onnxruntime(name):
    path = shared_path("models", name)
    graph = import_onnx(path)
    x = RNG.standard_normal(graph.input_shape).astype(np.float32)
    model = onnx.load(str(path))
    model.graph.output.append(helper.make_empty_tensor_value_info(graph.output_name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {graph.input_name: x})[-1]
    got = graph.forward(x)[graph.output_name]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
