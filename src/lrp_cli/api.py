"""The public Python API the command line is built on: load a model, explain an input, save the outputs."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from lrp_cli import __version__, outputs, render
from lrp_cli.engines import numpy_engine, onnx_engine
from lrp_cli.engines.onnx_builder import CompileError
from lrp_cli.errors import InputError, ModelLoadError, OptionError
from lrp_cli.importers.onnx_import import SymbolicInputError, import_onnx, load_onnx
from lrp_cli.ir.graph import Graph
from lrp_cli.memory import release_freed_memory
from lrp_cli.methods import METHODS, MethodInput
from lrp_cli.preprocess import (PreprocessConfig, Sidecar, load_input, load_sidecar, open_image,
                                read_labels, shape_text, tensor_shape, to_nchw)
from lrp_cli.propagate import (LayerRecord, Propagation, conservation_error, first_non_finite, item_of,
                               output_scores)
from lrp_cli.rules import RuleError, ZBox, assign_rules, default_composite, parse_rule

PRECISIONS = {"float32": np.float32, "float64": np.float64}
METHOD_NAMES = tuple(METHODS)
#: A relative IR-vs-onnxruntime difference above this triggers a warning.
IR_DIFF_WARNING = 1e-4


@dataclass
class LoadedModel:
    """An ONNX classifier: its IR graph, its onnxruntime session (built on first use) and its sidecar settings."""

    path: Path
    graph: Graph
    sidecar: Sidecar
    sha256: str
    #: The plain session, None until `session` builds it: the compiled engine runs without it.
    plain_session: ort.InferenceSession | None
    load_seconds: float
    layout: str = "nchw"
    kind: str = "onnx"
    _cast: dict = field(default_factory=dict)
    #: Set when the input has symbolic dimensions: graph and session are None until bind_input gives a shape.
    unbound: SymbolicInputError | None = None
    _proto: bytes | None = None
    _bound: dict = field(default_factory=dict)
    _batch_scorer: object = field(default=None, repr=False)  # scoring.score_batch builds it on first use
    #: The ONNX bytes re-bound to a batch size other than 1 (batched.batch_model); the compiled engine builds on it.
    batch_proto: bytes | None = field(default=None, repr=False)
    #: The model output reported as model_output: the session's first output (`reported_output`).
    output_name: str | None = None

    @property
    def labels(self) -> list[str] | None:
        """Returns the class labels from the sidecar (or --labels), if any."""
        return self.sidecar.labels

    @property
    def session(self) -> ort.InferenceSession:
        """Returns the onnxruntime session of the model (its output, then the IR's explained tensor), built on
        first use from the file (or the bytes it was re-bound from): it holds a copy of the weights."""
        with _SESSION_LOCK:
            if self.plain_session is None:
                source = self.batch_proto or self._proto
                proto = onnx.load_from_string(source) if source else load_onnx(self.path)
                self.plain_session = onnx_session(self.path, proto, self.graph, self.sidecar.output)
        return self.plain_session

    def graph_for(self, precision: str) -> Graph:
        """Returns the IR graph with parameters in the given precision (cached)."""
        if precision not in self._cast:
            self._cast[precision] = self.graph.astype(PRECISIONS[precision])
        return self._cast[precision]

    def run_onnxruntime(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns (the model's own output, the tensor the IR explains) computed by onnxruntime on x cast to the
        model's input type (float16 models take float16)."""
        kind = next(i.type for i in self.session.get_inputs() if i.name == self.graph.input_name)
        results = self.session.run(None, {self.graph.input_name: x.astype(ORT_INPUT_TYPES.get(kind, np.float32))})
        return results[0], results[-1]


_SESSION_LOCK = threading.Lock()  # threads of one batch share a model: its session is built once
#: onnxruntime input types other than float32 that lrp-cli feeds (its own computation stays float32/float64).
ORT_INPUT_TYPES = {"tensor(float16)": np.float16, "tensor(double)": np.float64}


def ir_difference(ir_out: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Returns (max |IR - onnxruntime|, that divided by the onnxruntime output's largest magnitude)."""
    diff = float(np.abs(ir_out - reference).max())
    return diff, diff / max(float(np.abs(reference).max()), 1e-12)


def detect_layout(graph: Graph) -> str:
    """Returns "nhwc" when the image input is channels-last (read by a Transpose to NCHW, as tf2onnx emits, or
    shaped [N, H, W, 1|3]), else "nchw"."""
    shape = graph.input_shape
    if len(shape) != 4:
        return "nchw"
    readers = [node for node in graph.nodes if graph.input_name in node.inputs]
    if any(getattr(node.layer, "perm", None) == (0, 3, 1, 2) for node in readers):
        return "nhwc"
    return shape_layout(shape)


def shape_layout(shape: tuple) -> str:
    """Returns "nhwc" for a 4-d input shape that ends in 1 or 3 channels and does not start with them, else
    "nchw" (the shape may hold None for symbolic dimensions)."""
    return "nhwc" if len(shape) == 4 and shape[3] in (1, 3) and shape[1] not in (1, 3) else "nchw"


def bind_input(model: LoadedModel, shape: tuple[int, ...]) -> LoadedModel:
    """Returns the model with graph and session bound to a concrete input shape (the model itself when its
    input shape is not symbolic); bindings are cached per shape."""
    if model.unbound is None:
        return model
    shape = tuple(int(d) for d in shape)
    if shape not in model._bound:
        proto = onnx.load_from_string(model._proto)
        graph = import_onnx(model.path, model.sidecar.output, proto, shape)
        model._bound[shape] = replace(model, graph=graph, plain_session=None, _cast={}, unbound=None,
                                      output_name=reported_output(proto, graph, model.sidecar.output))
    return model._bound[shape]


def _open_input_shape(model: LoadedModel, input_path: Path, config: PreprocessConfig) -> tuple[int, ...]:
    """Returns the input shape an input fixes for a model with symbolic input dimensions: a tensor's own shape,
    or for an image the --size (or sidecar size) height and width."""
    shape = model.unbound.shape
    if input_path.suffix.lower() == ".npy":
        return tensor_shape(input_path, shape)
    if len(shape) != 4 or not config.size:
        raise InputError(f"{input_path}: the model input {shape_text(shape)} has symbolic dimensions; an image "
                         "needs --size H,W (or size in the model's sidecar), a .npy tensor fixes the shape itself")
    n, c, _, _ = to_nchw(shape, model.layout)
    nchw = (n, c or 3, *config.size)
    return (nchw[0], nchw[2], nchw[3], nchw[1]) if model.layout == "nhwc" else nchw


BOW_SUFFIXES = (".joblib", ".pkl", ".skops")


@dataclass
class LoadedBowModel:
    """A scikit-learn bag-of-visual-words + kernel SVM pipeline (paper Section "Pixel-wise Decomposition for
    Classifiers over Bag of Words Features")."""

    path: Path
    bow: object
    sha256: str
    load_seconds: float
    labels: list[str] | None
    kind: str = "sklearn-bow"
    layout: str = "nchw"


def load_model(path: str | Path, output: str | None = None, labels: str | Path | None = None,
               layout: str | None = None):
    """Returns the loaded model: an ONNX classifier (IR + onnxruntime session + sidecar) or a BoW pipeline."""
    start = time.perf_counter()
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file")
    if path.suffix.lower() in BOW_SUFFIXES:
        return _load_bow(path, labels, start)
    sidecar = load_sidecar(path)
    proto = load_onnx(path)
    if labels is not None:
        sidecar.labels = read_labels(Path(labels))
    sidecar.output = output or sidecar.output
    try:
        graph = import_onnx(path, sidecar.output, proto)
    except SymbolicInputError as exc:
        return LoadedModel(path, None, sidecar, outputs.sha256_file(path), None, time.perf_counter() - start,
                           layout or sidecar.layout or shape_layout(exc.shape), unbound=exc,
                           _proto=proto.SerializeToString(), output_name=reported_output(proto, None, sidecar.output))
    layout = layout or sidecar.layout or detect_layout(graph)
    output_name = reported_output(proto, graph, sidecar.output)
    del proto
    release_freed_memory()
    return LoadedModel(path, graph, sidecar, outputs.sha256_file(path), None, time.perf_counter() - start, layout,
                       output_name=output_name)


def _load_bow(path: Path, labels, start: float) -> LoadedBowModel:
    from lrp_cli.importers.sklearn_bow import BowModelError, load_bow_model
    try:
        bow = load_bow_model(path)
    except BowModelError as exc:
        raise ModelLoadError(str(exc)) from None
    names = read_labels(Path(labels)) if labels is not None else [str(c) for c in bow.classes]
    return LoadedBowModel(path, bow, outputs.sha256_file(path), time.perf_counter() - start, names)


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


@dataclass
class Settings:
    """What to explain and how: method, rules, target, precision, preprocessing overrides."""

    method: str = "lrp"
    composite: str | None = None
    rule: str | None = None
    layer_rules: tuple[str, ...] = ()
    target: str = "pred"
    precision: str = "float32"
    preprocess: dict = field(default_factory=dict)
    tiling: dict = field(default_factory=dict)  # BoW models: tile, tile_stride, pair
    engine: str = "auto"  # auto | onnxruntime | numpy (engines/)
    providers: tuple[str, ...] = ()  # onnxruntime execution providers of the compiled engine
    method_options: dict = field(default_factory=dict)  # given options of the method: layer, patch, seed, ...


@dataclass
class Explanation:
    """One explained decision: the input, prediction, target, relevance and bookkeeping for the JSON."""

    input_path: Path
    x: np.ndarray
    picture: object
    model_output: np.ndarray
    prediction: dict
    target: dict
    propagation: Propagation
    rules: dict[str, str]
    composite: str | None
    ir_max_abs_diff: float
    ir_diff_relative: float
    timing: dict[str, float]
    method: str = "lrp"
    extra: dict = field(default_factory=dict)

    @property
    def relevance(self) -> np.ndarray:
        """Returns the input relevance tensor, shaped like the model input."""
        return self.propagation.relevance


def check_settings(model, settings: Settings) -> None:
    """Raises OptionError when the settings do not fit the model (bad rule, options of the other model kind)."""
    onnx_engine.choose(settings.engine, settings.precision, model.kind, settings.method)
    method = METHODS.get(settings.method)
    options = method.resolve(settings.method_options) if method else {}
    if model.kind == "sklearn-bow":
        if settings.method != "lrp" or settings.rule or settings.composite or settings.layer_rules:
            raise OptionError("--method/--rule/--composite/--layer-rule apply to ONNX models, not BoW pipelines")
        return
    if settings.tiling:
        raise OptionError("--tile/--tile-stride/--pair apply to BoW pipelines, not ONNX models")
    if settings.method == "lrp" and model.unbound is None:  # else checked when the first input binds it
        rules_for(model, settings, preprocess_config(model, settings))
    if method:
        method.check(model, options)


def preprocess_config(model: LoadedModel, settings: Settings) -> PreprocessConfig:
    """Returns the sidecar's preprocessing with the command-line overrides applied."""
    return model.sidecar.preprocess.merged(**settings.preprocess)


def resolve_targets(spec: str, scores: np.ndarray, labels: list[str] | None) -> list[int]:
    """Returns the class indices a --target spec (pred, INDEX, LABEL, top:K) selects for these scores."""
    spec = str(spec).strip()
    count = scores.size
    if spec == "pred":
        return [int(np.argmax(scores))]
    if spec.startswith("top:"):
        k = spec[4:]
        if not k.isdigit() or not 1 <= int(k) <= count:
            raise OptionError(f"--target {spec}: K must be an integer from 1 to {count}")
        return [int(i) for i in np.argsort(-scores, kind="stable")[:int(k)]]
    return [class_index(spec, count, labels)]


def class_index(spec: str, count: int | None, labels: list[str] | None) -> int:
    """Returns the class a --target INDEX or LABEL names, among `count` classes (None: any index >= 0)."""
    if spec.lstrip("-").isdigit():
        index = int(spec)
        if index < 0 or count is not None and index >= count:
            raise OptionError(f"--target {spec}: class index out of range (the model has {count} classes)")
        return index
    lowered = [label.lower() for label in labels or []]
    if spec.lower() in lowered:
        return lowered.index(spec.lower())
    raise OptionError(f"--target {spec}: not 'pred', 'top:K', a class index or a known label")


def rules_for(model: LoadedModel, settings: Settings, config: PreprocessConfig) -> dict:
    """Returns node name -> rule object for the settings; z^B rules get the preset's input box by default."""
    nodes = _rule_nodes(model)
    try:
        specs = assign_rules(nodes, settings.composite or model.sidecar.composite, settings.rule,
                             settings.layer_rules)
        rules = {name: parse_rule(spec) for name, spec in specs.items()}
    except RuleError as exc:
        raise OptionError(str(exc)) from None
    unbounded = [name for name, r in rules.items() if isinstance(r, ZBox) and r.low is None]
    if unbounded and len(model.graph.input_shape) == 4:  # only z^B reads the preset's box
        low, high = config.input_bounds(to_nchw(model.graph.input_shape, model.layout)[1])
        rules |= {name: rules[name].with_bounds(low, high) for name in unbounded}
    return rules


def composite_name(model: LoadedModel, settings: Settings) -> str | None:
    """Returns the composite in force (None when --rule sets one rule for every layer)."""
    if settings.rule or settings.method != "lrp":
        return None
    return settings.composite or model.sidecar.composite or default_composite(_rule_nodes(model))


def _rule_nodes(model: LoadedModel) -> list:
    return [(node.name, node.layer) for node in model.graph.rule_nodes()]


def label_of(model, index: int) -> str | None:
    """Returns the label of a class index, if the model has labels for it."""
    labels = model.labels
    return labels[index] if labels and index < len(labels) else None


def _prediction(model, scores: np.ndarray) -> dict:
    top = np.argsort(-scores, kind="stable")[:5]
    best = int(top[0])
    return {
        "index": best, "label": label_of(model, best), "score": float(scores[best]),
        "top5": [{"index": int(i), "label": label_of(model, int(i)), "score": float(scores[i])} for i in top],
    }


def explain_array(model: LoadedModel, x: np.ndarray, settings: Settings, input_path: Path = Path("<array>"),
                  picture=None) -> list[Explanation]:
    """Returns the explanations of one model-input-shaped tensor, one per target the --target setting selects."""
    if settings.precision not in PRECISIONS:
        raise OptionError(f"--precision {settings.precision}: choose float32 or float64")
    if settings.method not in METHOD_NAMES:
        raise OptionError(f"--method {settings.method}: choose one of {', '.join(METHOD_NAMES)}")
    config = preprocess_config(model, settings)
    rules = rules_for(model, settings, config) if settings.method == "lrp" else {}
    compiled = compiled_session(model, settings, rules)
    if compiled is not None:
        explanations = compiled_explanations(model, compiled, x, settings, rules, [input_path], [picture])
        if explanations is not None:
            return explanations[0]
    return numpy_explanations(model, x, settings, rules, config, [input_path], [picture])[0]


def numpy_explanations(model: LoadedModel, x: np.ndarray, settings: Settings, rules: dict, config: PreprocessConfig,
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
    job = MethodInput(model, graph, values, rules, config, method.resolve(settings.method_options))
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
        input_path, x, picture, model_output, _prediction(model, output_scores(model_output)),
        {"index": target, "label": label_of(model, target)}, propagation,
        {name: rule.spec() for name, rule in rules.items()}, composite_name(model, settings),
        *ir_diff, timing, settings.method, extra | _finiteness_warnings(propagation, settings.precision))


def overflow_reported_per_node():
    """Returns a context silencing NumPy's overflow warnings: non-finite values are reported per node instead."""
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


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
    if engine == "numpy":
        return None
    try:
        return onnx_engine.session_for(model, settings.method, rules, settings.providers)
    except CompileError as exc:
        if engine == "auto":
            return None
        raise CompileError(f"{model.path}: {exc} (--engine onnxruntime; auto would run NumPy)") from None


def compile_explainer(model: LoadedModel, settings: Settings, out_path: Path, batch_size: int = 1) -> dict:
    """Writes the relevance pass of the settings (for batches of `batch_size` inputs) as a standalone ONNX file;
    returns its input/output summary."""
    if model.kind != "onnx":
        raise OptionError("lrp compile takes an ONNX model")
    if batch_size > 1:
        from lrp_cli.batched import batch_model
        model = batch_model(model, batch_size)
        if model is None:
            raise OptionError(f"--batch-size {batch_size}: the model's graph fixes batch 1 (a constant or Reshape "
                              "of the batch axis); compile it at batch 1")
    rules = rules_for(model, settings, preprocess_config(model, settings)) if settings.method == "lrp" else {}
    compiled = onnx_engine.compile_model(model.path, model.graph, settings.method, rules,
                                         model.output_name, model.batch_proto)
    try:
        onnx_engine.save_model(compiled, Path(out_path))
    except OSError as exc:
        raise OptionError(f"-o {out_path}: cannot write ({exc})") from None
    return {"path": str(out_path), "method": settings.method, "composite": composite_name(model, settings),
            "layers": len(compiled.layers), "io": onnx_engine.io_doc(compiled)}


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
    propagation = Propagation(run.relevance, float(run.scores[run.target]), compiled.records(run.layer_sums))
    timing = {"load": model.load_seconds, "compile": compiled.compile_seconds, "forward_backward": seconds}
    return target_explanation(model, settings, rules, input_path, x, picture, run.model_output, run.target,
                              propagation, (None, None), timing, {"engine": "onnxruntime"})


def explain(model, input_path: str | Path, settings: Settings) -> list[Explanation]:
    """Returns the explanations of one image or `.npy` file: one per target the --target setting selects."""
    input_path = Path(input_path)
    if model.kind == "sklearn-bow":
        return explain_bow_image(model, input_path, settings)
    model, x, picture = load_model_input(model, input_path, settings)
    return explain_array(model, x, settings, input_path, picture)


def load_model_input(model: LoadedModel, input_path: Path, settings: Settings):
    """Returns (the model bound to the input's shape, the model-input tensor, the picture at the model input
    size) of an image or `.npy` file."""
    config = preprocess_config(model, settings)
    if model.unbound is not None:
        model = bind_input(model, _open_input_shape(model, input_path, config))
    check_size(model, config)
    x, picture = load_input(input_path, config, model.graph.input_shape, model.layout)
    return model, x, picture


def check_size(model: LoadedModel, config: PreprocessConfig) -> None:
    """Raises the OptionError of a --size (or sidecar size) that is not the (bound) model input's height, width."""
    nchw = to_nchw(model.graph.input_shape, model.layout)
    if config.size and tuple(config.size) != tuple(nchw[2:]):
        raise OptionError(f"--size {config.size[0]},{config.size[1]}: the model input is "
                          f"{list(model.graph.input_shape)}")


def model_view(model, input_path: str | Path, settings: Settings):
    """Returns the RGB picture of an input as the model sees it (resized and cropped; a BoW model sees the
    whole image), or None for an input that is not an image."""
    input_path = Path(input_path)
    if model.kind == "sklearn-bow":
        return open_image(input_path).convert("RGB")
    return load_model_input(model, input_path, settings)[2]


def explain_bow_image(model: LoadedBowModel, input_path: Path, settings: Settings) -> list[Explanation]:
    """Returns the explanations of one image by a BoW pipeline (Algorithm 1), tiled as Fig 6 when it is larger
    than the training images."""
    from lrp_cli.bow.explain import explain_bow
    from lrp_cli.importers.sklearn_bow import BowModelError
    picture = open_image(input_path).convert("RGB")
    image = np.asarray(picture, dtype=np.float64) / 255.0
    count = len(model.labels or model.bow.classes)
    explanations = []
    for target in _bow_targets(settings.target, count, model.labels):
        start = time.perf_counter()
        try:
            result = explain_bow(model.bow, image, target, **settings.tiling)
        except BowModelError as exc:
            raise ModelLoadError(str(exc)) from None
        explanations.append(_bow_explanation(model, input_path, picture, result, time.perf_counter() - start))
    return explanations


def _bow_targets(spec: str, count: int, labels) -> list[int | None]:
    if spec == "pred":
        return [None]
    if spec.startswith("top:"):
        raise OptionError("--target top:K is not supported for BoW models; give pred, an index or a label")
    return resolve_targets(spec, np.zeros(count), labels)


def _bow_explanation(model, input_path, picture, result, seconds) -> Explanation:
    scores = np.asarray(result.scores, dtype=np.float64)
    layers = [LayerRecord(name, "bow", None, float(total)) for name, total in result.layer_sums]
    extra = {"conservation_error": result.conservation_error, "taylor_residual": result.taylor_residual,
             "tiles": {"count": result.n_tiles, "tile": result.tile, "stride": result.tile_stride}}
    return Explanation(input_path, None, picture, scores, _prediction(model, scores),
                       {"index": int(result.target), "label": label_of(model, int(result.target))},
                       Propagation(result.relevance, float(result.f_x), layers), {}, None, None, None,
                       {"load": model.load_seconds, "explain": seconds}, "lrp", extra)


def explanation_document(model: LoadedModel, expl: Explanation, paths: dict[str, Path],
                         render_seconds: float) -> dict:
    """Returns the JSON document of an explanation (DESIGN §6, schema lrp-cli/explanation/1)."""
    relevance = expl.relevance.astype(np.float64)
    total = float(relevance.sum())
    input_info = {"path": str(expl.input_path)}
    if expl.input_path.is_file():
        input_info["sha256"] = outputs.sha256_file(expl.input_path)
    return {
        "schema": outputs.SCHEMA,
        "input": input_info,
        "model": {"path": str(model.path), "sha256": model.sha256, "kind": model.kind},
        "method": expl.method,
        "composite": expl.composite,
        "rules": expl.rules,
        "target": expl.target,
        "prediction": expl.prediction,
        "f_x": expl.propagation.f_x,
        "relevance": {
            "sum": total,
            "positive": float(relevance[relevance > 0].sum()),
            "negative": float(relevance[relevance < 0].sum()),
            "abs_max": float(np.abs(relevance).max()),
            "conservation_error": expl.extra.get("conservation_error",
                                                 conservation_error(total, expl.propagation.f_x)),
        },
        "layers": [vars(record) for record in expl.propagation.layers],
        "ir_max_abs_diff": expl.ir_max_abs_diff,
        "outputs": {key: str(path) for key, path in paths.items() if key != "json"} | {"raw": (
            str(paths["raw"]) if "raw" in paths else None)},
        "timing_s": {**{k: round(v, 6) for k, v in expl.timing.items()}, "render": round(render_seconds, 6)},
        "versions": {"lrp_cli": __version__, "numpy": np.__version__, "onnx": onnx.__version__,
                     "onnxruntime": ort.__version__},
    } | {k: v for k, v in expl.extra.items() if k != "conservation_error"}


def pixel_map(model: LoadedModel, expl: Explanation) -> np.ndarray:
    """Returns the [H, W] relevance map of an explanation (channels summed)."""
    return render.pixel_relevance(to_nchw(expl.relevance, model.layout))


def global_scale(model: LoadedModel, explanations: list[Explanation]) -> float:
    """Returns the max |R| over the pixel maps of all explanations (`--normalize global`)."""
    return max((float(np.abs(render.finite(pixel_map(model, e))).max()) for e in explanations), default=0.0)


def save_explanation(model: LoadedModel, expl: Explanation, out_dir: Path, stem: str, cmap: str = "jet",
                     save_raw: bool = False, scale: float | None = None) -> dict:
    """Writes heatmap, overlay, JSON (and raw relevance) all-or-nothing; returns the JSON document."""
    start = time.perf_counter()
    paths = outputs.output_paths(out_dir, stem, save_raw)
    with overflow_reported_per_node():
        return _save(model, expl, paths, cmap, save_raw, scale, start)


def _save(model, expl: Explanation, paths: dict[str, Path], cmap: str, save_raw: bool, scale, start) -> dict:
    images = render.heatmap_images(pixel_map(model, expl), expl.picture, cmap, scale)
    contents = {paths[kind]: outputs.png_bytes(rgb) for kind, rgb in images.items()}
    if save_raw:
        contents[paths["raw"]] = outputs.npy_bytes(expl.relevance.astype(np.float32))
    document = explanation_document(model, expl, paths, time.perf_counter() - start)
    contents[paths["json"]] = outputs.json_bytes(document)
    outputs.write_all(contents)
    return document
