"""Class scores of many inputs of an ONNX model at once: the tensor the IR explains, by batched onnxruntime runs.

Perturbation methods (occlusion, LIME) and pixel-flipping curves score hundreds of perturbed copies of one input.
Exported models often fix the batch axis to 1 and bake a leading 1 into Reshape targets; on first use a copy of
the graph with a symbolic batch axis (and such Reshape targets set to "copy the batch axis") is built and checked
against the model's own session on two different inputs. When it fails that check or cannot be built, every input
is scored by its own run of the model's session: still correct, just slower.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from lrp_cli.importers.onnx_import import load_onnx
from lrp_cli.kinds import onnx_runtime

#: Inputs per onnxruntime run: bounds the activation memory (a 224x224 ImageNet net needs ~100 MB per 32).
DEFAULT_CHUNK = 32
#: Batched scores must match the per-item session to this relative tolerance (float32 reassociation).
BATCH_CHECK_RTOL = 1e-4


def as_item_batch(xs: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """Returns xs as [N, *input_shape[1:]], float32 unless integer (token ids stay ids; accepts a batch of batch-1
    tensors too)."""
    xs = np.asarray(xs)
    if not np.issubdtype(xs.dtype, np.integer):
        xs = xs.astype(np.float32)
    if xs.shape[1:] == input_shape and input_shape[0] == 1:
        xs = xs[:, 0]
    if xs.shape[1:] != input_shape[1:]:
        raise ValueError(f"score_batch: inputs shaped {xs.shape[1:]}, the model input is {list(input_shape)}")
    return xs


@dataclass
class Scorer:
    """Scores a chunk of inputs: with a batched session when it is verified, else one run per input."""

    model: object
    session: ort.InferenceSession | None
    classes: int

    @property
    def batched(self) -> bool:
        """Returns True when chunks run as one batch (False: per-input fallback)."""
        return self.session is not None

    def run(self, xs: np.ndarray) -> np.ndarray:
        """Returns the [len(xs), K] scores of a chunk."""
        if self.session is None:
            return np.stack([_single_score(self.model, x) for x in xs])
        xs = xs.astype(onnx_runtime.input_dtype(self.session, self.model.graph.input_name), copy=False)
        explained = self.session.run(None, {self.model.graph.input_name: xs})[-1]
        return explained.reshape(len(xs), -1)


def _single_score(model, x: np.ndarray) -> np.ndarray:
    return model.run_onnxruntime(x[None])[1].reshape(-1)


def build_scorer(model) -> Scorer:
    """Returns the batched Scorer when its scores of two probe inputs match the per-input session's, else the
    per-input one."""
    shape = (2,) + tuple(model.graph.input_shape[1:])
    rng = np.random.default_rng(0)
    # token ids: 0 and 1 are rows of any embedding table; other inputs: Gaussian values
    ids = np.issubdtype(onnx_runtime.input_dtype(model.session, model.graph.input_name), np.integer)
    probe = rng.integers(0, 2, shape) if ids else rng.standard_normal(shape).astype(np.float32)
    expected = np.stack([_single_score(model, x) for x in probe])
    scorer = Scorer(model, None, expected.shape[1])
    try:
        candidate = Scorer(model, _batched_session(model), expected.shape[1])
        got = candidate.run(probe)
    except Exception:  # onnxruntime or onnx reject the rewritten graph: the per-input fallback stays
        return scorer
    scale = max(float(np.abs(expected).max()), 1e-12)
    if got.shape == expected.shape and float(np.abs(got - expected).max()) <= BATCH_CHECK_RTOL * scale:
        return candidate
    return scorer


def _batched_session(model) -> ort.InferenceSession:
    """Returns a session like the model's own (`onnx_runtime.onnx_session`) on a copy of the ONNX graph with a
    symbolic batch."""
    proto = load_onnx(model.path)
    _symbolic_batch(proto, model.graph.input_name)
    return onnx_runtime.onnx_session(model.path, proto, model.graph, model.output_name)


def _symbolic_batch(proto: onnx.ModelProto, input_name: str) -> None:
    """Makes the batch axis of the data input and of every graph output symbolic, in place; constant Reshape
    targets with a leading 1 copy the batch axis instead (ONNX Reshape: 0 = keep that input dimension)."""
    graph = proto.graph
    for value in [v for v in graph.input if v.name == input_name] + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = "batch"
    del graph.value_info[:]  # intermediate shapes recorded for batch 1 would contradict a larger batch
    initializers = {init.name: init for init in graph.initializer}
    readers = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, index))
    for name, uses in readers.items():
        if name in initializers and all(n.op_type == "Reshape" and i == 1 and not _allows_zero(n) for n, i in uses):
            target = onnx.numpy_helper.to_array(initializers[name])
            if target.ndim == 1 and len(target) > 1 and target[0] == 1:
                target = target.copy()
                target[0] = 0
                initializers[name].CopyFrom(onnx.numpy_helper.from_array(target, name))


def _allows_zero(node: onnx.NodeProto) -> bool:
    return any(a.name == "allowzero" and a.i for a in node.attribute)
