"""score_batch: batched onnxruntime scores equal one run per input, also for graphs fixed to batch 1."""

import numpy as np
import pytest
from onnx import helper

from conftest import onnx_model, save_model, shared_path, tiny_cnn
from lrp_cli import api
from lrp_cli.scoring import score_batch


def per_item(model, xs):
    return np.stack([model.run_onnxruntime(x[None])[1].reshape(-1) for x in xs])


def reshape_cnn() -> object:
    """Returns a 1x2x4x4 -> 3 classes net whose Reshape target is the constant [1, 32] (batch baked in)."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "shape"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], name="fc", transB=1),
    ]
    inits = {"w": rng.standard_normal((2, 2, 3, 3)).astype(np.float32), "shape": np.array([1, 32], np.int64),
             "w2": rng.standard_normal((3, 32)).astype(np.float32), "b2": rng.standard_normal(3).astype(np.float32)}
    return onnx_model(nodes, [1, 2, 4, 4], "logits", inits, output_shape=[1, 3])


def test_batched_scores_are_the_pre_softmax_per_item_scores(tmp_path):
    model = api.load_model(save_model(tiny_cnn(), tmp_path / "tiny.onnx"))
    xs = np.random.default_rng(1).standard_normal((5, 3, 16, 16)).astype(np.float32)
    scores = score_batch(model, xs, chunk=2)
    assert model.scores_batched
    assert scores.shape == (5, 4)
    np.testing.assert_allclose(scores, per_item(model, xs), rtol=1e-5, atol=1e-6)
    # the explained tensor is before the Softmax: rows do not sum to 1
    assert not np.allclose(scores.sum(axis=1), 1)
    # a batch of batch-1 tensors is accepted as well
    np.testing.assert_array_equal(score_batch(model, xs[:, None]), scores)


def test_constant_reshape_with_batch_one_is_batched(tmp_path):
    model = api.load_model(save_model(reshape_cnn(), tmp_path / "reshape.onnx"))
    xs = np.random.default_rng(2).standard_normal((3, 2, 4, 4)).astype(np.float32)
    scores = score_batch(model, xs)
    assert model.scores_batched
    np.testing.assert_allclose(scores, per_item(model, xs), rtol=1e-5, atol=1e-6)


def test_unbatchable_graph_falls_back_to_one_run_per_input(tmp_path):
    """A Reshape to [2, 16] mixes the batch with features: the check rejects the batched copy."""
    proto = reshape_cnn()
    nodes = list(proto.graph.node)
    rng = np.random.default_rng(4)
    inits = {"w": rng.standard_normal((2, 2, 3, 3)).astype(np.float32), "shape": np.array([2, 16], np.int64),
             "w2": rng.standard_normal((3, 16)).astype(np.float32), "b2": rng.standard_normal(3).astype(np.float32),
             "shape2": np.array([1, 6], np.int64)}
    nodes[-1] = helper.make_node("Gemm", ["f", "w2", "b2"], ["g"], name="fc", transB=1)
    nodes.append(helper.make_node("Reshape", ["g", "shape2"], ["logits"], name="flat_out"))
    model = api.load_model(save_model(onnx_model(nodes, [1, 2, 4, 4], "logits", inits), tmp_path / "mix.onnx"))
    xs = np.random.default_rng(5).standard_normal((3, 2, 4, 4)).astype(np.float32)
    scores = score_batch(model, xs)
    assert not model.scores_batched
    np.testing.assert_allclose(scores, per_item(model, xs), rtol=1e-6)


def test_wrong_input_shape_is_refused(tmp_path):
    model = api.load_model(save_model(tiny_cnn(), tmp_path / "tiny.onnx"))
    with pytest.raises(ValueError, match="model input"):
        score_batch(model, np.zeros((2, 3, 8, 8), np.float32))


@pytest.mark.slow
def test_squeezenet_fixed_batch_and_softmax_output():
    """SqueezeNet (opset 7, batch fixed to 1, output after a Softmax): batched pre-softmax scores."""
    model = api.load_model(shared_path("models", "squeezenet1.1.onnx"))
    xs = np.random.default_rng(6).uniform(-100, 100, (3, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(score_batch(model, xs), per_item(model, xs), rtol=1e-4, atol=1e-3)


def test_bow_scores_are_the_decision_values_explain_reports():
    """BoW pipelines: per-class decision values, tile means as `explain` (here 102 px tiles of a 136 px scene)."""
    from conftest import REPO
    from lrp_cli.bow.explain import explain_bow
    from lrp_cli.synthetic.polygons import make_scene
    model = api.load_model(REPO / "models" / "polygons-bow-svm.joblib")
    rng = np.random.default_rng(0)
    images = np.stack([make_scene(rng, size=(136, 136), n_polygons=1, n_circles=1)[0] for _ in range(2)])
    scores = score_batch(model, images)
    assert scores.shape == (2, 2) and not np.allclose(scores[0], scores[1])
    result = explain_bow(model.bow, images[1])
    assert result.n_tiles > 1
    np.testing.assert_allclose(scores[1], result.scores, rtol=1e-12)
    single = score_batch(model, images[:1, :102, :102], tiling={"tile": 0})
    np.testing.assert_allclose(single[0], explain_bow(model.bow, images[0, :102, :102], tile=0).scores, rtol=1e-12)
