"""The model-kind protocol: what the pipeline (explain, batch, Dask, check, evaluate, inspect, compile) asks of a
loaded model, and nothing more.

A model kind is one module in this package holding a `Kind` (claims and loads a file) and the `Model` class it
loads; `kinds/__init__.py` lists the kinds. The pipeline never asks which kind it holds: it calls these methods.
A new kind subclasses `Model`, implements the abstract methods, overrides the defaults it needs (input expansion,
batching, scoring, describing, compiling), and adds one line to the registry.

The life of one input, as the batch runs it:

    model = kinds.load_model(path, LoadOptions(...))          # Kind.claims, then Kind.load
    model.check_settings(settings)                             # once, before any input: usage errors (exit 2)
    items = model.expand(specs, settings)                      # INPUT arguments -> InputItems (stem = output name)
    prepared = model.prepare(item, settings)                   # decode one item (its error: that input fails)
    explanations = model.explain(prepared, settings)           # one Explanation per target --target selects
                                                               # (its prediction: {index, label, score, ...})
    document = model.save(expl, out_dir, stem, OutputOptions)  # its files, atomically; returns the JSON document
    row = model.summary_fields(document)                       # its summary.json/.csv columns

Errors: raise `errors.InputError` for one input (the batch goes on), `OptionError` for settings the model cannot
take (exit 2), `ModelLoadError` for a file it cannot load (exit 3). Write nothing partial: `outputs.write_all`.
A Model is shared by the threads of one batch and never pickled (a worker process loads its own from the file,
batch.ModelSpec): build what is expensive on first use, under a lock where threads could race, and keep it in
private fields that no other module reads.
"""

from __future__ import annotations

import glob
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from lrp_cli.errors import LrpError, ModelLoadError, OptionError
from lrp_cli.explanation import Explanation, Settings
from lrp_cli.render import Scale

GLOB_CHARS = set("*?[")


#: The model files of scikit-learn kinds (BoW and text pipelines claim them by suffix, then by content).
SKLEARN_SUFFIXES = (".joblib", ".pkl", ".skops")


@dataclass(frozen=True)
class InputItem:
    """One input and the output stem it maps to (for a file: its relative path without extension).

    `source` carries what is not a file for kinds that need it (a text given with --text, one row of a .jsonl);
    it must be picklable, as items travel to worker processes."""

    path: Path
    stem: str
    source: object = None


class Unsupported(OptionError):
    """A command or feature this model kind does not have (e.g. `lrp check` regions on a kind without pictures)."""


@dataclass
class Subject:
    """One input as pixel flipping (`lrp evaluate`) sees it: the NCHW tensor, its per-channel value range and mean
    fill, and how to hand a perturbed NCHW stack to the model's `score_batch` (its layout and dtype)."""

    x: np.ndarray  # [1, C, H, W]
    low: np.ndarray  # [C]
    high: np.ndarray  # [C]
    mean: np.ndarray  # [C]
    to_model: Callable[[np.ndarray], np.ndarray]


@dataclass
class FlipInput:
    """What `Model.flip_input` gives `lrp evaluate` for one input: the Subject to perturb, `display` (an NCHW
    [1, C, H, W] tensor -> PIL picture, for the strips) and the prepared input that `explain` takes."""

    subject: Subject
    display: Callable[[np.ndarray], object]
    prepared: object


@dataclass
class Units:
    """An explanation's relevance over the input's deletable units (a text's words, in reading order): their
    names, their relevance, and, for units that are pieces of a text, the text and each unit's [start, end)
    character span in it (what `lrp check` matches `words` and `regex` regions against)."""

    names: list[str]
    relevance: np.ndarray  # [n]
    text: str | None = None
    spans: np.ndarray | None = None  # [n, 2]


@dataclass
class UnitInput:
    """What `Model.unit_input` gives `lrp evaluate` for one input whose units are deleted rather than painted
    over: the unit names, the target class the settings select, the true class when the input names one (for
    accuracy curves), the prepared input `explain` takes, and `score`: a [M, n] bool keep-mask (False: unit
    perturbed) -> the [M, K] class decision values of the M perturbed copies, in one batched model call."""

    names: list[str]
    target: int
    score: Callable[[np.ndarray], np.ndarray]
    prepared: object
    label: int | None = None


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model file: `output` (the graph output to explain), `labels` (a labels file), `layout`
    (nchw/nhwc), and `extra`, the load options of one kind only (by name)."""

    output: str | None = None
    labels: Path | None = None
    layout: str | None = None
    extra: tuple = ()


@dataclass(frozen=True)
class OutputOptions:
    """How to write an explanation: colormap, the raw relevance file, what the relevance is divided by for colour
    (--scale; with --normalize global its divisor is shared by the batch) and the options of one kind's outputs
    (`extra`, by name)."""

    cmap: str = "jet"
    save_raw: bool = False
    scale: Scale = Scale()
    extra: dict = field(default_factory=dict)


class Kind(ABC):
    """Claims and loads one kind of model file."""

    #: The kind's name, as `model.kind` in the JSON documents ("onnx", "sklearn-bow", ...).
    name: ClassVar[str]

    @abstractmethod
    def claims(self, path: Path) -> bool:
        """Returns True when the file at `path` is this kind's. Decide by suffix where that settles it; open the
        file only when kinds share a suffix (a .joblib may be a BoW or a text pipeline), and never raise: a file
        no kind claims is reported by the registry."""

    @abstractmethod
    def load(self, path: Path, options: LoadOptions) -> Model:
        """Returns the loaded model; ModelLoadError (exit 3, one line naming the file and what is wrong)."""

    def describe(self, path: Path, settings: Settings, verify: bool = False) -> dict:
        """Returns what `lrp inspect --json` prints of the file: {"model": path, "error": None or why it cannot
        be explained, ...}; a file that does not load is described with its error, not raised. Default: the
        kind and the class names. `verify` asks for a check of the kind's computation against its framework."""
        report = {"model": str(path), "kind": self.name, "error": None}
        try:
            report["classes"] = self.load(path, LoadOptions()).labels
        except ModelLoadError as exc:
            report["error"] = str(exc)
        return report

    def format_description(self, report: dict) -> str:
        """Returns the `lrp inspect` text of a `describe` report (default: one `key: value` line each)."""
        return "\n".join(f"{key}: {value}" for key, value in report.items())


class Model(ABC):
    """A loaded model of one kind. Public attributes the pipeline reads: `kind`, `path`, `sha256`,
    `load_seconds`, `labels` (class names or None)."""

    kind: ClassVar[str]
    #: The names in Settings.kind_options this kind reads (the CLI's options of one kind); any other is a usage
    #: error (check_kind_options), so that e.g. --text on an image model is refused, not ignored.
    kind_options: ClassVar[frozenset[str]] = frozenset()
    #: The colormap of the kind's pictures when --cmap is not given.
    default_cmap: ClassVar[str] = "jet"
    #: The --method names this kind explains with (`lrp evaluate` compares them all by default).
    methods: ClassVar[tuple[str, ...]] = ("lrp",)
    #: File suffixes (lower case) a folder or glob of inputs yields for this kind.
    input_suffixes: ClassVar[frozenset[str]] = frozenset()
    #: How `--jobs N` runs this kind's inputs (joblib backend): "threading" when most of an input's work releases
    #: the GIL (onnxruntime, NumPy on large arrays), "loky" (N worker processes) when it holds it.
    jobs_backend: ClassVar[str] = "threading"
    path: Path
    sha256: str
    load_seconds: float

    @property
    @abstractmethod
    def labels(self) -> list[str] | None:
        """Returns the class names, index -> name, or None."""

    # -- settings and inputs ------------------------------------------------------------------------------------
    @abstractmethod
    def check_settings(self, settings: Settings) -> None:
        """Raises OptionError when the settings do not fit this model (a method, rule or option it cannot use,
        an option of another kind). Called once before the first input."""

    def check_kind_options(self, settings: Settings) -> None:
        """Raises OptionError naming the kind options (as --options) in `settings` that this kind does not read."""
        foreign = sorted(set(settings.kind_options) - self.kind_options)
        if foreign:
            names = ", ".join("--" + name.replace("_", "-") for name in foreign)
            raise OptionError(f"{names}: not an option of {self.kind} models")

    def expand(self, specs: list[str], settings: Settings) -> list[InputItem]:
        """Returns the items that the INPUT arguments name, in order, output stems distinct.

        Default: files as they are, folders recursed (files with `input_suffixes`, layout kept in the stems),
        glob patterns; a name that matches nothing is kept so that `prepare` reports it missing. A kind whose
        inputs are not one file each (a .jsonl of texts, `-` for stdin, `--text` in settings.kind_options)
        overrides this, builds InputItems with a `source`, and may call `expand_files` for the rest."""
        return expand_files(specs, self.input_suffixes)

    @abstractmethod
    def prepare(self, item: InputItem, settings: Settings) -> object:
        """Returns the item decoded for this model (any object `explain` takes); InputError when it cannot be
        read. Runs once per item, possibly in a worker thread or process."""

    # -- explaining ---------------------------------------------------------------------------------------------
    @abstractmethod
    def explain(self, prepared, settings: Settings) -> list[Explanation]:
        """Returns the explanations of one prepared item: one per target `settings.target` selects (pred, an
        index or label, top:K), by `settings.method` with its `settings.method_options`. Each Explanation's
        `prediction` holds at least `index`, `label` and `score` (the predicted class's score on the kind's own
        scale, a float, or None where the kind has none), and its `target` `index` and `label`."""

    def explain_many(self, prepared: list, settings: Settings, batch_size: int) -> list[list[Explanation] | LrpError]:
        """Returns, per prepared item, its explanations or its LrpError; `batch_size` > 1 allows explaining items
        in one pass. Default: one item at a time."""
        results = []
        for one in prepared:
            try:
                results.append(self.explain(one, settings))
            except LrpError as exc:
                results.append(exc)
        return results

    def score_batch(self, xs: np.ndarray, settings: Settings | None = None, chunk: int = 32) -> np.ndarray:
        """Returns the [N, K] class scores of N inputs stacked on a first axis (what perturbation methods and
        `lrp evaluate` score), at most `chunk` per run where the kind runs batches. Default: the model cannot be
        scored in batches."""
        raise OptionError(f"{self.path}: a {self.kind} model cannot score batches of inputs")

    # -- outputs ------------------------------------------------------------------------------------------------
    @abstractmethod
    def save(self, expl: Explanation, out_dir: Path, stem: str, options: OutputOptions) -> dict:
        """Writes the files of one explanation under out_dir (STEM.json always, the rest the kind's own: images
        write STEM.heatmap.png, STEM.overlay.png, STEM.relevance.npy) all-or-nothing with outputs.write_all;
        returns the JSON document written to STEM.json."""

    @abstractmethod
    def summary_fields(self, document: dict) -> dict:
        """Returns the summary.json/.csv fields of one of this kind's JSON documents (it may be read back from
        an earlier run): target, label, score, f_x, relevance_sum, conservation_error, heatmap (the main
        picture's path)."""

    def printed(self, expl: Explanation, options: OutputOptions) -> list[str]:
        """Returns the lines printed on stdout for one explanation beyond the batch's own line (e.g. a text's
        coloured words with --print, an option in options.extra). Default: none."""
        return []

    def conservation_account(self, document: dict) -> str:
        """Returns the printed words on where the relevance of one of this kind's JSON documents went: its f(x)
        and conservation error (a kind that knows more, e.g. what biases absorbed, says more)."""
        row = self.summary_fields(document)
        return f"f(x)={row['f_x']:.4g}, conservation error {row['conservation_error']:.2e}"

    @abstractmethod
    def heat(self, expl: Explanation) -> np.ndarray:
        """Returns the relevance values the explanation's picture colours (an image's pixel map, a text's token
        relevances): `--normalize global` pools them over a batch into OutputOptions.scale's divisor."""

    def view(self, item: InputItem, settings: Settings):
        """Returns a PIL picture of the input as the model sees it (the HTML report's thumbnails), or None."""
        return None

    # -- commands beyond explain --------------------------------------------------------------------------------
    def compile(self, settings: Settings, out_path: Path, batch_size: int = 1) -> dict:
        """Writes the relevance pass as a standalone ONNX file (`lrp compile`); returns its summary. Default: the
        kind has none."""
        raise OptionError("lrp compile takes an ONNX model")

    def pixels(self, relevance: np.ndarray) -> np.ndarray:
        """Returns the [H, W] pixel relevance of a relevance tensor as this kind's explanations carry it
        (Explanation.relevance, or the raw .npy it saved): what `lrp check` regions and `lrp evaluate` curves
        measure. Default: Unsupported (the kind's explanations are not pictures)."""
        raise Unsupported(f"{self.path}: a {self.kind} model's explanations are not pictures")

    def image_geometry(self, settings: Settings) -> tuple[object, tuple[int, int]]:
        """Returns (the preprocess.PreprocessConfig that maps an input picture onto the model's pixel grid, that
        [H, W] grid): `lrp check` fits region masks with it. Unsupported for a kind without a fixed grid;
        OptionError when the settings' --size does not fit the model."""
        raise Unsupported(f"{self.path}: a {self.kind} model has no fixed pixel grid")

    def flip_input(self, item: InputItem, settings: Settings) -> FlipInput:
        """Returns one input as `lrp evaluate` perturbs it (Unsupported by default)."""
        raise Unsupported(f"{self.path}: lrp evaluate does not perturb the inputs of a {self.kind} model")

    #: The perturbations `lrp evaluate` may apply to this kind's units (empty: its inputs are pictures, evaluated
    #: by flip_input; e.g. ("delete", "unk") for texts, whose words are deleted or replaced by an unknown token).
    unit_perturbations: ClassVar[tuple[str, ...]] = ()
    #: What one unit is called in evaluation.json's settings ("word").
    unit_name: ClassVar[str] = "unit"

    def unit_input(self, item: InputItem, settings: Settings, perturbation: str) -> UnitInput:
        """Returns one input as `lrp evaluate` deletes its units (Unsupported by default; a kind with
        `unit_perturbations` implements it)."""
        raise Unsupported(f"{self.path}: a {self.kind} model's inputs have no deletable units")

    def units(self, expl: Explanation) -> Units:
        """Returns an explanation's relevance per unit, in the order of `unit_input`'s names: what `lrp evaluate`
        orders units by and `lrp check`'s word and regex regions measure (Unsupported by default)."""
        raise Unsupported(f"{self.path}: a {self.kind} model's explanations have no units")

    def check_evaluable(self) -> None:
        """Raises OptionError when `lrp evaluate` cannot run on this model at all (default: it can)."""


def expand_files(specs: list[str], suffixes) -> list[InputItem]:
    """Returns the input files named by files, folders (recursed, layout kept; files with `suffixes`) and glob
    patterns, in order, with distinct stems. A name that matches nothing is kept as is, so that the explain step
    reports it as a missing file."""
    items: list[InputItem] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            items.extend(_folder_items(path, suffixes))
        elif GLOB_CHARS & set(spec) and not path.exists():
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=True))
            items.extend(_glob_items([m for m in matches if m.is_file()]))
            if not matches:
                items.append(InputItem(path, path.stem))
        else:
            items.append(InputItem(path, path.stem))
    return distinct_stems(items)


def _folder_items(folder: Path, suffixes) -> list[InputItem]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    return [InputItem(p, p.relative_to(folder).with_suffix("").as_posix()) for p in files]


def _glob_items(files: list[Path]) -> list[InputItem]:
    """Returns the items of a glob's files, stems relative to their common folder (as a folder keeps its layout),
    so that a/x.png and b/x.png do not write the same outputs."""
    if not files:
        return []
    base = Path(os.path.commonpath([f.parent.absolute() for f in files]))
    return [InputItem(f, f.absolute().relative_to(base).with_suffix("").as_posix()) for f in files]


def distinct_stems(items: list[InputItem]) -> list[InputItem]:
    """Returns the items with no output stem used twice: a later x.jpg beside x.png keeps its extension in the
    stem, and inputs that still collide (x.png named in two folders) get ~2, ~3, ..."""
    seen: set[str] = set()
    distinct = []
    for item in items:
        stem, k = item.stem, 2
        if stem in seen:
            stem = item.stem + item.path.suffix
        while stem in seen:
            stem, k = f"{item.stem}~{k}", k + 1
        seen.add(stem)
        distinct.append(InputItem(item.path, stem, item.source))
    return distinct
