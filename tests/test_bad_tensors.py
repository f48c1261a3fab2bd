"""Model files whose stored tensors do not hold the data their shape needs (truncated raw data, short float_data,
external data missing or too short, a Constant node's value): one line naming the file and the tensor, exit 3,
for `lrp explain`, `lrp inspect` and `lrp compile`, and nothing written."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import onnx_model
from lrp_cli.cli import main

RUN = CliRunner()
RNG = np.random.default_rng(3)


def _conv_model(weight: onnx.TensorProto, constant: onnx.TensorProto | None = None) -> onnx.ModelProto:
    """A Conv 16x3x3x3 -> GlobalAveragePool -> Flatten classifier on 1x3x8x8 whose weight is `weight` (and, with
    `constant`, a Constant node whose value is added to the pooled scores)."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"], name="pool"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat")]
    if constant is not None:
        nodes += [helper.make_node("Constant", [], ["k"], name="bias_const", value=constant),
                  helper.make_node("Add", ["f", "k"], ["y"], name="bias")]
    else:
        nodes[-1].output[0] = "y"
    model = onnx_model(nodes, [1, 3, 8, 8], "y")
    model.graph.initializer.append(weight)
    return model


def _weight() -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal((16, 3, 3, 3)).astype(np.float32), "w")


def _truncated_raw() -> onnx.ModelProto:
    weight = _weight()
    weight.raw_data = weight.raw_data[:8]  # two floats of the 432 its shape needs
    return _conv_model(weight)


def _short_float_data() -> onnx.ModelProto:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    weight.dims[:] = [16, 3, 3, 3]
    return _conv_model(weight)


def _long_raw() -> onnx.ModelProto:
    weight = _weight()
    weight.raw_data = weight.raw_data + bytes(4)
    return _conv_model(weight)


def _truncated_constant() -> onnx.ModelProto:
    value = numpy_helper.from_array(np.ones((1, 16), dtype=np.float32))
    value.raw_data = value.raw_data[:12]
    return _conv_model(_weight(), value)


def _saved(model: onnx.ModelProto, folder, external: bool = False):
    path = folder / "bad.onnx"
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location="bad.data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path


def _missing_external(folder):
    path = _saved(_conv_model(_weight()), folder, external=True)
    os.remove(folder / "bad.data")
    return path


def _short_external(folder):
    path = _saved(_conv_model(_weight()), folder, external=True)
    data = folder / "bad.data"
    data.write_bytes(data.read_bytes()[:100])
    return path


CASES = {
    "raw_data of 8 bytes": (lambda f: _saved(_truncated_raw(), f),
                            "initializer 'w': 8 bytes of raw data for a 16x3x3x3 float32 tensor, which needs 1728"),
    "raw_data 4 bytes too long": (lambda f: _saved(_long_raw(), f),
                                  "initializer 'w': 1732 bytes of raw data for a 16x3x3x3 float32 tensor"),
    "float_data of 2 values": (lambda f: _saved(_short_float_data(), f),
                               "initializer 'w': 2 stored values for a 16x3x3x3 tensor, which needs 432"),
    "Constant node of 12 bytes": (lambda f: _saved(_truncated_constant(), f),
                                  "Constant 'k': 12 bytes of raw data for a 1x16 float32 tensor, which needs 64"),
    "external data missing": (_missing_external, "initializer 'w': its external data file"),
    "external data too short": (_short_external, "has 100 bytes, the tensor's data ends at byte 1728"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", ["explain", "inspect", "compile"])
def test_ill_sized_tensor_is_one_line_exit_3(tmp_path, case, command):
    build, fragment = CASES[case]
    path = build(tmp_path)
    np.save(tmp_path / "x.npy", RNG.standard_normal((1, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "out"
    args = {"explain": ["explain", "--model", path, tmp_path / "x.npy", "--out", out],
            "inspect": ["inspect", path], "compile": ["compile", path, "-o", out / "c.onnx"]}[command]
    result = RUN.invoke(main, [str(a) for a in args])
    assert result.exit_code == 3, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert errors[0].startswith(f"error: {path}: ") and fragment in errors[0], errors[0]
    assert not out.exists()


def test_the_same_model_with_whole_tensors_loads(tmp_path):
    # The control: the builders above differ from a loadable model only in the broken tensor.
    weight = _weight()
    path = _saved(_conv_model(weight, numpy_helper.from_array(np.ones((1, 16), dtype=np.float32))), tmp_path,
                  external=True)
    result = RUN.invoke(main, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
