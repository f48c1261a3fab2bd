"""`lrp evaluate` end to end: evaluation.json/.csv values, curves.png, strips, maps, BoW models, errors."""

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import REPO, shared_path
from lrp_cli import evaluation_files
from lrp_cli.cli import main

RUN = CliRunner()


def evaluate(*args):
    return RUN.invoke(main, ["evaluate", *map(str, args)])


def files_in(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture
def two_images(tmp_path, rgb_image):
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3)).astype(np.uint8)).save(noise)
    return [rgb_image, noise]


def test_json_and_csv_hold_every_curve_and_the_summary(tiny_cnn_path, two_images, tmp_path):
    out = tmp_path / "out"
    result = evaluate(*two_images, "--model", tiny_cnn_path, "--methods", "lrp,gradient", "--steps", "10",
                      "--out", out)
    assert result.exit_code == 0, result.output
    assert files_in(out) == ["curves.png", "evaluation.csv", "evaluation.json"]
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["schema"] == "lrp-cli/evaluation/1" and doc["errors"] == []
    assert doc["settings"]["orders"] == ["morf", "lerf"] and doc["settings"]["steps"] == 10
    assert [m["name"] for m in doc["settings"]["methods"]] == ["lrp", "gradient"]
    runs = doc["runs"]
    assert len(runs) == 2 * 2 * 2  # inputs x methods x orders
    for run in runs:
        assert set(run) == {"input", "method", "order", "target", "fractions", "scores", "probabilities",
                            "predicted", "aopc", "morf_lerf_area"}
        assert run["fractions"] == pytest.approx([k / 10 for k in range(11)])
        assert len(run["scores"]) == len(run["probabilities"]) == len(run["predicted"]) == 11
        assert run["aopc"] == pytest.approx(np.mean(run["scores"][0] - np.array(run["scores"])))
        assert all(0 <= p <= 1 for p in run["probabilities"])
    # the area between the LeRF and MoRF curves of the same input and method is AOPC MoRF - AOPC LeRF
    for morf, lerf in zip(runs[0::2], runs[1::2]):
        assert (morf["order"], lerf["order"]) == ("morf", "lerf") and morf["method"] == lerf["method"]
        assert morf["morf_lerf_area"] == lerf["morf_lerf_area"] == pytest.approx(morf["aopc"] - lerf["aopc"])
    # every method and order starts from the same unperturbed input
    for image in two_images:
        starts = {run["scores"][0] for run in runs if run["input"] == str(image)}
        assert max(starts) - min(starts) < 1e-6
    for entry in doc["summary"]:
        values = [r["aopc"] for r in runs if (r["method"], r["order"]) == (entry["method"], entry["order"])]
        assert entry["n"] == 2 and entry["aopc_mean"] == pytest.approx(np.mean(values))
        assert entry["aopc_sem"] == pytest.approx(np.std(values, ddof=1) / np.sqrt(2))
    rows = list(csv.DictReader(io.StringIO((out / "evaluation.csv").read_text())))
    assert len(rows) == 8 * 11 and list(rows[0]) == evaluation_files.CSV_FIELDS
    assert float(rows[13]["score"]) == pytest.approx(runs[1]["scores"][2]) and rows[13]["step"] == "2"
    # the printed table: a row per method, AOPC mean +- sem per order
    lrp_morf = next(s for s in doc["summary"] if (s["method"], s["order"]) == ("lrp", "morf"))
    assert f"{lrp_morf['aopc_mean']:.4g} ± {lrp_morf['aopc_sem']:.4g}" in result.output
    assert "evaluation.json" in result.output


def test_step_zero_is_the_explained_score_and_maps_are_the_explanations(tiny_cnn_path, rgb_image, tmp_path):
    out = tmp_path / "out"
    result = evaluate(rgb_image, "--model", tiny_cnn_path, "--methods", "gradient-x-input", "--order", "negative",
                      "--target", "1", "--steps", "4", "--save-maps", "--out", out)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "evaluation.json").read_text())["runs"][0]
    assert run["order"] == "negative" and run["target"] == 1
    explained = RUN.invoke(main, ["explain", str(rgb_image), "--model", str(tiny_cnn_path), "--method",
                                  "gradient-x-input", "--target", "1", "--save-raw", "--out", str(tmp_path / "e")])
    assert explained.exit_code == 0, explained.output
    doc = json.loads((tmp_path / "e" / "img.json").read_text())
    assert run["scores"][0] == pytest.approx(doc["f_x"], rel=1e-5)  # pre-softmax, not the model's Softmax output
    assert np.array_equal(np.load(out / "img.gradient-x-input.relevance.npy"),
                          np.load(tmp_path / "e" / "img.relevance.npy"))


def test_curves_png_has_a_line_per_method_in_a_panel_per_order(tiny_cnn_path, two_images, tmp_path):
    out = tmp_path / "out"
    result = evaluate(*two_images, "--model", tiny_cnn_path, "--methods", "lrp,gradient,gradient-x-input", "--steps",
                      "20", "--order", "morf,lerf,negative", "--out", out)
    assert result.exit_code == 0, result.output
    runs = json.loads((out / "evaluation.json").read_text())["runs"]
    figure = evaluation_files.curves_figure(runs)
    axes = figure.axes
    assert len(axes) == 3
    for ax, order in zip(axes, ["morf", "lerf", "negative"]):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert list(lines) == ["lrp", "gradient", "gradient-x-input"]
        for method, line in lines.items():
            mean = np.mean([r["scores"] for r in runs if (r["method"], r["order"]) == (method, order)], axis=0)
            assert np.allclose(line.get_ydata(), mean) and np.allclose(line.get_xdata(), np.arange(21) * 5)
    png = Image.open(out / "curves.png")
    assert png.format == "PNG" and png.size == (1500, 420)
    pixels = np.asarray(png.convert("RGB")).reshape(-1, 3).astype(int)
    for colour in ("#1f77b4", "#ff7f0e", "#2ca02c"):  # matplotlib's C0, C1, C2: one per method
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(pixels - rgb).sum(axis=1) < 30).sum() > 200


def test_strips_show_each_order_at_increasing_fractions(tiny_cnn_path, rgb_image, tmp_path):
    out = tmp_path / "out"
    result = evaluate(rgb_image, "--model", tiny_cnn_path, "--methods", "lrp", "--strip", "--steps", "5",
                      "--patch", "4", "--perturbation", "mean", "--out", out)
    assert result.exit_code == 0, result.output
    strip = Image.open(out / "img.lrp.strip.png")
    assert strip.format == "PNG" and strip.size == (750, 390)  # 6 frames of 1.25 in, 2 rows of 1.75 in + title
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["settings"]["units"] == "4x4 patch" and doc["settings"]["perturbation"] == "mean"


def test_bow_pipeline_is_evaluated_with_its_decision_function(tmp_path):
    from lrp_cli.synthetic.polygons import make_scene, to_uint8
    image, _, _ = make_scene(np.random.default_rng(0), size=(102, 102), n_polygons=1, n_circles=1)
    path = tmp_path / "scene.png"
    Image.fromarray(to_uint8(image)).save(path)
    model = REPO / "models" / "polygons-bow-svm.joblib"
    out = tmp_path / "out"
    result = evaluate(path, "--model", model, "--steps", "2", "--patch", "17", "--target", "positive", "--out", out)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["settings"]["model"]["kind"] == "sklearn-bow"
    assert [(r["method"], r["order"]) for r in doc["runs"]] == [("lrp", "morf"), ("lrp", "lerf")]
    explained = RUN.invoke(main, ["explain", str(path), "--model", str(model), "--target", "positive", "--out",
                                  str(tmp_path / "e")])
    assert explained.exit_code == 0, explained.output
    f_x = json.loads((tmp_path / "e" / "scene.json").read_text())["f_x"]
    assert doc["runs"][0]["scores"][0] == pytest.approx(f_x, rel=1e-9)  # the SVM decision value
    result = evaluate(path, "--model", model, "--methods", "gradient", "--out", tmp_path / "o2")
    assert result.exit_code == 2 and "BoW" in result.output and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("args, code, words", [
    (["--methods", "lrp,bogus"], 2, "'bogus'"),
    (["--order", "morf,sideways"], 2, "'sideways'"),
    (["--rule", "nonsense"], 2, "nonsense"),
    (["--steps", "0"], 2, "--steps"),
])
def test_usage_errors_exit_2_and_write_nothing(tiny_cnn_path, rgb_image, tmp_path, args, code, words):
    out = tmp_path / "out"
    result = evaluate(rgb_image, "--model", tiny_cnn_path, "--out", out, *args)
    assert result.exit_code == code and words in result.output
    assert "Traceback" not in result.output and files_in(out) == []


def test_a_bad_input_is_reported_and_the_rest_is_evaluated(tiny_cnn_path, rgb_image, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    result = evaluate(broken, rgb_image, tmp_path / "missing.png", "--model", tiny_cnn_path, "--methods", "lrp",
                      "--steps", "3", "--out", out)
    assert result.exit_code == 1
    assert "error: " in result.output and "broken.png" in result.output and "missing.png: no such file" in result.output
    assert "2 of 3 inputs failed" in result.output
    doc = json.loads((out / "evaluation.json").read_text())
    assert {r["input"] for r in doc["runs"]} == {str(rgb_image)}
    assert [e["input"] for e in doc["errors"]] == [str(broken), str(tmp_path / "missing.png")]


def test_no_good_input_writes_nothing_and_a_bad_model_exits_3(tiny_cnn_path, tmp_path):
    out = tmp_path / "out"
    result = evaluate(tmp_path / "missing.png", "--model", tiny_cnn_path, "--out", out)
    assert result.exit_code == 1 and "nothing written" in result.output and files_in(out) == []
    result = evaluate(tmp_path / "missing.png", "--model", tmp_path / "none.onnx", "--out", out)
    assert result.exit_code == 3 and "none.onnx" in result.output


@pytest.mark.slow
def test_lenet_mnist_lrp_morf_falls_faster_than_lerf(tmp_path):
    """The paper's Figs 19/20 on the shared LeNet-5: flipping the most relevant pixels first costs the true class
    more score than flipping the least relevant ones."""
    from test_shared_models import with_sidecar
    model = with_sidecar(tmp_path, "lenet5_mnist.onnx")
    digits = np.load(shared_path("images", "mnist", "mnist_test_first100_uint8.npy"))[:10]
    for k, digit in enumerate(digits):
        Image.fromarray(np.pad(digit, 2)).save(tmp_path / f"d{k}.png")
    out = tmp_path / "out"
    result = evaluate(*[tmp_path / f"d{k}.png" for k in range(10)], "--model", model, "--methods",
                      "lrp,gradient", "--rule", "epsilon:0.01", "--steps", "20", "--out", out)
    assert result.exit_code == 0, result.output
    summary = {(s["method"], s["order"]): s for s in json.loads((out / "evaluation.json").read_text())["summary"]}
    assert summary[("lrp", "morf")]["aopc_mean"] > summary[("lrp", "lerf")]["aopc_mean"] + \
        2 * (summary[("lrp", "morf")]["aopc_sem"] + summary[("lrp", "lerf")]["aopc_sem"])
    runs = json.loads((out / "evaluation.json").read_text())["runs"]
    assert all(r["predicted"][0] == r["target"] for r in runs)  # the ten digits are read right


def test_nhwc_model_is_perturbed_in_its_own_layout(rgb_image, tmp_path):
    from test_cli import nhwc_model

    from lrp_cli import api
    path = nhwc_model(tmp_path)
    out = tmp_path / "out"
    result = evaluate(rgb_image, "--model", path, "--preset", "tf", "--methods", "gradient", "--steps", "1",
                      "--target", "0", "--perturbation", "flip", "--out", out)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "evaluation.json").read_text())["runs"][0]
    model = api.load_model(path)
    _, x, _ = api.load_model_input(model, rgb_image, api.Settings(preprocess={"preset": "tf"}))
    assert x.shape == (1, 12, 10, 3)
    # step 1 flips every pixel: x -> -x in the tf preset's range [-1, 1]
    expected = [float(model.run_onnxruntime(v)[1].ravel()[0]) for v in (x, -x)]
    assert run["scores"] == pytest.approx(expected, rel=1e-5)  # float32 model: rel 1e-5 is its rounding
    # the default fill, ROAD: with every pixel removed there is nothing to interpolate from, so each takes the
    # preset's mean (0 under tf) plus the seed-0 noise field drawn in NCHW, std 0.01 * 0.226 * (hi - lo)
    result = evaluate(rgb_image, "--model", path, "--preset", "tf", "--methods", "gradient", "--steps", "1",
                      "--target", "0", "--out", tmp_path / "road")
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "road" / "evaluation.json").read_text())["runs"][0]
    noise = np.random.default_rng(0).standard_normal((1, 3, 12, 10)) * 0.01 * 0.226 * 2
    imputed = noise.transpose(0, 2, 3, 1).astype(np.float32)
    expected = [float(model.run_onnxruntime(v)[1].ravel()[0]) for v in (x, imputed)]
    assert run["scores"] == pytest.approx(expected, rel=1e-5)


def test_the_default_measure_is_roads_fill_in_ten_steps_headlined_by_the_morf_lerf_area(tiny_cnn_path, two_images,
                                                                                          tmp_path):
    """The defaults docs/evaluate-protocols.md chose: MoRF and LeRF, ROAD's fill, 10 steps over all pixels; the
    printed table leads with the MoRF-LeRF area and the verdicts rank by it."""
    out = tmp_path / "out"
    result = evaluate(*two_images, "--model", tiny_cnn_path, "--methods", "lrp,random", "--out", out)
    assert result.exit_code == 0, result.output
    settings = json.loads((out / "evaluation.json").read_text())["settings"]
    assert (settings["orders"], settings["perturbation"], settings["steps"], settings["patch"]) == \
        (["morf", "lerf"], "road", 10, 1)
    assert (settings["protocol"], settings["prefix_units"], settings["max_fraction"]) == (None, None, None)
    header = result.output.splitlines()[0].split()
    assert header[:3] == ["method", "MoRF-LeRF", "area"]
    assert "ranking by morf_lerf_area" in result.output


def test_jobs_give_the_same_runs_as_one_at_a_time(tiny_cnn_path, two_images, tmp_path):
    documents = []
    for jobs in ("1", "2"):
        out = tmp_path / f"out{jobs}"
        result = evaluate(*two_images, "--model", tiny_cnn_path, "--methods", "lrp", "--steps", "5",
                          "--perturbation", "uniform", "--seed", "7", "--jobs", jobs, "--out", out)
        assert result.exit_code == 0, result.output
        documents.append(json.loads((out / "evaluation.json").read_text()))
    assert documents[0]["runs"] == documents[1]["runs"] and documents[0]["settings"]["seed"] == 7


def test_the_default_methods_leave_out_what_the_model_cannot_take_and_naming_it_is_an_error(tmp_path):
    # The bundled digits MLP has no Conv layer: Grad-CAM is not among the defaults, and named it is a usage error.
    digits = sorted((REPO / "sample_images" / "digits").iterdir())[:2]
    args = ["evaluate", *map(str, digits), "--model", str(REPO / "models" / "digits-mlp.onnx"), "--steps", "2"]
    result = RUN.invoke(main, [*args, "--out", str(tmp_path / "default")])
    assert result.exit_code == 0, result.output
    methods = {run["method"] for run in json.loads((tmp_path / "default" / "evaluation.json").read_text())["runs"]}
    assert methods == {"lrp", "gradient", "gradient-x-input", "occlusion", "lime", "random"}
    result = RUN.invoke(main, [*args, "--methods", "gradcam", "--out", str(tmp_path / "named")])
    assert result.exit_code == 2 and "no Conv layer" in result.output and not (tmp_path / "named").exists()
