"""The scikit-learn text-pipeline kind (issue 19) behind the model-kind protocol of lrp_cli.kinds.base. The
registry lists it before the BoW kind, whose suffixes it shares: `claims` opens the file to tell them apart.
Kind options read from settings.kind_options: text, text_field, id_field, label_field, pair; from LoadOptions.extra:
vectorizer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lrp_cli.errors import InputError, ModelLoadError, OptionError
from lrp_cli.explanation import Explanation, Settings
from lrp_cli.kinds.base import InputItem, Kind, LoadOptions, Model, OutputOptions, UnitInput, Units
from lrp_cli.text import inputs, render

if TYPE_CHECKING:  # scikit-learn is imported only when a scikit-learn model is named: `lrp --help` stays fast
    from lrp_cli.text.pipeline import TextModel

SUFFIXES = (".joblib", ".pkl", ".skops")


class SklearnTextKind(Kind):
    """Claims scikit-learn model files whose pipeline starts with a text vectorizer."""

    name = "sklearn-text"

    def __init__(self):
        self._read = None  # (path, size, mtime, content) of the file claims last read, so load need not again

    def claims(self, path: Path) -> bool:
        """Returns True for a .joblib/.pkl/.skops file holding a Pipeline whose first step is a text vectorizer."""
        if path.suffix.lower() not in SUFFIXES:
            return False
        from lrp_cli.text.pipeline import flat_steps, is_vectorizer, read_model_file
        try:
            content = read_model_file(path)
        except ModelLoadError:
            return False
        steps = flat_steps(content)
        if steps and is_vectorizer(steps[0][1]):
            self._read = (path, *_signature(path), content)
            return True
        return False

    def load(self, path: Path, options: LoadOptions) -> "SklearnTextModel":
        """Returns the validated text pipeline (ModelLoadError naming the step that is wrong)."""
        read, self._read = self._read, None
        content = read[-1] if read and read[:-1] == (path, *_signature(path)) else None
        from lrp_cli.text.pipeline import load_text_model
        return SklearnTextModel(path, load_text_model(path, dict(options.extra).get("vectorizer"), content))


def _signature(path: Path) -> tuple:
    """Returns (size, mtime) of a file, which change when it is rewritten."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@dataclass
class SklearnTextModel(Model):
    """A scikit-learn text pipeline; its inputs are texts (files, rows, --text, stdin)."""

    path: Path
    text_model: TextModel
    load_seconds: float = 0.0
    kind = "sklearn-text"
    input_suffixes = inputs.TEXT_SUFFIXES | inputs.TABLE_SUFFIXES
    unit_perturbations = ("delete", "unk")  # text.units.replacement: the characters removed, or UNKWORDZ
    unit_name = "word"

    @property
    def sha256(self) -> str:
        """Returns the model file's SHA-256."""
        return self.text_model.sha256

    @property
    def labels(self) -> list[str]:
        """Returns the class names (the classifier's classes_)."""
        return self.text_model.classes

    def check_settings(self, settings: Settings) -> None:
        """Raises OptionError for methods and rules of other kinds (a text pipeline is explained by LRP only)."""
        if settings.method != "lrp" or settings.rule or settings.composite or settings.layer_rules:
            raise OptionError("--method/--rule/--composite/--layer-rule do not apply to scikit-learn text pipelines")

    def expand(self, specs: list[str], settings: Settings) -> list[InputItem]:
        """Returns one item per text: files, folders and globs of .txt, `-`, --text, rows of .jsonl/.csv."""
        opts = settings.kind_options
        items = inputs.text_items(specs, opts.get("text"), opts.get("text_field"), opts.get("id_field"),
                                  label_field=opts.get("label_field"))
        return [InputItem(it.path or Path(it.stem), it.stem, it) for it in items]

    def prepare(self, item: InputItem, settings: Settings):
        """Returns (text item, its text)."""
        return item.source, item.source.load()

    def explain(self, prepared, settings: Settings) -> list[Explanation]:
        """Returns the explanation of one text for the target (--target pred/INDEX/LABEL; --pair for ovo SVMs)."""
        item, text = prepared
        start = time.perf_counter()
        from lrp_cli.text.explain import explain_text
        ex = explain_text(self.text_model, text, None if settings.target == "pred" else settings.target,
                          settings.kind_options.get("pair"), dict(item.source))
        return [Explanation(input_path=item.path or Path(item.stem), x=ex.relevance, picture=None,
                            model_output=np.asarray([ex.f_x]), prediction=ex.prediction, target=ex.target,
                            propagation=None, rules={}, composite=None, ir_max_abs_diff=0.0, ir_diff_relative=0.0,
                            timing={"explain": time.perf_counter() - start}, extra={"text": ex})]

    def save(self, expl: Explanation, out_dir: Path, stem: str, options: OutputOptions) -> dict:
        """Writes STEM.json, STEM.html and STEM.png (all or none; options.extra["text_formats"] may leave out the
        HTML and PNG); returns the JSON document."""
        cmap = options.extra.get("text_cmap", render.DEFAULT_CMAP)
        formats = options.extra.get("text_formats", render.FORMATS)
        return render.write_outputs(expl.extra["text"], out_dir, stem, cmap, options.scale, formats)

    def summary_fields(self, document: dict) -> dict:
        """Returns the summary columns of a text explanation's JSON document."""
        return {"target": document["target"]["index"], "label": document["target"]["label"],
                "score": document["prediction"].get("probability"), "f_x": document["f_x"],
                "relevance_sum": document["relevance"]["sum"],
                "conservation_error": document["conservation"]["relative_error"],
                "heatmap": document.get("outputs", {}).get("png")}

    def heat(self, expl: Explanation) -> np.ndarray:
        """Returns the token relevances, which the word colours scale."""
        return expl.extra["text"].relevance

    def unit_input(self, item: InputItem, settings: Settings, perturbation: str) -> UnitInput:
        """Returns the text's words as `lrp evaluate` deletes them (or replaces them by an unknown word), scored
        by one vectorizer + pipeline call per batch of copies; the target resolved on the whole text, the true
        class from the row's --label-field."""
        from lrp_cli.text import units
        from lrp_cli.text.explain import resolve_class
        prepared = self.prepare(item, settings)
        text = prepared[1]
        names, spans = units.text_words(self.text_model, text, str(item.path))
        fill = units.replacement(self.text_model, perturbation)

        def score(keep: np.ndarray) -> np.ndarray:
            return units.scores(self.text_model, units.perturbed_texts(text, spans, keep, fill))

        full = units.scores(self.text_model, [text])[0]
        target = (int(np.argmax(full)) if settings.target == "pred"
                  else resolve_class(self.text_model, settings.target, "--target"))
        label = dict(item.source.source).get("label")
        if label is not None:
            try:
                label = resolve_class(self.text_model, label, f"{item.path}: label")
            except OptionError as exc:  # one row's label: that input fails, the batch goes on
                raise InputError(str(exc)) from None
        return UnitInput(names, target, score, prepared, label)

    def units(self, expl: Explanation) -> Units:
        """Returns the relevance of the explanation's words (whitespace runs left out), with their spans."""
        from lrp_cli.text.units import words
        ex = expl.extra["text"]
        names, spans = words([(t["text"], t["start"], t["end"]) for t in ex.tokens])
        relevance = np.asarray([t["relevance"] for t in ex.tokens if not t["text"].isspace()], dtype=np.float64)
        return Units(names, relevance, ex.text, spans)
