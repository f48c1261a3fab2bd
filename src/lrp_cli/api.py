"""The public Python API the command line is built on: load a model, explain an input, save the outputs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from lrp_cli import __version__, outputs, render
from lrp_cli.errors import ModelLoadError, OptionError
from lrp_cli.importers.onnx_import import import_onnx, load_onnx
from lrp_cli.ir.graph import Graph
from lrp_cli.methods.gradient import METHODS
from lrp_cli.preprocess import (PreprocessConfig, Sidecar, load_input, load_sidecar, open_image, read_labels,
                                to_nchw)
from lrp_cli.propagate import LayerRecord, Propagation, conservation_error, output_scores, propagate
from lrp_cli.rules import RuleError, ZBox, assign_rules, default_composite, parse_rule

PRECISIONS = {"float32": np.float32, "float64": np.float64}
METHOD_NAMES = ("lrp",) + tuple(METHODS)
#: A relative IR-vs-onnxruntime difference above this triggers a warning.
IR_DIFF_WARNING = 1e-4


@dataclass
class LoadedModel:
    """An ONNX classifier: its IR graph, its onnxruntime session and its sidecar settings."""

    path: Path
    graph: Graph
    sidecar: Sidecar
    sha256: str
    session: ort.InferenceSession
    load_seconds: float
    layout: str = "nchw"
    kind: str = "onnx"
    _cast: dict = field(default_factory=dict)

    @property
    def labels(self) -> list[str] | None:
        """Returns the class labels from the sidecar (or --labels), if any."""
        return self.sidecar.labels

    def graph_for(self, precision: str) -> Graph:
        """Returns the IR graph with parameters in the given precision (cached)."""
        if precision not in self._cast:
            self._cast[precision] = self.graph.astype(PRECISIONS[precision])
        return self._cast[precision]

    def run_onnxruntime(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns (the model's own output, the tensor the IR explains) computed by onnxruntime."""
        results = self.session.run(None, {self.graph.input_name: x.astype(np.float32)})
        return results[0], results[-1]


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
    return "nhwc" if shape[3] in (1, 3) and shape[1] not in (1, 3) else "nchw"


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
    graph = import_onnx(path, output or sidecar.output, proto)
    if labels is not None:
        sidecar.labels = read_labels(Path(labels))
    session = _session(path, proto, graph, output or sidecar.output)
    layout = layout or sidecar.layout or detect_layout(graph)
    return LoadedModel(path, graph, sidecar, outputs.sha256_file(path), session, time.perf_counter() - start,
                       layout)


def _load_bow(path: Path, labels, start: float) -> LoadedBowModel:
    from lrp_cli.importers.sklearn_bow import BowModelError, load_bow_model
    try:
        bow = load_bow_model(path)
    except BowModelError as exc:
        raise ModelLoadError(str(exc)) from None
    names = read_labels(Path(labels)) if labels is not None else [str(c) for c in bow.classes]
    return LoadedBowModel(path, bow, outputs.sha256_file(path), time.perf_counter() - start, names)


def _session(path: Path, model: onnx.ModelProto, graph: Graph, output: str | None) -> ort.InferenceSession:
    """Returns an onnxruntime session whose outputs are the chosen model output, then the IR's explained tensor.

    It rewrites the graph outputs of `model` in place: the import is done with it by then."""
    chosen = output or model.graph.output[0].name
    keep = [o for o in model.graph.output if o.name == chosen]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    if graph.output_name != chosen:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(graph.output_name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
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
    if model.kind == "sklearn-bow":
        if settings.method != "lrp" or settings.rule or settings.composite or settings.layer_rules:
            raise OptionError("--method/--rule/--composite/--layer-rule apply to ONNX models, not BoW pipelines")
        return
    if settings.tiling:
        raise OptionError("--tile/--tile-stride/--pair apply to BoW pipelines, not ONNX models")
    if settings.method == "lrp":
        rules_for(model, settings, preprocess_config(model, settings))


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
    if spec.lstrip("-").isdigit():
        index = int(spec)
        if not 0 <= index < count:
            raise OptionError(f"--target {spec}: class index out of range (the model has {count} classes)")
        return [index]
    lowered = [label.lower() for label in labels or []]
    if spec.lower() in lowered:
        return [lowered.index(spec.lower())]
    raise OptionError(f"--target {spec}: not 'pred', 'top:K', a class index or a known label")


def rules_for(model: LoadedModel, settings: Settings, config: PreprocessConfig) -> dict:
    """Returns node name -> rule object for the settings; z^B rules get the preset's input box by default."""
    linear = _rule_nodes(model)
    try:
        specs = assign_rules(linear, settings.composite or model.sidecar.composite, settings.rule,
                             settings.layer_rules)
        rules = {name: parse_rule(spec) for name, spec in specs.items()}
    except RuleError as exc:
        raise OptionError(str(exc)) from None
    if len(model.graph.input_shape) == 4:
        low, high = config.input_bounds(to_nchw(model.graph.input_shape, model.layout)[1])
        rules = {name: r.with_bounds(low, high) if isinstance(r, ZBox) else r for name, r in rules.items()}
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
    rules = rules_for(model, settings, preprocess_config(model, settings)) if settings.method == "lrp" else {}
    start = time.perf_counter()
    model_output, ort_explained = model.run_onnxruntime(x)
    graph = model.graph_for(settings.precision)
    values = graph.forward(x.astype(PRECISIONS[settings.precision]))
    forward_seconds = time.perf_counter() - start
    ir_out = values[graph.output_name]
    diff, relative = ir_difference(ir_out, ort_explained)
    explanations = []
    for target in resolve_targets(settings.target, output_scores(ir_out), model.labels):
        start = time.perf_counter()
        propagation = _backward(settings.method, graph, values, target, rules)
        timing = {"load": model.load_seconds, "forward": forward_seconds, "backward": time.perf_counter() - start}
        explanations.append(Explanation(
            input_path, x, picture, model_output, _prediction(model, output_scores(model_output)),
            {"index": target, "label": label_of(model, target)}, propagation,
            {name: rule.spec() for name, rule in rules.items()}, composite_name(model, settings),
            diff, relative, timing, settings.method))
    return explanations


def _backward(method: str, graph: Graph, values, target: int, rules) -> Propagation:
    if method == "lrp":
        return propagate(graph, values, target, rules)
    try:
        return METHODS[method](graph, values, target)
    except NotImplementedError as exc:
        raise OptionError(f"--method {method}: {exc}") from None


def explain(model, input_path: str | Path, settings: Settings) -> list[Explanation]:
    """Returns the explanations of one image or `.npy` file: one per target the --target setting selects."""
    input_path = Path(input_path)
    if model.kind == "sklearn-bow":
        return explain_bow_image(model, input_path, settings)
    config = preprocess_config(model, settings)
    nchw = to_nchw(model.graph.input_shape, model.layout)
    if config.size and tuple(config.size) != tuple(nchw[2:]):
        raise OptionError(f"--size {config.size[0]},{config.size[1]}: the model input is "
                          f"{list(model.graph.input_shape)}")
    x, picture = load_input(input_path, config, model.graph.input_shape, model.layout)
    return explain_array(model, x, settings, input_path, picture)


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
    return max((float(np.abs(pixel_map(model, e)).max()) for e in explanations), default=0.0)


def save_explanation(model: LoadedModel, expl: Explanation, out_dir: Path, stem: str, cmap: str = "jet",
                     save_raw: bool = False, scale: float | None = None) -> dict:
    """Writes heatmap, overlay, JSON (and raw relevance) all-or-nothing; returns the JSON document."""
    start = time.perf_counter()
    paths = outputs.output_paths(out_dir, stem, save_raw)
    normalized = render.normalize(pixel_map(model, expl), scale)
    contents = {
        paths["heatmap"]: outputs.png_bytes(render.colorize(normalized, cmap)),
        paths["overlay"]: outputs.png_bytes(render.overlay(expl.picture, normalized, cmap)),
    }
    if save_raw:
        contents[paths["raw"]] = outputs.npy_bytes(expl.relevance.astype(np.float32))
    document = explanation_document(model, expl, paths, time.perf_counter() - start)
    contents[paths["json"]] = outputs.json_bytes(document)
    outputs.write_all(contents)
    return document
