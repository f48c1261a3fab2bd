"""The compiled engine: a relevance pass compiled once per (model bytes, method, rules, lrp-cli version), cached
on disk, and run by onnxruntime in one session call per explanation."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from lrp_cli import __version__
from lrp_cli.engines import onnx_compiler as C
from lrp_cli.engines.onnx_builder import CompileError
from lrp_cli.errors import OptionError
from lrp_cli.importers.onnx_import import load_onnx
from lrp_cli.ir.sequence import Recurrent
from lrp_cli.memory import release_freed_memory
from lrp_cli.propagate import LayerRecord
from lrp_cli.rules import Rule

ENGINES = ("auto", "onnxruntime", "numpy")
CACHE_ENV = "LRP_CLI_CACHE_DIR"
#: Test and diagnosis hook (docs/testing.md): comma-separated onnxruntime session settings for every session lrp-cli
#: opens: threads=N (intra-op threads), optimization=disable|basic|extended|layout|all (graph optimization level),
#: and any onnxruntime session config entry by its dotted key (session.set_denormal_as_zero=1, mlas....=...).
ORT_OPTIONS_ENV = "LRP_CLI_ORT_OPTIONS"
# "layout" (NCHWc blocking, between extended and all) exists only in recent onnxruntime versions.
OPTIMIZATION_LEVELS = {name: getattr(ort.GraphOptimizationLevel, level) for name, level in (
    ("disable", "ORT_DISABLE_ALL"), ("basic", "ORT_ENABLE_BASIC"), ("extended", "ORT_ENABLE_EXTENDED"),
    ("layout", "ORT_ENABLE_LAYOUT"), ("all", "ORT_ENABLE_ALL")) if hasattr(ort.GraphOptimizationLevel, level)}
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
_SESSIONS: dict[tuple, "CompiledSession"] = {}
_FAILURES: dict[str, CompileError] = {}
_INTRA_OP_THREADS = [0]  # of the sessions opened from now on; 0: onnxruntime's default (every core)


@contextmanager
def intra_op_threads(threads: int):
    """Returns the context in which compiled sessions run each call on `threads` intra-op threads (0: every core):
    N batch jobs at once give each cores // N, so that they do not fight over the cores."""
    previous, _INTRA_OP_THREADS[0] = _INTRA_OP_THREADS[0], threads
    try:
        yield
    finally:
        _INTRA_OP_THREADS[0] = previous


@dataclass
class CompiledRun:
    """The outputs of one compiled run: scores, input relevance, explained class, per-node sums (passed down and
    received), model output."""

    scores: np.ndarray
    relevance: np.ndarray
    target: int
    layer_sums: np.ndarray
    model_output: np.ndarray
    layer_in_sums: np.ndarray


#: Compiled-session input types other than float32: integer token ids read by an embedding.
INPUT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


@dataclass
class CompiledSession:
    """An onnxruntime session of a compiled relevance pass, with the node records its layer sums stand for."""

    session: ort.InferenceSession
    input_name: str
    layers: list[tuple[str, str, str | None]]
    compile_seconds: float
    path: Path
    input_type: type = np.float32  # token ids go in as the model's integer type

    def run(self, x: np.ndarray, target: int) -> CompiledRun:
        """Returns the run for input x and class target (-1: the predicted class)."""
        return self.run_items(x, [target])[0]

    def run_items(self, x: np.ndarray, targets) -> list[CompiledRun]:
        """Returns one batch-1 run per item of a batch x (the graph's batch size) and its class targets (-1: the
        predicted class)."""
        scores, relevance, index, sums, output, in_sums = self.session.run(
            [C.SCORES, C.RELEVANCE_OUT, C.TARGET_INDEX, C.LAYER_SUMS, C.MODEL_OUTPUT, C.LAYER_IN_SUMS],
            {self.input_name: x.astype(self.input_type, copy=False), C.TARGET: np.asarray(targets, dtype=np.int64)})
        sums, in_sums = sums.reshape(-1, len(scores)), in_sums.reshape(-1, len(scores))
        return [CompiledRun(scores[k], relevance[k:k + 1], int(index[k]), sums[:, k], output[k:k + 1], in_sums[:, k])
                for k in range(len(scores))]

    def records(self, run: CompiledRun) -> list[LayerRecord]:
        """Returns the per-node records of a run's layer sums."""
        return [LayerRecord(name, op, rule, float(total), float(received))
                for (name, op, rule), total, received in zip(self.layers, run.layer_sums, run.layer_in_sums)]


def ort_overrides() -> dict[str, str]:
    """Returns the session settings $LRP_CLI_ORT_OPTIONS asks for (key -> value, empty when unset); OptionError
    names a malformed entry."""
    overrides = {}
    for entry in filter(None, (part.strip() for part in os.environ.get(ORT_OPTIONS_ENV, "").split(","))):
        key, equals, value = (part.strip() for part in entry.partition("="))
        valid = (key == "threads" and value.isdigit() or key == "optimization" and value in OPTIMIZATION_LEVELS
                 or "." in key and value != "")
        if not (equals and valid):
            raise OptionError(f"${ORT_OPTIONS_ENV}: '{entry}' is not threads=N, optimization="
                              f"{'|'.join(OPTIMIZATION_LEVELS)} or <onnxruntime config key>=<value>")
        overrides[key] = value
    return overrides


def session_options(threads: int = 0, level=None) -> ort.SessionOptions:
    """Returns the options of an lrp-cli onnxruntime session: `threads` intra-op threads (0: every core), graph
    optimization `level` (None: all), both overridden by $LRP_CLI_ORT_OPTIONS, which also adds its config entries;
    an explicit level stays (a saved optimized form is opened without optimizing again)."""
    overrides = ort_overrides()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = int(overrides.get("threads", threads))
    options.graph_optimization_level = level if level is not None else OPTIMIZATION_LEVELS[
        overrides.get("optimization", "all")]
    for key, value in overrides.items():
        if "." in key:
            options.add_session_config_entry(key, value)
    return options


def cache_dir() -> Path:
    """Returns the folder of compiled graphs: $LRP_CLI_CACHE_DIR, else the user cache dir (platformdirs)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    import platformdirs
    return Path(platformdirs.user_cache_dir("lrp-cli")) / "compiled"


def _rule_key(rule: Rule) -> list:
    """Returns the exact parameters of a rule (spec() rounds z^B bounds for display)."""
    return [type(rule).__name__] + [np.asarray(v, dtype=np.float64).tobytes().hex() if v is not None else None
                                    for _, v in sorted(vars(rule).items()) if not isinstance(v, str)]


def cache_key(model_sha256: str, method: str, rules: dict[str, Rule], output: str | None,
              input_shape: tuple = ()) -> str:
    """Returns the content hash naming a compiled graph: model bytes, method, rules, output, the input shape it is
    bound to (a model with symbolic sizes compiles once per shape), lrp-cli version and the graph's output format."""
    content = json.dumps([__version__, C.GRAPH_FORMAT, model_sha256, method, output, [int(d) for d in input_shape],
                          sorted((name, _rule_key(rule)) for name, rule in rules.items())])
    return hashlib.sha256(content.encode()).hexdigest()[:32]


def compile_model(path: Path, graph, method: str, rules: dict[str, Rule], output: str | None = None,
                  batch_proto: bytes | None = None) -> C.CompiledGraph:
    """Returns the compiled relevance pass of the ONNX file at path (whose IR is graph), or of its bytes re-bound
    to another batch size (`batch_proto`: OnnxModel.rebound_onnx)."""
    proto = load_onnx(path) if batch_proto is None else onnx.load_from_string(batch_proto)
    return C.compile_relevance(proto, graph, method, rules, output, owned=True)


def io_doc(compiled: C.CompiledGraph) -> dict:
    """Returns the documented inputs and outputs of a compiled graph (as in its metadata_props)."""
    return json.loads(next(p.value for p in compiled.model.metadata_props if p.key == "lrp_cli.io"))


def save_model(compiled: C.CompiledGraph, path: Path, external_data: bool = False) -> None:
    """Writes a compiled graph atomically (temp name, then rename); with external_data, its weights go to a
    `<name>.<pid>.data` file beside it (written before the graph that names it is renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    extra = dict(save_as_external_data=True, all_tensors_to_one_file=True, size_threshold=1024,
                 location=f"{path.name}.{os.getpid()}.data") if external_data else {}
    onnx.save(compiled.model, str(temp), **extra)
    os.replace(temp, path)


def session_for(model, method: str, rules: dict[str, Rule], providers=()) -> CompiledSession:
    """Returns the (cached) compiled session of a loaded ONNX model; CompileError when it does not compile."""
    output = model.output_name
    key = cache_key(model.sha256, method, rules, output, model.graph.input_shape)
    providers = tuple(providers) or DEFAULT_PROVIDERS
    unknown = [p for p in providers if p not in ort.get_available_providers()]
    if unknown:  # before compiling: the compiled graph could not be run anyway
        raise OptionError(f"--providers {','.join(providers)}: onnxruntime has no {unknown[0]} here; available: "
                          f"{', '.join(ort.get_available_providers())}")
    threads = _INTRA_OP_THREADS[0]
    opened = (key, providers, threads, os.environ.get(ORT_OPTIONS_ENV, ""))
    if opened in _SESSIONS:
        return _SESSIONS[opened]
    if key in _FAILURES:
        raise _FAILURES[key]
    path = cache_dir() / f"{key}.lrp.onnx"
    warm = path.is_file()
    seconds = 0.0 if warm else _compile_into(path, model, method, rules, output, key)
    try:
        session = _open_cached(path, providers, threads)
    except CompileError:
        if not warm:
            raise
        _discard_entry(path.parent, key)  # a damaged or half-deleted cache entry: compiled again, once
        seconds = _compile_into(path, model, method, rules, output, key)
        session = _open_cached(path, providers, threads)
    layers = [tuple(entry) for entry in json.loads(session.get_modelmeta().custom_metadata_map["lrp_cli.layers"])]
    kind = next(i.type for i in session.get_inputs() if i.name == model.graph.input_name)
    _SESSIONS[opened] = CompiledSession(session, model.graph.input_name, layers, seconds, path,
                                        INPUT_TYPES.get(kind, np.float32))
    return _SESSIONS[opened]


def _compile_into(path: Path, model, method: str, rules: dict[str, Rule], output: str | None, key: str) -> float:
    """Returns the seconds it took to compile the model's relevance pass and write it to the cache at path."""
    start = time.perf_counter()
    try:
        compiled = compile_model(model.path, model.graph, method, rules, output, model.rebound_onnx)
    except CompileError as exc:
        _FAILURES[key] = exc
        raise
    save_model(compiled, path, external_data=True)  # onnxruntime maps the weights instead of copying them
    del compiled  # the session reads the file; the graph in memory would only add to the peak
    release_freed_memory()
    return time.perf_counter() - start


def _open_cached(path: Path, providers, threads: int) -> ort.InferenceSession:
    """Returns the session of the cached compiled graph at path; CompileError when onnxruntime cannot open it."""
    try:
        return _open_optimized(path, threads) if providers == DEFAULT_PROVIDERS else _open(path, providers, threads)
    except Exception as exc:  # onnxruntime raises its own exception types (the model's own ops, too)
        raise CompileError(f"onnxruntime cannot load the compiled graph: {exc}".splitlines()[0]) from None


def _discard_entry(folder: Path, key: str) -> None:
    """Removes every file of one cache entry (graph, optimized forms, their weight files)."""
    for stale in folder.glob(f"{key}.*"):
        with suppress(OSError):
            stale.unlink()


def _options(threads: int = 0, level=None) -> ort.SessionOptions:
    options = session_options(threads, level)
    options.enable_mem_pattern = False  # it pre-plans one block for every tensor the backward keeps: a higher peak
    return options


def _open(path: Path, providers, threads: int = 0) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), _options(threads), providers=list(providers))


def _open_optimized(path: Path, threads: int = 0) -> ort.InferenceSession:
    """Returns a CPU session of onnxruntime's own optimized form of the compiled graph at path, written once beside
    it and opened without optimizing again.

    Optimizing at every start re-lays out every weight (NCHWc blocks) into new memory while the mapped originals
    are read: a ResNet-50 session held 560 MB after one run, the saved form 410 MB, at the same speed and bit for
    bit the same outputs. That form fits this onnxruntime on this CPU only, hence the tag in its name."""
    optimized = path.with_name(f"{path.name.removesuffix('.lrp.onnx')}.{_platform_tag()}.ort.onnx")
    if not optimized.is_file():
        temp = optimized.with_name(f".{optimized.name}.{os.getpid()}.tmp")
        options = _options()
        options.enable_cpu_mem_arena = False  # this session only writes the file: it never runs
        options.add_session_config_entry("session.disable_prepacking", "1")
        options.optimized_model_filepath = str(temp)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         f"{optimized.name}.{os.getpid()}.data")  # beside it, written first
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(path), options, providers=list(DEFAULT_PROVIDERS))  # made to write the file
        os.replace(temp, optimized)
        release_freed_memory()  # that session's copies of the weights, before the run needs as much again
    level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(optimized), _options(threads, level), providers=list(DEFAULT_PROVIDERS))


def _platform_tag() -> str:
    """Returns a short hash of what an optimized graph is specific to: the onnxruntime version, the machine and its
    CPU's instruction-set flags (the kernels' weight layouts follow the vector width), and the optimization level and
    config entries of $LRP_CLI_ORT_OPTIONS."""
    flags = platform.processor()
    with suppress(OSError):
        flags = next((line for line in open("/proc/cpuinfo", encoding="utf-8") if line.startswith("flags")), flags)
    settings = sorted((key, value) for key, value in ort_overrides().items() if key != "threads")
    content = json.dumps([ort.__version__, platform.machine(), flags] + ([settings] if settings else []))
    return hashlib.sha256(content.encode()).hexdigest()[:12]


def numpy_preferred(graph) -> str | None:
    """Returns why `--engine auto` runs a graph that compiles on the NumPy engine all the same, or None: an LSTM/GRU
    compiles unrolled over its time steps, one small ONNX node per gate and step, which runs slower than the
    NumPy engine's vectorised steps (measured: 170 ms against 83 ms for a 50-token 2-layer BiLSTM)."""
    if any(isinstance(node.layer, Recurrent) for node in graph.nodes):
        return "LSTM/GRU layers run faster on the NumPy engine than unrolled in the compiled graph"
    return None


def choose(engine: str, precision: str, kind: str, method: str = "lrp") -> str:
    """Returns the engine a request may use before compiling: "numpy", "onnxruntime", or "auto" (try it)."""
    if engine not in ENGINES:
        raise OptionError(f"--engine {engine}: choose one of {', '.join(ENGINES)}")
    if engine == "onnxruntime" and (precision != "float32" or kind != "onnx"):
        raise OptionError("--engine onnxruntime runs ONNX models in float32 only; use --engine numpy for "
                          "--precision float64 and BoW pipelines")
    if engine == "onnxruntime" and method not in C.COMPILED_METHODS:
        raise OptionError(f"--engine onnxruntime compiles --method {', '.join(C.COMPILED_METHODS)}; "
                          f"--method {method} runs on NumPy")
    if precision != "float32" or kind != "onnx" or method not in C.COMPILED_METHODS:
        return "numpy"
    return engine
