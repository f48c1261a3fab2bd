"""Documented claims (docs/commands.md) about `lrp explain` checked by their effects: model inputs, pixels, JSON
values, batch files.

Most tests use a probe model, y_k = sum(x) + b_k (Flatten, MatMul by ones, Add). Under LRP-0 (`--rule z`) its
input relevance is the model input itself (R_i = x_i * 1 * f / z, with f = z), so `--save-raw` shows exactly
what preprocessing produced, and the heatmap shows a relevance map the test chose.
"""

import hashlib
import json

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import helper
from PIL import Image

from conftest import onnx_model, save_model, tiny_cnn
from lrp_cli import api, outputs
from lrp_cli.cli import main

RUN = CliRunner()
#: Channel means of the caffe preset (BGR order), as docs/commands.md gives them.
CAFFE_MEAN = np.array([104.0, 117.0, 123.0])
IMAGENET = (np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]))
#: jet at normalized relevance n (t = (n + 1) / 2): r, g, b = clip(1.5 - |4t - 3|), clip(1.5 - |4t - 2|), ...
JET = {-1.0: (0, 0, 128), -0.5: (0, 128, 255), -0.25: (0, 255, 255), 0.0: (128, 255, 128),
       0.25: (255, 255, 0), 0.5: (255, 128, 0), 1.0: (128, 0, 0)}
#: The other colormaps at n = -1, -0.5, 0, 0.5, 1 (linear between the stops of render.COLORMAP_STOPS).
CMAPS = {
    "jet": [JET[n] for n in (-1.0, -0.5, 0.0, 0.5, 1.0)],
    "bwr": [(0, 0, 255), (128, 128, 255), (255, 255, 255), (255, 128, 128), (255, 0, 0)],
    "seismic": [(0, 0, 208), (104, 104, 208), (208, 208, 208), (208, 104, 104), (208, 0, 0)],
    "coldnhot": [(0, 255, 255), (0, 0, 255), (0, 0, 0), (255, 128, 0), (255, 255, 255)],
    "gray": [(0, 0, 0), (64, 64, 64), (128, 128, 128), (191, 191, 191), (255, 255, 255)],
}
#: A 4x4 relevance map whose values are the five n above (max |n| = 1).
LEVELS = np.array([[-1.0, -0.5, 0.0, 0.5], [1.0, 0.5, 0.0, -0.5], [0.0, 0.0, 1.0, -1.0], [0.5, 0.5, -0.5, 0.0]])


def explain(*args):
    return RUN.invoke(main, ["explain", *map(str, args)])


def probe_model(tmp_path, shape=(1, 3, 4, 4), bias=0.0, name="probe", sidecar=None):
    """Saves y_k = sum(x) + bias - k (k = 0, 1) and returns its path; class 0 always wins."""
    n = int(np.prod(shape[1:]))
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["y"])]
    inits = {"w": np.ones((n, 2), np.float32), "b": np.array([bias, bias - 1], np.float32)}
    path = save_model(onnx_model(nodes, list(shape), "y", inits), tmp_path / f"{name}.onnx")
    if sidecar is not None:
        (tmp_path / f"{name}.lrp.toml").write_text(sidecar)
    return path


def model_input(tmp_path, image, model, *options):
    """Returns the model input lrp-cli built from the image (the probe's LRP-0 relevance) and the JSON."""
    out = tmp_path / "o"
    result = explain(image, "--model", model, "--out", out, "--rule", "z", "--save-raw", "--precision", "float64",
                     *options)
    assert result.exit_code == 0, result.output
    stem = image.stem
    return np.load(out / f"{stem}.relevance.npy").astype(np.float64), json.loads((out / f"{stem}.json").read_text())


def save_image(tmp_path, pixels, name="pic.png"):
    path = tmp_path / name
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)
    return path


def pixels_of(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3)).astype(np.float64)


def nchw(hwc):
    return hwc.transpose(2, 0, 1)[None]


@pytest.fixture
def pixels():
    return pixels_of(4, 4)


@pytest.mark.parametrize("preset,expected", [
    ("imagenet", lambda p: (p / 255 - IMAGENET[0]) / IMAGENET[1]),
    ("caffe", lambda p: p[:, :, ::-1] - CAFFE_MEAN),
    ("unit", lambda p: p / 255),
    ("tf", lambda p: p / 127.5 - 1),
    ("none", lambda p: p),
])
def test_presets_build_the_documented_model_input(tmp_path, pixels, preset, expected):
    x, _ = model_input(tmp_path, save_image(tmp_path, pixels), probe_model(tmp_path), "--preset", preset)
    np.testing.assert_allclose(x, nchw(expected(pixels)), rtol=1e-5, atol=1e-5)


def test_default_preset_without_sidecar_is_imagenet(tmp_path, pixels):
    x, _ = model_input(tmp_path, save_image(tmp_path, pixels), probe_model(tmp_path))
    np.testing.assert_allclose(x, nchw((pixels / 255 - IMAGENET[0]) / IMAGENET[1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options,expected", [
    (["--preset", "none", "--mean", "10,20,30", "--std", "2,4,8"], lambda p: (p - [10, 20, 30]) / [2, 4, 8]),
    (["--preset", "none", "--bgr"], lambda p: p[:, :, ::-1]),
    (["--preset", "caffe", "--rgb"], lambda p: p - CAFFE_MEAN),
    (["--preset", "unit", "--mean", "0.5", "--std", "0.25"], lambda p: (p / 255 - 0.5) / 0.25),
])
def test_mean_std_and_channel_order_override_the_preset(tmp_path, pixels, options, expected):
    x, _ = model_input(tmp_path, save_image(tmp_path, pixels), probe_model(tmp_path), *options)
    np.testing.assert_allclose(x, nchw(expected(pixels)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sidecar,options,expected", [
    ('preset = "caffe"\n', [], lambda p: p[:, :, ::-1] - CAFFE_MEAN),
    ('preset = "caffe"\n', ["--preset", "unit"], lambda p: p / 255),
    ('preset = "caffe"\n', ["--rgb"], lambda p: p - CAFFE_MEAN),
    ('preset = "none"\nmean = [1, 2, 3]\nstd = [2, 2, 2]\nbgr = true\n', [],
     lambda p: (p[:, :, ::-1] - [1, 2, 3]) / 2),
    ('preset = "none"\nmean = [1, 2, 3]\nstd = [2, 2, 2]\nbgr = true\n', ["--std", "4,4,4", "--rgb"],
     lambda p: (p - [1, 2, 3]) / 4),
])
def test_sidecar_supplies_defaults_and_the_command_line_overrides_them(tmp_path, pixels, sidecar, options,
                                                                        expected):
    model = probe_model(tmp_path, sidecar=sidecar)
    x, _ = model_input(tmp_path, save_image(tmp_path, pixels), model, *options)
    np.testing.assert_allclose(x, nchw(expected(pixels)), rtol=1e-5, atol=1e-5)


# Shorter side already N: no interpolation, so only the crop window decides the input.
@pytest.mark.parametrize("height,width,rows,cols", [(4, 10, slice(0, 4), slice(2, 8)),
                                                     (9, 6, slice(2, 6), slice(0, 6))])
def test_resize_takes_the_centre_crop(tmp_path, height, width, rows, cols):
    pixels = pixels_of(height, width, seed=1)
    model = probe_model(tmp_path, shape=(1, 3, 4, 6))
    resize = min(height, width)
    x, _ = model_input(tmp_path, save_image(tmp_path, pixels), model, "--preset", "none", "--resize", resize)
    np.testing.assert_array_equal(x, nchw(pixels[rows, cols]))


def test_sidecar_resize_and_crop_fraction(tmp_path):
    pixels = pixels_of(8, 8, seed=2)
    model = probe_model(tmp_path, sidecar='preset = "none"\ncrop = 0.5\n')
    x, _ = model_input(tmp_path, save_image(tmp_path, pixels), model)
    np.testing.assert_array_equal(x, nchw(pixels[2:6, 2:6]))
    odd = pixels_of(7, 8, seed=5)  # crop box rows (7 - 4) // 2 = 1 .. 5
    x, _ = model_input(tmp_path, save_image(tmp_path, odd, "odd.png"), model)
    np.testing.assert_array_equal(x, nchw(odd[1:5, 2:6]))
    model = probe_model(tmp_path, sidecar='preset = "none"\nresize = 4\n', name="resized")
    wide = pixels_of(4, 7, seed=3)
    x, _ = model_input(tmp_path, save_image(tmp_path, wide), model)
    np.testing.assert_array_equal(x, nchw(wide[:, 1:5]))


def test_plain_resize_to_a_non_square_input(tmp_path):
    pixels = pixels_of(8, 12, seed=4)
    x, _ = model_input(tmp_path, save_image(tmp_path, pixels), probe_model(tmp_path, shape=(1, 3, 4, 6)),
                       "--preset", "none")
    want = np.asarray(Image.fromarray(pixels.astype(np.uint8)).resize((6, 4), Image.BILINEAR), np.float64)
    np.testing.assert_array_equal(x, nchw(want))


def test_grey_model_input_takes_the_luminance(tmp_path, pixels):
    image = save_image(tmp_path, pixels)
    x, _ = model_input(tmp_path, image, probe_model(tmp_path, shape=(1, 1, 4, 4)), "--preset", "none")
    np.testing.assert_array_equal(x, np.asarray(Image.open(image).convert("L"), np.float64)[None, None])


def test_size_must_match_the_model_input(tmp_path, pixels):
    image, model = save_image(tmp_path, pixels), probe_model(tmp_path, shape=(1, 3, 4, 6))
    ok, _ = model_input(tmp_path, image, model, "--preset", "none", "--size", "4,6")
    plain, _ = model_input(tmp_path, image, model, "--preset", "none")
    np.testing.assert_array_equal(ok, plain)
    result = explain(image, "--model", model, "--out", tmp_path / "bad", "--size", "6,4")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --size 6,4: the model input is [1, 3, 4, 6]" and result.stdout == ""
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("options,message", [
    (["--size", "4"], "error: --size 4: expected 2 values"),
    (["--mean", "a,b,c"], "error: --mean a,b,c: expected comma-separated numbers"),
    (["--std", "1,,2"], "error: --std 1,,2: expected comma-separated numbers"),
    (["--target", "top:0"], "error: --target top:0: K must be an integer from 1 to 2"),
    (["--target", "top:3"], "error: --target top:3: K must be an integer from 1 to 2"),
    (["--target", "top:x"], "error: --target top:x: K must be an integer from 1 to 2"),
    (["--target", "-1"], "error: --target -1: class index out of range (the model has 2 classes)"),
    (["--target", "2"], "error: --target 2: class index out of range (the model has 2 classes)"),
    (["--target", "zebra"], "error: --target zebra: not 'pred', 'top:K', a class index or a known label"),
    (["--tile", "8"], "error: --tile/--tile-stride/--pair apply to BoW pipelines, not ONNX models"),
    (["--rule", "nonsense"], None),
])
def test_bad_options_are_one_line_usage_errors(tmp_path, pixels, options, message):
    result = explain(save_image(tmp_path, pixels), "--model", probe_model(tmp_path), "--out", tmp_path / "o",
                     *options)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert result.stdout == "" and len(lines) == 1 and lines[0].startswith("error: ")
    if message:
        assert lines[0] == message
    assert not (tmp_path / "o").exists()


def test_npy_input_is_used_as_is(tmp_path):
    tensor = np.random.default_rng(5).normal(0, 50, (1, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "t.npy", tensor)
    np.save(tmp_path / "nobatch.npy", tensor[0])
    model = probe_model(tmp_path, bias=0.25)
    for name in ("t", "nobatch"):
        x, doc = model_input(tmp_path, tmp_path / f"{name}.npy", model)
        np.testing.assert_array_equal(x, tensor)
        assert doc["f_x"] == pytest.approx(float(tensor.astype(np.float64).sum()) + 0.25, rel=1e-12)


def test_json_relevance_values_and_conservation_error(tmp_path):
    tensor = np.random.default_rng(6).uniform(-1, 2, (1, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "t.npy", tensor)
    bias = 1.5
    raw, doc = model_input(tmp_path, tmp_path / "t.npy", probe_model(tmp_path, bias=bias))
    total = float(tensor.astype(np.float64).sum())
    f_x = total + bias
    rel = doc["relevance"]
    assert doc["f_x"] == pytest.approx(f_x, rel=1e-12)
    assert rel["sum"] == pytest.approx(total, rel=1e-6)
    assert rel["positive"] == pytest.approx(float(tensor[tensor > 0].sum()), rel=1e-6)
    assert rel["negative"] == pytest.approx(float(tensor[tensor < 0].sum()), rel=1e-6)
    assert rel["abs_max"] == pytest.approx(float(np.abs(tensor).max()), rel=1e-6)
    # LRP-0 hands the bias its share: |sum R - f(x)| / |f(x)| = |b| / |f(x)|.
    assert rel["conservation_error"] == pytest.approx(bias / abs(f_x), rel=1e-6)
    assert doc["prediction"]["index"] == 0 and doc["target"] == {"index": 0, "label": None}
    assert [c["score"] for c in doc["prediction"]["top5"]] == pytest.approx([f_x, f_x - 1], rel=1e-6)
    # Per layer: the relevance on the layer's input side; the bias keeps its share at the MatMul.
    assert [layer["op"] for layer in doc["layers"]] == ["MatMul", "Flatten"]
    assert [layer["relevance_sum"] for layer in doc["layers"]] == pytest.approx([total, total], rel=1e-6)
    assert list(doc["rules"].values()) == ["z"]
    assert doc["input"]["sha256"] == hashlib.sha256((tmp_path / "t.npy").read_bytes()).hexdigest()
    assert doc["model"]["sha256"] == hashlib.sha256((tmp_path / "probe.onnx").read_bytes()).hexdigest()
    assert doc["method"] == "lrp" and doc["composite"] is None


def test_printed_line_reports_the_json_values(tmp_path):
    tensor = np.full((1, 3, 4, 4), 0.5, np.float32)
    np.save(tmp_path / "t.npy", tensor)
    out = tmp_path / "o"
    result = explain(tmp_path / "t.npy", "--model", probe_model(tmp_path, bias=-2.0), "--out", out, "--rule", "z")
    assert result.exit_code == 0, result.output
    # f(x) = 24 - 2 = 22, sum R = 24: the bias -2 adds 2/22 of f(x) at the MatMul+Add node.
    assert result.stderr == ""
    node = json.loads((out / "t.json").read_text())["layers"][0]["name"]
    assert result.stdout.strip() == (f"{tmp_path / 't.npy'}: target 0, predicted 0 score 22, "
                                     f"sum R = 24 of f(x) = 22; 9.09 % added by biases/stabilisers "
                                     f"(most in '{node}') -> {out / 't.heatmap.png'}")


def test_precision_float64_changes_the_arithmetic_and_ir_diff_is_measured(tmp_path):
    x = np.array([[1.0, 1e-8]], np.float32)  # 1 + 1e-8 rounds to 1 in float32, not in float64
    np.save(tmp_path / "t.npy", x)
    model = probe_model(tmp_path, shape=(1, 2))
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    reference = session.run(None, {"x": x})[0][0].astype(np.float64)
    exact = float(x.astype(np.float64).sum()) + np.array([0.0, -1.0])
    docs = {}
    for precision in ("float32", "float64"):
        out = tmp_path / precision
        result = explain(tmp_path / "t.npy", "--model", model, "--out", out, "--precision", precision,
                         "--rule", "z", "--engine", "numpy")  # the NumPy IR is what ir_max_abs_diff measures
        assert result.exit_code == 0, result.output
        docs[precision] = json.loads((out / "t.json").read_text())
    assert docs["float32"]["f_x"] == 1.0 and docs["float32"]["ir_max_abs_diff"] == 0.0
    assert docs["float64"]["f_x"] == pytest.approx(exact[0], rel=1e-15) and docs["float64"]["f_x"] > 1.0
    assert docs["float64"]["ir_max_abs_diff"] == pytest.approx(float(np.abs(exact - reference).max()), rel=1e-9)


def test_ir_difference_above_the_threshold_warns(tmp_path):
    x = np.array([[3e7, 1.0, -3e7]], np.float32)  # float32 loses the 1: sum 0 in onnxruntime, 1 in float64
    np.save(tmp_path / "t.npy", x)
    model = probe_model(tmp_path, shape=(1, 3), bias=0.0)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    reference = session.run(None, {"x": x})[0][0].astype(np.float64)
    exact = np.array([1.0, 0.0])
    relative = np.abs(exact - reference).max() / max(np.abs(reference).max(), 1e-12)
    result = explain(tmp_path / "t.npy", "--model", model, "--out", tmp_path / "o", "--precision", "float64",
                     "--rule", "z")
    assert result.exit_code == 0
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert bool(warned) == (relative > api.IR_DIFF_WARNING)
    assert relative > api.IR_DIFF_WARNING  # the set-up relies on float32 losing the 1
    assert warned[0].startswith(f"warning: {tmp_path / 't.npy'}: IR output differs from onnxruntime by ")


def heatmap(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def colours(levels, table):
    return np.array([[table[float(v)] for v in row] for row in levels])


def level_tensor(levels, scale=1.0):
    """Returns a probe input whose pixel relevance map is levels * scale (all of it in channel 0)."""
    tensor = np.zeros((1, 3) + levels.shape, np.float32)
    tensor[0, 0] = levels * scale
    return tensor


@pytest.mark.parametrize("cmap", sorted(CMAPS))
def test_heatmap_colours_follow_the_colormap(tmp_path, cmap):
    np.save(tmp_path / "t.npy", level_tensor(LEVELS, 3.0))
    out = tmp_path / "o"
    result = explain(tmp_path / "t.npy", "--model", probe_model(tmp_path, bias=1.0), "--out", out, "--rule", "z",
                     "--cmap", cmap)
    assert result.exit_code == 0, result.output
    table = dict(zip((-1.0, -0.5, 0.0, 0.5, 1.0), CMAPS[cmap]))
    np.testing.assert_array_equal(heatmap(out / "t.heatmap.png"), colours(LEVELS, table))


def test_normalize_global_scales_every_heatmap_by_the_batch_max(tmp_path):
    np.save(tmp_path / "a.npy", level_tensor(LEVELS, 2.0))
    np.save(tmp_path / "b.npy", level_tensor(LEVELS, 1.0))
    model = probe_model(tmp_path, bias=1.0)
    maps = {}
    for mode in ("image", "global"):
        out = tmp_path / mode
        result = explain(tmp_path / "a.npy", tmp_path / "b.npy", "--model", model, "--out", out, "--rule", "z",
                         "--normalize", mode)
        assert result.exit_code == 0, result.output
        maps[mode] = {stem: heatmap(out / f"{stem}.heatmap.png") for stem in "ab"}
    full = colours(LEVELS, JET)
    np.testing.assert_array_equal(maps["image"]["a"], full)
    np.testing.assert_array_equal(maps["image"]["b"], full)  # each image by its own max: the same picture
    np.testing.assert_array_equal(maps["global"]["a"], full)
    np.testing.assert_array_equal(maps["global"]["b"], colours(LEVELS / 2, JET))


def test_overlay_blends_the_grey_image_with_the_heatmap(tmp_path):
    grey = np.array([[0, 50, 100, 150], [200, 100, 100, 100], [100, 100, 100, 100], [100, 100, 100, 100]])
    image = save_image(tmp_path, np.repeat(grey[:, :, None], 3, axis=2))
    out = tmp_path / "o"
    result = explain(image, "--model", probe_model(tmp_path, bias=1.0), "--out", out, "--rule", "z",
                     "--preset", "none", "--mean", "100")
    assert result.exit_code == 0, result.output
    levels = (grey - 100) / 100.0  # relevance 3 * (v - 100), largest |.| = 300
    heat = colours(levels, JET)
    np.testing.assert_array_equal(heatmap(out / "pic.heatmap.png"), heat)
    alpha = (0.3 + 0.7 * np.sqrt(np.abs(levels)))[:, :, None]
    want = grey[:, :, None] * (1 - alpha) + heat * alpha
    assert np.abs(heatmap(out / "pic.overlay.png") - want).max() <= 0.5 + 1e-9
    np.testing.assert_array_equal(heatmap(out / "pic.overlay.png")[1, 0], JET[1.0])  # |n| = 1 is opaque


def test_top_k_explains_the_k_best_classes_in_score_order(tmp_path):
    model = save_model(tiny_cnn(seed=3, softmax=False), tmp_path / "cnn.onnx")
    x = np.random.default_rng(7).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "t.npy", x)
    scores = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0][0]
    order = [int(i) for i in np.argsort(-scores)]
    out = tmp_path / "o"
    result = explain(tmp_path / "t.npy", "--model", model, "--out", out, "--target", "top:3", "--json-lines")
    assert result.exit_code == 0, result.output
    docs = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [d["target"]["index"] for d in docs] == order[:3]
    assert [d["f_x"] for d in docs] == pytest.approx([float(scores[i]) for i in order[:3]], rel=1e-5)
    assert sorted(p.name for p in out.glob("*.json")) == sorted(f"t.class{i}.json" for i in order[:3])
    for i in order[:3]:
        saved = json.loads((out / f"t.class{i}.json").read_text())
        assert saved["target"]["index"] == i and saved["outputs"]["heatmap"] == str(out / f"t.class{i}.heatmap.png")
    top5 = docs[0]["prediction"]["top5"]
    assert [c["index"] for c in top5] == order and docs[0]["prediction"]["index"] == order[0]
    assert [c["score"] for c in top5] == pytest.approx([float(scores[i]) for i in order], rel=1e-5)


def test_labels_file_names_targets(tmp_path):
    model = save_model(tiny_cnn(seed=3, softmax=False), tmp_path / "cnn.onnx")
    (tmp_path / "names.txt").write_text("ant\nbee\n\ncat\ndog\n")
    np.save(tmp_path / "t.npy", np.full((1, 3, 16, 16), 0.5, np.float32))
    out = tmp_path / "o"
    result = explain(tmp_path / "t.npy", "--model", model, "--out", out, "--labels", tmp_path / "names.txt",
                     "--target", "CAT")
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "t.json").read_text())
    assert doc["target"] == {"index": 2, "label": "cat"}
    assert doc["prediction"]["label"] == ["ant", "bee", "cat", "dog"][doc["prediction"]["index"]]
    assert "target 2 (cat)" in result.output
    missing = explain(tmp_path / "t.npy", "--model", model, "--out", out, "--labels", tmp_path / "none.txt")
    assert missing.exit_code == 2 and missing.stderr.startswith(f"error: {tmp_path / 'none.txt'}: cannot read labels")


def test_output_option_explains_the_chosen_graph_output(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("MatMul", ["x", "v"], ["b"])]
    rng = np.random.default_rng(8)
    inits = {"w": rng.normal(size=(4, 3)).astype(np.float32), "v": rng.normal(size=(4, 5)).astype(np.float32)}
    proto = onnx_model(nodes, [1, 4], "a", inits)
    proto.graph.output.append(helper.make_tensor_value_info("b", 1, None))
    model = save_model(proto, tmp_path / "two.onnx")
    x = rng.normal(size=(1, 4)).astype(np.float32)
    np.save(tmp_path / "t.npy", x)
    wanted = {"a": x @ inits["w"], "b": x @ inits["v"]}
    for name in ("a", "b"):
        out = tmp_path / name
        options = ["--output", name] if name == "b" else []
        result = explain(tmp_path / "t.npy", "--model", model, "--out", out, "--rule", "z", *options)
        assert result.exit_code == 0, result.output
        doc = json.loads((out / "t.json").read_text())
        assert doc["target"]["index"] == int(wanted[name].argmax())
        assert doc["f_x"] == pytest.approx(float(wanted[name].max()), rel=1e-5)
        assert len(doc["prediction"]["top5"]) == min(5, wanted[name].size)


def test_layout_nhwc_is_detected_or_forced(tmp_path):
    pixels = pixels_of(3, 4, seed=9)
    image = save_image(tmp_path, pixels)
    detected = probe_model(tmp_path, shape=(1, 3, 4, 3), name="square")  # 3 x 4 x 3: read as NCHW
    x, _ = model_input(tmp_path, image, detected, "--preset", "none", "--layout", "nhwc")
    np.testing.assert_array_equal(x, pixels[None])
    x, _ = model_input(tmp_path, image, detected, "--preset", "none")
    assert x.shape == (1, 3, 4, 3)
    want = np.asarray(Image.fromarray(pixels.astype(np.uint8)).resize((3, 4), Image.BILINEAR), np.float64)
    np.testing.assert_array_equal(x, nchw(want))
    channels_last = probe_model(tmp_path, shape=(1, 5, 4, 3), name="last")
    out = tmp_path / "last"
    assert explain(image, "--model", channels_last, "--out", out, "--preset", "none", "--rule", "z",
                   "--save-raw").exit_code == 0
    assert np.load(out / "pic.relevance.npy").shape == (1, 5, 4, 3)
    assert Image.open(out / "pic.heatmap.png").size == (4, 5)


def test_skip_existing_leaves_explained_inputs_alone(tmp_path):
    for k in range(2):
        np.save(tmp_path / f"in{k}.npy", np.full((1, 3, 4, 4), k + 1.0, np.float32))
    model, out = probe_model(tmp_path), tmp_path / "o"
    assert explain(tmp_path / "in0.npy", "--model", model, "--out", out).exit_code == 0
    kept = json.loads((out / "in0.json").read_text()) | {"marker": "kept"}
    (out / "in0.json").write_text(json.dumps(kept))
    result = explain(tmp_path / "in0.npy", tmp_path / "in1.npy", "--model", model, "--out", out,
                     "--skip-existing")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "in0.json").read_text()) == kept
    assert json.loads((out / "in1.json").read_text())["f_x"] == pytest.approx(96.0)
    assert "in0.npy" not in result.output and "in1.npy" in result.output
    summary = json.loads((out / "summary.json").read_text())  # earlier results are read back, not dropped
    assert [(row["input"], row["status"]) for row in summary["results"]] == [
        (str(tmp_path / "in0.npy"), "skipped"), (str(tmp_path / "in1.npy"), "ok")]
    assert explain(tmp_path / "in0.npy", "--model", model, "--out", out).exit_code == 0
    assert json.loads((out / "in0.json").read_text())["f_x"] == pytest.approx(48.0)


def test_batch_summary_matches_the_explanations(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    np.save(data / "a.npy", np.full((1, 3, 4, 4), 1.0, np.float32))
    np.save(data / "sub" / "b.npy", np.full((1, 3, 4, 4), -2.0, np.float32))
    np.save(data / "bad.npy", np.zeros((2, 2), np.float32))
    out = tmp_path / "o"
    result = explain(data, "--model", probe_model(tmp_path, bias=4.0), "--out", out, "--rule", "z")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == "1 of 3 inputs failed"
    printed = [line.split(":")[0] for line in result.stdout.splitlines()]
    assert printed == [str(data / "a.npy"), str(data / "sub" / "b.npy")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema"] == "lrp-cli/summary/1" and summary["inputs"] == 3 and summary["failed"] == 1
    rows = {row["input"]: row for row in summary["results"]}
    assert rows[str(data / "bad.npy")]["status"] == "error"
    assert "does not match the model input" in rows[str(data / "bad.npy")]["error"]
    for stem, f_x in (("a", 52.0), ("sub/b", -92.0)):
        doc = json.loads((out / f"{stem}.json").read_text())
        row = rows[doc["input"]["path"]]
        assert row["status"] == "ok" and row["f_x"] == doc["f_x"] == pytest.approx(f_x)
        assert row["target"] == doc["target"]["index"] and row["score"] == doc["prediction"]["score"]
        assert row["relevance_sum"] == doc["relevance"]["sum"]
        assert row["conservation_error"] == doc["relevance"]["conservation_error"]
        assert row["heatmap"] == doc["outputs"]["heatmap"] == str(out / f"{stem}.heatmap.png")
    lines = (out / "summary.csv").read_text().splitlines()
    assert lines[0] == "input,status,target,label,score,f_x,relevance_sum,conservation_error,heatmap,error"
    assert sorted(line.split(",")[1] for line in lines[1:]) == ["error", "ok", "ok"]


def test_json_lines_print_the_saved_documents(tmp_path):
    np.save(tmp_path / "t.npy", np.full((1, 3, 4, 4), 1.0, np.float32))
    out = tmp_path / "o"
    result = explain(tmp_path / "t.npy", "--model", probe_model(tmp_path), "--out", out, "--json-lines",
                     "--save-raw")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json.loads((out / "t.json").read_text())
    assert json.loads(result.stdout)["outputs"] == {"heatmap": str(out / "t.heatmap.png"),
                                                    "overlay": str(out / "t.overlay.png"),
                                                    "raw": str(out / "t.relevance.npy")}


def test_a_failing_write_leaves_none_of_the_inputs_files(tmp_path, monkeypatch):
    np.save(tmp_path / "t.npy", np.full((1, 3, 4, 4), 1.0, np.float32))
    out = tmp_path / "o"
    real = outputs._write_temporary
    calls = []

    def disk_full_at_the_third_file(path, data):
        calls.append(path.parent)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(outputs, "_write_temporary", disk_full_at_the_third_file)
    result = explain(tmp_path / "t.npy", "--model", probe_model(tmp_path), "--out", out)
    assert result.exit_code == 1 and calls == [out] * 3  # beside their final names: the rename is atomic
    assert result.stderr.strip().splitlines()[0].startswith(f"error: {tmp_path / 't.npy'}: cannot write outputs "
                                                            f"to {out} (")
    assert sorted(p.name for p in out.iterdir()) == []


def test_write_all_writes_every_file_or_none(tmp_path):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    contents = {tmp_path / "a.bin": b"first", tmp_path / "blocker" / "b.bin": b"second"}
    with pytest.raises(OSError):
        outputs.write_all(contents)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]
    outputs.write_all({tmp_path / "new" / "a.bin": b"first", tmp_path / "b.bin": b"second"})
    assert (tmp_path / "new" / "a.bin").read_bytes() == b"first" and (tmp_path / "b.bin").read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "blocker", "new"]


def test_written_files_get_the_mode_a_plain_open_gives(tmp_path):
    import stat
    outputs.write_all({tmp_path / "a.bin": b"x"})
    with open(tmp_path / "plain.bin", "wb"):
        pass
    modes = [stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("a.bin", "plain.bin")]
    assert modes[0] == modes[1] and modes[0] & 0o044  # group/others may read, not mkstemp's 0o600


def test_unwritable_output_folder_is_reported(tmp_path):
    np.save(tmp_path / "t.npy", np.full((1, 3, 4, 4), 1.0, np.float32))
    (tmp_path / "o").write_text("not a folder")
    result = explain(tmp_path / "t.npy", "--model", probe_model(tmp_path), "--out", tmp_path / "o")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"error: {tmp_path / 't.npy'}: cannot write outputs to {tmp_path / 'o'} "
                                          f"([Errno 17] File exists: '{tmp_path / 'o'}')", "1 of 1 inputs failed"]


def test_overlay_of_a_tensor_input_shows_the_tensor_undone(tmp_path):
    tensor = np.zeros((1, 3, 4, 4), np.float32)
    tensor[0, :, 1, 2] = 100.0  # preset none: the picture is the tensor itself, black but for one grey pixel
    np.save(tmp_path / "t.npy", tensor)
    out = tmp_path / "o"
    result = explain(tmp_path / "t.npy", "--model", probe_model(tmp_path, bias=1.0), "--out", out, "--rule", "z",
                     "--preset", "none")
    assert result.exit_code == 0, result.output
    overlay = heatmap(out / "t.overlay.png")
    assert overlay[1, 2].tolist() == list(JET[1.0])
    # 0.7 * black + 0.3 * jet's green (128, 255, 128) = (38.4, 76.5, 38.4), rounded
    assert np.abs(overlay[0, 0] - [38.4, 76.5, 38.4]).max() <= 0.6


def test_layout_is_detected_from_a_reading_transpose(tmp_path):
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]), helper.make_node("Flatten", ["t"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["y"])]
    model = save_model(onnx_model(nodes, [1, 3, 4, 3], "y", {"w": np.ones((36, 2), np.float32)}),
                       tmp_path / "tf.onnx")  # [1, 3, 4, 3]: by shape alone it would read as NCHW
    pixels = pixels_of(3, 4, seed=11)
    x, _ = model_input(tmp_path, save_image(tmp_path, pixels), model, "--preset", "none")
    np.testing.assert_array_equal(x, pixels[None])


def test_tied_scores_keep_the_class_order(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    inits = {"w": np.ones((2, 5), np.float32), "b": np.array([0, 0, 1, 1, 1], np.float32)}  # scores s, s, s+1 x 3
    model = save_model(onnx_model(nodes, [1, 2], "y", inits), tmp_path / "ties.onnx")
    np.save(tmp_path / "t.npy", np.array([[0.25, 0.5]], np.float32))
    result = explain(tmp_path / "t.npy", "--model", model, "--out", tmp_path / "o", "--target", "top:3",
                     "--json-lines", "--engine", "numpy")  # the NumPy engine's timings are forward and backward
    assert result.exit_code == 0, result.output
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["target"]["index"] for d in docs] == [2, 3, 4]
    assert [c["index"] for c in docs[0]["prediction"]["top5"]] == [2, 3, 4, 0, 1]
    timing = docs[0]["timing_s"]
    assert set(timing) == {"load", "forward", "backward", "render"} and 0 < timing["forward"] < 60
    assert all(isinstance(v, float) for v in timing.values())


def test_json_is_strict_and_never_holds_nan():
    assert outputs.json_bytes({"a": 1.5}) == b'{\n  "a": 1.5\n}\n'
    for bad in (float("nan"), float("inf"), float("-inf")):  # non-finite numbers are null, never NaN
        assert outputs.json_bytes({"a": bad}) == b'{\n  "a": null\n}\n'
