"""`--batch-size N`: inputs of one model-input shape explained in one pass on either engine, one target per item.

The model is re-bound to batch N (its ONNX input set to N, the IR imported at that shape, the compiled graph built
on it); each item's explanations are then cut out of the batched pass exactly as a batch-1 run makes them. What
cannot run batched (BoW pipelines, perturbation and CAM methods, a graph with a literal batch of 1 in a Reshape)
and a batch whose pass fails (one input's non-finite forward, say) are explained one input at a time.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from lrp_cli import api
from lrp_cli.engines import onnx_engine
from lrp_cli.engines.onnx_builder import CompileError
from lrp_cli.errors import LrpError
from lrp_cli.importers.onnx_import import import_onnx, load_onnx

#: The methods that run batched; the others explain one input at a time.
BATCHED_METHODS = ("lrp", "gradient", "gradient-x-input")


class NotBatchable(Exception):
    """This batch pass cannot run (the model does not take the batch, or the batched graph does not compile)."""


def batchable(model, settings: api.Settings) -> bool:
    """Returns True when the settings can explain several inputs of this model in one pass."""
    return (model.kind == "onnx" and settings.method in BATCHED_METHODS and settings.precision in api.PRECISIONS)


def batch_model(model: api.LoadedModel, size: int) -> api.LoadedModel | None:
    """Returns the model re-bound to batches of `size` (cached per size and input shape), or None when its graph
    does not take that batch."""
    key = ("batch", size, tuple(model.graph.input_shape))
    if key not in model._bound:
        model._bound[key] = _rebind(model, size)
    return model._bound[key]


def _rebind(model: api.LoadedModel, size: int) -> api.LoadedModel | None:
    proto = onnx.load_from_string(model._proto) if model._proto else load_onnx(model.path)
    set_batch(proto, model.graph.input_name, size)
    data = proto.SerializeToString()
    shape = (size, *model.graph.input_shape[1:])
    try:
        graph = import_onnx(model.path, model.sidecar.output, onnx.load_from_string(data), shape)
        session = api.onnx_session(model.path, onnx.load_from_string(data), graph, model.sidecar.output)
    except Exception:  # a graph that fixes batch 1 fails in any of the importer's or onnxruntime's ways
        return None
    if not batch_first(model.graph, graph, size):
        return None
    return replace(model, graph=graph, plain_session=session, _cast={}, unbound=None, _batch_scorer=None,
                   batch_proto=data)


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


def explain_arrays(model, xs: list[np.ndarray], settings: api.Settings, paths: list[Path], pictures: list,
                   size: int | None = None) -> list[list[api.Explanation] | LrpError]:
    """Returns, per input, its explanations (as api.explain_array makes them) or its error: in one pass of batch
    `size` (default: as many as the inputs) when the model and settings allow it, else, and when that pass fails,
    one input at a time."""
    size = size or len(xs)
    if size > 1 and batchable(model, settings):
        batched = batch_model(model, size)
        padding = size - len(xs)  # a short batch repeats its last input: one graph and session per --batch-size
        try:
            if batched is not None:
                return _explain_batch(model, batched, np.concatenate(xs + xs[-1:] * padding), settings,
                                      paths + paths[-1:] * padding, pictures + pictures[-1:] * padding)[:len(xs)]
        except (NotBatchable, LrpError):  # each input alone then reports its own error, if it has one
            pass
    return [_explain_one(model, x, settings, path, picture) for x, path, picture in zip(xs, paths, pictures)]


def _explain_one(model, x, settings, path, picture) -> list[api.Explanation] | LrpError:
    try:
        return api.explain_array(model, x, settings, path, picture)
    except LrpError as exc:
        return exc


def _explain_batch(single, model, x: np.ndarray, settings: api.Settings, paths, pictures
                   ) -> list[list[api.Explanation]]:
    """Returns the explanations of a batch by the engine a batch-1 run of `single` would use."""
    config = api.preprocess_config(model, settings)
    rules = api.rules_for(model, settings, config) if settings.method == "lrp" else {}
    engine = onnx_engine.choose(settings.engine, settings.precision, model.kind, settings.method)
    if engine == "numpy":
        return api.numpy_explanations(model, x, settings, rules, config, paths, pictures)
    try:
        compiled = onnx_engine.session_for(model, settings.method, rules, settings.providers)
    except CompileError:
        if engine == "auto" and api.compiled_session(single, settings, rules) is None:
            return api.numpy_explanations(model, x, settings, rules, config, paths, pictures)
        raise NotBatchable() from None  # the batch-1 graph compiles: one at a time on it
    explanations = api.compiled_explanations(model, compiled, x, settings, rules, paths, pictures)
    if explanations is None:
        raise NotBatchable()  # one at a time, the NumPy pass names the input and node that is not finite
    return explanations
