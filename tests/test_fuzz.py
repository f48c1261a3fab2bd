"""A corpus of broken inputs, generated here, run through the real CLI: for every case no Python traceback,
the contract's exit code (1 for an input, 3 for a model or its sidecar), and no output files for a failed
input. Most cases run in-process (CliRunner); a few go through a real subprocess to see the real stderr."""

import io
import os
import pickle
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from conftest import REPO, tiny_cnn
from lrp_cli.cli import main

RUN = CliRunner()
FORMATS = {"png": "PNG", "jpg": "JPEG", "bmp": "BMP", "tiff": "TIFF", "webp": "WEBP", "gif": "GIF"}


def image_bytes(fmt: str, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=FORMATS[fmt])
    return buffer.getvalue()


def corrupt(data: bytes, at: float, length: int = 24) -> bytes:
    start = int(len(data) * at)
    return data[:start] + bytes(b ^ 0xA5 for b in data[start:start + length]) + data[start + length:]


def image_corpus() -> dict[str, bytes]:
    """Returns file name -> bytes: per format, an empty file, truncations at 8 bytes, 25 %, 50 % and 90 %, and
    corruptions of the header and of the middle of the data."""
    corpus = {}
    for ext in FORMATS:
        data = image_bytes(ext)
        corpus[f"{ext}_empty.{ext}"] = b""
        corpus[f"{ext}_cut8.{ext}"] = data[:8]
        for fraction in (25, 50, 90):
            corpus[f"{ext}_cut{fraction}.{ext}"] = data[:len(data) * fraction // 100]
        corpus[f"{ext}_header.{ext}"] = corrupt(data, 0.0, 16)
        corpus[f"{ext}_middle.{ext}"] = corrupt(data, 0.5)
    return corpus


MUST_FAIL = ("_empty.", "_cut8.", "_cut25.", "_cut50.")


def no_traceback(result):
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


def test_corrupt_images_of_every_format_in_one_batch(tiny_cnn_path, tmp_path):
    corpus = image_corpus()
    data = tmp_path / "data"
    data.mkdir()
    for name, content in corpus.items():
        (data / name).write_bytes(content)
    (data / "zz_good.png").write_bytes(image_bytes("png", 1))
    out = tmp_path / "out"
    result = RUN.invoke(main, ["explain", str(data), "--model", str(tiny_cnn_path), "--out", str(out)])
    no_traceback(result)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    written = {p.name for p in out.iterdir()}
    failed = 0
    for name in corpus:
        stem = name.rsplit(".", 1)[0]
        outputs = {f"{stem}.heatmap.png", f"{stem}.overlay.png", f"{stem}.json"}
        reported = [line for line in errors if f"/{name}: " in line]
        if reported:  # a failed input: exactly one line and none of its files
            failed += 1
            assert len(reported) == 1 and not outputs & written, name
        else:  # decoded despite the damage: all of its files
            assert outputs <= written, name
        if name.endswith(MUST_FAIL):
            assert reported, name
    assert {"zz_good.json", "summary.json"} <= written
    assert f"{failed} of {len(corpus) + 1} inputs failed" in result.output
    assert len(corpus) == 42


def onnx_bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString()


def graph_model(nodes, inputs, initializers=(), outputs=None) -> bytes:
    if outputs is None:
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "fuzz", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return onnx_bytes(model)


def float_input(shape=(1, 4), name="x", elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, list(shape))


W = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
TINY = onnx_bytes(tiny_cnn())


def model_corpus() -> dict[str, bytes]:
    """Returns case name -> bytes of a broken `.onnx` file."""
    rng = np.random.default_rng(0)
    corpus = {f"random{n}": rng.bytes(n) for n in (0, 1, 100, 5000)}
    corpus |= {f"truncated{p}": TINY[:len(TINY) * p // 100] for p in (10, 50, 90, 99)}
    corpus["cycle"] = graph_model([helper.make_node("Add", ["x", "b"], ["a"], name="n1"),
                                   helper.make_node("Relu", ["a"], ["b"], name="n2"),
                                   helper.make_node("Gemm", ["b", "w"], ["y"], name="n3")], [float_input()], [W])
    corpus["missing_initializer"] = graph_model([helper.make_node("Gemm", ["x", "w_missing"], ["y"], name="fc")],
                                                [float_input()])
    corpus["int64_input"] = graph_model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")],
                                        [float_input(elem=TensorProto.INT64)], [W])
    corpus["string_input"] = graph_model([helper.make_node("Identity", ["x"], ["y"])],
                                         [float_input(elem=TensorProto.STRING)])
    corpus["int_weights"] = graph_model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")], [float_input()],
                                        [numpy_helper.from_array(np.ones((4, 3), np.int64), "w")])
    corpus["wrong_weight_shape"] = graph_model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")],
                                               [float_input((1, 5))], [W])
    for name, bad in [("nan_weights", np.nan), ("inf_weights", np.inf)]:
        w = np.ones((4, 3), np.float32)
        w[2, 1] = bad
        corpus[name] = graph_model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")], [float_input()],
                                   [numpy_helper.from_array(w, "w")])
    corpus["no_outputs"] = graph_model([helper.make_node("Relu", ["x"], ["y"])], [float_input()], outputs=[])
    corpus["no_nodes"] = graph_model([], [float_input()])
    corpus["no_input_shape"] = graph_model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")],
                                           [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)], [W])
    corpus["custom_domain_op"] = graph_model([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")],
                                             [float_input()])
    return corpus


MODELS = model_corpus()


def run_model_case(tmp_path, model_name: str, content: bytes):
    model = tmp_path / f"{model_name}.onnx"
    model.write_bytes(content)
    x = tmp_path / "t.npy"
    np.save(x, np.ones((1, 4), np.float32))
    out = tmp_path / "out"
    result = RUN.invoke(main, ["explain", str(x), "--model", str(model), "--out", str(out)])
    no_traceback(result)
    return result, out


def one_error_line(result, *fragments):
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    assert all(f in lines[0] for f in fragments), lines[0]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_broken_onnx_models_exit_3(tmp_path, name):
    result, out = run_model_case(tmp_path, name, MODELS[name])
    assert result.exit_code == 3, result.output
    one_error_line(result, f"{name}.onnx")
    assert not out.exists() or not any(out.iterdir())


SIDECARS = {
    "syntax": "preset = \n",
    "binary": b"\xff\xfe\x00garbage",
    "unknown_key": 'colour = "red"\n',
    "preset_unknown": 'preset = "sepia"\n',
    "preset_number": "preset = 3\n",
    "size_text": 'size = "big"\n',
    "size_three": "size = [1, 2, 3]\n",
    "size_zero": "size = [0, 4]\n",
    "resize_negative": "resize = -3\n",
    "crop_too_big": "crop = 2.0\n",
    "mean_text": 'mean = "grey"\n',
    "mean_mixed": 'mean = [0.5, "a", 0.5]\n',
    "std_zero": "std = [0.0]\n",
    "bgr_text": 'bgr = "yes"\n',
    "labels_number": "labels = 5\n",
    "labels_missing_file": 'labels = "nope.txt"\n',
    "labels_mixed": 'labels = ["a", 2]\n',
    "composite_unknown": 'composite = "magic"\n',
    "output_unknown": 'output = "nope"\n',
    "layout_bad": 'layout = "chw"\n',
    "training_not_table": "training = 3\n",
}


@pytest.mark.parametrize("name", sorted(SIDECARS))
def test_broken_sidecars_exit_3(tmp_path, name):
    content = SIDECARS[name]
    model = tmp_path / "m.onnx"
    model.write_bytes(graph_model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")], [float_input()], [W]))
    sidecar = tmp_path / "m.lrp.toml"
    sidecar.write_bytes(content if isinstance(content, bytes) else content.encode())
    np.save(tmp_path / "t.npy", np.ones((1, 4), np.float32))
    out = tmp_path / "out"
    result = RUN.invoke(main, ["explain", str(tmp_path / "t.npy"), "--model", str(model), "--out", str(out)])
    no_traceback(result)
    assert result.exit_code == 3, result.output
    one_error_line(result, "m.lrp.toml" if name != "output_unknown" else "m.onnx")
    assert not out.exists() or not any(out.iterdir())


class Exploding:
    def __reduce__(self):
        return (int, ("not a number",))


def pickle_corpus() -> dict[str, bytes]:
    """Returns case name -> bytes of a `.joblib` file that is not a BoW pipeline."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    real = (REPO / "models" / "polygons-bow-svm.joblib").read_bytes()
    return {
        "random": np.random.default_rng(1).bytes(300), "empty": b"", "truncated": real[:len(real) // 2],
        "dict": pickle.dumps({"a": 1}), "list": pickle.dumps([1, 2, 3]), "number": pickle.dumps(7),
        "wrapped_wrong": pickle.dumps({"format": "lrp-cli/sklearn-bow", "pipeline": [1], "metadata": {}}),
        "other_pipeline": pickle.dumps(Pipeline([("s", StandardScaler()), ("c", LogisticRegression())])),
        "raises_on_load": pickle.dumps(Exploding()),
    }


@pytest.mark.parametrize("name", sorted(pickle_corpus()))
def test_wrong_pickles_exit_3(tmp_path, rgb_image, name):
    model = tmp_path / f"{name}.joblib"
    model.write_bytes(pickle_corpus()[name])
    out = tmp_path / "out"
    result = RUN.invoke(main, ["explain", str(rgb_image), "--model", str(model), "--out", str(out)])
    no_traceback(result)
    assert result.exit_code == 3, result.output
    one_error_line(result, f"{name}.joblib")
    assert not out.exists() or not any(out.iterdir())


def npy_bytes(array, allow_pickle=False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


TENSORS = {
    "nan": npy_bytes(np.array([[1, np.nan, 0, 0]], np.float32)),
    "inf": npy_bytes(np.array([[1, -np.inf, 0, 0]], np.float32)),
    "wrong_shape": npy_bytes(np.ones((2, 4), np.float32)),
    "scalar": npy_bytes(np.float32(1)),
    "strings": npy_bytes(np.array([["a", "b", "c", "d"]])),
    "complex": npy_bytes(np.ones((1, 4), np.complex64)),
    "booleans": npy_bytes(np.ones((1, 4), bool)),
    "objects": npy_bytes(np.array([[1, None, 2, 3]], dtype=object), allow_pickle=True),
    "truncated": npy_bytes(np.ones((1, 4), np.float32))[:100],
    "random": np.random.default_rng(2).bytes(200),
    "empty": b"",
}


def test_broken_tensors_in_one_batch(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(graph_model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")], [float_input()], [W]))
    data = tmp_path / "data"
    data.mkdir()
    for name, content in TENSORS.items():
        (data / f"{name}.npy").write_bytes(content)
    np.save(data / "zz_good.npy", np.ones((1, 4), np.float32))
    out = tmp_path / "out"
    result = RUN.invoke(main, ["explain", str(data), "--model", str(model), "--out", str(out)])
    no_traceback(result)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    for name in TENSORS:
        assert sum(f"/{name}.npy: " in line for line in errors) == 1, (name, errors)
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv", "summary.json", "zz_good.heatmap.png",
                                                     "zz_good.json", "zz_good.overlay.png"]
    assert f"{len(TENSORS)} of {len(TENSORS) + 1} inputs failed" in result.output


@pytest.mark.slow  # Python and onnxruntime start-up take seconds on a busy machine
@pytest.mark.parametrize("case", ["image", "model", "sidecar"])
def test_real_stderr_of_a_subprocess(tiny_cnn_path, tmp_path, case):
    """The in-process runs above cannot see what Python itself prints (warnings, tracebacks at exit)."""
    target, model, code = tmp_path / "cut.jpg", tiny_cnn_path, 1
    target.write_bytes(image_bytes("jpg")[:300])
    if case == "model":
        model, code = tmp_path / "cycle.onnx", 3
        model.write_bytes(MODELS["cycle"])
    elif case == "sidecar":
        model, code = tmp_path / "tiny.onnx", 3
        (tmp_path / "tiny.lrp.toml").write_text(SIDECARS["mean_mixed"])
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONWARNINGS": "default"}
    proc = subprocess.run([sys.executable, "-m", "lrp_cli", "explain", str(target), "--model", str(model),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("error: ") and lines[1:] == (["1 of 1 inputs failed"] if code == 1 else []), lines
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
