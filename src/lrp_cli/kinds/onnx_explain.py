"""How an ONNX model explains model-input tensors: the rules of the settings, the NumPy engine, the compiled
engine, and several inputs of one shape in one pass (`--batch-size`).

Functions here take the model (kinds.onnx_model.OnnxModel) as an argument and use only its public methods; the
model calls them from its protocol methods.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from lrp_cli.engines import numpy_engine, onnx_engine
from lrp_cli.engines.onnx_builder import CompileError
from lrp_cli.errors import InputError, LrpError, OptionError
from lrp_cli.explanation import (METHOD_NAMES, PRECISIONS, Explanation, Settings, label_of, prediction,
                                 resolve_targets)
from lrp_cli.ir.graph import Graph
from lrp_cli.kinds.image_outputs import overflow_reported_per_node
from lrp_cli.methods import METHODS, MethodInput
from lrp_cli.preprocess import PreprocessConfig, to_nchw
from lrp_cli.propagate import Propagation, first_non_finite, item_of, output_scores
from lrp_cli.rules import RuleError, ZBox, assign_rules, default_composite, parse_rule

#: The methods that run batched; the others explain one input at a time.
BATCHED_METHODS = ("lrp", "gradient", "gradient-x-input")


def ir_difference(ir_out: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Returns (max |IR - onnxruntime|, that divided by the onnxruntime output's largest magnitude)."""
    diff = float(np.abs(ir_out - reference).max())
    return diff, diff / max(float(np.abs(reference).max()), 1e-12)


def rules_for(model, settings: Settings, config: PreprocessConfig) -> dict:
    """Returns node name -> rule object for the settings; z^B rules get the preset's input box by default."""
    nodes = _rule_nodes(model)
    try:
        specs = assign_rules(nodes, settings.composite or model.sidecar.composite, settings.rule,
                             settings.layer_rules)
        rules = {name: parse_rule(spec) for name, spec in specs.items()}
    except RuleError as exc:
        raise OptionError(str(exc)) from None
    unbounded = [name for name, r in rules.items() if isinstance(r, ZBox) and r.low is None]
    if unbounded and len(model.graph.input_shape) != 4:  # a signal or volume: the preset's box is for pixels
        raise OptionError(f"rule zbox on node '{unbounded[0]}' needs input bounds for a non-image input: give "
                          f"--layer-rule '{unbounded[0]}=zbox:LOW,HIGH'")
    if unbounded:  # only z^B reads the preset's box
        low, high = config.input_bounds(to_nchw(model.graph.input_shape, model.layout)[1])
        rules |= {name: rules[name].with_bounds(low, high) for name in unbounded}
    return rules


def composite_name(model, settings: Settings) -> str | None:
    """Returns the composite in force (None when --rule sets one rule for every layer)."""
    if settings.rule or settings.method != "lrp":
        return None
    return settings.composite or model.sidecar.composite or default_composite(_rule_nodes(model))


def _rule_nodes(model) -> list:
    return [(node.name, node.layer) for node in model.graph.rule_nodes()]


def explain_array(model, x: np.ndarray, settings: Settings, input_path: Path = Path("<array>"),
                  picture=None) -> list[Explanation]:
    """Returns the explanations of one model-input-shaped tensor, one per target the --target setting selects."""
    if settings.precision not in PRECISIONS:
        raise OptionError(f"--precision {settings.precision}: choose float32 or float64")
    if settings.method not in METHOD_NAMES:
        raise OptionError(f"--method {settings.method}: choose one of {', '.join(METHOD_NAMES)}")
    config = model.preprocess_config(settings)
    rules = rules_for(model, settings, config) if settings.method == "lrp" else {}
    compiled = compiled_session(model, settings, rules)
    if compiled is not None:
        explanations = compiled_explanations(model, compiled, x, settings, rules, [input_path], [picture])
        if explanations is not None:
            return explanations[0]
    return numpy_explanations(model, x, settings, rules, config, [input_path], [picture])[0]


def numpy_explanations(model, x: np.ndarray, settings: Settings, rules: dict, config: PreprocessConfig,
                       paths: list[Path], pictures: list) -> list[list[Explanation]]:
    """Returns, per item of the batch x, its explanations by the NumPy engine: one forward pass, one backward pass
    per target column (top:K has K), each item its own target."""
    method = METHODS[settings.method]
    start = time.perf_counter()
    model_output, ort_explained = model.run_onnxruntime(x)
    graph = model.graph_for(settings.precision)
    with overflow_reported_per_node():
        values = graph.forward(x.astype(PRECISIONS[settings.precision]))
    forward_seconds = (time.perf_counter() - start) / len(x)
    ir_out = values[graph.output_name]
    check_finite_forward(graph, values, paths[0] if len(paths) == 1 else Path("<batch>"))
    job = MethodInput(graph, values, rules, config, method.resolve(settings.method_options), model.layout,
                      model.score_batch)
    extra = {"engine": "numpy"} | ({"method_options": method.options_for(job)} if method.defaults else {})
    targets = [resolve_targets(settings.target, output_scores(ir_out[k:k + 1]), model.labels)
               for k in range(len(x))]
    per_item = len(x) > 1  # one input keeps a scalar target, which every method takes; batched methods take a column
    explanations = [[] for _ in paths]
    for column in zip(*targets):
        start = time.perf_counter()
        with overflow_reported_per_node():
            propagation = numpy_engine.backward(method, job, np.array(column) if per_item else column[0])
        timing = {"load": model.load_seconds, "forward": forward_seconds,
                  "backward": (time.perf_counter() - start) / len(x)}
        for k, target in enumerate(column):
            explanations[k].append(target_explanation(
                model, settings, rules, paths[k], x[k:k + 1], pictures[k], model_output[k:k + 1], target,
                item_of(propagation, k) if per_item else propagation,
                ir_difference(ir_out[k:k + 1], ort_explained[k:k + 1]), dict(timing), dict(extra)))
    return explanations


def target_explanation(model, settings: Settings, rules: dict, input_path: Path, x, picture, model_output, target: int,
                       propagation: Propagation, ir_diff: tuple, timing: dict, extra: dict) -> Explanation:
    """Returns the Explanation of one input's target from its computed propagation (either engine, any batch)."""
    return Explanation(
        input_path, x, picture, model_output, prediction(model, output_scores(model_output)),
        {"index": target, "label": label_of(model, target)}, propagation,
        {name: rule.spec() for name, rule in rules.items()}, composite_name(model, settings),
        *ir_diff, timing, settings.method, extra | _finiteness_warnings(propagation, settings.precision))


def check_finite_forward(graph: Graph, values: dict[str, np.ndarray], input_path: Path) -> None:
    """Raises InputError naming the first node whose output holds NaN or Inf when the graph output does."""
    if np.isfinite(values[graph.output_name]).all():
        return
    node = next(n for n in graph.nodes if not np.isfinite(values[n.output]).all())
    raise InputError(f"{input_path}: the forward pass is not finite from node '{node.name}' ({node.op}) on")


def _finiteness_warnings(propagation: Propagation, precision: str) -> dict:
    """Returns {"warnings": [...]} naming the first node (from the output down) whose relevance is not finite,
    or {} when all of it is."""
    bad = first_non_finite(propagation.layers)
    if bad is None:
        return {}
    hint = " (try --precision float64)" if precision == "float32" else ""
    return {"warnings": [f"relevance is not finite from node '{bad.name}' ({bad.op}, rule {bad.rule}) down; "
                         f"non-finite numbers are null in the JSON and neutral in the heatmap{hint}"]}


def compiled_session(model, settings: Settings, rules: dict):
    """Returns the compiled onnxruntime session the settings call for, or None to run the NumPy engine
    (`--engine auto` falls back to NumPy when the model does not compile; `onnxruntime` makes that an error)."""
    engine = onnx_engine.choose(settings.engine, settings.precision, model.kind, settings.method)
    if engine == "numpy" or (engine == "auto" and onnx_engine.numpy_preferred(model.graph)):
        return None
    try:
        return onnx_engine.session_for(model, settings.method, rules, settings.providers)
    except CompileError as exc:
        if engine == "auto":
            return None
        raise CompileError(f"{model.path}: {exc} (--engine onnxruntime; auto would run NumPy)") from None


def compiled_explanations(model, compiled, x: np.ndarray, settings: Settings, rules: dict, paths: list[Path],
                          pictures: list) -> list[list[Explanation]] | None:
    """Returns, per item of the batch x, its explanations by the compiled engine (one onnxruntime run per target
    column), or None when a forward pass is not finite (the NumPy pass then names the input and the node)."""
    start = time.perf_counter()
    spec = str(settings.target).strip()
    if spec == "pred" or spec.startswith("top:"):
        first = compiled.run_items(x, [-1] * len(x))  # -1: the graph explains each item's own argmax
    else:
        classes = int(np.prod(model.graph.shapes[model.graph.output_name][1:]))
        first = compiled.run_items(x, resolve_targets(spec, np.zeros(classes), model.labels) * len(x))
    if not all(np.isfinite(run.model_output).all() for run in first):
        return None
    targets = [resolve_targets(spec, run.scores, model.labels) for run in first]
    columns = [first if list(column) == [run.target for run in first] else compiled.run_items(x, column)
               for column in zip(*targets)]
    seconds = (time.perf_counter() - start) / (len(x) * len(columns))
    return [[compiled_explanation(model, compiled, runs[k], settings, rules, paths[k], x[k:k + 1], pictures[k],
                                  seconds) for runs in columns] for k in range(len(x))]


def compiled_explanation(model, compiled, run, settings: Settings, rules: dict, input_path: Path, x, picture,
                         seconds: float) -> Explanation:
    """Returns the Explanation of one compiled run (one input, its explained target)."""
    propagation = Propagation(run.relevance, float(run.scores[run.target]), compiled.records(run))
    timing = {"load": model.load_seconds, "compile": compiled.compile_seconds, "forward_backward": seconds}
    return target_explanation(model, settings, rules, input_path, x, picture, run.model_output, run.target,
                              propagation, (None, None), timing, {"engine": "onnxruntime"})


class NotBatchable(Exception):
    """This batch pass cannot run (the model does not take the batch, or the batched graph does not compile)."""


def batchable(settings: Settings) -> bool:
    """Returns True when the settings can explain several inputs of an ONNX model in one pass."""
    return settings.method in BATCHED_METHODS and settings.precision in PRECISIONS


def explain_arrays(model, xs: list[np.ndarray], settings: Settings, paths: list[Path], pictures: list,
                   size: int | None = None) -> list[list[Explanation] | LrpError]:
    """Returns, per input, its explanations (as explain_array makes them) or its error: in one pass of batch
    `size` (default: as many as the inputs) when the model and settings allow it, else, and when that pass fails,
    one input at a time."""
    size = size or len(xs)
    if size > 1 and batchable(settings):
        batched = model.for_batch(size)
        padding = size - len(xs)  # a short batch repeats its last input: one graph and session per --batch-size
        try:
            if batched is not None:
                return _explain_batch(model, batched, np.concatenate(xs + xs[-1:] * padding), settings,
                                      paths + paths[-1:] * padding, pictures + pictures[-1:] * padding)[:len(xs)]
        except (NotBatchable, LrpError):  # each input alone then reports its own error, if it has one
            pass
    return [_explain_one(model, x, settings, path, picture) for x, path, picture in zip(xs, paths, pictures)]


def _explain_one(model, x, settings, path, picture) -> list[Explanation] | LrpError:
    try:
        return explain_array(model, x, settings, path, picture)
    except LrpError as exc:
        return exc


def _explain_batch(single, model, x: np.ndarray, settings: Settings, paths, pictures) -> list[list[Explanation]]:
    """Returns the explanations of a batch by the engine a batch-1 run of `single` would use."""
    config = model.preprocess_config(settings)
    rules = rules_for(model, settings, config) if settings.method == "lrp" else {}
    engine = onnx_engine.choose(settings.engine, settings.precision, model.kind, settings.method)
    if engine == "numpy":
        return numpy_explanations(model, x, settings, rules, config, paths, pictures)
    try:
        compiled = onnx_engine.session_for(model, settings.method, rules, settings.providers)
    except CompileError:
        if engine == "auto" and compiled_session(single, settings, rules) is None:
            return numpy_explanations(model, x, settings, rules, config, paths, pictures)
        raise NotBatchable() from None  # the batch-1 graph compiles: one at a time on it
    explanations = compiled_explanations(model, compiled, x, settings, rules, paths, pictures)
    if explanations is None:
        raise NotBatchable()  # one at a time, the NumPy pass names the input and node that is not finite
    return explanations
