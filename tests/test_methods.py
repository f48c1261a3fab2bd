"""The baseline methods (gradcam, occlusion, lime, random) against independent computations."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import helper
from PIL import Image

from conftest import onnx_model, save_model, tiny_cnn
from lrp_cli import api
from lrp_cli.cli import main
from lrp_cli.methods import METHODS
from lrp_cli.methods.gradcam import bilinear_matrix, default_layer, upsample
from lrp_cli.methods.gradient import tensor_gradient
from lrp_cli.methods.lime import segment_means, superpixel_weights, superpixels
from lrp_cli.methods.occlusion import patch_origins
from lrp_cli.preprocess import PRESETS, PreprocessConfig, image_to_tensor
from lrp_cli.scoring import score_batch


@pytest.fixture
def tiny(tmp_path):
    return api.load_model(save_model(tiny_cnn(), tmp_path / "tiny.onnx"))


@pytest.fixture
def x16():
    return np.random.default_rng(7).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)


def explain_with(model, x, method, **options):
    settings = api.Settings(method=method, precision="float64", preprocess={"preset": "unit"},
                            method_options=options)
    api.check_settings(model, settings)
    return api.explain_array(model, x, settings)[0]


def pixel_map(expl):
    return expl.relevance.sum(axis=(0, 1))


def test_registry_lists_every_method_in_order():
    assert api.METHOD_NAMES == ("lrp", "gradient", "gradient-x-input", "gradcam", "occlusion", "lime", "random")
    assert all(METHODS[name].name == name for name in api.METHOD_NAMES)


def run_from(graph, values, tensor, new_value):
    """Returns the graph output after replacing one tensor's value (the nodes after it run again)."""
    values = dict(values, **{tensor: new_value})
    start = next(i for i, node in enumerate(graph.nodes) if node.output == tensor) + 1
    for node in graph.nodes[start:]:
        values[node.output] = node.layer.forward(*(values[name] for name in node.inputs))
    return values[graph.output_name]


def test_gradient_at_an_intermediate_tensor_matches_finite_differences(tiny, x16):
    graph = tiny.graph_for("float64")
    values = graph.forward(x16.astype(np.float64))
    layer = default_layer(graph)
    assert layer.name == "conv1"
    target, eps = 2, 1e-6
    gradient, _ = tensor_gradient(graph, values, target, layer.output)
    activation = values[layer.output]
    assert gradient.shape == activation.shape
    rng = np.random.default_rng(0)
    for index in zip(*(rng.integers(0, n, 40) for n in activation.shape)):
        bump = np.zeros_like(activation)
        bump[index] = eps
        up = run_from(graph, values, layer.output, activation + bump).reshape(-1)[target]
        down = run_from(graph, values, layer.output, activation - bump).reshape(-1)[target]
        assert gradient[index] == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-8)


def test_bilinear_matrix_hand_worked_and_as_pil():
    np.testing.assert_allclose(bilinear_matrix(4, 2), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    np.testing.assert_allclose(bilinear_matrix(3, 3), np.eye(3))
    cam = np.random.default_rng(1).uniform(0, 1, (3, 5)).astype(np.float32)
    pil = np.asarray(Image.fromarray(cam, mode="F").resize((20, 12), Image.BILINEAR))
    np.testing.assert_allclose(upsample(cam, (12, 20)), pil, atol=1e-5)


def gap_model() -> object:
    """Returns Conv(3->2, 1x1, stride 2) -> GlobalAveragePool -> Flatten -> Gemm(2->3) on 1x3x4x4: the gradient
    at the conv output is W2[t, k] / 4 at each of the 2x2 positions."""
    w1 = np.array([[1, -1, 0.5], [0.2, 0.3, -2]], np.float32).reshape(2, 3, 1, 1)
    w2 = np.array([[1, -2], [3, 1], [-1, -1]], np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv", strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["a"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w2"], ["y"], name="fc", transB=1),
    ]
    return onnx_model(nodes, [1, 3, 4, 4], "y", {"w1": w1, "w2": w2}), w1[:, :, 0, 0], w2


def test_gradcam_hand_built_case(tmp_path):
    proto, w1, w2 = gap_model()
    model = api.load_model(save_model(proto, tmp_path / "gap.onnx"))
    x = np.random.default_rng(2).standard_normal((1, 3, 4, 4)).astype(np.float32)
    expl = explain_with(model, x, "gradcam", layer="conv")
    activation = np.einsum("kc,chw->khw", w1.astype(np.float64), x[0, :, ::2, ::2])  # the 1x1 stride-2 conv
    target = expl.target["index"]
    cam = np.maximum(np.einsum("k,khw->hw", w2[target] / 4, activation), 0)
    expected = bilinear_matrix(4, 2) @ cam @ bilinear_matrix(4, 2).T
    np.testing.assert_allclose(pixel_map(expl), expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(expl.relevance[0, 0], expected / 3, rtol=1e-6, atol=1e-9)  # spread over 3 channels
    assert expl.extra["method_options"] == {"layer": "conv"}


def test_gradcam_default_layer_from_finite_difference_gradients(tiny, x16):
    expl = explain_with(tiny, x16, "gradcam")
    assert expl.extra["method_options"] == {"layer": "conv1"}
    graph = tiny.graph_for("float64")
    values = graph.forward(x16.astype(np.float64))
    target, eps = expl.target["index"], 1e-6
    tensor = default_layer(graph).output
    activation = values[tensor]
    flat = activation.reshape(-1)
    gradient = np.empty_like(flat)
    for i in range(flat.size):  # the full finite-difference gradient of the score at conv1's output
        bump = np.zeros_like(flat)
        bump[i] = eps
        up = run_from(graph, values, tensor, (flat + bump).reshape(activation.shape)).reshape(-1)[target]
        down = run_from(graph, values, tensor, (flat - bump).reshape(activation.shape)).reshape(-1)[target]
        gradient[i] = (up - down) / (2 * eps)
    alpha = gradient.reshape(activation.shape)[0].mean(axis=(1, 2))
    cam = np.maximum((alpha[:, None, None] * activation[0]).sum(axis=0), 0)  # same 16x16 size as the input
    np.testing.assert_allclose(pixel_map(expl), cam, rtol=1e-5, atol=1e-8)


def brute_force_occlusion(model, x, target, patch, stride, fill):
    """Returns the occlusion map by one onnxruntime run per patch and a loop over pixels."""
    _, _, height, width = x.shape
    base = model.run_onnxruntime(x)[1].reshape(-1)[target]
    drops = {}
    for top, left in patch_origins(height, width, patch, stride):
        occluded = x.copy()
        occluded[0, :, top:top + patch, left:left + patch] = fill
        drops[top, left] = base - model.run_onnxruntime(occluded)[1].reshape(-1)[target]
    heat = np.zeros((height, width))
    for i in range(height):
        for j in range(width):
            covering = [d for (t, lf), d in drops.items() if t <= i < t + patch and lf <= j < lf + patch]
            heat[i, j] = np.mean(covering)
    return heat


@pytest.mark.parametrize("patch, stride", [(4, 2), (5, 3), (3, 3)])
def test_occlusion_equals_a_brute_force_loop(tiny, x16, patch, stride):
    expl = explain_with(tiny, x16, "occlusion", patch=patch, stride=stride)
    expected = brute_force_occlusion(tiny, x16, expl.target["index"], patch, stride, 0.0)
    np.testing.assert_allclose(pixel_map(expl), expected, rtol=1e-5, atol=1e-5)
    assert expl.extra["method_options"] == {"patch": patch, "stride": stride}


def test_occlusion_defaults_derive_from_the_input_size(tiny, x16):
    assert explain_with(tiny, x16, "occlusion").extra["method_options"] == {"patch": 2, "stride": 1}


def test_patch_origins_cover_the_border():
    assert patch_origins(10, 7, 4, 3) == [(t, lf) for t in (0, 3, 6) for lf in (0, 3)]
    assert patch_origins(11, 4, 4, 3)[-1] == (7, 0)  # flush with the bottom border


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_mean_pixel_is_the_model_input_of_the_presets_mean_colour(preset):
    """Where the preset's mean is a whole 0..255 colour, preprocessing an image of it gives mean_pixel."""
    config = PreprocessConfig(preset=preset)
    scale, mean, _, bgr = config.normalization(3)
    colour = mean / scale
    if not np.allclose(colour, np.round(colour)):
        colour = None
    if colour is not None:
        rgb = colour[::-1] if bgr else colour
        image = Image.fromarray(np.full((2, 2, 3), np.round(rgb), np.uint8))
        tensor = image_to_tensor(image, config, (1, 3, 2, 2))
        np.testing.assert_allclose(tensor[0, :, 0, 0], config.mean_pixel(3), atol=1e-6)
    np.testing.assert_allclose(config.mean_pixel(3), 0, atol=1e-12)


def grid_segments(height, width, block):
    """Returns a segmentation into block x block squares, labelled row by row."""
    rows, cols = np.mgrid[0:height, 0:width] // block
    return rows * -(-width // block) + cols


def test_lime_weights_equal_the_lime_package(tiny, x16):
    lime_image = pytest.importorskip("lime.lime_image")
    rgb = x16[0].transpose(1, 2, 0).astype(np.float64)
    segments = grid_segments(16, 16, 4)
    target, samples, seed = 1, 300, 5

    def classify(images):
        return score_batch(tiny, images.transpose(0, 3, 1, 2))

    reference = lime_image.LimeImageExplainer(kernel_width=0.25, random_state=seed).explain_instance(
        rgb, classify, labels=(target,), hide_color=None, top_labels=None, num_samples=samples,
        segmentation_fn=lambda image: segments, random_seed=seed, batch_size=50)
    expected = np.zeros(segments.max() + 1)
    for feature, weight in reference.local_exp[target]:
        expected[feature] = weight
    weights = superpixel_weights(lambda batch: score_batch(tiny, batch)[:, target], x16[0], segments, samples, seed)
    np.testing.assert_allclose(weights, expected, rtol=1e-6, atol=1e-7 * np.abs(expected).max())


def test_superpixels_are_lime_default_quickshift():
    """LIME's defaults (kernel_size 4, max_dist 200, ratio 0.2) on a picture of four coloured squares."""
    from skimage.segmentation import quickshift
    rgb = np.zeros((40, 40, 3))
    rgb[:20, :20] = (1, 0, 0)
    rgb[:20, 20:] = (0, 1, 0)
    rgb[20:, :20] = (0, 0, 1)
    rgb[20:, 20:] = (1, 1, 0)
    segments = superpixels(rgb, 0)
    assert segments.max() + 1 == 4
    assert all(len(np.unique(segments[r:r + 20, c:c + 20])) == 1 for r in (0, 20) for c in (0, 20))
    reference = quickshift(rgb, kernel_size=4, max_dist=200, ratio=0.2, rng=0)
    assert len(np.unique(reference * 10 + segments)) == 4  # the same partition


def test_segment_means_hold_each_superpixels_channel_mean():
    x = np.arange(2 * 2 * 3, dtype=np.float64).reshape(2, 2, 3)
    segments = np.array([[0, 0, 1], [2, 1, 1]])
    means = segment_means(x, segments)
    np.testing.assert_allclose(means[0], [[0.5, 0.5, 11 / 3], [3, 11 / 3, 11 / 3]])
    np.testing.assert_allclose(means[1], means[0] + 6)


def test_lime_map_spreads_each_superpixel_weight_over_its_pixels(tiny, x16, monkeypatch):
    segments = grid_segments(16, 16, 5)  # 16 squares of 25, 20 or 16 pixels
    monkeypatch.setattr("lrp_cli.methods.lime.superpixels", lambda rgb, seed: segments)
    expl = explain_with(tiny, x16, "lime", samples=64, seed=3)
    assert expl.extra["method_options"] == {"samples": 64, "seed": 3}
    heat = pixel_map(expl)
    target = expl.target["index"]
    weights = superpixel_weights(lambda b: score_batch(tiny, b)[:, target], x16[0], segments, 64, 3)
    np.testing.assert_allclose(np.bincount(segments.ravel(), heat.ravel()), weights, rtol=1e-5, atol=1e-9)
    sizes = np.bincount(segments.ravel())
    np.testing.assert_allclose(heat, (weights / sizes)[segments], rtol=1e-5, atol=1e-9)


def test_random_map_is_seeded_uniform_and_channel_spread(tiny, x16):
    first = explain_with(tiny, x16, "random", seed=4)
    again = explain_with(tiny, x16, "random", seed=4)
    other = explain_with(tiny, x16, "random", seed=5)
    np.testing.assert_array_equal(first.relevance, again.relevance)
    assert not np.allclose(first.relevance, other.relevance)
    np.testing.assert_allclose(pixel_map(first), np.random.default_rng(4).uniform(size=(16, 16)), rtol=1e-12)
    np.testing.assert_allclose(first.relevance[0, 1], first.relevance[0, 2])


def test_an_option_of_another_method_is_a_usage_error(tiny, x16):
    from lrp_cli.errors import OptionError
    with pytest.raises(OptionError, match="--patch does not apply to --method gradcam"):
        explain_with(tiny, x16, "gradcam", patch=3)
    with pytest.raises(OptionError, match="--layer nope: no such node"):
        explain_with(tiny, x16, "gradcam", layer="nope")
    with pytest.raises(OptionError, match="--patch 17: larger than"):
        explain_with(tiny, x16, "occlusion", patch=17)


def test_cli_methods_write_outputs_and_record_options(tiny_cnn_path, rgb_image, tmp_path):
    runner = CliRunner()
    for method, flags, options in [("gradcam", ["--layer", "relu1"], {"layer": "relu1"}),
                                   ("occlusion", ["--patch", "4"], {"patch": 4, "stride": 2}),
                                   ("lime", ["--samples", "40", "--seed", "2"], {"samples": 40, "seed": 2}),
                                   ("random", [], {"seed": 0})]:
        out = tmp_path / method
        result = runner.invoke(main, ["explain", str(rgb_image), "--model", str(tiny_cnn_path), "--method", method,
                                      "--out", str(out), "--save-raw", *flags])
        assert result.exit_code == 0, result.output
        document = json.loads((out / "img.json").read_text())
        assert document["method"] == method and document["method_options"] == options
        raw = np.load(out / "img.relevance.npy")
        assert raw.shape == (1, 3, 16, 16) and np.abs(raw).max() > 0
        heat = np.asarray(Image.open(out / "img.heatmap.png"))
        assert heat.shape[:2] == (16, 16) and heat.std() > 0


def test_cli_option_errors_are_one_line_exit_2(tiny_cnn_path, rgb_image, tmp_path):
    runner = CliRunner()
    for flags, fragment in [(["--method", "lime", "--patch", "3"], "--patch does not apply to --method lime"),
                            (["--method", "gradcam", "--layer", "fc"], "--layer fc: its output [1, 4]")]:
        result = runner.invoke(main, ["explain", str(rgb_image), "--model", str(tiny_cnn_path), "--out",
                                      str(tmp_path / "o"), *flags])
        assert result.exit_code == 2
        assert result.output.strip().splitlines() == [f"error: {result.output.strip()[7:]}"]
        assert fragment in result.output
        assert not (tmp_path / "o").exists()


def test_channels_last_models_get_relevance_in_their_layout(tmp_path):
    from test_cli import nhwc_model
    model = api.load_model(nhwc_model(tmp_path))
    assert model.layout == "nhwc"
    x = np.random.default_rng(8).uniform(-1, 1, (1, 12, 10, 3)).astype(np.float32)
    for method, options in [("gradcam", {}), ("lime", {"samples": 20}), ("random", {})]:
        assert explain_with(model, x, method, **options).relevance.shape == (1, 12, 10, 3)
    expl = explain_with(model, x, "occlusion", patch=3, stride=2)
    target = expl.target["index"]
    base = model.run_onnxruntime(x)[1].reshape(-1)[target]
    total, count = np.zeros((12, 10)), np.zeros((12, 10))
    for top, left in patch_origins(12, 10, 3, 2):
        occluded = x.copy()
        occluded[0, top:top + 3, left:left + 3, :] = 0
        total[top:top + 3, left:left + 3] += base - model.run_onnxruntime(occluded)[1].reshape(-1)[target]
        count[top:top + 3, left:left + 3] += 1
    np.testing.assert_allclose(expl.relevance.sum(axis=(0, 3)), total / count, rtol=1e-5, atol=1e-5)


def check_every_method(model, x: np.ndarray, occlusion_defaults: dict, samples: int) -> None:
    """Asserts that the perturbation and Grad-CAM methods give finite, non-zero maps of x's shape on a
    one-channel model (the tf preset) and record the options they used."""
    for method, options, recorded in [("gradcam", {}, None), ("occlusion", {}, occlusion_defaults),
                                      ("lime", {"samples": samples}, {"samples": samples, "seed": 0}),
                                      ("random", {}, {"seed": 0})]:
        settings = api.Settings(method=method, preprocess={"preset": "tf"}, method_options=options)
        expl = api.explain_array(model, x, settings)[0]
        assert expl.relevance.shape == x.shape and np.isfinite(expl.relevance).all()
        assert np.abs(expl.relevance).max() > 0
        if recorded:
            assert expl.extra["method_options"] == recorded


def lenet_like(last_kernel: tuple[int, int]):
    """A LeNet-5-like classifier on one-channel 12x16 inputs built here: Conv 5x5 -> ReLU -> MaxPool 2 -> Conv 3x3
    (2x4 maps) -> ReLU -> Conv `last_kernel` -> ReLU -> Dense 3; a last kernel of 2x4 gives 1x1 maps (as LeNet-5's
    C5), 2x2 gives 1x3."""
    rng = np.random.default_rng(11)
    out_hw = (3 - last_kernel[0], 5 - last_kernel[1])
    inits = {"w1": rng.standard_normal((4, 1, 5, 5)).astype(np.float32) * 0.3,
             "w2": rng.standard_normal((6, 4, 3, 3)).astype(np.float32) * 0.3,
             "w3": rng.standard_normal((8, 6, *last_kernel)).astype(np.float32) * 0.3,
             "w4": rng.standard_normal((8 * out_hw[0] * out_hw[1], 3)).astype(np.float32) * 0.3}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3"),
             helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
             helper.make_node("Flatten", ["r3"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "w4"], ["y"], name="fc")]
    return onnx_model(nodes, [1, 1, 12, 16], "y", inits)


@pytest.mark.parametrize("last_kernel, chosen", [((2, 4), "conv2"), ((2, 2), "conv3")])
def test_every_method_on_a_lenet_like_model_built_here(tmp_path, last_kernel, chosen):
    # What the shared LeNet-5 test checks, on a fresh clone too: one channel, a non-square input, and a last
    # Conv whose 1x1 output Grad-CAM passes over (a 1x3 output is still a map, the last one).
    model = api.load_model(save_model(lenet_like(last_kernel), tmp_path / "lenet.onnx"))
    x = np.random.default_rng(2).uniform(-1, 1, (1, 1, 12, 16)).astype(np.float32)
    check_every_method(model, x, {"patch": 1, "stride": 1}, 40)
    shapes = {n.name: model.graph.shapes[n.output][2:] for n in model.graph.nodes if n.op == "Conv"}
    assert shapes == {"conv1": (8, 12), "conv2": (2, 4), "conv3": (3 - last_kernel[0], 5 - last_kernel[1])}
    expl = api.explain_array(model, x, api.Settings(method="gradcam"))[0]
    assert expl.extra["method_options"]["layer"] == chosen


def test_occlusion_patch_may_be_the_shorter_side_and_no_more(tmp_path):
    from lrp_cli.errors import OptionError
    model = api.load_model(save_model(lenet_like((2, 4)), tmp_path / "lenet.onnx"))
    x = np.random.default_rng(3).uniform(-1, 1, (1, 1, 12, 16)).astype(np.float32)
    expl = explain_with(model, x, "occlusion", patch=12, stride=4)  # 12 rows: the whole height, at the edge
    assert expl.extra["method_options"] == {"patch": 12, "stride": 4}
    # the patches (0, 0), (0, 4) in columns 0-11 and 4-15 cover everything, so every pixel has a value
    assert np.isfinite(expl.relevance).all()
    with pytest.raises(OptionError, match="--patch 13: larger than the 12x16 model input"):
        explain_with(model, x, "occlusion", patch=13)


def test_every_method_on_the_shared_lenet5():
    from conftest import shared_path
    model = api.load_model(shared_path("models", "lenet5_mnist.onnx"))
    digit = np.load(shared_path("images", "mnist", "mnist_test_first100_uint8.npy"))[0]
    x = (np.pad(digit, 2).astype(np.float32) / 127.5 - 1)[None, None]
    check_every_method(model, x, {"patch": 3, "stride": 2}, 100)
    assert model.scores_batched
    convs = [n for n in model.graph.nodes if n.op == "Conv"]
    assert model.graph.shapes[convs[-1].output][2:] == (1, 1)  # LeNet-5's C5 is a Conv with a 1x1 output ...
    chosen = api.explain_array(model, x, api.Settings(method="gradcam"))[0].extra["method_options"]["layer"]
    assert chosen == convs[-2].name  # ... so Grad-CAM takes the Conv before it (10x10 maps)


@pytest.mark.parametrize("method, options", [("occlusion", {"patch": 4, "stride": 2}),
                                             ("lime", {"samples": 48, "seed": 1})])
def test_perturbation_methods_score_the_copies_once_for_every_target(tiny, x16, method, options, monkeypatch):
    scored = []
    real = type(tiny).score_batch  # what the methods' scorer (MethodInput.scores) calls

    def counting(model, xs, *args, **kwargs):
        scored.append(len(xs))
        return real(model, xs, *args, **kwargs)
    monkeypatch.setattr(type(tiny), "score_batch", counting)
    settings = api.Settings(method=method, precision="float64", preprocess={"preset": "unit"},
                            method_options=options, target="top:3")
    several = api.explain_array(tiny, x16, settings)
    together_count = sum(scored)
    alone = [explain_with_target(tiny, x16, method, e.target["index"], options) for e in several]
    assert sum(scored) - together_count == 3 * together_count  # one target alone costs what all three did
    for together, single in zip(several, alone):
        np.testing.assert_allclose(together.relevance, single.relevance, rtol=1e-6, atol=1e-9)
    assert len({float(np.abs(e.relevance).sum()) for e in several}) == 3  # the targets' maps differ


def explain_with_target(model, x, method, target, options):
    settings = api.Settings(method=method, precision="float64", preprocess={"preset": "unit"},
                            method_options=options, target=str(target))
    return api.explain_array(model, x, settings)[0]
