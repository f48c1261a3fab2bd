"""The other commands and the input/sidecar error paths, from the command line: exact messages and exit codes."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lrp_cli import __version__, render
from lrp_cli.bow import train
from lrp_cli.bow.options import DEFAULTS
from lrp_cli.cli import main
from lrp_cli.importers.onnx_import import supported_ops
from lrp_cli.preprocess import PreprocessConfig, image_to_tensor, tensor_to_display
from test_cli_effects import explain, heatmap, probe_model, save_image

RUN = CliRunner()


def only_line(result):
    """Returns the one line a failed command printed; errors go to stderr and nothing to stdout."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and result.stdout == "", result.output
    return lines[0]


def test_version_and_supported_ops():
    assert RUN.invoke(main, ["--version"]).output.strip() == f"lrp, version {__version__}"
    result = RUN.invoke(main, ["supported-ops"])
    assert result.exit_code == 0 and result.output.split() == supported_ops()
    assert {"Conv", "Gemm", "DepthToSpace", "Upsample", "Identity", "LogSoftmax", "Size"} <= set(result.output.split())


def test_zoo_list_and_unknown_model(tmp_path):
    assert RUN.invoke(main, ["zoo", "list"]).output.split() == ["efficientnet-lite0"]
    result = RUN.invoke(main, ["zoo", "get", "alexnet", "--dest", str(tmp_path)])
    assert result.exit_code == 3
    assert only_line(result) == "error: unknown zoo model 'alexnet' (available: efficientnet-lite0)"
    assert list(tmp_path.iterdir()) == []


def test_inspect_missing_model_and_json_report(tmp_path):
    result = RUN.invoke(main, ["inspect", str(tmp_path / "nope.onnx")])
    assert result.exit_code == 3 and only_line(result) == f"error: {tmp_path / 'nope.onnx'}: no such model file"
    report = json.loads(RUN.invoke(main, ["inspect", str(probe_model(tmp_path)), "--json", "--verify"]).output)
    assert report["error"] is None and [op["op"] for op in report["ops"]] == ["Add", "Flatten", "MatMul"]


@pytest.fixture
def captured(monkeypatch):
    """Replaces the BoW trainer with one that records its keyword arguments."""
    calls = []

    def fake_train(data_dir, out_path, progress, **options):
        calls.append(options)
        progress("fitting")
        return {"classes": ["a", "b"], "cv_accuracy": 0.75, "test_accuracy": 0.5, "seconds_total": 1.25}

    monkeypatch.setattr(train, "train_bow", fake_train)
    return calls


def test_train_bow_passes_every_option_with_its_type_and_default(tmp_path, captured):
    result = RUN.invoke(main, ["train-bow", str(tmp_path), "--out", str(tmp_path / "m.joblib")])
    assert result.exit_code == 0, result.output
    assert captured[0] == DEFAULTS
    assert result.stderr == "train-bow: fitting\n"
    assert result.stdout == (f"{tmp_path / 'm.joblib'}: 2 classes, cross-validated accuracy 0.750, test accuracy 0.5, "
                             "1.2 s\n")
    result = RUN.invoke(main, ["train-bow", str(tmp_path), "--out", str(tmp_path / "m.skops"), "--scales", "1.5",
                               "--quantiles", "--no-multi-kernel", "--n-words", "8", "--color", "rgb",
                               "--c-grid", "1,2", "--rank-p", "3", "--pooling", "max"])
    assert result.exit_code == 0, result.output
    changed = {k: v for k, v in captured[1].items() if v != DEFAULTS[k]}
    assert changed == {"scales": (1.5,), "quantiles": True, "multi_kernel": False, "n_words": 8, "color": "rgb",
                       "c_grid": (1.0, 2.0), "rank_p": 3.0, "pooling": "max"}
    assert type(captured[1]["n_words"]) is int and type(captured[1]["rank_p"]) is float


def test_train_bow_help_shows_the_defaults():
    text = " ".join(RUN.invoke(main, ["train-bow", "--help"]).output.split())
    for shown in ("--scales TEXT", "[default: 2.0,3.0]", "--quantiles / --no-quantiles", "[default: no-quantiles]",
                  "--n-words INTEGER", "[default: 128]", "--color [grey|rgb]", "[default: grey]",
                  "--rank-p FLOAT", "--c-grid TEXT", "[default: 0.1,1.0,10.0,100.0,1000.0]"):
        assert shown in text, shown


def test_train_bow_errors_are_usage_errors(tmp_path, captured, monkeypatch):
    result = RUN.invoke(main, ["train-bow", str(tmp_path), "--out", str(tmp_path / "m.joblib"), "--scales", "x"])
    assert result.exit_code == 2 and only_line(result) == "error: --scales x: expected comma-separated numbers"

    def refuse(*args, **kwargs):
        raise ValueError("pooling 'median' is not sum, max or a number")

    monkeypatch.setattr(train, "train_bow", refuse)
    result = RUN.invoke(main, ["train-bow", str(tmp_path), "--out", str(tmp_path / "m.joblib")])
    assert result.exit_code == 2 and only_line(result) == "error: pooling 'median' is not sum, max or a number"


@pytest.mark.parametrize("sidecar,message", [
    ("preset = [", "invalid sidecar TOML"),
    ('preset = "caffe"\nmystery = 1\n', "unknown sidecar keys ['mystery']"),
    ('preset = "bgr"\n', "preset = 'bgr': expected one of imagenet, caffe, unit, tf, none"),
    ('layout = "chw"\n', "layout = 'chw': expected one of nchw, nhwc"),
    ('labels = "missing.txt"\n', "cannot read labels"),
])
def test_bad_sidecars_are_model_errors(tmp_path, sidecar, message):
    model = probe_model(tmp_path, sidecar=sidecar)
    result = explain(save_image(tmp_path, np.zeros((4, 4, 3))), "--model", model, "--out", tmp_path / "o")
    line = only_line(result)
    assert line.startswith("error: ") and message in line
    if "labels" not in message:  # a labels file is an option-level error (exit 2)
        assert result.exit_code == 3 and line.startswith(f"error: {tmp_path / 'probe.lrp.toml'}: ")
    assert not (tmp_path / "o").exists()


def test_sidecar_labels_file_composite_and_layout(tmp_path):
    (tmp_path / "names.txt").write_text("yes\nno\n")
    model = probe_model(tmp_path, shape=(1, 3, 4, 3), sidecar='labels = "names.txt"\ncomposite = "epsilon-plus"\n'
                                                             'layout = "nhwc"\npreset = "none"\n')
    out = tmp_path / "o"
    result = explain(save_image(tmp_path, np.full((3, 4, 3), 7)), "--model", model, "--out", out)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "pic.json").read_text())
    assert doc["target"] == {"index": 0, "label": "yes"} and doc["composite"] == "epsilon-plus"
    assert doc["prediction"]["top5"][1]["label"] == "no"
    assert Image.open(out / "pic.heatmap.png").size == (4, 3)  # channels-last: H = 3, W = 4


def test_missing_model_is_exit_3(tmp_path):
    result = explain(save_image(tmp_path, np.zeros((4, 4, 3))), "--model", tmp_path / "no.onnx")
    assert result.exit_code == 3 and only_line(result) == f"error: {tmp_path / 'no.onnx'}: no such model file"


@pytest.mark.parametrize("content,message", [
    (np.array([[np.nan] * 2]), "tensor holds NaN or Inf"),
    (np.array([["a", "b"]]), "tensor dtype <U1 is not a real number type"),
    (b"not numpy", "not a readable .npy tensor"),
    (np.zeros((3, 2)), "tensor shape [3, 2] does not match the model input [1, 2]"),
])
def test_bad_tensors_are_input_errors(tmp_path, content, message):
    path = tmp_path / "t.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    result = explain(path, "--model", probe_model(tmp_path, shape=(1, 2)), "--out", tmp_path / "o")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[0].startswith(f"error: {path}: {message}") and result.stdout == ""


def test_image_for_a_flat_model_is_an_input_error(tmp_path):
    image = save_image(tmp_path, np.zeros((4, 4, 3)))
    result = explain(image, "--model", probe_model(tmp_path, shape=(1, 2)), "--out", tmp_path / "o")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (f"error: {image}: the model input [1, 2] is not an image; give a .npy "
                                             "tensor")


def test_flat_tensor_input_gets_a_square_heatmap_and_a_grey_overlay(tmp_path):
    x = np.array([[1.0, -1.0, 0.0, 0.5]], np.float32)
    np.save(tmp_path / "t.npy", x)
    out = tmp_path / "o"
    result = explain(tmp_path / "t.npy", "--model", probe_model(tmp_path, shape=(1, 4), bias=1.0), "--out", out,
                     "--rule", "z")
    assert result.exit_code == 0, result.output
    assert heatmap(out / "t.heatmap.png").tolist() == [[[128, 0, 0], [0, 0, 128]], [[128, 255, 128], [255, 128, 0]]]
    overlay = heatmap(out / "t.overlay.png")
    assert overlay[0, 0].tolist() == [128, 0, 0]  # |n| = 1: the heatmap colour
    assert overlay[1, 0].tolist() == [128, 166, 128]  # n = 0: 0.7 * mid-grey 128 + 0.3 * jet's green


def test_gif_first_frame_and_folder_and_glob_inputs(tmp_path):
    data = tmp_path / "data"
    (data / "deep" / "er").mkdir(parents=True)
    frames = [Image.fromarray(np.full((4, 4, 3), v, np.uint8)) for v in (200, 10)]
    frames[0].save(data / "anim.gif", save_all=True, append_images=frames[1:])
    save_image(data / "deep" / "er", np.full((4, 4, 3), 50), "x.PNG")
    (data / "notes.txt").write_text("not an input")
    out = tmp_path / "o"
    model = probe_model(tmp_path)
    result = explain(data, "--model", model, "--out", out, "--preset", "none", "--rule", "z")
    assert result.exit_code == 0, result.output
    inputs = [row["input"] for row in json.loads((out / "summary.json").read_text())["results"]]
    assert inputs == [str(data / "anim.gif"), str(data / "deep" / "er" / "x.PNG")]
    assert json.loads((out / "anim.json").read_text())["f_x"] == pytest.approx(200 * 48)
    assert (out / "deep" / "er" / "x.json").exists()
    globbed = tmp_path / "g"
    result = explain(str(data / "**" / "*.PNG"), str(data / "nothing*.png"), "--model", model, "--out", globbed)
    assert result.exit_code == 1
    assert f"error: {data / 'nothing*.png'}: no such file" in result.stderr.splitlines()
    assert sorted(p.name for p in globbed.iterdir()) == ["summary.csv", "summary.json", "x.heatmap.png", "x.json",
                                                         "x.overlay.png"]


def test_pixel_relevance_of_each_input_shape():
    r = np.arange(24.0).reshape(1, 2, 3, 4)
    np.testing.assert_array_equal(render.pixel_relevance(r), r[0, 0] + r[0, 1])
    np.testing.assert_array_equal(render.pixel_relevance(r[0]), r[0, 0] + r[0, 1])
    np.testing.assert_array_equal(render.pixel_relevance(r[0, 0]), r[0, 0])  # a BoW pixel map as it is
    np.testing.assert_array_equal(render.pixel_relevance(np.arange(9.0)[None]), np.arange(9.0).reshape(3, 3))
    np.testing.assert_array_equal(render.pixel_relevance(np.arange(6.0)[None]), np.arange(6.0)[None])


def test_normalize_and_colorize_edges():
    np.testing.assert_array_equal(render.normalize(np.array([[2.0, -4.0]])), [[0.5, -1.0]])
    np.testing.assert_array_equal(render.normalize(np.array([[2.0, -4.0]]), render.Scale(divisor=8.0)), [[0.25, -0.5]])
    np.testing.assert_array_equal(render.normalize(np.zeros((2, 2))), np.zeros((2, 2)))
    assert render.colorize(np.array([[5.0, -5.0]])).tolist() == [[[128, 0, 0], [0, 0, 128]]]  # clipped to +-1


def test_missing_npy_input(tmp_path):
    result = explain(tmp_path / "gone.npy", "--model", probe_model(tmp_path), "--out", tmp_path / "o")
    assert result.exit_code == 1 and result.stderr.splitlines()[0] == f"error: {tmp_path / 'gone.npy'}: no such file"


@pytest.mark.parametrize("preset", ["imagenet", "caffe", "unit", "tf", "none"])
def test_display_picture_undoes_each_preset(preset):
    pixels = np.random.default_rng(10).integers(0, 256, (3, 5, 3)).astype(np.uint8)
    config = PreprocessConfig(preset)
    tensor = image_to_tensor(Image.fromarray(pixels), config, (1, 3, 3, 5))
    shown = np.asarray(tensor_to_display(tensor.astype(np.float64), config)).astype(int)
    assert np.abs(shown - pixels).max() <= 1  # float32 tensor, truncated back to uint8


def test_display_picture_of_out_of_range_tensors():
    config = PreprocessConfig("none")
    for edge in ([-1.0, 200.0, 100.0], [0.0, 256.0, 100.0]):  # just inside: clipped, not stretched
        tensor = np.array(edge)[None, None, None].repeat(3, axis=1)
        assert np.asarray(tensor_to_display(tensor, config))[0, :, 0].tolist() == [0, min(edge[1], 255), 100]
    wide = np.array([[[[-11.0, 299.0, 144.0]]]]).repeat(3, axis=1)  # outside: min..max stretched to 0..255
    assert np.asarray(tensor_to_display(wide, config))[0, :, 0].tolist() == [0, 255, 127]
