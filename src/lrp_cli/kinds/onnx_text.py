"""The ONNX text kind: an ONNX model that reads token ids ([N, T], an embedding first) fed with text, as its
sidecar's [text] section says (vocabulary, lowercase, token_pattern, unknown/start/end/padding ids, length).

The numbers are the ONNX kind's: the text becomes an id tensor (text.vocabulary), the ONNX model this kind wraps
explains it (LRP, gradient, gradient x input), and each word gets the relevance of its id's position; start, end
and padding positions are not words and are not shown. The outputs are the text kind's (text.render): STEM.json
(lrp-cli/text-explanation/1), STEM.html and STEM.png.

`lrp evaluate` deletes its words (text.units.id_copies: their ids removed, or replaced by the unknown_id) and
scores each length's copies as one batch of the ONNX model bound to that length.

The registry hands this kind the ONNX kind that loads the model (the kinds stay independent modules). Kind
options read from settings.kind_options (and OutputOptions.extra): text, text_field, id_field, label_field,
print, text_formats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lrp_cli import absorption
from lrp_cli.errors import LrpError, ModelLoadError, OptionError
from lrp_cli.explanation import Explanation, Settings, class_index, resolve_targets
from lrp_cli.kinds import onnx_inspect
from lrp_cli.kinds.base import InputItem, Kind, LoadOptions, Model, UnitInput
from lrp_cli.kinds.text_outputs import TextOutputs
from lrp_cli.preprocess import load_sidecar, sidecar_path
from lrp_cli.text.document import TextExplanation
from lrp_cli.text.vocabulary import Encoded, Tokenizer

#: The token count `lrp inspect` binds a model with a symbolic token axis to.
INSPECT_LENGTH = 16
#: Perturbed id copies per onnxruntime run in `lrp evaluate` (a step's copies of one text are far fewer).
EVALUATE_CHUNK = 1024


class OnnxTextKind(Kind):
    """Claims ONNX files whose sidecar has a [text] vocabulary; loads them with the ONNX kind it is given."""

    name = "onnx-text"

    def __init__(self, onnx_kind: Kind):
        self.onnx_kind = onnx_kind

    def claims(self, path: Path) -> bool:
        """Returns True when the file's sidecar names a [text] vocabulary (a sidecar with errors is left to the
        ONNX kind, whose loader reports them)."""
        if not sidecar_path(path).is_file():
            return False
        try:
            return "vocabulary" in load_sidecar(path).text
        except LrpError:
            return False

    def load(self, path: Path, options: LoadOptions) -> "OnnxTextModel":
        """Returns the ONNX model with its tokenizer; ModelLoadError when the model does not read [N, T] ids or the
        vocabulary cannot be read."""
        onnx = self.onnx_kind.load(path, options)
        shape = tuple(onnx.unbound.shape if onnx.unbound is not None else onnx.graph.input_shape)
        if len(shape) != 2:
            raise ModelLoadError(f"{path}: a [text] model reads token ids [N, T]; its input is {list(shape)}")
        fixed = shape[1] if isinstance(shape[1], int) else None
        tokenizer = Tokenizer.from_sidecar(onnx.sidecar.text, sidecar_path(path), fixed)
        return OnnxTextModel(path, onnx, tokenizer)

    def describe(self, path: Path, settings: Settings, verify: bool = False) -> dict:
        """Returns the ONNX kind's `lrp inspect` report of the model bound to INSPECT_LENGTH ids (or its fixed
        length), with this kind's name and the [text] settings."""
        report = onnx_inspect.describe(_Bound(self), path, settings, verify)
        return report | {"kind": self.name, "text": load_sidecar(path).text}

    def format_description(self, report: dict) -> str:
        """Returns the ONNX kind's text of the report, then the [text] settings."""
        text = {k: v for k, v in report.items() if k != "text"}
        return onnx_inspect.format_report(text) + f"\n[text]: {report.get('text')}"


class _Bound:
    """What `onnx_inspect.describe` loads through: the text kind's ONNX model with its token axis bound (a text
    fixes it per input; inspect shows the graph at INSPECT_LENGTH ids)."""

    def __init__(self, kind: OnnxTextKind):
        self.kind = kind

    def load(self, path: Path, options: LoadOptions):
        model = self.kind.load(path, options)
        return model.onnx.bind((1, model.tokenizer.length or INSPECT_LENGTH))


@dataclass
class OnnxTextModel(TextOutputs, Model):
    """An ONNX token-id model and the tokenizer that feeds it text."""

    path: Path
    onnx: Model
    tokenizer: Tokenizer
    load_seconds: float = 0.0
    kind = "onnx-text"
    methods = ("lrp", "gradient", "gradient-x-input")
    unit_perturbations = ("delete", "unk")  # text.units.id_fill: the word's id removed, or the unknown_id
    kind_options = frozenset({"text", "text_field", "id_field", "label_field", "print", "text_formats"})

    @property
    def sha256(self) -> str:
        """Returns the ONNX file's SHA-256."""
        return self.onnx.sha256

    @property
    def labels(self) -> list[str] | None:
        """Returns the class names of the sidecar (or --labels), if any."""
        return self.onnx.labels

    def check_settings(self, settings: Settings) -> None:
        """Raises OptionError for a method that does not explain token ids or image preprocessing options, then
        the ONNX model's own checks."""
        if settings.method not in self.methods:
            raise OptionError(f"--method {settings.method}: a text model reading token ids is explained by "
                              f"{', '.join(self.methods)}")
        pictures = sorted(name for name, value in settings.preprocess.items() if value is not None)
        if pictures:
            raise OptionError(f"{', '.join('--' + name for name in pictures)}: not an option of text models (the "
                              "sidecar's [text] section says how text becomes ids)")
        self.check_text_formats(settings)
        self.onnx.check_settings(settings)

    def prepare(self, item: InputItem, settings: Settings) -> tuple:
        """Returns (item, text, the ONNX model bound to the ids' length, the Encoded text)."""
        text = item.source.load()
        encoded = self.tokenizer.encode(text, str(item.path))
        model = self.onnx.bind(encoded.ids.shape)
        model.check_ids(encoded.ids, item.path, "the vocabulary gives ")
        return item, text, model, encoded

    def explain(self, prepared, settings: Settings) -> list[Explanation]:
        """Returns the explanations of one text, one per target (--target pred/INDEX/LABEL/top:K)."""
        item, _, model, encoded = prepared
        return [self._words(e, prepared) for e in self.onnx.explain((model, encoded.ids, None, item.path), settings)]

    def explain_many(self, prepared: list, settings: Settings, batch_size: int) -> list[list[Explanation] | LrpError]:
        """Returns each text's explanations or error; texts of one id length run in passes of `batch_size`."""
        tensors = [(model, encoded.ids, None, item.path) for item, _, model, encoded in prepared]
        results = self.onnx.explain_many(tensors, settings, batch_size)
        return [r if isinstance(r, LrpError) else [self._words(e, p) for e in r] for r, p in zip(results, prepared)]

    def _words(self, expl: Explanation, prepared) -> Explanation:
        """Returns the explanation with extra["text"]: its TextExplanation."""
        item, text, _, encoded = prepared
        return replace(expl, extra=expl.extra | {"text": text_explanation(self, expl, item, text, encoded)})

    def unit_input(self, item: InputItem, settings: Settings, perturbation: str) -> UnitInput:
        """Returns the text's words read (positions in its ids) as `lrp evaluate` deletes them or replaces them by
        the unknown id, scored by one batched onnxruntime run per length of the copies; the target resolved on
        the whole text, the true class from the row's --label-field."""
        from lrp_cli.text import units
        if settings.target.startswith("top:"):
            raise OptionError(f"--target {settings.target}: lrp evaluate follows one class (pred, an index or a "
                              "label)")
        prepared = self.prepare(item, settings)
        encoded = prepared[3]
        names, _ = units.words([word[:3] for word in encoded.words])
        fill = units.id_fill(self.tokenizer, perturbation, sidecar_path(self.path))

        def score(keep: np.ndarray) -> np.ndarray:
            return self._score_copies(units.id_copies(encoded, self.tokenizer, keep, fill), len(keep))

        full = score(np.ones((1, len(names)), dtype=bool))[0]
        target = resolve_targets(settings.target, full, self.labels)[0]
        label = units.row_label(item.source.source, lambda value: self._class(value, full.size, item.path))
        return UnitInput(names, target, score, prepared, label)

    def _score_copies(self, groups: dict, rows: int) -> np.ndarray:
        """Returns the [rows, K] scores of id copies grouped by length (text.units.id_copies), each group scored
        by the ONNX model bound to its length."""
        out = None
        for length, (index, ids) in groups.items():
            model = self.onnx.bind((1, length))
            values = model.score_batch(ids, chunk=EVALUATE_CHUNK)
            out = np.empty((rows, values.shape[1]), dtype=values.dtype) if out is None else out
            out[index] = values
        return out

    def _class(self, value, count: int, name) -> int:
        """Returns the class index a row's label names (a label or an index); OptionError naming the row."""
        try:
            return class_index(str(value), count, self.labels)
        except OptionError:
            raise OptionError(f"{name}: label {value!r}: not a class of the model (classes: "
                              f"{', '.join(self.labels or map(str, range(count)))})") from None

    def conservation_account(self, document: dict) -> str:
        """Returns 'sum R over the words = S of f(x) = F; B kept apart (biases, stabilisers, start/end tokens)'."""
        c = document["conservation"]
        kept = "not separable (not LRP)" if c["intercept"] is None else f"{c['intercept']:.4g} kept apart"
        return (f"sum R over the words = {c['tokens_sum']:.4g} of f(x) = {c['f_x']:.4g}; {kept} (biases, "
                f"stabilisers, start/end tokens); residual {c['residual']:.2g}")


def text_explanation(model: OnnxTextModel, expl: Explanation, item: InputItem, text: str,
                     encoded: Encoded) -> TextExplanation:
    """Returns the TextExplanation of an id-tensor explanation: each word read gets the relevance at its
    position; the intercept (LRP only) is what the biases and stabilisers absorbed plus the start/end tokens'
    relevance."""
    relevance = np.asarray(expl.relevance, dtype=np.float64).reshape(-1)
    tokens = [{"text": word, "start": start, "end": end, "relevance": float(relevance[p])}
              for word, start, end, p in encoded.words]
    special_sum = float(relevance[encoded.specials].sum())
    absorbed = absorption.summary(expl.propagation, expl.method)
    f_x = float(expl.propagation.f_x)
    intercept = None
    if absorbed is not None and math.isfinite(absorbed["fraction"]):
        intercept = absorbed["fraction"] * f_x + special_sum
    method = {"name": expl.method, "decision": f"the pre-softmax score of {expl.target['label']} (ONNX output)",
              "composite": expl.composite, "rules": expl.rules, "engine": expl.extra.get("engine"),
              "ids": int(encoded.ids.shape[1])}
    return TextExplanation(
        text=text, tokens=tokens, f_x=f_x, intercept=intercept, target=expl.target, prediction=expl.prediction,
        method=method, model={"path": str(model.path), "sha256": model.sha256, "kind": model.kind},
        source=dict(item.source.source), notes=_notes(encoded, special_sum))


def _notes(encoded: Encoded, special_sum: float) -> list[str]:
    """Returns the plain sentences on words the model did not read as themselves and on the start/end tokens."""
    counts, notes = encoded.counts, []
    if counts["unknown"]:
        notes.append(f"{counts['unknown']} word(s) are not in the vocabulary and were read as the unknown token.")
    if counts["dropped"]:
        notes.append(f"{counts['dropped']} word(s) are not in the vocabulary and were left out (no unknown_id).")
    if counts["truncated"]:
        notes.append(f"The text was cut to the model's length: its last {counts['truncated']} word(s) were not "
                     "read.")
    if encoded.specials:
        notes.append(f"The start/end tokens carry {special_sum:+.4g} of the relevance, counted in the intercept.")
    return notes
