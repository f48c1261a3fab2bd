"""The evaluation protocols by brute force: prefix curves (--units, --max-fraction) with their full-range curve,
Samek et al.'s region protocol, ROAD's imputation against a dense solve, the MoRF-LeRF area, and the bootstrap
ranking on a linear model whose exact relevance is known."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import helper

from conftest import onnx_model, save_model, tiny_cnn
from lrp_cli import api, evaluate, ranking, road
from lrp_cli.cli import main
from lrp_cli.errors import OptionError
from lrp_cli.evaluate import FlipSettings
from lrp_cli.preprocess import PreprocessConfig
from lrp_cli.scoring import score_batch


class CountingScorer:
    """Scores with the model's batched session and records the size of every call."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, batch):
        self.calls.append(len(batch))
        return score_batch(self.model, batch)


def ranked_units(pixel_map, patch, order):
    """Returns the (row, col) patch origins in perturbation order: Python sorting, row-major index breaks ties."""
    height, width = pixel_map.shape
    sums = {(i, j): pixel_map[i:i + patch, j:j + patch].sum() for i in range(0, height, patch)
            for j in range(0, width, patch)}
    key = {"morf": lambda u: -sums[u], "lerf": lambda u: abs(sums[u])}[order]
    return sorted(sums, key=lambda u: (key(u), u))


def brute_force_scores(model, x, fill, units, counts, patch, target):
    """Returns the target score of each count's input, each perturbed unit by unit and run alone."""
    scores = []
    for count in counts:
        xk = x.copy()
        for i, j in units[:count]:
            xk[0, :, i:i + patch, j:j + patch] = fill[0, :, i:i + patch, j:j + patch]
        scores.append(float(model.run_onnxruntime(xk)[1].ravel()[target]))
    return np.array(scores)


@pytest.mark.parametrize("prefix", [{"units": 10}, {"max_fraction": 0.3}])
def test_prefix_curve_and_its_full_range_curve_match_single_runs(tmp_path, prefix):
    model = api.load_model(save_model(tiny_cnn(seed=4), tmp_path / "t.onnx"))
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 2, (1, 3, 16, 16)).astype(np.float32)
    pixel_map = rng.standard_normal((16, 16))
    settings = FlipSettings(("morf", "lerf"), "uniform", 2, steps=5, seed=3, **prefix)
    subject = evaluate.onnx_subject(model, x, PreprocessConfig("imagenet"), "a.png")
    scorer = CountingScorer(model)
    curves = evaluate.flip_curves(scorer, subject, pixel_map, 1, settings)
    fill = evaluate.fill_values(subject, settings).astype(np.float32)
    total, covered = 64, prefix.get("units") or round(0.3 * 64)  # 8 x 8 patches of 2 x 2
    for order, (curve, batch) in curves.items():
        units = ranked_units(pixel_map, 2, order)
        counts = [k * covered // 5 for k in range(6)]
        expected = brute_force_scores(model, x, fill, units, counts, 2, 1)
        # float32 batched against batch-1 runs: reassociation only
        assert np.allclose(curve.scores, expected, rtol=1e-5, atol=1e-6)
        assert curve.fractions == pytest.approx([k / 5 * covered / total for k in range(6)])
        assert curve.aopc == pytest.approx(np.mean(expected[0] - expected), abs=1e-5)
        assert len(batch) == 6
        full = brute_force_scores(model, x, fill, units, [k * total // 5 for k in range(6)], 2, 1)
        assert np.allclose(curve.full_range.scores, full, rtol=1e-5, atol=1e-6)
        assert curve.full_range.aopc == pytest.approx(np.mean(full[0] - full), abs=1e-5)
    # the cost: one scorer call per order, each distinct perturbed input once (count 0 is in both curves)
    distinct = len(set([k * covered // 5 for k in range(6)] + [k * total // 5 for k in range(6)]))
    assert scorer.calls == [distinct, distinct]


def test_without_a_prefix_there_is_no_full_range_curve_and_one_input_per_step(tmp_path):
    model = api.load_model(save_model(tiny_cnn(seed=4), tmp_path / "t.onnx"))
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
    scorer = CountingScorer(model)
    curves = evaluate.flip_curves(scorer, evaluate.onnx_subject(model, x, PreprocessConfig("unit"), "a.png"),
                                  np.random.default_rng(1).standard_normal((16, 16)), 0, FlipSettings(steps=9))
    assert all(curve.full_range is None for curve, _ in curves.values())
    assert scorer.calls == [10, 10]


@pytest.mark.parametrize("kwargs, word", [
    ({"units": 3, "max_fraction": 0.5}, "give one"), ({"units": 0}, "--units"),
    ({"max_fraction": 0.0}, "--max-fraction 0.0"),
    ({"max_fraction": 1.5}, "--max-fraction 1.5"), ({"protocol": "samek2016"}, "samek2016"),
])
def test_bad_prefix_or_protocol_is_an_option_error(kwargs, word):
    with pytest.raises(OptionError, match=word):
        FlipSettings(**kwargs)


def test_prefix_counts_by_hand():
    assert FlipSettings(units=100).prefix(625) == 100 and FlipSettings(units=100).prefix(64) == 64
    assert FlipSettings(max_fraction=0.1).prefix(1024) == 102 and FlipSettings(max_fraction=0.001).prefix(10) == 1
    assert FlipSettings().prefix(77) == 77


@pytest.mark.parametrize("shape, region", [((224, 224), 9), ((32, 32), 1), ((28, 28), 1), ((112, 150), 4),
                                           ((448, 448), 18)])
def test_samek_regions_scale_with_the_input_side(shape, region):
    resolved = FlipSettings(protocol="samek2017", perturbation="uniform").for_image(shape)
    assert (resolved.patch, resolved.units, resolved.steps) == (region, 100, 100)


def test_samek_note_says_how_the_regions_were_scaled():
    settings = FlipSettings(protocol="samek2017", perturbation="uniform")
    assert "scaled to 1x1 for the 32x32 input, 1024 regions" in evaluate.protocol_note(settings, (32, 32))
    assert "on the 224x224 input, 625 regions; the first 100" in evaluate.protocol_note(settings, (224, 224))
    assert evaluate.protocol_note(FlipSettings(), (224, 224)) is None


def pooled_net(size: int, seed: int = 0):
    """Returns a Conv-ReLU-GlobalAveragePool-Gemm classifier on 1x3xSxS inputs with 3 classes."""
    rng = np.random.default_rng(seed)
    inits = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "b": np.zeros(4, np.float32),
             "d": rng.standard_normal((4, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("Gemm", ["f", "d"], ["y"])]
    return onnx_model(nodes, (1, 3, size, size), initializers=inits)


def test_samek_protocol_against_region_by_region_noise(tmp_path):
    """50 x 50 input: 2 x 2 regions (9 x 50 / 224 rounded), 625 of them, the first 100 one a step, uniform noise
    in the preset's range; the reference perturbs each region on its own copy and runs the model once a step."""
    model = api.load_model(save_model(pooled_net(50), tmp_path / "p.onnx"))
    rng = np.random.default_rng(7)
    x = rng.uniform(0, 1, (1, 3, 50, 50)).astype(np.float32)
    pixel_map = rng.standard_normal((50, 50))
    subject = evaluate.onnx_subject(model, x, PreprocessConfig("unit"), "a.png")
    settings = FlipSettings(("morf",), "uniform", seed=5, protocol="samek2017", full_range=False)
    (curve, _), = evaluate.flip_curves(lambda b: score_batch(model, b), subject, pixel_map, 2, settings).values()
    noise = np.random.default_rng(5).uniform(0, 1, x.shape).astype(np.float32)  # U(lo, hi) of preset unit
    expected = brute_force_scores(model, x, noise, ranked_units(pixel_map, 2, "morf"), range(101), 2, 2)
    assert np.allclose(curve.scores, expected, rtol=1e-5, atol=1e-6)
    assert curve.aopc == pytest.approx(np.mean(expected[0] - expected), abs=1e-5)
    assert curve.fractions[-1] == pytest.approx(100 / 625)


def dense_imputation(image, mask):
    """Returns the image with masked pixels solved from the dense system, built pixel by pixel."""
    channels, height, width = image.shape
    removed = [(i, j) for i in range(height) for j in range(width) if mask[i, j]]
    index = {p: n for n, p in enumerate(removed)}
    a = np.zeros((len(removed), len(removed)))
    b = np.zeros((len(removed), channels))
    for n, (i, j) in enumerate(removed):
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                if (di, dj) == (0, 0) or not (0 <= i + di < height and 0 <= j + dj < width):
                    continue
                weight = 1 / 12 if di and dj else 1 / 6
                a[n, n] += weight
                if (i + di, j + dj) in index:
                    a[n, index[i + di, j + dj]] -= weight
                else:
                    b[n] += weight * image[:, i + di, j + dj]
    result = image.copy()
    solution = np.linalg.solve(a, b)
    for n, (i, j) in enumerate(removed):
        result[:, i, j] = solution[n]
    return result


def test_road_imputation_equals_the_dense_solve_and_each_pixel_is_its_neighbours_mean():
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (2, 9, 11))
    mask = rng.uniform(size=(9, 11)) < 0.45
    mask[0, :4] = mask[:, -1] = True  # removed pixels on the border and in corners
    imputed = road.impute(image, mask, np.zeros_like(image), np.zeros(2))
    # both solve the same well-conditioned (diagonally dominant) system in float64
    assert np.allclose(imputed, dense_imputation(image, mask), atol=1e-12)
    assert np.array_equal(imputed[:, ~mask], image[:, ~mask])
    padded = np.pad(imputed, ((0, 0), (1, 1), (1, 1)))
    weights = np.pad(np.ones((9, 11)), 1)
    kernel = [(di, dj, 1 / 12 if di and dj else 1 / 6) for di in (-1, 0, 1) for dj in (-1, 0, 1) if di or dj]
    total = sum(w * padded[:, 1 + di:10 + di, 1 + dj:12 + dj] for di, dj, w in kernel)
    norm = sum(w * weights[1 + di:10 + di, 1 + dj:12 + dj] for di, dj, w in kernel)
    assert np.allclose((total / norm)[:, mask], imputed[:, mask], atol=1e-12)


def test_road_noise_is_added_to_the_removed_pixels_only_and_a_full_mask_takes_the_fallback():
    rng = np.random.default_rng(1)
    image = rng.uniform(size=(3, 6, 6))
    mask = np.zeros((6, 6), bool)
    mask[2:4, 1:5] = True
    noise = rng.standard_normal(image.shape)
    difference = road.impute(image, mask, noise, np.zeros(3)) - road.impute(image, mask, 0 * noise, np.zeros(3))
    assert np.allclose(difference[:, mask], noise[:, mask]) and not difference[:, ~mask].any()
    everything = road.impute(image, np.ones((6, 6), bool), noise, np.array([1.0, 2.0, 3.0]))
    assert np.allclose(everything, np.array([1.0, 2.0, 3.0])[:, None, None] + noise)
    # ROAD's 0.01 on ImageNet-normalized inputs, in a channel's own range
    assert road.noise_std(np.zeros(1), np.full(1, 255.0))[0] == pytest.approx(0.01 * 0.226 * 255)


def test_road_curve_against_step_by_step_imputation(tmp_path):
    model = api.load_model(save_model(tiny_cnn(seed=1), tmp_path / "t.onnx"))
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
    pixel_map = rng.standard_normal((16, 16))
    subject = evaluate.onnx_subject(model, x, PreprocessConfig("unit"), "a.png")
    settings = FlipSettings(("lerf",), "road", 2, steps=4, seed=9)
    (curve, _), = evaluate.flip_curves(lambda b: score_batch(model, b), subject, pixel_map, 3, settings).values()
    noise = np.random.default_rng(9).standard_normal(x.shape[1:]) * road.noise_std(subject.low, subject.high)[
        :, None, None]
    units = ranked_units(pixel_map, 2, "lerf")
    for k, score in enumerate(curve.scores):
        mask = np.zeros((16, 16), bool)
        for i, j in units[:k * 64 // 4]:
            mask[i:i + 2, j:j + 2] = True
        xk = road.impute(x[0].astype(np.float64), mask, noise, subject.mean)[None].astype(np.float32)
        assert score == pytest.approx(float(model.run_onnxruntime(xk)[1].ravel()[3]), rel=1e-5, abs=1e-6)


def test_bootstrap_interval_of_two_values_by_hand():
    # resampled means of [a, b] are a, (a + b) / 2, b with probabilities 1/4, 1/2, 1/4: the 2.5 % and 97.5 %
    # quantiles of 10 000 draws are a and b
    assert ranking.bootstrap_interval(np.array([1.0, 3.0]), seed=0) == (1.0, 3.0)
    assert ranking.bootstrap_interval(np.full(5, 0.7), seed=1) == pytest.approx((0.7, 0.7))
    values = np.random.default_rng(0).standard_normal(30)
    assert ranking.bootstrap_interval(values, 4) == ranking.bootstrap_interval(values, 4)
    low, high = ranking.bootstrap_interval(values, 4)
    sem = values.std(ddof=1) / np.sqrt(30)  # the normal approximation's half width is 1.96 sem
    assert low < values.mean() < high and abs((high - low) / 2 - 1.96 * sem) < 0.3 * 1.96 * sem


def test_areas_and_verdicts_by_hand():
    runs = []
    for k, (a, b) in enumerate([(3.0, 1.0), (2.0, 1.5), (4.0, 1.0)]):
        for method, morf in (("good", a), ("bad", b)):
            runs += [{"input": f"i{k}", "method": method, "target": 0, "order": "morf", "scores": [5, 5 - morf],
                      "aopc": morf / 2},
                     {"input": f"i{k}", "method": method, "target": 0, "order": "lerf", "scores": [5, 5],
                      "aopc": 0.0}]
    ranking.add_morf_lerf_areas(runs)
    assert [r["morf_lerf_area"] for r in runs[::2]] == [1.5, 0.5, 1.0, 0.75, 2.0, 0.5]
    (area, *_), = [ranking.rankings(runs, 0)[:1]]
    assert area["measure"] == "morf_lerf_area" and [m["method"] for m in area["methods"]] == ["good", "bad"]
    pair, = area["pairs"]
    assert pair["mean_difference"] == pytest.approx((1.0 + 0.25 + 1.5) / 3)
    assert pair["verdict"] == "good > bad" and pair["ci"][0] >= 0.25 and pair["ci"][1] <= 1.5
    assert ranking.verdict_line(pair).startswith("good > bad: 95 % CI [")
    lerf = next(r for r in ranking.rankings(runs, 0) if r["measure"] == "aopc_lerf")
    assert lerf["pairs"][0]["verdict"] == "not separated" and lerf["better"] == "smaller"


def linear_net(pixels: int, seed: int = 0):
    """Returns f(x) = W x on a 1x1xSxS input, no bias: class 0's exact relevance of pixel i is W[0, i] x_i."""
    weights = np.random.default_rng(seed).uniform(0.05, 1, (pixels * pixels, 2)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"])]
    return onnx_model(nodes, (1, 1, pixels, pixels), initializers={"w": weights})


def test_ranking_finds_the_known_order_on_a_linear_model(tmp_path):
    """With positive weights and inputs and the fill 0, removing pixel i lowers f by exactly w_i x_i, so the
    exact relevance (LRP-z = gradient x input here) gives the lowest MoRF and highest LeRF curve at every step,
    the gradient w alone ignores x and a random order ignores both: the true order is lrp > gradient > random."""
    model = save_model(linear_net(6), tmp_path / "linear.onnx")
    rng = np.random.default_rng(11)
    inputs = []
    for k in range(20):
        path = tmp_path / f"x{k:02d}.npy"
        np.save(path, rng.uniform(0.05, 1, (1, 1, 6, 6)).astype(np.float32))
        inputs.append(path)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["evaluate", *map(str, inputs), "--model", str(model), "--preset", "none",
                                       "--methods", "lrp,gradient,random", "--rule", "z", "--target", "0",
                                       "--perturbation", "mean", "--steps", "12", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "evaluation.json").read_text())
    area = doc["rankings"][0]
    assert area["measure"] == "morf_lerf_area" and [m["method"] for m in area["methods"]] == \
        ["lrp", "gradient", "random"]
    assert [p["verdict"] for p in area["pairs"]] == ["lrp > gradient", "lrp > random", "gradient > random"]
    assert "lrp > gradient: 95 % CI [" in result.output and "ranking by morf_lerf_area" in result.output
    per_input = ranking.measure_values(doc["runs"], "morf_lerf_area")
    assert all(per_input["lrp"][key] >= per_input["gradient"][key] - 1e-5 for key in per_input["lrp"])
    summary = {(s["method"], s["order"]): s for s in doc["summary"]}
    assert summary["lrp", "morf"]["morf_lerf_area"]["mean"] == pytest.approx(
        summary["lrp", "morf"]["aopc_mean"] - summary["lrp", "lerf"]["aopc_mean"])


def test_cli_prefix_reports_the_full_range_aopc_beside_it(tiny_cnn_path, rgb_image, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["evaluate", str(rgb_image), str(rgb_image), "--model", str(tiny_cnn_path),
                                       "--methods", "lrp,random", "--max-fraction", "0.1", "--steps", "4",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "AOPC morf first 10 %" in result.output and "full-range AOPC morf" in result.output
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["settings"]["max_fraction"] == 0.1
    for run in doc["runs"]:
        assert run["fractions"][-1] == pytest.approx(round(0.1 * 256) / 256)
        assert run["aopc_full_range"] == pytest.approx(np.mean(run["full_range"]["scores"][0] -
                                                               np.array(run["full_range"]["scores"])))
    entry = doc["summary"][0]
    assert entry["aopc_full_range_mean"] == pytest.approx(np.mean(
        [r["aopc_full_range"] for r in doc["runs"] if (r["method"], r["order"]) == ("lrp", "morf")]))


def test_cli_protocol_prints_its_scaling_and_refuses_options_it_sets(tiny_cnn_path, rgb_image, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["evaluate", str(rgb_image), "--model", str(tiny_cnn_path), "--methods",
                                       "gradient", "--protocol", "samek2017", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "samek2017: 9x9 regions (at 224x224) scaled to 1x1 for the 16x16 input, 256 regions" in result.output
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["settings"]["perturbation"] == "uniform" and doc["settings"]["prefix_units"] == 100
    assert len(doc["runs"][0]["scores"]) == 101
    refused = CliRunner().invoke(main, ["evaluate", str(rgb_image), "--model", str(tiny_cnn_path), "--protocol",
                                        "samek2017", "--steps", "10", "--out", str(tmp_path / "o2")])
    assert refused.exit_code == 2 and "drop --steps" in refused.output and not (tmp_path / "o2").exists()


@pytest.mark.slow
def test_lenet_samek_protocol_puts_lrp_above_random(tmp_path):
    """Samek et al.'s protocol on the shared LeNet-5 (regions scaled to 1x1 at 32x32): over 10 digits the default
    composite's MoRF-LeRF area is separated from a random order's by the bootstrap interval."""
    from PIL import Image

    from conftest import shared_path
    from test_shared_models import with_sidecar
    model = with_sidecar(tmp_path, "lenet5_mnist.onnx")
    digits = np.load(shared_path("images", "mnist", "mnist_test_first100_uint8.npy"))[:10]
    for k, digit in enumerate(digits):
        Image.fromarray(np.pad(digit, 2)).save(tmp_path / f"d{k}.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["evaluate", *[str(tmp_path / f"d{k}.png") for k in range(10)], "--model",
                                       str(model), "--methods", "lrp,random", "--protocol", "samek2017", "--out",
                                       str(out)])
    assert result.exit_code == 0, result.output
    assert "scaled to 1x1 for the 32x32 input, 1024 regions" in result.output
    assert "lrp > random: 95 % CI [" in result.output
