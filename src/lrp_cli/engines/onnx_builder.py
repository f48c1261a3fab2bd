"""A small ONNX graph builder (opset 13 or later): fresh tensor names, float32 initializers, element-wise helpers."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lrp_cli.errors import ModelLoadError


class CompileError(ModelLoadError):
    """A node (or model) whose relevance pass has no ONNX formulation here (exit code 3: cannot be converted)."""


def registrar(registry: dict, *kinds: type):
    """Returns a decorator that registers a function in registry under each of the given classes."""
    def register(fn):
        for kind in kinds:
            registry[kind] = fn
        return fn
    return register


def _digest(array: np.ndarray) -> bytes:
    """Returns a hash of an array's bytes (with its dtype and shape, the key of identical initializers)."""
    return hashlib.blake2b(np.ascontiguousarray(array).data, digest_size=16).digest()


class GraphBuilder:
    """Collects the nodes and initializers appended to an ONNX graph."""

    def __init__(self, prefix: str = "lrp/"):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._by_content: dict[tuple, str] = {}  # (dtype, shape, digest) -> initializer name
        self._unhashed: dict[tuple, list] = {}  # (dtype, shape) -> the model's own initializers not hashed yet

    def know(self, initializers) -> None:
        """Registers the model's own initializers: a constant equal to one of them is that one, not a copy."""
        for tensor in initializers:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            self._unhashed.setdefault((dtype.str, tuple(tensor.dims)), []).append(tensor)

    def existing(self, array: np.ndarray) -> str | None:
        """Returns the name of an initializer (the model's own or one made here) equal to array, else None."""
        return self._by_content.get(self._content_key(array))

    def _content_key(self, array: np.ndarray) -> tuple:
        shape_key = (array.dtype.str, array.shape)
        for tensor in self._unhashed.pop(shape_key, []):  # hashed only when a constant of their shape comes
            self._by_content.setdefault(shape_key + (_digest(numpy_helper.to_array(tensor)),), tensor.name)
        return shape_key + (_digest(array),)

    def fresh(self, hint: str) -> str:
        """Returns a new tensor name that no other tensor of the builder has."""
        self._count += 1
        return f"{self.prefix}{hint}/{self._count}"

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        """Returns the name of the single output of a new node."""
        out = self.fresh(hint or op_type)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def const(self, value, hint: str = "const", dtype=np.float32) -> str:
        """Returns the name of an initializer holding value (float32 unless dtype says otherwise): a new one, or
        the one (the model's own or made before) that already holds exactly these numbers."""
        array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        key = self._content_key(array)
        if key not in self._by_content:
            self._by_content[key] = self.fresh(hint)
            self.initializers.append(numpy_helper.from_array(array, name=self._by_content[key]))
        return self._by_content[key]

    def take_initializers(self):
        """Returns an iterator over the initializers that drops each from the builder as it hands it out: moved into
        a graph one at a time, the weights are never all held twice."""
        self.initializers.reverse()
        while self.initializers:
            yield self.initializers.pop()

    def scalar(self, value: float, dtype=np.float32) -> str:
        """Returns a shared initializer for a scalar constant."""
        return self.const(np.asarray(value, dtype=dtype), "scalar", dtype)

    def ints(self, values) -> str:
        """Returns an int64 1-D initializer (shapes, axes, slice bounds)."""
        return self.const(np.asarray(list(values), dtype=np.int64), "ints", np.int64)

    # -- element-wise helpers ------------------------------------------------------------------------------

    def mul(self, a: str, b: str) -> str:
        """Returns a * b."""
        return self.op("Mul", [a, b])

    def add(self, a: str, b: str) -> str:
        """Returns a + b."""
        return self.op("Add", [a, b])

    def sub(self, a: str, b: str) -> str:
        """Returns a - b."""
        return self.op("Sub", [a, b])

    def div(self, a: str, b: str) -> str:
        """Returns a / b."""
        return self.op("Div", [a, b])

    def positive(self, x: str) -> str:
        """Returns max(x, 0)."""
        return self.op("Relu", [x])

    def negative(self, x: str) -> str:
        """Returns min(x, 0)."""
        return self.op("Min", [x, self.scalar(0.0)])

    def stabilize(self, z: str, epsilon: float) -> str:
        """Returns z + eps * sign(z) with sign(0) = +1, as `layers.stabilize`."""
        shift = self.op("Where", [self.op("Less", [z, self.scalar(0.0)]), self.scalar(-epsilon),
                                  self.scalar(epsilon)])
        return self.add(z, shift)

    def indicator(self, condition: str) -> str:
        """Returns a boolean tensor cast to float32 (1 where true)."""
        return self.op("Cast", [condition], to=onnx.TensorProto.FLOAT)

    def reshape(self, x: str, shape) -> str:
        """Returns x reshaped to a static shape."""
        return self.op("Reshape", [x, self.ints(shape)])

    def reduce_sum(self, x: str, axes, keepdims: bool = True) -> str:
        """Returns the sum of x over axes."""
        return self.op("ReduceSum", [x, self.ints(axes)], keepdims=int(keepdims))

    def pad(self, x: str, pads, value: float = 0.0) -> str:
        """Returns x padded by ONNX-order pads (all begins, then all ends) with a constant."""
        return self.op("Pad", [x, self.ints(pads), self.scalar(value)], mode="constant")

    def slice(self, x: str, starts, ends, axes, steps=None) -> str:
        """Returns a strided slice of x."""
        inputs = [x, self.ints(starts), self.ints(ends), self.ints(axes)]
        if steps is not None:
            inputs.append(self.ints(steps))
        return self.op("Slice", inputs)
