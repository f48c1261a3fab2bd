"""The compiled engine against the NumPy engine on the same forward pass: what a float32 onnxruntime result can be
compared with on any CPU.

onnxruntime picks its kernels, and so its summation orders, by CPU features, thread count and graph optimization
level. Its float32 forward then differs from a float64 one by round-off (relative 1e-7 to 1e-6 of each tensor's
scale), and that round-off is harmless except where the backward pass is discontinuous or ill-conditioned in the
forward values: a MaxPool window whose two largest inputs are closer than the round-off sends its relevance to the
other pixel, a ReLU pre-activation as close to 0 switches its gradient, an epsilon-rule denominator z + eps sign(z)
with eps well below the layer's scale turns a 1e-7 error of z into a 1e-3 error of z's share. Which side such a
near-tie falls on is the CPU's choice, so no bound against the NumPy engine's own float64 forward holds everywhere
(docs/testing.md has the measured cases).

What does hold everywhere: run the compiled graph with every IR tensor as an extra output, then run the NumPy
engine's float64 backward on exactly those forward values. Both take the same decisions from the same numbers, and
what is left is the float32 round-off of the compiled backward alone. The forward values themselves are checked
against the NumPy engine's float64 forward, tensor by tensor, with a bound relative to each tensor's scale (no
near-tie can hide there: a forward value is continuous in the input).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from lrp_cli import api
from lrp_cli.engines import numpy_engine, onnx_engine
from lrp_cli.engines import onnx_compiler as C
from lrp_cli.ir import layers as L
from lrp_cli.ir import windows
from lrp_cli.methods import METHODS, MethodInput
from lrp_cli.propagate import Propagation

#: The compiled backward's float32 round-off given the same forward values, relative L2: measured 8e-8 to 1.2e-6
#: on the numeric tests' cases under 1 and 2 threads, graph optimization off, basic and all, and on emulated CPUs
#: without AVX-512 and without AVX (docs/testing.md); 1e-5 leaves room for other summation orders, and an epsilon
#: rule whose epsilon is off by 0.1 % already exceeds it (4.5e-5 on shapes-cnn, test_compiled_engine.py).
BACKWARD_BOUND = 1e-5
#: The onnxruntime float32 forward against the NumPy float64 one, per IR tensor, max |difference| / max |value|:
#: its round-off grows with depth, measured 7e-7 on shapes-cnn, 2.6e-6 on ResNet-18, 1.3e-5 on MobileNetV2; a
#: compiled graph whose forward were not the model's would be off by far more.
FORWARD_BOUND = 1e-4
#: The distance from every ReLU/MaxPool decision (decision_margin) that lets a test of a one-convolution model compare
#: onnxruntime with another engine's own forward: its 27-term convolutions round within 27 u sum|w x|, below 1e-5 of
#: the tensor's scale in any summation order, so every CPU takes such decisions alike.
DECISION_MARGIN = 1e-4


@dataclass
class Agreement:
    """One compiled run and its same-forward float64 reference."""

    relevance: np.ndarray  # the compiled engine's float32 input relevance
    sums: np.ndarray  # its per-node relevance sums
    target: int  # the class it explained (onnxruntime's argmax for -1)
    reference: Propagation  # the NumPy engine's float64 backward on onnxruntime's forward values
    forward_error: float  # max over IR tensors of max|onnxruntime - NumPy float64| / max|NumPy float64|
    values: dict  # onnxruntime's forward, tensor name -> float64 array

    @property
    def backward_error(self) -> float:
        """Returns the relative L2 difference of the compiled relevance from the same-forward reference."""
        return relative_l2(self.relevance, self.reference.relevance)

    @property
    def sums_error(self) -> float:
        """Returns the largest difference of a per-node relevance sum from the reference's, relative to the largest
        reference sum."""
        want = np.array([record.relevance_sum for record in self.reference.layers])
        return float(np.abs(self.sums - want).max() / max(np.abs(want).max(), 1e-30))


def relative_l2(got, want) -> float:
    """Returns ||got - want|| / ||want|| in float64."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm((got - want).ravel()) / np.linalg.norm(want.ravel()))


def ir_tensors(graph) -> list[str]:
    """Returns the names of every tensor the IR reads or writes, except its input."""
    names = dict.fromkeys(name for node in graph.nodes for name in node.inputs + [node.output])
    return [name for name in names if name != graph.input_name]


def compiled_with_forward(model, settings: api.Settings, rules: dict, folder: Path):
    """Returns the session of the model's compiled relevance pass with every IR tensor as an extra output, saved and
    opened the way the engine opens its cache entries (same session options, same optimized form)."""
    compiled = onnx_engine.compile_model(model.path, model.graph, settings.method, rules, model.output_name,
                                         model.rebound_onnx)
    present = {output.name for output in compiled.model.graph.output}
    compiled.model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name)
                                       for name in ir_tensors(model.graph) if name not in present)
    path = folder / f"{uuid.uuid4().hex}.lrp.onnx"  # a fresh name: no optimized form of another graph is reused
    onnx_engine.save_model(compiled, path, external_data=True)
    return onnx_engine._open_cached(path, onnx_engine.DEFAULT_PROVIDERS, 0)


def probe(model, x: np.ndarray, settings: api.Settings, folder: Path, target: int = -1) -> Agreement:
    """Returns the compiled run of (model, x, settings) for target (-1: the predicted class) beside the NumPy
    engine's float64 backward on the forward values onnxruntime computed in that very run."""
    config = api.preprocess_config(model, settings)
    rules = api.rules_for(model, settings, config) if settings.method == "lrp" else {}
    session = compiled_with_forward(model, settings, rules, folder)
    names = ir_tensors(model.graph)
    relevance, index, sums, *forward = session.run(
        [C.RELEVANCE_OUT, C.TARGET_INDEX, C.LAYER_SUMS] + names,
        {model.graph.input_name: x.astype(np.float32), C.TARGET: np.array([target], dtype=np.int64)})
    values = {model.graph.input_name: x.astype(np.float64)} | {
        name: value.astype(np.float64) for name, value in zip(names, forward)}
    method = METHODS[settings.method]
    graph = model.graph_for("float64")
    job = MethodInput(graph, values, rules, config, method.resolve(settings.method_options), model.layout,
                      model.score_batch)
    reference = numpy_engine.backward(method, job, int(index[0]))
    own = graph.forward(x.astype(np.float64))
    forward_error = max(float(np.abs(values[name] - own[name]).max() / max(np.abs(own[name]).max(), 1e-30))
                        for name in names)
    return Agreement(relevance, sums, int(index[0]), reference, forward_error, values)


def assert_agrees(agreement: Agreement, production=None) -> None:
    """Asserts the compiled run's forward, relevance and per-node sums against the bounds of this module, and that
    the engine's own session (an Explanation of `api.explain_array`, if given) explains the same class with the same
    relevance: bit for bit where the extra outputs change no fusion (shapes-cnn, vit_legacy17), else within
    BACKWARD_BOUND (measured up to 3.6e-7: vit_legacy14's decomposed LayerNorm stays unfused when its parts are
    outputs)."""
    assert agreement.forward_error <= FORWARD_BOUND
    assert agreement.backward_error <= BACKWARD_BOUND
    assert agreement.sums_error <= BACKWARD_BOUND
    if production is not None:
        assert production.extra["engine"] == "onnxruntime" and production.target["index"] == agreement.target
        assert relative_l2(production.relevance, agreement.relevance.reshape(production.relevance.shape)) <= (
            BACKWARD_BOUND)


def window_gaps(values: np.ndarray, node) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns, per window of a MaxPool node's input values, (its first maximum's index, the gap between its two
    largest elements, its maximum)."""
    y_shape = node.layer.forward(values).shape
    cols = windows.gather(windows.pad(values, node.layer.window, -np.inf), node.layer.window, y_shape[2:])
    cols = np.moveaxis(cols.reshape(cols.shape[:2] + (-1,) + cols.shape[4:]), 2, -1)
    top2 = np.sort(cols, axis=-1)[..., -2:]
    return cols.argmax(-1), top2[..., 1] - top2[..., 0], top2[..., 1]


def decision_margin(model, x: np.ndarray) -> float:
    """Returns how far the float64 forward of x stays from every ReLU and MaxPool decision, relative to the scale
    of the tensor decided on: the smallest |pre-activation| and the smallest gap between a window's two largest
    inputs (windows whose maximum is an exact 0 of a ReLU are decided by that ReLU)."""
    graph = model.graph_for("float64")
    values = graph.forward(x.astype(np.float64))
    margins = [np.inf]
    for node in graph.nodes:
        source = values[node.inputs[0]]
        scale = max(float(np.abs(source).max()), 1e-30)
        if isinstance(node.layer, L.MaxPool):
            _, gaps, tops = window_gaps(source, node)
            margins.append(float(gaps[tops != 0].min(initial=np.inf)) / scale)
        elif isinstance(node.layer, L.Activation) and node.op == "Relu":
            margins.append(float(np.abs(source).min()) / scale)
    return min(margins)
