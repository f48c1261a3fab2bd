"""Reading an ONNX file's stored tensors safely: every initializer and Constant value must hold exactly the data its
shape needs (a truncated raw_data, a short float_data, an external data file that is missing or too short), else a
one-line load error naming the file and the tensor, before any converter or engine reshapes it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper

from lrp_cli.errors import ModelLoadError

#: The repeated field each element type stores its values in when it has no raw_data (onnx.proto's TensorProto).
_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def load_tensors(model: onnx.ModelProto, path: Path) -> None:
    """Loads the external data of a model read from `path` without it, then checks every stored tensor; raises
    the one-line ModelLoadError naming the first tensor that is missing, truncated or ill-sized."""
    for tensor in model.graph.initializer:
        if external_data_helper.uses_external_data(tensor):
            _check_external(path, tensor)
    try:
        external_data_helper.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # a subgraph's tensor, or a location onnx refuses (outside the model's folder)
        raise ModelLoadError(f"{path}: cannot read its external data ({type(exc).__name__}: {exc})".splitlines()[0])
    for kind, tensor in stored_tensors(model):
        problem = tensor_problem(tensor)
        if problem:
            raise ModelLoadError(f"{path}: {kind} '{tensor.name}': {problem}")


def stored_tensors(model: onnx.ModelProto):
    """Yields ("initializer", tensor) for every initializer and ("Constant", tensor) for every Constant node value
    of the main graph."""
    for tensor in model.graph.initializer:
        yield "initializer", tensor
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    yield "Constant", _named(attr.t, node.output[0])


def _named(tensor: onnx.TensorProto, name: str) -> onnx.TensorProto:
    if tensor.name:
        return tensor
    named = onnx.TensorProto()
    named.CopyFrom(tensor)
    named.name = name
    return named


#: Element types packed below a byte, whose raw length is not elements x itemsize.
PACKED_TYPES = {getattr(onnx.TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
                if hasattr(onnx.TensorProto, name)}


def _raw_data_fits(tensor: onnx.TensorProto) -> bool:
    """Returns True when the tensor's raw data holds exactly its declared elements of a byte-sized type (packed
    types such as int4 always take the full check)."""
    if not tensor.HasField("raw_data") or tensor.data_type in PACKED_TYPES:
        return False
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:  # an element type number onnx does not know: the full check names it
        return False
    return len(tensor.raw_data) == math.prod(tensor.dims) * itemsize


def tensor_problem(tensor: onnx.TensorProto) -> str | None:
    """Returns why a stored tensor cannot be read as an array of its declared shape, or None when it can."""
    if _raw_data_fits(tensor):  # the common case, decided without copying the weights into an array
        return None
    try:
        numpy_helper.to_array(tensor)
        return None
    except Exception as exc:  # numpy_helper raises ValueError, TypeError or onnx's own kinds for bad data
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    shape, needed = "x".join(map(str, tensor.dims)) or "scalar", math.prod(tensor.dims)
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except Exception:  # an element type number onnx does not know
        return f"element type {tensor.data_type} is not an ONNX tensor type"
    if tensor.HasField("raw_data"):
        return (f"{len(tensor.raw_data)} bytes of raw data for a {shape} {dtype} tensor, which needs "
                f"{needed * dtype.itemsize} (truncated or ill-sized)")
    stored = max((len(getattr(tensor, f)) for f in _FIELDS), default=0)
    if stored != needed:
        return f"{stored} stored values for a {shape} tensor, which needs {needed}"
    return f"cannot be read ({reason})"


def _check_external(path: Path, tensor: onnx.TensorProto) -> None:
    """Raises the load error of an external-data tensor whose file is missing or shorter than its data."""
    info = external_data_helper.ExternalDataInfo(tensor)
    where = path.parent / info.location
    label = f"{path}: initializer '{tensor.name}'"
    if not where.is_file():
        raise ModelLoadError(f"{label}: its external data file {where} is missing")
    end = (info.offset or 0) + (info.length or 0)
    size = where.stat().st_size
    if end > size or (info.offset or 0) > size:
        raise ModelLoadError(f"{label}: its external data file {where} has {size} bytes, the tensor's data ends at "
                             f"byte {end}")
