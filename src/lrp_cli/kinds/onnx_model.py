"""The ONNX kind: a network exported to ONNX, imported into the IR, explained by the NumPy walk or the compiled
onnxruntime graph.

The model owns its state and builds what is expensive on first use: the plain onnxruntime session (the NumPy
engine, inspect and the scorers need it; the compiled engine does not), the IR in another precision, the graph
bound to a concrete input shape (symbolic inputs), the graph re-bound to a batch size (--batch-size), the batched
scorer (occlusion, LIME, evaluate).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from lrp_cli import outputs, signals
from lrp_cli.engines import onnx_engine
from lrp_cli.errors import InputError, LrpError, OptionError
from lrp_cli.explanation import METHOD_NAMES, PRECISIONS, Explanation, Settings
from lrp_cli.importers.onnx_import import SymbolicInputError, import_onnx, load_onnx
from lrp_cli.ir.graph import Graph
from lrp_cli.ir.sequence import token_embedding
from lrp_cli.kinds import image_outputs, onnx_explain, onnx_inspect, onnx_runtime, onnx_scoring
from lrp_cli.kinds.base import FlipInput, InputItem, Kind, LoadOptions, Model, Subject
from lrp_cli.memory import release_freed_memory
from lrp_cli.methods import METHODS
from lrp_cli.preprocess import (IMAGE_INPUT_SUFFIXES, TENSOR_SUFFIXES, PreprocessConfig, Sidecar, from_nchw, load_input,
                                load_sidecar, read_labels, shape_text, tensor_shape, to_nchw)

_SESSION_LOCK = threading.Lock()  # threads of one batch share a model: its session is built once


class OnnxKind(Kind):
    """Claims every file the other kinds leave: ONNX files have no fixed suffix."""

    name = "onnx"

    def claims(self, path: Path) -> bool:
        """Returns True: the ONNX kind is the registry's last resort, and its loader names a file it cannot read."""
        return True

    def load(self, path: Path, options: LoadOptions) -> OnnxModel:
        """Returns the model: its IR (None until an input binds a symbolic input shape), sidecar and labels."""
        sidecar = load_sidecar(path)
        proto = load_onnx(path)
        if options.labels is not None:
            sidecar.labels = read_labels(Path(options.labels))
        sidecar.output = options.output or sidecar.output
        output = sidecar.output
        try:
            graph = import_onnx(path, output, proto)
        except SymbolicInputError as exc:
            return OnnxModel(path, None, sidecar, outputs.sha256_file(path), 0.0,
                             options.layout or sidecar.layout or shape_layout(exc.shape), unbound=exc,
                             _proto=proto.SerializeToString(),
                             output_name=onnx_runtime.reported_output(proto, None, output))
        layout = options.layout or sidecar.layout or detect_layout(graph)
        output_name = onnx_runtime.reported_output(proto, graph, output)
        del proto
        release_freed_memory()
        return OnnxModel(path, graph, sidecar, outputs.sha256_file(path), 0.0, layout, output_name=output_name)

    def describe(self, path: Path, settings: Settings, verify: bool = False) -> dict:
        """Returns the `lrp inspect` report: op census, and when every op converts the IR table with each layer's
        rule, whether it compiles (and, with verify, the IR vs onnxruntime check)."""
        return onnx_inspect.describe(self, path, settings, verify)

    def format_description(self, report: dict) -> str:
        """Returns the report as a human-readable table."""
        return onnx_inspect.format_report(report)


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


def onnx_subject(model, x: np.ndarray, config, input_path) -> Subject:
    """Returns the pixel-flipping Subject of a model input: [lo, hi] from the preset's pixel values 0 and 255 (for
    a `.npy` with preset none, the tensor's own per-channel min and max), the mean fill 0 (the preset's mean
    pixel)."""
    if len(model.graph.input_shape) != 4:
        raise OptionError(f"{model.path}: lrp evaluate needs an image model (4-D input), the input is "
                          f"{list(model.graph.input_shape)}")
    nchw = to_nchw(x, model.layout)
    channels = nchw.shape[1]
    if str(input_path).lower().endswith(".npy") and config.preset == "none":
        low, high = nchw.min(axis=(0, 2, 3)).astype(np.float64), nchw.max(axis=(0, 2, 3)).astype(np.float64)
    else:
        low, high = config.input_bounds(channels)
    return Subject(nchw, np.asarray(low, np.float64), np.asarray(high, np.float64), np.zeros(channels),
                   lambda batch: from_nchw(batch, model.layout).astype(np.float32))


@dataclass
class OnnxModel(image_outputs.ImageOutputs, Model):
    """An ONNX classifier: its IR graph, its onnxruntime session (built on first use) and its sidecar settings."""

    path: Path
    graph: Graph | None
    sidecar: Sidecar
    sha256: str
    load_seconds: float
    layout: str = "nchw"
    #: Set when the input has symbolic dimensions: graph and session are None until `bind` gives a shape.
    unbound: SymbolicInputError | None = None
    #: The model output reported as model_output: the session's first output (`onnx_runtime.reported_output`).
    output_name: str | None = None
    #: The plain session, None until `session` builds it: the compiled engine runs without it.
    plain_session: ort.InferenceSession | None = None
    _proto: bytes | None = field(default=None, repr=False)
    _cast: dict = field(default_factory=dict, repr=False)
    _bound: dict = field(default_factory=dict, repr=False)
    _scorer: onnx_scoring.Scorer | None = field(default=None, repr=False)
    #: The ONNX bytes re-bound to a batch size other than 1 (`for_batch`); the compiled engine builds on them.
    _batch_proto: bytes | None = field(default=None, repr=False)
    kind = "onnx"
    methods = METHOD_NAMES
    input_suffixes = IMAGE_INPUT_SUFFIXES

    @property
    def labels(self) -> list[str] | None:
        """Returns the class labels from the sidecar (or --labels), if any."""
        return self.sidecar.labels

    # -- state built on first use ------------------------------------------------------------------------------
    @property
    def session(self) -> ort.InferenceSession:
        """Returns the onnxruntime session of the model (its output, then the IR's explained tensor), built on
        first use from the file (or the bytes it was re-bound from): it holds a copy of the weights."""
        with _SESSION_LOCK:
            if self.plain_session is None:
                source = self._batch_proto or self._proto
                proto = onnx.load_from_string(source) if source else load_onnx(self.path)
                self.plain_session = onnx_runtime.onnx_session(self.path, proto, self.graph, self.sidecar.output)
        return self.plain_session

    @property
    def rebound_onnx(self) -> bytes | None:
        """Returns the ONNX bytes this model was re-bound to a batch size from, or None (its file is the source)."""
        return self._batch_proto

    def graph_for(self, precision: str) -> Graph:
        """Returns the IR graph with parameters in the given precision (cached)."""
        if precision not in self._cast:
            self._cast[precision] = self.graph.astype(PRECISIONS[precision])
        return self._cast[precision]

    def run_onnxruntime(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns (the model's own output, the tensor the IR explains) computed by onnxruntime on x cast to the
        model's input type (float16 models take float16)."""
        x = x.astype(onnx_runtime.input_dtype(self.session, self.graph.input_name))
        results = self.session.run(None, {self.graph.input_name: x})
        return results[0], results[-1]

    def bind(self, shape: tuple[int, ...]) -> OnnxModel:
        """Returns the model with graph and session bound to a concrete input shape (the model itself when its
        input shape is not symbolic); bindings are cached per shape."""
        if self.unbound is None:
            return self
        shape = tuple(int(d) for d in shape)
        if shape not in self._bound:
            proto = onnx.load_from_string(self._proto)
            graph = import_onnx(self.path, self.sidecar.output, proto, shape)
            self._bound[shape] = replace(self, graph=graph, plain_session=None, _cast={}, unbound=None,
                                         output_name=onnx_runtime.reported_output(proto, graph, self.sidecar.output))
        return self._bound[shape]

    def for_batch(self, size: int) -> OnnxModel | None:
        """Returns the model re-bound to batches of `size` (cached per size and input shape), or None when its
        graph does not take that batch."""
        key = ("batch", size, tuple(self.graph.input_shape))
        if key not in self._bound:
            self._bound[key] = self._rebind(size)
        return self._bound[key]

    @property
    def batch_sizes(self) -> set[int]:
        """Returns the batch sizes `for_batch` has re-bound this model to (that take the batch or not)."""
        return {key[1] for key in self._bound if key[0] == "batch"}

    def _rebind(self, size: int) -> OnnxModel | None:
        proto = onnx.load_from_string(self._proto) if self._proto else load_onnx(self.path)
        onnx_runtime.set_batch(proto, self.graph.input_name, size)
        data = proto.SerializeToString()
        shape = (size, *self.graph.input_shape[1:])
        try:
            graph = import_onnx(self.path, self.sidecar.output, onnx.load_from_string(data), shape)
            session = onnx_runtime.onnx_session(self.path, onnx.load_from_string(data), graph, self.sidecar.output)
        except Exception:  # a graph that fixes batch 1 fails in any of the importer's or onnxruntime's ways
            return None
        if not onnx_runtime.batch_first(self.graph, graph, size):
            return None
        return replace(self, graph=graph, plain_session=session, _cast={}, unbound=None, _scorer=None,
                       _batch_proto=data)

    def score_batch(self, xs: np.ndarray, settings: Settings | None = None,
                    chunk: int = onnx_scoring.DEFAULT_CHUNK) -> np.ndarray:
        """Returns the [N, K] pre-softmax class scores (the tensor the IR explains) of N model inputs: `xs` is
        [N, *input shape without its batch axis] or [N, *input shape] (batch axis 1), in the model-input layout,
        after preprocessing; scored by onnxruntime in runs of at most `chunk` inputs (onnx_scoring)."""
        xs = onnx_scoring.as_item_batch(xs, tuple(self.graph.input_shape))
        if self._scorer is None:
            self._scorer = onnx_scoring.build_scorer(self)
        if not len(xs):
            return np.zeros((0, self._scorer.classes), dtype=np.float32)
        return np.concatenate([self._scorer.run(xs[i:i + chunk]) for i in range(0, len(xs), max(1, chunk))])

    @property
    def scores_batched(self) -> bool:
        """Returns True when `score_batch` runs chunks as one batch (False: one run per input), once it has run."""
        return self._scorer is not None and self._scorer.batched

    # -- settings and inputs ------------------------------------------------------------------------------------
    def preprocess_config(self, settings: Settings) -> PreprocessConfig:
        """Returns the sidecar's preprocessing with the command-line overrides applied."""
        return self.sidecar.preprocess.merged(**settings.preprocess)

    def rules_for(self, settings: Settings) -> dict:
        """Returns node name -> rule object for the settings (z^B boxes from the preprocessing preset)."""
        return onnx_explain.rules_for(self, settings, self.preprocess_config(settings))

    def composite_name(self, settings: Settings) -> str | None:
        """Returns the composite in force (None when --rule sets one rule for every layer)."""
        return onnx_explain.composite_name(self, settings)

    def check_settings(self, settings: Settings) -> None:
        """Raises OptionError when the settings do not fit the model (bad rule, BoW options, method options)."""
        onnx_engine.choose(settings.engine, settings.precision, self.kind, settings.method)
        method = METHODS.get(settings.method)
        options = method.resolve(settings.method_options) if method else {}
        if settings.tiling:
            raise OptionError("--tile/--tile-stride/--pair apply to BoW pipelines, not ONNX models")
        if self.unbound is not None:  # checked when the first input binds it
            return
        if settings.method == "lrp":
            self.rules_for(settings)
        if method:
            method.check(self.graph, options)

    def check_size(self, config: PreprocessConfig) -> None:
        """Raises the OptionError of a --size (or sidecar size) that is not the (bound) model input's height,
        width."""
        nchw = to_nchw(self.graph.input_shape, self.layout)
        if config.size and tuple(config.size) != tuple(nchw[2:]):
            raise OptionError(f"--size {config.size[0]},{config.size[1]}: the model input is "
                              f"{list(self.graph.input_shape)}")

    def load_input(self, input_path: Path, settings: Settings) -> tuple[OnnxModel, np.ndarray, object]:
        """Returns (the model bound to the input's shape, the model-input tensor, the picture at the model input
        size) of an image or `.npy` file."""
        config = self.preprocess_config(settings)
        model = self.bind(self._input_shape(input_path, config)) if self.unbound is not None else self
        model.check_size(config)
        x, picture = load_input(input_path, config, model.graph.input_shape, model.layout)
        model.check_ids(x, input_path)
        return model, x, picture

    def check_ids(self, x: np.ndarray, input_path: Path, what: str = "") -> None:
        """Raises the InputError of token ids outside the model's embedding table (nothing for other models):
        before onnxruntime sees them, since it fails on such an id without naming the input."""
        embedding = token_embedding(self.graph)
        if embedding is not None:
            try:
                embedding.layer.ids(x)
            except ValueError as exc:
                raise InputError(f"{input_path}: {what}{exc}") from None

    def _input_shape(self, input_path: Path, config: PreprocessConfig) -> tuple[int, ...]:
        """Returns the input shape an input fixes for a model with symbolic input dimensions: a tensor's own
        shape, or for an image the --size (or sidecar size) height and width."""
        shape = self.unbound.shape
        if input_path.suffix.lower() in TENSOR_SUFFIXES:
            return tensor_shape(input_path, shape)
        if len(shape) != 4 or not config.size:
            raise InputError(f"{input_path}: the model input {shape_text(shape)} has symbolic dimensions; an image "
                             "needs --size H,W (or size in the model's sidecar), a .npy tensor fixes the shape "
                             "itself")
        n, c, _, _ = to_nchw(shape, self.layout)
        nchw = (n, c or 3, *config.size)
        return (nchw[0], nchw[2], nchw[3], nchw[1]) if self.layout == "nhwc" else nchw

    def prepare(self, item: InputItem, settings: Settings) -> tuple:
        """Returns (the model bound to the input's shape, its model-input tensor, its picture, its path)."""
        return (*self.load_input(item.path, settings), item.path)

    def pictures(self, expl: Explanation, heat: np.ndarray, options) -> dict[str, np.ndarray]:
        """Returns the heatmap and overlay of an image input, or of a signal ([1, C, T] read by a Conv): the
        channels x time raster and the channels' traces coloured by their relevance."""
        if signals.is_signal(self.graph):
            return signals.signal_images(expl.x, heat, options.cmap, options.scale)
        return super().pictures(expl, heat, options)

    def document_extras(self, heat: np.ndarray) -> dict:
        """Returns the relevance per channel and per time window of a signal's explanation ({} for images)."""
        return {"signal": signals.signal_summary(heat)} if signals.is_signal(self.graph) else {}

    def view(self, item: InputItem, settings: Settings):
        """Returns the RGB picture of an input as the model sees it (resized and cropped), None for a tensor."""
        return self.load_input(item.path, settings)[2]

    # -- explaining ---------------------------------------------------------------------------------------------
    def explain(self, prepared, settings: Settings) -> list[Explanation]:
        """Returns the explanations of one prepared input, one per target the --target setting selects."""
        model, x, picture, input_path = prepared
        return onnx_explain.explain_array(model, x, settings, input_path, picture)

    def explain_many(self, prepared: list, settings: Settings, batch_size: int) -> list[list[Explanation] | LrpError]:
        """Returns each prepared input's explanations or error; inputs that share a model-input shape run in
        passes of `batch_size` (lrp, gradient, gradient-x-input; the others one at a time)."""
        if batch_size == 1 or not onnx_explain.batchable(settings):
            return super().explain_many(prepared, settings, batch_size)
        results: list = [None] * len(prepared)
        groups: dict[tuple, list] = {}
        for index, (model, x, picture, path) in enumerate(prepared):
            groups.setdefault((id(model), x.shape), []).append((index, model, x, picture, path))
        for group in groups.values():
            explained = onnx_explain.explain_arrays(group[0][1], [g[2] for g in group], settings,
                                                    [g[4] for g in group], [g[3] for g in group], batch_size)
            for (index, *_), outcome in zip(group, explained):
                results[index] = outcome
        return results

    def image_geometry(self, settings: Settings) -> tuple[PreprocessConfig, tuple[int, int]]:
        """Returns (the preprocessing of the settings, the model input's [H, W]); OptionError for a --size that
        is not the model input's."""
        config = self.preprocess_config(settings)
        self.check_size(config)
        return config, tuple(to_nchw(self.graph.input_shape, self.layout)[2:])

    def check_evaluable(self) -> None:
        """Raises OptionError for a model with symbolic input sizes: one batched session needs one input shape."""
        if self.unbound is not None:
            raise OptionError(f"{self.path}: lrp evaluate needs a model with a fixed input size ({self.unbound})")

    def flip_input(self, item: InputItem, settings: Settings) -> FlipInput:
        """Returns the model input as pixel flipping perturbs it (onnx_subject), shown as the preset displays it."""
        from lrp_cli.preprocess import tensor_to_display
        _, x, _ = self.load_input(item.path, settings)
        config = self.preprocess_config(settings)
        return FlipInput(onnx_subject(self, x, config, item.path), lambda t: tensor_to_display(t, config),
                         (self, x, None, item.path))

    # -- commands beyond explain --------------------------------------------------------------------------------
    def compile(self, settings: Settings, out_path: Path, batch_size: int = 1) -> dict:
        """Writes the relevance pass of the settings (for batches of `batch_size` inputs) as a standalone ONNX
        file; returns its input/output summary."""
        model = self
        if batch_size > 1:
            model = self.for_batch(batch_size)
            if model is None:
                raise OptionError(f"--batch-size {batch_size}: the model's graph fixes batch 1 (a constant or "
                                  "Reshape of the batch axis); compile it at batch 1")
        rules = model.rules_for(settings) if settings.method == "lrp" else {}
        compiled = onnx_engine.compile_model(model.path, model.graph, settings.method, rules,
                                             model.output_name, model.rebound_onnx)
        try:
            onnx_engine.save_model(compiled, Path(out_path))
        except OSError as exc:
            raise OptionError(f"-o {out_path}: cannot write ({exc})") from None
        return {"path": str(out_path), "method": settings.method, "composite": model.composite_name(settings),
                "layers": len(compiled.layers), "io": onnx_engine.io_doc(compiled)}
