"""Builds a full-size VGG-16 ONNX graph (torchvision's layout, random He-initialized weights) without torch.

Like `resnet50_onnx.py`, whose graph builder it shares, it stands in for a real VGG-16 when measuring the time and
peak memory of one explanation at 224x224: 13 3x3 convs with bias and ReLU, 5 max-pools, 3 dense layers
(138 M parameters, 553 MB of float32 weights).
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import helper

from resnet50_onnx import Builder

#: Output channels of each 3x3 conv; "M" is a 2x2 stride-2 max-pool (torchvision's configuration "D").
LAYERS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def conv_relu(b: Builder, x: str, name: str, cin: int, cout: int) -> str:
    """Returns the output of a 3x3 Conv (pad 1, with bias) + Relu."""
    w = b.rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))
    bias = b.rng.standard_normal(cout) * 0.01
    b.nodes.append(helper.make_node("Conv", [x, b.const(name + ".w", w), b.const(name + ".b", bias)], [name],
                                    name=name, kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    return b.relu(name)


def build(classes: int = 1000) -> onnx.ModelProto:
    """Returns the VGG-16 model: input [1,3,224,224] -> logits [1,classes]."""
    b = Builder()
    x, cin = "input", 3
    for k, layer in enumerate(LAYERS):
        if layer == "M":
            b.nodes.append(helper.make_node("MaxPool", [x], [f"pool{k}"], name=f"pool{k}", kernel_shape=[2, 2],
                                            strides=[2, 2]))
            x = f"pool{k}"
        else:
            x, cin = conv_relu(b, x, f"features.{k}", cin, layer), layer
    b.nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten"))
    x = b.relu(b.dense("flat", "classifier.0", cin * 7 * 7, 4096, gain=2.0))
    x = b.relu(b.dense(x, "classifier.3", 4096, 4096, gain=2.0))
    b.dense(x, "logits", 4096, classes)
    return b.model("vgg16", "logits", classes)


if __name__ == "__main__":
    onnx.save(build(), sys.argv[1])
