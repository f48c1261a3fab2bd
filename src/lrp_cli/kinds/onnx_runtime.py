"""The plain onnxruntime sessions of an ONNX model (its chosen output first, then the tensor the IR explains), and
its ONNX bytes re-bound to another batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from lrp_cli.errors import ModelLoadError
from lrp_cli.engines import onnx_engine
from lrp_cli.ir.graph import Graph

#: onnxruntime input types other than float32 that lrp-cli feeds (its own computation stays float32/float64).
ORT_INPUT_TYPES = {"tensor(float16)": np.float16, "tensor(double)": np.float64, "tensor(int64)": np.int64,
                   "tensor(int32)": np.int32}  # token ids: the IR reads them as (exact) floats


def input_dtype(session: ort.InferenceSession, name: str) -> type:
    """Returns the NumPy type the session's input `name` is fed in (float32 unless ORT_INPUT_TYPES names it)."""
    kind = next(i.type for i in session.get_inputs() if i.name == name)
    return ORT_INPUT_TYPES.get(kind, np.float32)


def reported_output(model: onnx.ModelProto, graph: Graph | None, output: str | None) -> str:
    """Returns the first output of `onnx_session`'s session: the chosen graph output, else the IR's explained
    tensor."""
    chosen = output or model.graph.output[0].name
    if graph is None or any(o.name == chosen for o in model.graph.output):
        return chosen
    return graph.output_name


def onnx_session(path: Path, model: onnx.ModelProto, graph: Graph, output: str | None) -> ort.InferenceSession:
    """Returns an onnxruntime session whose outputs are the chosen model output, then the IR's explained tensor.

    It rewrites the graph outputs of `model` in place: the import is done with it by then."""
    chosen = output or model.graph.output[0].name
    keep = [o for o in model.graph.output if o.name == chosen]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    if graph.output_name != chosen:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(graph.output_name))
    options = onnx_engine.session_options()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # batch jobs share the cores
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelLoadError(f"{path}: onnxruntime cannot load the model: {exc}".splitlines()[0]) from None


def set_batch(proto: onnx.ModelProto, input_name: str, size: int) -> None:
    """Sets, in place, the data input's first dimension to `size` and each output's literal batch of 1 to it, and
    drops the intermediate shape annotations (they were inferred for the old batch)."""
    data = next(i for i in proto.graph.input if i.name == input_name)
    data.type.tensor_type.shape.dim[0].dim_value = size
    for value in proto.graph.output:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].dim_value = size
    del proto.graph.value_info[:]


def batch_first(single, batched, size: int) -> bool:
    """Returns True when every tensor of the batched IR is the batch-1 tensor with its leading 1 made `size`: each
    item's values then sit in their own rows, never mixed with another's."""
    return single.shapes.keys() == batched.shapes.keys() and all(
        len(shape) > 0 and shape[0] == 1 and batched.shapes[name] == (size, *shape[1:])
        for name, shape in single.shapes.items())
