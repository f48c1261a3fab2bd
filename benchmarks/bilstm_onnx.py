"""A 2-layer bidirectional LSTM text classifier (issue 20's speed case) as ONNX with random weights, no torch:
token ids [1, T] -> embedding (VOCAB x 128) -> LSTM(128 -> 256, both directions) -> LSTM(512 -> 256, both
directions) -> both directions' last states -> a dense layer to 2 classes. Written as torch's legacy exporter
writes a stacked nn.LSTM (one LSTM node per layer, Transpose/Reshape between them)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB, EMBED, HIDDEN, CLASSES = 5000, 128, 256, 2


def build(tokens: int = 50, seed: int = 0) -> onnx.ModelProto:
    """Returns the model reading [1, tokens] int64 ids, weights drawn from N(0, 1/fan_in)."""
    rng = np.random.default_rng(seed)
    h = HIDDEN

    def weights(*shape, fan_in=None):
        return (rng.standard_normal(shape) / np.sqrt(fan_in or shape[-1])).astype(np.float32)

    inits = {"table": weights(VOCAB, EMBED), "dense": weights(2 * h, CLASSES, fan_in=2 * h),
             "bias": np.zeros(CLASSES, np.float32), "shape1": np.array([tokens, 1, 2 * h]),
             "shape2": np.array([1, 2 * h])}
    for layer, width in ((1, EMBED), (2, 2 * h)):
        inits[f"w{layer}"], inits[f"r{layer}"] = weights(2, 4 * h, width), weights(2, 4 * h, h)
        inits[f"b{layer}"] = (rng.standard_normal((2, 8 * h)) * 0.1).astype(np.float32)
    lstm = {"hidden_size": h, "direction": "bidirectional"}
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("Transpose", ["e"], ["x1"], perm=[1, 0, 2]),
             helper.make_node("LSTM", ["x1", "w1", "r1", "b1"], ["y1"], name="lstm1", **lstm),
             helper.make_node("Transpose", ["y1"], ["y1t"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["y1t", "shape1"], ["x2"]),
             helper.make_node("LSTM", ["x2", "w2", "r2", "b2"], ["", "h2"], name="lstm2", **lstm),
             helper.make_node("Transpose", ["h2"], ["h2t"], perm=[1, 0, 2]),
             helper.make_node("Reshape", ["h2t", "shape2"], ["state"]),
             helper.make_node("Gemm", ["state", "dense", "bias"], ["logits"], name="out")]
    graph = helper.make_graph(
        nodes, "bilstm", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, tokens])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES])],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model
