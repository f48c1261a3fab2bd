"""The bag-of-visual-words + kernel SVM kind (paper Section "Pixel-wise Decomposition for Classifiers over Bag of
Words Features"): a scikit-learn pipeline pickled with joblib or saved with skops, explained by Algorithm 1."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lrp_cli import outputs
from lrp_cli.errors import ModelLoadError, OptionError
from lrp_cli.explanation import Explanation, Settings, label_of, prediction, resolve_targets
from lrp_cli.kinds import image_outputs
from lrp_cli.kinds.base import SKLEARN_SUFFIXES, FlipInput, InputItem, Kind, LoadOptions, Model, Subject
from lrp_cli.methods import METHODS
from lrp_cli.preprocess import IMAGE_INPUT_SUFFIXES, open_image, read_labels
from lrp_cli.propagate import LayerRecord, Propagation

def bow_subject(image: np.ndarray) -> Subject:
    """Returns the Subject of an RGB image in [0, 1] for a BoW pipeline: range [0, 1], mean fill mid-grey."""
    x = image.transpose(2, 0, 1)[None].astype(np.float64)
    return Subject(x, np.zeros(3), np.ones(3), np.full(3, 0.5), lambda batch: batch.transpose(0, 2, 3, 1))


class BowKind(Kind):
    """Claims .joblib, .pkl and .skops files."""

    name = "sklearn-bow"

    def claims(self, path: Path) -> bool:
        """Returns True for the suffixes of scikit-learn model files."""
        return path.suffix.lower() in SKLEARN_SUFFIXES

    def load(self, path: Path, options: LoadOptions) -> BowModel:
        """Returns the validated pipeline (ModelLoadError naming the step that is wrong)."""
        from lrp_cli.importers.sklearn_bow import BowModelError, load_bow_model
        try:
            bow = load_bow_model(path)
        except BowModelError as exc:
            raise ModelLoadError(str(exc)) from None
        names = read_labels(Path(options.labels)) if options.labels is not None else [str(c) for c in bow.classes]
        return BowModel(path, bow, outputs.sha256_file(path), 0.0, names)

    def describe(self, path: Path, settings: Settings, verify: bool = False) -> dict:
        """Returns the `lrp inspect` report: the classes, the pipeline's steps, the training image size and
        whether a decision needs --pair (one-vs-one SVMs); the load error instead when it does not load."""
        report = {"model": str(path), "kind": self.name, "error": None}
        try:
            model = self.load(path, LoadOptions())
        except ModelLoadError as exc:
            return report | {"error": str(exc)}
        bow = model.bow
        return report | {"classes": model.labels, "steps": [type(step).__name__ for _, step in bow.pipeline.steps],
                         "input_size": list(bow.input_size) if bow.input_size else None,
                         "needs_pair": bool(bow.one_vs_one)}


@dataclass
class BowModel(image_outputs.ImageOutputs, Model):
    """A scikit-learn bag-of-visual-words + kernel SVM pipeline; its inputs are whole RGB images."""

    path: Path
    bow: object
    sha256: str
    load_seconds: float
    class_names: list[str] | None
    kind = "sklearn-bow"
    layout = "nchw"
    input_suffixes = IMAGE_INPUT_SUFFIXES

    @property
    def labels(self) -> list[str] | None:
        """Returns the class names (the pipeline's classes, or --labels)."""
        return self.class_names

    def check_settings(self, settings: Settings) -> None:
        """Raises OptionError for the options of ONNX models: only LRP (Algorithm 1) explains a BoW pipeline."""
        from lrp_cli.engines import onnx_engine
        onnx_engine.choose(settings.engine, settings.precision, self.kind, settings.method)
        if settings.method in METHODS:
            METHODS[settings.method].resolve(settings.method_options)
        if settings.method != "lrp" or settings.rule or settings.composite or settings.layer_rules:
            raise OptionError("--method/--rule/--composite/--layer-rule apply to ONNX models, not BoW pipelines")

    def prepare(self, item: InputItem, settings: Settings):
        """Returns (input path, RGB picture) of an image."""
        return item.path, open_image(item.path).convert("RGB")

    def explain(self, prepared, settings: Settings) -> list[Explanation]:
        """Returns the explanations of one image (Algorithm 1), tiled as Fig 6 when it is larger than the training
        images."""
        from lrp_cli.bow.explain import explain_bow
        from lrp_cli.importers.sklearn_bow import BowModelError
        input_path, picture = prepared
        image = np.asarray(picture, dtype=np.float64) / 255.0
        count = len(self.labels or self.bow.classes)
        explanations = []
        for target in self._targets(settings.target, count):
            start = time.perf_counter()
            try:
                result = explain_bow(self.bow, image, target, **settings.tiling)
            except BowModelError as exc:
                raise ModelLoadError(str(exc)) from None
            explanations.append(self._explanation(input_path, picture, result, time.perf_counter() - start))
        return explanations

    def _targets(self, spec: str, count: int) -> list[int | None]:
        if spec == "pred":
            return [None]
        if spec.startswith("top:"):
            raise OptionError("--target top:K is not supported for BoW models; give pred, an index or a label")
        return resolve_targets(spec, np.zeros(count), self.labels)

    def _explanation(self, input_path, picture, result, seconds) -> Explanation:
        scores = np.asarray(result.scores, dtype=np.float64)
        layers = [LayerRecord(name, "bow", None, float(total)) for name, total in result.layer_sums]
        extra = {"conservation_error": result.conservation_error, "taylor_residual": result.taylor_residual,
                 "tiles": {"count": result.n_tiles, "tile": result.tile, "stride": result.tile_stride}}
        return Explanation(input_path, None, picture, scores, prediction(self, scores),
                           {"index": int(result.target), "label": label_of(self, int(result.target))},
                           Propagation(result.relevance, float(result.f_x), layers), {}, None, None, None,
                           {"load": self.load_seconds, "explain": seconds}, "lrp", extra)

    def score_batch(self, xs: np.ndarray, settings: Settings | None = None, chunk: int = 0) -> np.ndarray:
        """Returns [N, K] decision values of N RGB images ([N, H, W, 3] in [0, 1]), each the mean over its tiles
        as `explain` tiles it (`settings.tiling`); one image at a time, whatever `chunk`."""
        from lrp_cli.bow.classifier import class_scores
        from lrp_cli.bow.explain import _bow_vectors, _windows, resolve_tiling
        tiling = settings.tiling if settings is not None else {}
        rows = []
        for image in np.asarray(xs, dtype=np.float64):
            grid = resolve_tiling(self.bow, image.shape[:2], tiling.get("tile"), tiling.get("tile_stride"))
            _, features = _bow_vectors(self.bow, image, _windows(image.shape[:2], grid))
            rows.append(class_scores(self.bow.classifier, features).mean(axis=0))
        return np.stack(rows) if rows else np.zeros((0, len(self.bow.classes)))

    def flip_input(self, item: InputItem, settings: Settings) -> FlipInput:
        """Returns the image in [0, 1] as pixel flipping perturbs it (bow_subject), shown as it is."""
        prepared = self.prepare(item, settings)
        image = np.asarray(prepared[1], dtype=np.float64) / 255.0
        return FlipInput(bow_subject(image), lambda t: Image.fromarray(
            np.clip(np.round(t[0].transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)), prepared)

    def view(self, item: InputItem, settings: Settings):
        """Returns the whole RGB image: a BoW pipeline sees all of it."""
        return open_image(item.path).convert("RGB")
