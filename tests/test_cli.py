"""`lrp explain` / `lrp inspect` end to end with Click's CliRunner: files, JSON fields, errors, exit codes."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import helper
from PIL import Image

from conftest import onnx_model, save_model
from lrp_cli.cli import main

RUN = CliRunner()


def explain(*args):
    return RUN.invoke(main, ["explain", *map(str, args)])


def files_in(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.parametrize("engine", ["numpy", "onnxruntime"])
def test_explain_writes_heatmap_overlay_json_and_raw(tiny_cnn_path, rgb_image, tmp_path, engine):
    out = tmp_path / "out"
    result = explain(rgb_image, "--model", tiny_cnn_path, "--out", out, "--save-raw", "--engine", engine)
    assert result.exit_code == 0, result.output
    assert files_in(out) == ["img.heatmap.png", "img.json", "img.overlay.png", "img.relevance.npy"]
    assert Image.open(out / "img.heatmap.png").size == (16, 16)
    assert Image.open(out / "img.overlay.png").size == (16, 16)
    raw = np.load(out / "img.relevance.npy")
    assert raw.shape == (1, 3, 16, 16) and raw.dtype == np.float32
    doc = json.loads((out / "img.json").read_text())
    for key in ["schema", "input", "model", "method", "composite", "rules", "target", "prediction", "f_x",
                "relevance", "layers", "ir_max_abs_diff", "outputs", "timing_s", "versions"]:
        assert key in doc
    assert doc["schema"] == "lrp-cli/explanation/1" and doc["model"]["kind"] == "onnx"
    assert doc["composite"] == "epsilon-plus-flat"
    assert doc["rules"] == {"conv1": "flat", "pool1": "maxpool:first", "fc": "epsilon:1e-06"}
    assert doc["target"]["index"] == doc["prediction"]["index"]
    assert doc["target"]["label"] in ["ant", "bee", "cat", "dog"]
    assert doc["relevance"]["sum"] == pytest.approx(float(raw.astype(np.float64).sum()), rel=1e-5)
    assert doc["relevance"]["positive"] + doc["relevance"]["negative"] == pytest.approx(doc["relevance"]["sum"])
    assert doc["engine"] == engine
    # The compiled engine's forward pass is onnxruntime's own: there is no separate IR forward to compare.
    assert doc["ir_max_abs_diff"] < 1e-5 if engine == "numpy" else doc["ir_max_abs_diff"] is None
    assert [layer["op"] for layer in doc["layers"]] == ["MatMul", "Flatten", "MaxPool", "Relu", "Conv"]
    assert len(doc["input"]["sha256"]) == 64
    assert "of f(x) = " in result.output and "absorbed by biases/stabilisers" in result.output


def test_heatmap_zero_is_green_and_extremes_are_red_and_blue(tiny_cnn_path, rgb_image, tmp_path):
    out = tmp_path / "o"
    assert explain(rgb_image, "--model", tiny_cnn_path, "--out", out, "--save-raw").exit_code == 0
    heat = np.asarray(Image.open(out / "img.heatmap.png")).astype(int)
    r = np.load(out / "img.relevance.npy").sum(axis=(0, 1))
    top, bottom = np.unravel_index(r.argmax(), r.shape), np.unravel_index(r.argmin(), r.shape)
    if r.max() >= abs(r.min()):
        assert heat[top][0] > 100 and heat[top][2] == 0   # dark red end of jet
    else:
        assert heat[bottom][2] > 100 and heat[bottom][0] == 0
    zero = np.unravel_index(np.abs(r).argmin(), r.shape)
    assert heat[zero][1] > 200  # green in the middle of jet


@pytest.mark.parametrize("target,index", [("2", 2), ("cat", 2), ("dog", 3)])
def test_target_by_index_or_label(tiny_cnn_path, rgb_image, tmp_path, target, index):
    out = tmp_path / "o"
    assert explain(rgb_image, "--model", tiny_cnn_path, "--out", out, "--target", target).exit_code == 0
    assert json.loads((out / "img.json").read_text())["target"]["index"] == index


def test_top_k_writes_one_set_per_class(tiny_cnn_path, rgb_image, tmp_path):
    out = tmp_path / "o"
    assert explain(rgb_image, "--model", tiny_cnn_path, "--out", out, "--target", "top:2").exit_code == 0
    jsons = [p for p in files_in(out) if p.endswith(".json") and p.startswith("img.class")]
    assert len(jsons) == 2


def test_rule_and_layer_rule_options(tiny_cnn_path, rgb_image, tmp_path):
    out = tmp_path / "o"
    result = explain(rgb_image, "--model", tiny_cnn_path, "--out", out, "--rule", "epsilon:0.01",
                     "--layer-rule", "conv*=zbox:0,1", "--precision", "float64", "--cmap", "seismic")
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "img.json").read_text())
    assert doc["rules"] == {"conv1": "zbox:0,1", "pool1": "maxpool:first", "fc": "epsilon:0.01"}
    assert doc["composite"] is None


def test_npy_input_used_as_is(tiny_cnn_path, tmp_path):
    tensor = np.random.default_rng(0).uniform(0, 1, (3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "t.npy", tensor)
    out = tmp_path / "o"
    assert explain(tmp_path / "t.npy", "--model", tiny_cnn_path, "--out", out).exit_code == 0
    assert "t.heatmap.png" in files_in(out)


def test_folder_batch_keeps_layout_goes_on_past_bad_files_and_writes_summary(tiny_cnn_path, rgb_image, tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    Image.open(rgb_image).save(data / "a.png")
    Image.open(rgb_image).save(data / "sub" / "b.jpg")
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "o"
    result = explain(data, "--model", tiny_cnn_path, "--out", out)
    assert result.exit_code == 1
    assert "broken.png" in result.output and "1 of 3 inputs failed" in result.output
    assert (out / "sub" / "b.heatmap.png").exists() and (out / "a.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"] == 3 and summary["failed"] == 1
    assert (out / "summary.csv").read_text().count("\n") == 4
    assert not [p for p in files_in(out) if p.startswith("broken") or p.endswith(".tmp")]


def test_jobs_and_global_normalization_give_the_same_files(tiny_cnn_path, rgb_image, tmp_path):
    for k in range(3):
        Image.open(rgb_image).rotate(90 * k).save(tmp_path / f"in{k}.png")
    pattern = str(tmp_path / "in*.png")
    one, two = tmp_path / "one", tmp_path / "two"
    assert explain(pattern, "--model", tiny_cnn_path, "--out", one, "--normalize", "global").exit_code == 0
    assert explain(pattern, "--model", tiny_cnn_path, "--out", two, "--normalize", "global",
                   "--jobs", "2").exit_code == 0
    for k in range(3):
        assert (one / f"in{k}.heatmap.png").read_bytes() == (two / f"in{k}.heatmap.png").read_bytes()


def test_json_lines(tiny_cnn_path, rgb_image, tmp_path):
    result = explain(rgb_image, "--model", tiny_cnn_path, "--out", tmp_path / "o", "--json-lines")
    assert json.loads(result.output.strip().splitlines()[-1])["schema"] == "lrp-cli/explanation/1"


def one_line_error(result, *fragments):
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error:")]
    assert lines, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_input_file(tiny_cnn_path, tmp_path):
    result = explain(tmp_path / "nope.png", "--model", tiny_cnn_path, "--out", tmp_path / "o")
    assert result.exit_code == 1
    one_line_error(result, "nope.png", "no such file")
    assert files_in(tmp_path / "o") == []


def test_not_an_image_and_truncated_png(tiny_cnn_path, rgb_image, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("hello")
    truncated = tmp_path / "cut.png"
    noisy = tmp_path / "noisy.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(noisy)
    truncated.write_bytes(noisy.read_bytes()[:6000])
    for bad, fragment in [(text, "not an image"), (truncated, "cut.png")]:
        result = explain(bad, "--model", tiny_cnn_path, "--out", tmp_path / "o")
        assert result.exit_code == 1
        one_line_error(result, str(bad.name), fragment)
    assert files_in(tmp_path / "o") == []


def test_wrong_tensor_shape(tiny_cnn_path, tmp_path):
    np.save(tmp_path / "t.npy", np.zeros((1, 3, 8, 8), np.float32))
    result = explain(tmp_path / "t.npy", "--model", tiny_cnn_path, "--out", tmp_path / "o")
    assert result.exit_code == 1
    one_line_error(result, "t.npy", "[1, 3, 8, 8]", "[1, 3, 16, 16]")


def test_target_out_of_range_is_a_usage_error(tiny_cnn_path, rgb_image, tmp_path):
    result = explain(rgb_image, "--model", tiny_cnn_path, "--out", tmp_path / "o", "--target", "9")
    assert result.exit_code == 2
    one_line_error(result, "--target 9", "4 classes")


def test_bad_rule_is_a_usage_error(tiny_cnn_path, rgb_image, tmp_path):
    result = explain(rgb_image, "--model", tiny_cnn_path, "--out", tmp_path / "o", "--rule", "alphabeta:3,1")
    assert result.exit_code == 2
    one_line_error(result, "alphabeta:3,1")


def test_unreadable_and_unsupported_models_exit_3(rgb_image, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01garbage" * 50)
    result = explain(rgb_image, "--model", junk, "--out", tmp_path / "o")
    assert result.exit_code == 3
    one_line_error(result, "junk.onnx")
    weird = save_model(onnx_model([helper.make_node("Hardmax", ["x"], ["y"], name="e1")],
                                  [1, 4]), tmp_path / "weird.onnx")
    result = explain(rgb_image, "--model", weird, "--out", tmp_path / "o")
    assert result.exit_code == 3
    one_line_error(result, "Hardmax", "'e1'", "supported ops:")
    assert files_in(tmp_path / "o") == []


def test_inspect_table_json_and_verify(tiny_cnn_path):
    result = RUN.invoke(main, ["inspect", str(tiny_cnn_path), "--verify"])
    assert result.exit_code == 0, result.output
    assert "conv1" in result.output and "flat" in result.output and "verify: IR vs onnxruntime" in result.output
    report = json.loads(RUN.invoke(main, ["inspect", str(tiny_cnn_path), "--json",
                                          "--composite", "epsilon-gamma-box"]).output)
    assert report["nodes"][0]["rule"] == "zbox:0,1" and report["error"] is None


def test_inspect_reports_unsupported_ops(tmp_path):
    weird = save_model(onnx_model([helper.make_node("Hardmax", ["x"], ["y"])], [1, 4]),
                       tmp_path / "weird.onnx")
    result = RUN.invoke(main, ["inspect", str(weird)])
    assert result.exit_code == 3 and "Hardmax" in result.output and "on constants only" in result.output


def nhwc_model(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("ReduceMean", ["r"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("Gemm", ["m", "d"], ["y"], name="dense"),
    ]
    inits = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "d": rng.standard_normal((4, 3)).astype(np.float32)}
    return save_model(onnx_model(nodes, [1, 12, 10, 3], "y", inits), tmp_path / "nhwc.onnx")


@pytest.mark.parametrize("engine", ["numpy", "onnxruntime"])
def test_nhwc_input_is_detected_and_relevance_keeps_the_model_layout(rgb_image, tmp_path, engine):
    out = tmp_path / "o"
    result = explain(rgb_image, "--model", nhwc_model(tmp_path), "--out", out, "--save-raw", "--preset", "tf",
                     "--engine", engine)
    assert result.exit_code == 0, result.output
    assert np.load(out / "img.relevance.npy").shape == (1, 12, 10, 3)
    assert Image.open(out / "img.heatmap.png").size == (10, 12)
    doc = json.loads((out / "img.json").read_text())
    assert doc["engine"] == engine and doc["rules"] == {"conv": "flat", "dense": "epsilon:1e-06"}
    assert doc["ir_max_abs_diff"] < 1e-5 if engine == "numpy" else doc["ir_max_abs_diff"] is None


def test_gradient_method_from_the_command_line(tiny_cnn_path, rgb_image, tmp_path):
    out = tmp_path / "o"
    result = explain(rgb_image, "--model", tiny_cnn_path, "--out", out, "--method", "gradient-x-input")
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "img.json").read_text())
    assert doc["method"] == "gradient-x-input" and doc["rules"] == {} and doc["composite"] is None
