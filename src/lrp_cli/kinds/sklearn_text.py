"""The scikit-learn text-pipeline kind (issue 19) behind the model-kind protocol of lrp_cli.kinds.base. The
registry lists it before the BoW kind, whose suffixes it shares: `claims` opens the file to tell them apart.
Kind options read from settings.kind_options (and OutputOptions.extra, the same dict): text, text_field,
id_field, label_field, print, text_formats; from settings.tiling: pair (the CLI's --pair, shared with the BoW
kind); from LoadOptions.extra: vectorizer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lrp_cli.errors import ModelLoadError, OptionError
from lrp_cli.explanation import Explanation, Settings
from lrp_cli.kinds.base import SKLEARN_SUFFIXES, InputItem, Kind, LoadOptions, Model, UnitInput
from lrp_cli.kinds.text_outputs import TextOutputs
from lrp_cli.methods import METHODS

if TYPE_CHECKING:  # scikit-learn is imported only when a scikit-learn model is named: `lrp --help` stays fast
    from lrp_cli.text.pipeline import TextModel



class SklearnTextKind(Kind):
    """Claims scikit-learn model files whose pipeline starts with a text vectorizer."""

    name = "sklearn-text"

    def __init__(self):
        self._read = None  # (path, size, mtime, content) of the file claims last read, so load need not again

    def claims(self, path: Path) -> bool:
        """Returns True for a .joblib/.pkl/.skops file holding a scikit-learn estimator that is not a BoW image
        pipeline: a Pipeline whose first step is a text vectorizer, or a bare classifier (--vectorizer FILE) or
        other pipeline, which `load` then accepts or refuses naming the step."""
        if path.suffix.lower() not in SKLEARN_SUFFIXES:
            return False
        from lrp_cli.text.pipeline import flat_steps, is_vectorizer, read_model_file
        try:
            content = read_model_file(path)
        except ModelLoadError:
            return False
        from sklearn.base import BaseEstimator

        steps = flat_steps(content)
        first = steps[0][1] if steps else None
        if is_vectorizer(first) or isinstance(first, BaseEstimator) and not type(first).__module__.startswith(
                "lrp_cli.bow"):
            self._read = (path, *_signature(path), content)
            return True
        return False

    def load(self, path: Path, options: LoadOptions) -> "SklearnTextModel":
        """Returns the validated text pipeline (ModelLoadError naming the step that is wrong; OptionError for the
        load options of image models)."""
        given = [flag for flag, value in (("--output", options.output), ("--labels", options.labels),
                                          ("--layout", options.layout)) if value is not None]
        if given:
            raise OptionError(f"{', '.join(given)}: not an option of scikit-learn text pipelines (class names "
                              "come from the classifier)")
        read, self._read = self._read, None
        content = read[-1] if read and read[:-1] == (path, *_signature(path)) else None
        from lrp_cli.text.pipeline import load_text_model
        return SklearnTextModel(path, load_text_model(path, dict(options.extra).get("vectorizer"), content))


def _foreign_options(settings: Settings, methods) -> list[tuple[str, object]]:
    """Returns (--option, its value) of every option of the image kinds a text pipeline cannot take (`methods`:
    those the kind explains with)."""
    pre = settings.preprocess
    return [("--method " + settings.method, settings.method not in methods), ("--rule", settings.rule),
            ("--composite", settings.composite), ("--layer-rule", settings.layer_rules),
            ("--precision " + settings.precision, settings.precision != "float32"),
            ("--engine " + settings.engine, settings.engine != "auto"), ("--providers", settings.providers),
            ("--tile/--tile-stride", set(settings.tiling) - {"pair"}),
            *((f"--{name}", pre.get(name) is not None) for name in ("preset", "size", "resize", "mean", "std")),
            ("--bgr/--rgb", pre.get("bgr") is not None)]


def _signature(path: Path) -> tuple:
    """Returns (size, mtime) of a file, which change when it is rewritten."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@dataclass
class SklearnTextModel(TextOutputs, Model):
    """A scikit-learn text pipeline; its inputs are texts (files, rows, --text, stdin)."""

    path: Path
    text_model: TextModel
    load_seconds: float = 0.0
    kind = "sklearn-text"
    unit_perturbations = ("delete", "unk")  # text.units.replacement: the characters removed, or UNKWORDZ
    kind_options = frozenset({"text", "text_field", "id_field", "label_field", "print", "text_formats",
                              "vectorizer"})

    @property
    def sha256(self) -> str:
        """Returns the model file's SHA-256."""
        return self.text_model.sha256

    @property
    def labels(self) -> list[str]:
        """Returns the class names (the classifier's classes_)."""
        return self.text_model.classes

    def check_settings(self, settings: Settings) -> None:
        """Raises OptionError (one line naming the option) for the options of other kinds (a text pipeline is
        explained by LRP only, without image preprocessing or engines), a --target top:K or unknown class, and a
        --pair that is missing (one-vs-one SVM) or not wanted."""
        given = [flag for flag, value in _foreign_options(settings, self.methods) if value]
        if given:
            raise OptionError(f"{', '.join(given)}: not an option of scikit-learn text pipelines (they are "
                              f"explained by {', '.join(self.methods)}, the decision value onto the words)")
        METHODS[settings.method].resolve(settings.method_options)
        from lrp_cli.text.explain import resolve_class

        if settings.target.startswith("top:"):
            raise OptionError(f"--target {settings.target}: text pipelines take pred, a class index or a label")
        if settings.target != "pred":
            resolve_class(self.text_model, settings.target, "--target")
        pair = settings.tiling.get("pair")
        if pair is not None and not self.text_model.one_vs_one:
            raise OptionError("--pair applies to one-vs-one multi-class SVMs; this model needs none")
        if self.text_model.one_vs_one and pair is None:
            raise OptionError(f"{self.path}: a one-vs-one multi-class SVM: give the two classes to compare "
                              f"(--pair A,B; classes: {', '.join(self.labels)})")
        for value in pair or ():
            resolve_class(self.text_model, value, "--pair class")
        self.check_text_formats(settings)

    def prepare(self, item: InputItem, settings: Settings):
        """Returns (text item, its text)."""
        return item.source, item.source.load()

    def explain(self, prepared, settings: Settings) -> list[Explanation]:
        """Returns the explanation of one text for the target (--target pred/INDEX/LABEL; --pair for ovo SVMs)."""
        item, text = prepared
        start = time.perf_counter()
        from lrp_cli.text.explain import explain_text
        ex = explain_text(self.text_model, text, None if settings.target == "pred" else settings.target,
                          settings.tiling.get("pair"), dict(item.source))
        return [Explanation(input_path=item.path or Path(item.stem), x=ex.relevance, picture=None,
                            model_output=np.asarray([ex.f_x]), prediction=ex.prediction, target=ex.target,
                            propagation=None, rules={}, composite=None, ir_max_abs_diff=0.0, ir_diff_relative=0.0,
                            timing={"explain": time.perf_counter() - start}, extra={"text": ex})]

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
        label = units.row_label(item.source.source,
                                lambda value: resolve_class(self.text_model, value, f"{item.path}: label"))
        return UnitInput(names, target, score, prepared, label)
