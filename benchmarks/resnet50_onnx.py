"""Builds a full-size ResNet-50 ONNX graph (random He-initialized weights, real BatchNorm nodes) without torch.

The weights are random, so its predictions mean nothing; it stands in for a ResNet50-size model when measuring
the time and peak memory of one explanation at 224x224.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STAGES = [(3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)]  # (blocks, bottleneck width, first stride)


class Builder:
    """Accumulates nodes and initializers of one ONNX graph."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []

    def const(self, name: str, value: np.ndarray) -> str:
        """Returns the name of a new float32 initializer."""
        self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def dense(self, x: str, name: str, cin: int, cout: int, gain: float = 1.0) -> str:
        """Returns the output of a Gemm layer (weight variance gain / cin, zero bias), as torch's Linear exports."""
        w = self.rng.standard_normal((cout, cin)) * np.sqrt(gain / cin)
        self.nodes.append(helper.make_node("Gemm", [x, self.const(name + ".w", w), self.const(name + ".b",
                                                                                            np.zeros(cout))],
                                           [name], name=name, transB=1))
        return name

    def model(self, name: str, output: str, classes: int) -> onnx.ModelProto:
        """Returns the opset-13 model of the graph built so far: input [1,3,224,224] -> output [1,classes]."""
        graph = helper.make_graph(self.nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                   [1, 3, 224, 224])],
                                  [helper.make_tensor_value_info(output, TensorProto.FLOAT, [1, classes])],
                                  self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        return model

    def relu(self, x: str) -> str:
        """Returns the output of a Relu node."""
        self.nodes.append(helper.make_node("Relu", [x], [x + ".relu"], name=x + ".relu"))
        return x + ".relu"

    def conv_bn(self, x: str, name: str, cin: int, cout: int, k: int, stride: int, relu: bool) -> str:
        """Returns the output of Conv + BatchNorm (+ Relu)."""
        w = self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))
        self.nodes.append(helper.make_node("Conv", [x, self.const(name + ".w", w)], [name], name=name,
                                           strides=[stride, stride], pads=[k // 2] * 4))
        bn = [self.const(f"{name}.bn.{p}", v) for p, v in (
            ("g", self.rng.uniform(0.5, 1.0, cout)), ("b", self.rng.standard_normal(cout) * 0.1),
            ("m", self.rng.standard_normal(cout) * 0.1), ("v", self.rng.uniform(0.5, 1.5, cout)))]
        self.nodes.append(helper.make_node("BatchNormalization", [name] + bn, [name + ".bn"], name=name + ".bn"))
        return self.relu(name + ".bn") if relu else name + ".bn"

    def bottleneck(self, x: str, name: str, cin: int, width: int, stride: int) -> str:
        """Returns the output of one bottleneck block with its residual Add."""
        h = self.conv_bn(x, name + ".conv1", cin, width, 1, 1, True)
        h = self.conv_bn(h, name + ".conv2", width, width, 3, stride, True)
        h = self.conv_bn(h, name + ".conv3", width, width * 4, 1, 1, False)
        skip = x if stride == 1 and cin == width * 4 else self.conv_bn(x, name + ".down", cin, width * 4, 1,
                                                                         stride, False)
        self.nodes.append(helper.make_node("Add", [h, skip], [name + ".add"], name=name + ".add"))
        self.nodes.append(helper.make_node("Relu", [name + ".add"], [name + ".out"], name=name + ".out"))
        return name + ".out"


def build(classes: int = 1000) -> onnx.ModelProto:
    """Returns the ResNet-50 model: input [1,3,224,224] -> logits [1,classes]."""
    b = Builder()
    x = b.conv_bn("input", "stem", 3, 64, 7, 2, True)
    b.nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2],
                                    pads=[1, 1, 1, 1]))
    x, cin = "pool", 64
    for stage, (blocks, width, stride) in enumerate(STAGES):
        for k in range(blocks):
            x = b.bottleneck(x, f"layer{stage + 1}.{k}", cin, width, stride if k == 0 else 1)
            cin = width * 4
    b.nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]),
                helper.make_node("Flatten", ["gap"], ["flat"])]
    b.dense("flat", "logits", cin, classes)
    return b.model("resnet50", "logits", classes)


if __name__ == "__main__":
    onnx.save(build(), sys.argv[1])
