"""Load scikit-learn bag-of-words SVM pipelines (joblib/pickle or skops) for LRP explanations.

A supported model is a sklearn Pipeline of exactly these steps, in order:
    lrp_cli.bow.DenseFeatures -> lrp_cli.bow.CodebookMapping -> lrp_cli.bow.PMeansPooling ->
    SVC | NuSVC | OneVsRestClassifier(SVC | NuSVC)
with a kernel among linear, rbf, poly or lrp_cli.bow.kernels (BowKernel, hik_kernel, ...).
`train_bow` saves it wrapped as {"format": FORMAT, "pipeline": ..., "metadata": {...}}; a bare
Pipeline is accepted too (empty metadata).
"""

from __future__ import annotations

import pickle
from pathlib import Path

from sklearn.pipeline import Pipeline

from lrp_cli.bow.classifier import ClassifierError, check_classifier
from lrp_cli.bow.codebook import CodebookMapping
from lrp_cli.bow.features import DenseFeatures
from lrp_cli.bow.kernels import UnsupportedKernelError
from lrp_cli.bow.model import FORMAT, BowModel, BowModelError
from lrp_cli.bow.pooling import PMeansPooling

__all__ = ["FORMAT", "BowModel", "BowModelError", "load_bow_model"]  # the model types' home is bow/model.py

STEP_TYPES = (DenseFeatures, CodebookMapping, PMeansPooling)
STEP_ROLES = ("local features (DenseFeatures)", "codebook mapping (CodebookMapping)",
              "pooling (PMeansPooling)", "classifier (SVC, NuSVC or OneVsRestClassifier)")

# Types skops may instantiate: our own plus the sklearn estimators a supported pipeline contains.
SKOPS_TRUSTED = [
    "lrp_cli.bow.features.DenseFeatures",
    "lrp_cli.bow.codebook.CodebookMapping",
    "lrp_cli.bow.pooling.PMeansPooling",
    "lrp_cli.bow.kernels.BowKernel",
    "lrp_cli.bow.kernels.linear_kernel",
    "lrp_cli.bow.kernels.hik_kernel",
    "lrp_cli.bow.kernels.additive_chi2_kernel",
    "lrp_cli.bow.kernels.chi2_kernel",
    "lrp_cli.bow.kernels.rbf_kernel",
    "sklearn.pipeline.Pipeline",
    "sklearn.svm._classes.SVC",
    "sklearn.svm._classes.NuSVC",
    "sklearn.multiclass.OneVsRestClassifier",
    "sklearn.preprocessing._label.LabelBinarizer",
    "builtins.slice",
]


def _read(path: Path):
    """Return the object stored in a .joblib/.pkl or .skops file."""
    if path.suffix.lower() == ".skops":
        import skops.io as sio  # a required dependency; imported here so that loading a .joblib never needs it
        return sio.load(path, trusted=SKOPS_TRUSTED)
    import joblib

    return joblib.load(path)


def _unwrap(obj, name: str):
    """Return (pipeline, metadata) from a saved payload or a bare Pipeline."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj, meta = obj.get("pipeline"), dict(obj.get("metadata") or {})
    else:
        meta = {}
    if not isinstance(obj, Pipeline):
        raise BowModelError(f"{name}: expected a scikit-learn BoW Pipeline, found {type(obj).__name__}")
    return obj, meta


def _check_steps(pipe: Pipeline, name: str) -> None:
    """Raise BowModelError unless the pipeline has exactly the supported steps, in order."""
    steps = [s for _, s in pipe.steps]
    for i, (role, cls) in enumerate(zip(STEP_ROLES, STEP_TYPES)):
        if i >= len(steps) - 1 or not isinstance(steps[i], cls):
            raise BowModelError(f"{name}: pipeline step {i + 1} must be the {role}; missing or wrong step")
    if len(steps) != 4:
        raise BowModelError(f"{name}: pipeline has {len(steps)} steps; expected features, mapping, pooling, classifier")
    try:
        check_classifier(steps[3])
    except UnsupportedKernelError as exc:
        raise BowModelError(f"{name}: unsupported kernel: {exc}") from exc
    except ClassifierError as exc:
        raise BowModelError(f"{name}: {exc}") from exc
    if not hasattr(steps[1], "centers_"):
        raise BowModelError(f"{name}: the codebook mapping step is not fitted")


def _input_size(meta: dict):
    """Return (H, W) of the training images from metadata, or None when they varied."""
    size = meta.get("input_size")
    return tuple(int(v) for v in size) if size else None


def load_bow_model(path) -> BowModel:
    """Return the BowModel stored at `path` (.joblib/.pkl via joblib, .skops via skops), or raise BowModelError."""
    p = Path(path)
    name = p.name
    if not p.is_file():
        raise BowModelError(f"{name}: no such file")
    try:
        obj = _read(p)
    except BowModelError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, ImportError, ModuleNotFoundError, OSError) as exc:
        raise BowModelError(f"{name}: not a readable model file ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
    except Exception as exc:  # skops raises its own exception types (e.g. untrusted types)
        raise BowModelError(f"{name}: cannot load model ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
    pipe, meta = _unwrap(obj, name)
    _check_steps(pipe, name)
    clf = pipe.steps[-1][1]
    classes = [str(c) for c in (meta.get("classes") or clf.classes_)]
    if len(classes) != len(clf.classes_):  # metadata from another model: trust the classifier
        classes = [str(c) for c in clf.classes_]
    return BowModel(pipeline=pipe, path=str(p), classes=classes, metadata=meta, input_size=_input_size(meta))
