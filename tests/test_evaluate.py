"""Pixel flipping by hand: orders and ties, units, step counts, each perturbation's values, AOPC, and the
batched curve against a per-step loop of single onnxruntime runs."""

import numpy as np
import pytest

from conftest import save_model, tiny_cnn
from lrp_cli import api, evaluate
from lrp_cli.errors import InputError, OptionError
from lrp_cli.evaluate import FlipSettings, Subject
from lrp_cli.preprocess import PreprocessConfig
from lrp_cli.scoring import score_batch

UNITS = np.array([[3.0, -1.0, 0.0], [3.0, 0.5, -2.0]])


@pytest.mark.parametrize("order, expected", [
    ("morf", [0, 3, 4, 2, 1, 5]),  # 3 (index 0) before the tied 3 (index 3)
    ("lerf", [2, 4, 1, 5, 0, 3]),  # |R|: 0, 0.5, 1, 2, 3, 3
    ("negative", [5, 1, 2, 4, 0, 3]),
])
def test_orders_by_hand_with_ties_lower_index_first(order, expected):
    assert evaluate.unit_order(UNITS, order).tolist() == expected


def test_ties_keep_flat_index_order_also_for_signed_zeros():
    units = np.array([0.0, -0.0, 1.0, 0.0, 1.0])
    assert evaluate.unit_order(units, "morf").tolist() == [2, 4, 0, 1, 3]
    assert evaluate.unit_order(units, "lerf").tolist() == [0, 1, 3, 2, 4]


def test_patches_sum_relevance_edge_patches_smaller():
    pixel_map = np.arange(25.0).reshape(5, 5)
    units = evaluate.unit_relevance(pixel_map, 2)
    expected = np.array([[0 + 1 + 5 + 6, 2 + 3 + 7 + 8, 4 + 9],
                         [10 + 11 + 15 + 16, 12 + 13 + 17 + 18, 14 + 19],
                         [20 + 21, 22 + 23, 24]])
    assert np.array_equal(units, expected)
    assert np.array_equal(evaluate.unit_relevance(pixel_map, 1), pixel_map)


def test_pixel_ranks_spread_the_rank_of_a_patch_over_its_pixels():
    ranks = evaluate.pixel_ranks(np.array([3, 0, 2, 1]), (2, 2), 2, (3, 4))
    # order [3, 0, 2, 1]: unit 3 first (rank 0), unit 0 rank 1, unit 2 rank 2, unit 1 rank 3
    assert ranks.tolist() == [[1, 1, 3, 3], [1, 1, 3, 3], [2, 2, 0, 0]]


def test_flip_counts_are_equal_fractions_from_none_to_all():
    assert evaluate.flip_counts(10, 4).tolist() == [0, 2, 5, 7, 10]
    assert evaluate.flip_counts(1024, 100)[[0, 1, 50, 100]].tolist() == [0, 10, 512, 1024]


def test_perturbed_inputs_take_all_channels_of_a_pixel_from_the_fill():
    x = np.zeros((1, 2, 2, 2))
    fill = np.arange(1.0, 9.0).reshape(1, 2, 2, 2)
    ranks = np.array([[2, 0], [3, 1]])
    stack = evaluate.perturbed_inputs(x, fill, ranks, np.array([0, 1, 4]))
    assert np.array_equal(stack[0], x[0]) and np.array_equal(stack[2], fill[0])
    assert np.array_equal(stack[1], [[[0, 2], [0, 0]], [[0, 6], [0, 0]]])  # pixel (0, 1) in both channels


def test_aopc_by_hand():
    assert evaluate.aopc(np.array([5.0, 3.0, 1.0])) == pytest.approx((0 + 2 + 4) / 3)
    assert evaluate.aopc(np.array([2.0, 2.5])) == pytest.approx(-0.25)


def subject(x, low, high, mean=None):
    return Subject(x, np.asarray(low, float), np.asarray(high, float),
                   np.zeros(x.shape[1]) if mean is None else np.asarray(mean, float), lambda b: b)


class FakeModel:
    path = "fake.onnx"
    layout = "nchw"

    class graph:
        input_shape = (1, 3, 4, 4)


def test_flip_uses_the_presets_range_per_channel():
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 4, 4)).astype(np.float32)
    tf = evaluate.onnx_subject(FakeModel, x, PreprocessConfig("tf"), "a.png")
    assert np.allclose(evaluate.fill_values(tf, FlipSettings()), -x, atol=1e-7)  # the paper's x * (-1)
    imagenet = evaluate.onnx_subject(FakeModel, x, PreprocessConfig("imagenet"), "a.png")
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    low, high = -mean / std, (1 - mean) / std
    assert np.allclose(imagenet.low, low) and np.allclose(imagenet.high, high)
    flipped = evaluate.fill_values(imagenet, FlipSettings())
    assert np.allclose(flipped, low[:, None, None] + high[:, None, None] - x, atol=1e-6)
    # a pixel at channel value 0 becomes 255 and back
    black = np.broadcast_to(low[None, :, None, None], x.shape).astype(np.float32)
    black_subject = evaluate.onnx_subject(FakeModel, black, PreprocessConfig("imagenet"), "a.png")
    assert np.allclose(evaluate.fill_values(black_subject, FlipSettings())[0, :, 0, 0], high, atol=1e-6)


def test_flip_of_an_npy_with_preset_none_uses_the_tensors_own_range():
    x = np.zeros((1, 3, 4, 4), np.float32)
    x[0, 0] = np.arange(16).reshape(4, 4)  # channel 0 in [0, 15], channel 1 constant 0, channel 2 in [-2, 5]
    x[0, 2, 0, 0], x[0, 2, 3, 3] = -2, 5
    s = evaluate.onnx_subject(FakeModel, x, PreprocessConfig("none"), "t.npy")
    assert s.low.tolist() == [0, 0, -2] and s.high.tolist() == [15, 0, 5]
    flipped = evaluate.fill_values(s, FlipSettings())
    assert flipped[0, 0, 0, 0] == 15 and flipped[0, 0, 3, 3] == 0 and flipped[0, 2, 0, 0] == 5
    # an image with preset none keeps the preset's 0..255 range
    image = evaluate.onnx_subject(FakeModel, x, PreprocessConfig("none"), "t.png")
    assert image.low.tolist() == [0, 0, 0] and image.high.tolist() == [255, 255, 255]


def test_mean_fill_is_the_presets_mean_pixel_and_bow_mid_grey():
    x = np.ones((1, 3, 4, 4), np.float32)
    s = evaluate.onnx_subject(FakeModel, x, PreprocessConfig("caffe"), "a.png")
    assert np.array_equal(evaluate.fill_values(s, FlipSettings(perturbation="mean")), np.zeros_like(x))
    bow = evaluate.bow_subject(np.zeros((4, 5, 3)))
    assert bow.x.shape == (1, 3, 4, 5)
    assert np.array_equal(evaluate.fill_values(bow, FlipSettings(perturbation="mean")), np.full((1, 3, 4, 5), 0.5))
    assert np.array_equal(evaluate.fill_values(bow, FlipSettings()), np.ones((1, 3, 4, 5)))


def test_uniform_fill_is_seeded_and_within_each_channels_range():
    s = subject(np.zeros((1, 2, 30, 30)), [-1, 10], [1, 20])
    a = evaluate.fill_values(s, FlipSettings(perturbation="uniform", seed=3))
    assert np.array_equal(a, evaluate.fill_values(s, FlipSettings(perturbation="uniform", seed=3)))
    assert not np.array_equal(a, evaluate.fill_values(s, FlipSettings(perturbation="uniform", seed=4)))
    assert -1 <= a[0, 0].min() < -0.9 and 0.9 < a[0, 0].max() <= 1
    assert 10 <= a[0, 1].min() < 10.2 and 19.8 < a[0, 1].max() <= 20
    assert abs(a[0, 1].mean() - 15) < 0.3  # 900 samples: sem of U(10, 20) is 0.1


def test_blur_fill_is_a_normalized_gaussian_per_channel():
    x = np.zeros((1, 2, 21, 21))
    x[0, 0, 10, 10] = 1.0  # an impulse: the blur is the kernel itself
    x[0, 1] = 7.0  # a constant channel stays constant
    blurred = evaluate.fill_values(subject(x, [0, 0], [1, 1]), FlipSettings(perturbation="blur", blur_sigma=1.5))
    offsets = np.arange(-6, 7)  # scipy's default truncation at 4 sigma: radius 6
    g = np.exp(-offsets ** 2 / (2 * 1.5 ** 2))
    g /= g.sum()
    expected = np.zeros((21, 21))
    expected[4:17, 4:17] = np.outer(g, g)
    assert np.allclose(blurred[0, 0], expected, atol=1e-12)
    assert np.allclose(blurred[0, 1], 7.0)
    assert evaluate.blur_sigma(FlipSettings(), (32, 32)) == 1.0  # default max(H, W) / 32
    assert evaluate.blur_sigma(FlipSettings(), (224, 160)) == 7.0


@pytest.mark.parametrize("kwargs, word", [
    ({"orders": ("morf", "up")}, "'up'"), ({"orders": ()}, "--order"), ({"perturbation": "noise"}, "noise"),
    ({"patch": 0}, "--patch"), ({"steps": 0}, "--steps"), ({"blur_sigma": -1.0}, "--blur-sigma"),
])
def test_bad_flip_settings_are_option_errors(kwargs, word):
    with pytest.raises(OptionError, match=word):
        FlipSettings(**kwargs)


@pytest.mark.parametrize("perturbation, protocol, steps, expected", [
    (None, None, None, ("road", 10)),  # the command's default: ROAD's fill in ROAD's 10 steps
    ("flip", None, None, ("flip", 100)),  # the paper's pixel flipping, today's numbers before the change
    ("uniform", None, None, ("uniform", 100)), ("road", None, 25, ("road", 25)),
    (None, "samek2017", None, ("uniform", 100)), ("road", "samek2017", None, ("road", 100)),
])
def test_the_commands_defaults(perturbation, protocol, steps, expected):
    settings = evaluate.flip_settings("morf,lerf", protocol, perturbation, None, steps, None, None)
    assert (settings.perturbation, settings.steps) == expected and settings.orders == ("morf", "lerf")
    assert (settings.patch, settings.units, settings.max_fraction) == (1, None, None)


def test_a_map_of_the_wrong_shape_or_not_finite_is_an_input_error():
    s = subject(np.zeros((1, 1, 4, 4)), [0], [1])
    with pytest.raises(InputError, match="does not match"):
        evaluate.unit_ranks(s, np.zeros((3, 3)), "morf", FlipSettings())
    with pytest.raises(InputError, match="not finite"):
        evaluate.unit_ranks(s, np.full((4, 4), np.nan), "morf", FlipSettings())


def test_summary_mean_and_standard_error():
    runs = [{"method": "lrp", "order": "morf", "aopc": a} for a in (1.0, 2.0, 6.0)]
    runs.append({"method": "gradient", "order": "morf", "aopc": 0.5})
    lrp, gradient = evaluate.summarize(runs)
    assert lrp == {"method": "lrp", "order": "morf", "n": 3, "aopc_mean": 3.0,
                   "aopc_sem": pytest.approx(np.sqrt(7.0) / np.sqrt(3.0))}  # sample variance (4 + 1 + 9) / 2
    assert gradient["n"] == 1 and gradient["aopc_sem"] is None


@pytest.mark.parametrize("patch, perturbation", [(1, "flip"), (3, "uniform"), (2, "blur")])
def test_batched_curve_equals_a_loop_of_single_runs(tmp_path, patch, perturbation):
    model = api.load_model(save_model(tiny_cnn(seed=2), tmp_path / "t.onnx"))
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 2, (1, 3, 16, 16)).astype(np.float32)
    pixel_map = rng.standard_normal((16, 16))
    pixel_map[:4, :4] = 0.25  # a block of ties
    settings = FlipSettings(("morf", "lerf"), perturbation, patch, steps=7, seed=1)
    s = evaluate.onnx_subject(model, x, PreprocessConfig("imagenet"), "a.png")
    target = 2
    curves = evaluate.flip_curves(lambda b: score_batch(model, b), s, pixel_map, target, settings)
    fill = evaluate.fill_values(s, settings).astype(np.float32)
    for order, (curve, _) in curves.items():
        # the reference: rank patches with Python sorting, then perturb patch by patch and run each step alone
        sums = {(i, j): pixel_map[i:i + patch, j:j + patch].sum() for i in range(0, 16, patch)
                for j in range(0, 16, patch)}
        key = {"morf": lambda u: -sums[u], "lerf": lambda u: abs(sums[u])}[order]
        ranked = sorted(sums, key=lambda u: (key(u), u))  # stable: row-major index breaks ties
        units = len(ranked)
        for k in range(settings.steps + 1):
            xk = x.copy()
            for i, j in ranked[:k * units // settings.steps]:
                xk[0, :, i:i + patch, j:j + patch] = fill[0, :, i:i + patch, j:j + patch]
            probabilities, scores = model.run_onnxruntime(xk)  # tiny_cnn ends in a Softmax
            assert curve.scores[k] == pytest.approx(float(scores.ravel()[target]), rel=1e-5, abs=1e-6)
            assert curve.probabilities[k] == pytest.approx(float(probabilities.ravel()[target]), abs=1e-6)
            assert curve.predicted[k] == int(np.argmax(scores))
        assert curve.fractions.tolist() == [k / 7 for k in range(8)]
        assert curve.aopc == pytest.approx(np.mean(curve.scores[0] - curve.scores))


def test_strip_frames_are_the_perturbed_inputs_with_the_predicted_label_and_scores():
    class Labelled:
        labels = ["ant", "bee", "cat"]

    curve = evaluate.Curve(np.arange(5) / 4, np.array([3.0, 2.0, 1.0, 0.5, 0.25]),
                           np.array([0.9, 0.8, 0.5, 0.4, 0.3]), np.array([2, 2, 0, 1, 1]))
    batch = np.arange(5.0)[:, None, None, None] * np.ones((5, 1, 2, 2))
    rows = evaluate._strip_rows(Labelled, {"morf": (curve, batch)}, lambda t: float(t[0, 0, 0, 0]), 4)
    assert evaluate.strip_steps(4) == [0, 1, 2, 3, 4] and evaluate.strip_steps(100)[:3] == [0, 10, 20]
    (order, frames), = rows
    assert order == "morf" and [f[1] for f in frames] == [0.0, 1.0, 2.0, 3.0, 4.0]  # the k-th perturbed input
    assert frames[2][2] == "0 (ant)\nyp=1 y=0.50" and frames[4][2].startswith("1 (bee)")


def test_summary_table_keeps_long_cells_apart():
    # Cells wider than the table's minimum column (26) must not run into the next column.
    from lrp_cli.evaluation_files import summary_table
    summary = [{"method": "lrp", "order": o, "aopc_mean": -0.03231, "aopc_sem": 0.003651, "n": 100}
               for o in ("morf", "lerf")]
    header, row = summary_table(summary).splitlines()
    cell = "-0.03231 ± 0.003651 (n=100)"
    assert row.split("  ") == ["lrp", cell, cell] or row.count(cell + "  ") == 1
    assert row.index(cell, row.index(cell) + 1) == header.index("AOPC lerf")
