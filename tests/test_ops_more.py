"""Ops for real architectures (issue 3): IR forward == onnxruntime, and their relevance routing."""

import numpy as np
import pytest
from onnx import helper

from conftest import compiled_relevance, onnx_model, save_model
from lrp_cli import api
from lrp_cli.errors import ModelLoadError
from lrp_cli.importers.onnx_import import import_onnx
from test_onnx_import import assert_matches_onnxruntime, f32

I64 = np.int64


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_modes(tmp_path, mode):
    node = helper.make_node("Pad", ["x", "p", "v"], ["y"], mode=mode)
    inits = {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1], I64), "v": np.array(0.5, np.float32)}
    assert_matches_onnxruntime(onnx_model([node], [1, 2, 4, 5], initializers=inits), tmp_path)


def test_slice_split_gather_on_activations(tmp_path):
    nodes = [
        helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["s"]),
        helper.make_node("Split", ["s", "parts"], ["a", "b"], axis=1),
        helper.make_node("Gather", ["b", "idx"], ["g"], axis=1),
        helper.make_node("Concat", ["a", "g"], ["y"], axis=1),
    ]
    inits = {"st": np.array([1], I64), "en": np.array([7], I64), "ax": np.array([3], I64),
             "sp": np.array([2], I64), "parts": np.array([2, 2], I64), "idx": np.array([1, 0, 1], I64)}
    assert_matches_onnxruntime(onnx_model(nodes, [1, 4, 3, 8], initializers=inits), tmp_path)


@pytest.mark.parametrize("op,attrs", [("HardSigmoid", {}), ("HardSwish", {}), ("Elu", {"alpha": 0.7}),
                                      ("Selu", {}), ("Softplus", {})])
def test_more_activations(tmp_path, op, attrs):
    assert_matches_onnxruntime(onnx_model([helper.make_node(op, ["x"], ["y"], **attrs)], [1, 3, 4, 4], opset=14),
                               tmp_path)


def test_gelu_and_prelu(tmp_path):
    gelu = onnx_model([helper.make_node("Gelu", ["x"], ["y"])], [1, 6], opset=20)
    assert_matches_onnxruntime(gelu, tmp_path)
    prelu = onnx_model([helper.make_node("PRelu", ["x", "s"], ["y"])], [1, 3, 2, 2],
                       initializers={"s": f32(3, 1, 1)})
    assert_matches_onnxruntime(prelu, tmp_path)


def test_reduce_mean_spatial_and_other_axes(tmp_path):
    spatial = onnx_model([helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=1)], [1, 3, 4, 5])
    graph = assert_matches_onnxruntime(spatial, tmp_path)
    assert graph.nodes[0].layer.op == "GlobalAveragePool"
    other = onnx_model([helper.make_node("ReduceMean", ["x", "ax"], ["y"], keepdims=0)], [1, 3, 4, 5], opset=18,
                       initializers={"ax": np.array([1, 3], I64)})
    assert_matches_onnxruntime(other, tmp_path)


# align_corners only with integer scales: for a fractional scale onnxruntime and ONNX's reference evaluator
# (which the importer follows) disagree on the resized length used in the coordinate transform.
@pytest.mark.parametrize("mode,ctm,scale", [("nearest", "asymmetric", 1.5), ("linear", "half_pixel", 1.5),
                                            ("linear", "align_corners", 2.0), ("nearest", "half_pixel", 1.5)])
def test_resize_by_scales(tmp_path, mode, ctm, scale):
    node = helper.make_node("Resize", ["x", "", "sc"], ["y"], mode=mode, coordinate_transformation_mode=ctm)
    model = onnx_model([node], [1, 2, 4, 5], initializers={"sc": np.array([1, 1, 2, scale], np.float32)})
    assert_matches_onnxruntime(model, tmp_path)


def test_resize_by_sizes_downsampling(tmp_path):
    node = helper.make_node("Resize", ["x", "", "", "sz"], ["y"], mode="linear")
    model = onnx_model([node], [1, 2, 8, 6], initializers={"sz": np.array([1, 2, 3, 4], I64)})
    assert_matches_onnxruntime(model, tmp_path)


@pytest.mark.parametrize("attrs,group", [(dict(strides=[2, 2], pads=[1, 1, 1, 1]), 1),
                                         (dict(strides=[2, 2], output_padding=[1, 1]), 1),
                                         (dict(strides=[1, 1], pads=[0, 1, 0, 1]), 2)])
def test_conv_transpose(tmp_path, attrs, group):
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], group=group, **attrs)
    model = onnx_model([node], [1, 4, 5, 5], initializers={"w": f32(4, 6 // group, 3, 3), "b": f32(6)})
    assert_matches_onnxruntime(model, tmp_path)


def test_lrn_and_cast(tmp_path):
    nodes = [helper.make_node("LRN", ["x"], ["l"], size=3, alpha=1e-2, beta=0.75, bias=2.0),
             helper.make_node("Cast", ["l"], ["y"], to=1)]
    assert_matches_onnxruntime(onnx_model(nodes, [1, 5, 3, 3]), tmp_path)


@pytest.mark.parametrize("engine", ["numpy", "onnxruntime"])
def test_silu_gate_sends_all_relevance_to_the_signal(tmp_path, engine):
    nodes = [helper.make_node("Sigmoid", ["x"], ["g"]), helper.make_node("Mul", ["x", "g"], ["y"], name="silu")]
    graph = assert_matches_onnxruntime(onnx_model(nodes, [1, 4]), tmp_path)
    layer = graph.nodes[-1].layer
    x = np.array([[1.0, -2.0, 3.0, 0.5]])
    if engine == "onnxruntime":  # the start relevance is y at the target; the signal x takes all of it
        y = x / (1 + np.exp(-x))
        got = compiled_relevance(onnx_model(nodes, [1, 4]), x)(2)
        np.testing.assert_allclose(got, [[0, 0, y[0, 2], 0]], rtol=1e-6)
        return
    r = np.array([[1.0, 2.0, 3.0, 4.0]])
    signal, gate = layer.relevance([x, 1 / (1 + np.exp(-x))], None, r, None)
    np.testing.assert_array_equal(signal, r)
    assert gate is None


def test_product_of_two_plain_activations_is_an_error(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Mul", ["x", "a"], ["y"], name="sq")]
    with pytest.raises(ModelLoadError, match="'sq' \\(Mul\\).*gate"):
        import_onnx(save_model(onnx_model(nodes, [1, 4]), tmp_path / "m.onnx"))


@pytest.mark.parametrize("engine", ["numpy", "onnxruntime"])
def test_pad_relevance_of_copies_sums_on_the_source(tmp_path, engine):
    node = helper.make_node("Pad", ["x", "p"], ["y"], mode="edge")
    if engine == "onnxruntime":  # compiled: the gradient of (pad(x) . w) sums w over the copies of each x
        nodes = [node, helper.make_node("Flatten", ["y"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["s"])]
        model = onnx_model(nodes, [1, 1, 1, 2], "s", {"p": np.array([0, 0, 0, 2, 0, 0, 0, 1], I64),
                                                       "w": np.arange(1, 6, dtype=np.float32).reshape(5, 1)})
        got = compiled_relevance(model, np.array([[[[1.0, 2.0]]]]), "gradient")(0)
        np.testing.assert_array_equal(got, [[[[6.0, 9.0]]]])
        return
    graph = import_onnx(save_model(onnx_model([node], [1, 1, 1, 2],
                                              initializers={"p": np.array([0, 0, 0, 2, 0, 0, 0, 1], I64)}),
                                   tmp_path / "m.onnx"))
    layer = graph.nodes[0].layer
    x = np.array([[[[1.0, 2.0]]]])
    r = np.array([[[[1.0, 2.0, 3.0, 4.0, 5.0]]]])  # y = [1, 1, 1, 2, 2]
    np.testing.assert_array_equal(layer.relevance([x], layer.forward(x), r, None)[0], [[[[6.0, 9.0]]]])


@pytest.mark.parametrize("engine", ["numpy", "onnxruntime"])
def test_resize_relevance_is_conserved(tmp_path, engine):
    node = helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear")
    proto = onnx_model([node], [1, 1, 3, 3], initializers={"sc": np.array([1, 1, 2, 2], np.float32)})
    model = api.load_model(save_model(proto, tmp_path / "m.onnx"))
    layer = model.graph.nodes[0].layer
    x = np.random.default_rng(0).uniform(0.5, 1, (1, 1, 3, 3))
    if engine == "onnxruntime":
        y = layer.forward(x).ravel()
        compiled = compiled_relevance(proto, x)
        for target in (0, 17, 35):
            assert compiled(target).sum() == pytest.approx(y[target], rel=1e-5)
        return
    y = layer.forward(x)
    r = np.random.default_rng(1).uniform(0, 1, y.shape)
    assert layer.relevance([x], y, r, None)[0].sum() == pytest.approx(r.sum(), rel=1e-5)


def test_multiple_outputs_choose_with_output_option(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Tanh", ["x"], ["b"])]
    model = onnx_model(nodes, [1, 4], "a")
    model.graph.output.append(helper.make_tensor_value_info("b", 1, None))
    path = save_model(model, tmp_path / "m.onnx")
    assert import_onnx(path).output_name == "a"
    graph = import_onnx(path, output="b")
    assert graph.output_name == "b" and [n.op for n in graph.nodes] == ["Tanh"]
    with pytest.raises(ModelLoadError, match="--output 'c'"):
        import_onnx(path, output="c")


def test_dropout_from_a_training_mode_export_is_removed(tmp_path):
    nodes = [helper.make_node("Dropout", ["x", "ratio", "mode"], ["d"]), helper.make_node("Relu", ["d"], ["y"])]
    inits = {"ratio": np.array(0.5, np.float32), "mode": np.array(False)}
    graph = assert_matches_onnxruntime(onnx_model(nodes, [1, 6], initializers=inits), tmp_path)
    assert [n.op for n in graph.nodes] == ["Relu"]
