"""Inputs that used to end in a Python traceback: each must give a one-line `error:` (or `warning:`), the
contract's exit code, no output files for the failed input, and the batch going on."""

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from conftest import REPO, onnx_model, save_model, shared_path
from lrp_cli.batch import expand_inputs
from lrp_cli.cli import main
from lrp_cli.preprocess import PreprocessConfig

RUN = CliRunner()


def explain(*args):
    return RUN.invoke(main, ["explain", *map(str, args)])


def files_in(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) \
        if folder.exists() else []


def assert_clean_failure(result, code, *fragments):
    """The run ended with `code` through SystemExit (no uncaught exception), each error is one line naming
    the fragments, and no traceback was printed."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors, result.output
    assert any(all(f in line for f in fragments) for line in errors), errors


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(path, side=20000):
    """Writes a valid 1-bit side x side PNG in a few kB: every row is the filter byte and zeros."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + side // 8)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_one_input_error_and_the_batch_goes_on(tiny_cnn_path, rgb_image, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    bomb = huge_png(data / "bomb.png")
    assert bomb.stat().st_size < 100_000
    Image.open(rgb_image).save(data / "good.png")
    out = tmp_path / "out"
    result = explain(data, "--model", tiny_cnn_path, "--out", out)
    assert_clean_failure(result, 1, "bomb.png", "decompression-bomb limit")
    assert files_in(out) == ["good.heatmap.png", "good.json", "good.overlay.png", "summary.csv", "summary.json"]
    assert json.loads((out / "summary.json").read_text())["failed"] == 1


def test_pillow_warning_zone_is_refused_too(tiny_cnn_path, tmp_path):
    # between Pillow's limit and twice it Pillow only warns; 10000 x 10000 = 1e8 pixels is in that zone
    result = explain(huge_png(tmp_path / "big.png", 10000), "--model", tiny_cnn_path, "--out", tmp_path / "o")
    assert_clean_failure(result, 1, "big.png", "decompression-bomb limit")
    assert files_in(tmp_path / "o") == []


def mnist_like(tmp_path, symbolic=False, shape=(1, 1, 28, 28)):
    """A 1x1x28x28 (or N x 1 x H x W) Conv-ReLU-GlobalAveragePool-Gemm net with 10 classes, no sidecar."""
    rng = np.random.default_rng(3)
    inits = {"w": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
             "d": rng.standard_normal((4, 10)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "d"], ["y"], name="dense")]
    shape = ["N", 1, "H", "W"] if symbolic else list(shape)
    name = "open.onnx" if symbolic else "mnist.onnx"
    return save_model(onnx_model(nodes, shape, "y", inits), tmp_path / name)


def test_grey_preset_for_a_one_channel_model():
    scale, mean, std, _ = PreprocessConfig().normalization(1)
    assert scale == pytest.approx(1 / 255)
    assert mean.tolist() == pytest.approx([(0.485 + 0.456 + 0.406) / 3], abs=1e-12)
    assert std.tolist() == pytest.approx([(0.229 + 0.224 + 0.225) / 3], abs=1e-12)


@pytest.mark.parametrize("composite", ["epsilon-plus-flat", "epsilon-gamma-box"])
def test_one_channel_model_without_sidecar(rgb_image, tmp_path, composite):
    out = tmp_path / "o"
    result = explain(rgb_image, "--model", mnist_like(tmp_path), "--out", out, "--save-raw",
                     "--composite", composite)
    assert result.exit_code == 0, result.output
    raw = np.load(out / "img.relevance.npy")
    doc = json.loads((out / "img.json").read_text())
    assert raw.shape == (1, 1, 28, 28)
    assert doc["relevance"]["sum"] == pytest.approx(float(raw.astype(np.float64).sum()), rel=1e-5)
    if composite == "epsilon-gamma-box":  # z^B bounds of the grey preset: (0 - mean)/std .. (1 - mean)/std
        low, high = -0.449 / 0.226, (1 - 0.449) / 0.226
        assert doc["rules"]["conv"] == f"zbox:{low:g},{high:g}"


def test_real_one_channel_lenet_without_sidecar(tmp_path):
    model = shared_path("models", "lenet5_mnist.onnx")
    digits = np.load(shared_path("images", "mnist", "mnist_test_first100_uint8.npy"))
    Image.fromarray(np.pad(digits[0], 2)).save(tmp_path / "seven.png")  # MNIST's first test digit is a 7
    for preset in ["imagenet", "tf"]:  # the default (grey imagenet) and the model's own preprocessing
        out = tmp_path / preset
        result = explain(tmp_path / "seven.png", "--model", model, "--out", out, "--preset", preset,
                         "--engine", "numpy")  # ir_max_abs_diff compares the NumPy IR with onnxruntime
        assert result.exit_code == 0, result.output
        doc = json.loads((out / "seven.json").read_text())
        assert doc["prediction"]["index"] == 7 and doc["ir_max_abs_diff"] < 1e-4


def test_three_means_for_a_two_channel_input_is_a_usage_error():
    with pytest.raises(Exception, match="--mean: 3 values for a model input with 2 channels"):
        PreprocessConfig(mean=(0.1, 0.2, 0.3)).normalization(2)


def test_symbolic_height_width_bound_by_the_tensor_or_by_size(rgb_image, tmp_path):
    model = mnist_like(tmp_path, symbolic=True)
    tensor = np.random.default_rng(0).uniform(-1, 1, (1, 1, 20, 24)).astype(np.float32)
    np.save(tmp_path / "t.npy", tensor)
    out = tmp_path / "o"
    result = explain(tmp_path / "t.npy", "--model", model, "--out", out, "--save-raw", "--engine", "numpy")
    assert result.exit_code == 0, result.output
    assert np.load(out / "t.relevance.npy").shape == (1, 1, 20, 24)
    assert json.loads((out / "t.json").read_text())["ir_max_abs_diff"] < 1e-5
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    fixed_model = mnist_like(fixed, shape=[1, 1, 20, 24])
    assert explain(tmp_path / "t.npy", "--model", fixed_model, "--out", fixed, "--save-raw",
                   "--engine", "numpy").exit_code == 0
    np.testing.assert_array_equal(np.load(out / "t.relevance.npy"), np.load(fixed / "t.relevance.npy"))
    # a second shape in the same batch binds the graph again
    np.save(tmp_path / "u.npy", tensor[:, :, :8, :9])
    result = explain(tmp_path / "t.npy", tmp_path / "u.npy", "--model", model, "--out", tmp_path / "two")
    assert result.exit_code == 0, result.output
    result = explain(rgb_image, "--model", model, "--out", tmp_path / "img")
    assert_clean_failure(result, 1, "img.png", "[1, 1, ?, ?]", "--size H,W", ".npy tensor fixes the shape")
    assert files_in(tmp_path / "img") == []
    result = explain(rgb_image, "--model", model, "--out", tmp_path / "sized", "--size", "12,14")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "sized" / "img.heatmap.png").size == (14, 12)
    inspected = RUN.invoke(main, ["inspect", str(model)])
    assert inspected.exit_code == 3 and "symbolic dimensions" in inspected.output


def test_same_stem_in_two_folders_of_one_glob(tiny_cnn_path, rgb_image, tmp_path):
    for folder, turn in [("a", 0), ("b", 90)]:
        (tmp_path / "in" / folder).mkdir(parents=True)
        Image.open(rgb_image).rotate(turn).save(tmp_path / "in" / folder / "x.png")
    out = tmp_path / "o"
    result = explain(str(tmp_path / "in" / "*" / "x.png"), "--model", tiny_cnn_path, "--out", out)
    assert result.exit_code == 0, result.output
    assert {"a/x.json", "b/x.json"} <= set(files_in(out))
    assert (out / "a" / "x.heatmap.png").read_bytes() != (out / "b" / "x.heatmap.png").read_bytes()


def test_stems_never_collide(tmp_path):
    (tmp_path / "d").mkdir()
    for name in ["d/x.png", "d/x.jpg", "e.png"]:
        (tmp_path / name).touch()
    items = expand_inputs([str(tmp_path / "d"), str(tmp_path / "d" / "x.png"), str(tmp_path / "*.png")])
    assert [(i.path.name, i.stem) for i in items] == [("x.jpg", "x"), ("x.png", "x.png"), ("x.png", "x~2"),
                                                      ("e.png", "e")]


def two_images(rgb_image, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for k in range(2):
        Image.open(rgb_image).rotate(90 * k).save(data / f"in{k}.png")
    return data


def test_full_disk_leaves_no_partial_or_temporary_files(tiny_cnn_path, rgb_image, tmp_path, monkeypatch):
    data = two_images(rgb_image, tmp_path)
    real_write, temporaries = os.write, set()
    real_open = os.open

    def opened(path, *args, **kwargs):  # the descriptors of write_all's temporaries, whose writes then fail
        fd = real_open(path, *args, **kwargs)
        if str(path).endswith(".tmp"):
            temporaries.add(fd)
        return fd

    def full_disk(fd, data):
        if fd in temporaries:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "open", opened)
    monkeypatch.setattr(os, "write", full_disk)
    out = tmp_path / "out"
    result = explain(data, "--model", tiny_cnn_path, "--out", out)
    assert_clean_failure(result, 1, "in0.png", "No space left on device")
    assert sum(line.startswith("error:") for line in result.output.splitlines()) == 3  # 2 inputs + summary
    assert files_in(out) == []


def test_read_only_output_folder(tiny_cnn_path, rgb_image, tmp_path, monkeypatch):
    data = two_images(rgb_image, tmp_path)

    real_open = os.open

    def refuse(path, *args, **kwargs):  # write_all's temporaries: root ignores chmod, so the refusal is simulated
        if str(path).endswith(".tmp"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    out = tmp_path / "out"
    result = explain(data, "--model", tiny_cnn_path, "--out", out)
    assert_clean_failure(result, 1, "in1.png", "Permission denied")
    assert files_in(out) == []


@pytest.mark.slow  # a subprocess: Python and onnxruntime start-up alone take seconds on a busy machine
@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_batch_leaves_whole_sets_and_no_temporary_files(tiny_cnn_path, rgb_image, tmp_path, signum,
                                                                   code):
    data = tmp_path / "data"
    data.mkdir()
    picture = Image.open(rgb_image).resize((64, 64))
    for k in range(150):
        picture.save(data / f"in{k:03d}.png")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "lrp_cli", "explain", str(data), "--model", str(tiny_cnn_path),
                             "--out", str(out), "--no-progress"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while not (out / "in005.json").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    stderr = stderr.decode()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and f"error: interrupted by {signal.Signals(signum).name}" in stderr
    names = files_in(out)
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")]
    stems = {n.split(".")[0] for n in names}
    assert 5 <= len(stems) < 150
    for stem in stems:  # every input written is a whole set
        assert {f"{stem}.heatmap.png", f"{stem}.overlay.png", f"{stem}.json"} <= set(names)


def overflow_model(tmp_path, weight):
    """Two Dense layers on [1, 2]: the first cancels +w and -w exactly (z = bias 5), the second multiplies by 10.
    With w = 3e38 the forward pass is finite but the epsilon rule's x * (W^T c) overflows float32 in fc1."""
    inits = {"w1": np.array([[weight], [-weight]], np.float32), "b1": np.array([5.0], np.float32),
             "w2": np.array([[10.0, -1.0]], np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node("Gemm", ["h", "w2"], ["y"], name="fc2")]
    return save_model(onnx_model(nodes, [1, 2], "y", inits), tmp_path / "overflow.onnx")


def strict_json(path):
    def refuse(name):
        raise ValueError(f"{path} holds {name}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_overflowing_relevance_is_a_warning_naming_the_layer_and_the_json_stays_valid(tmp_path):
    np.save(tmp_path / "t.npy", np.ones((1, 2), np.float32))
    out = tmp_path / "o"
    result = explain(tmp_path / "t.npy", "--model", overflow_model(tmp_path, 3e38), "--out", out,
                     "--rule", "epsilon", "--save-raw")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "RuntimeWarning" not in result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "node 'fc1' (Gemm, rule epsilon:1e-06)" in warnings[0], result.output
    assert not np.isfinite(np.load(out / "t.relevance.npy")).all()
    doc = strict_json(out / "t.json")
    assert doc["f_x"] == pytest.approx(50.0) and doc["relevance"]["sum"] is None
    assert [layer["relevance_sum"] for layer in doc["layers"]][0] == pytest.approx(50.0)
    assert doc["layers"][1]["relevance_sum"] is None and "fc1" in doc["warnings"][0]
    # float64 does not overflow: the same input explains cleanly
    result = explain(tmp_path / "t.npy", "--model", tmp_path / "overflow.onnx", "--out", out,
                     "--rule", "epsilon", "--precision", "float64", "--json-lines")
    assert result.exit_code == 0 and "warning:" not in result.output
    assert strict_json(out / "t.json")["relevance"]["sum"] == pytest.approx(0.0, abs=1e32)


def test_overflowing_forward_pass_is_an_input_error_naming_the_node(tmp_path):
    np.save(tmp_path / "t.npy", np.array([[1.0, 0.0]], np.float32))
    inits = {"w1": np.full((2, 1), 3e38, np.float32), "w2": np.full((1, 1), 3e38, np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Gemm", ["h", "w2"], ["y"], name="fc2")]
    model = save_model(onnx_model(nodes, [1, 2], "y", inits), tmp_path / "big.onnx")
    result = explain(tmp_path / "t.npy", "--model", model, "--out", tmp_path / "o")
    assert_clean_failure(result, 1, "t.npy", "not finite from node 'fc2' (Gemm)")
    assert files_in(tmp_path / "o") == []


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights_are_a_load_error_naming_the_node(tmp_path, bad):
    w = np.ones((3, 2), np.float32)
    w[1, 0] = bad
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], name="dense")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(w, "w")])
    model = save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "nan.onnx")
    np.save(tmp_path / "t.npy", np.ones((1, 3), np.float32))
    result = explain(tmp_path / "t.npy", "--model", model, "--out", tmp_path / "o")
    assert_clean_failure(result, 3, "nan.onnx", "'dense' (Gemm)", "NaN or Inf")
