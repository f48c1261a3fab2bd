"""Load and validate a scikit-learn text pipeline (joblib or skops): vectorizer, optional steps, classifier.

Supported, in order:
    CountVectorizer | TfidfVectorizer | HashingVectorizer
    -> any of TfidfTransformer, Normalizer, MaxAbsScaler, StandardScaler(with_mean=False), a selector with
       get_support (SelectKBest, SelectFromModel, ...), TruncatedSVD
    -> a linear classifier (LinearSVC, SGDClassifier, LogisticRegression, RidgeClassifier, Perceptron,
       PassiveAggressiveClassifier, any LinearClassifierMixin), SVC / NuSVC (linear, rbf, poly, the BoW kernels),
       OneVsRestClassifier over those SVMs or over linear models, MultinomialNB / ComplementNB,
       CalibratedClassifierCV over a linear model.
A bare classifier (or a Pipeline without a vectorizer) is accepted with a separately saved vectorizer file.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer, TfidfTransformer
from sklearn.linear_model._base import LinearClassifierMixin
from sklearn.pipeline import Pipeline

from lrp_cli.errors import ModelLoadError

VECTORIZERS = "CountVectorizer, TfidfVectorizer, HashingVectorizer"
TRANSFORMS = ("TfidfTransformer, Normalizer, MaxAbsScaler, StandardScaler(with_mean=False), "
              "a selector with get_support (SelectKBest, SelectFromModel, ...), TruncatedSVD")
CLASSIFIERS = ("LinearSVC, SGDClassifier, LogisticRegression, RidgeClassifier, Perceptron, "
               "PassiveAggressiveClassifier, SVC/NuSVC (linear, rbf, poly, lrp_cli.bow kernels), "
               "OneVsRestClassifier(SVC or a linear model), MultinomialNB, ComplementNB, "
               "CalibratedClassifierCV(linear model)")

# Types skops may instantiate: the estimators a supported pipeline contains and what they hold.
SKOPS_TRUSTED = [
    "sklearn.pipeline.Pipeline",
    "sklearn.feature_extraction.text.CountVectorizer", "sklearn.feature_extraction.text.TfidfVectorizer",
    "sklearn.feature_extraction.text.HashingVectorizer", "sklearn.feature_extraction.text.TfidfTransformer",
    "sklearn.preprocessing._data.Normalizer", "sklearn.preprocessing._data.MaxAbsScaler",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.feature_selection._univariate_selection.SelectKBest",
    "sklearn.feature_selection._univariate_selection.SelectPercentile",
    "sklearn.feature_selection._univariate_selection.chi2",
    "sklearn.feature_selection._univariate_selection.f_classif",
    "sklearn.feature_selection._from_model.SelectFromModel",
    "sklearn.decomposition._truncated_svd.TruncatedSVD",
    "sklearn.svm._classes.LinearSVC", "sklearn.svm._classes.SVC", "sklearn.svm._classes.NuSVC",
    "sklearn.linear_model._stochastic_gradient.SGDClassifier",
    "sklearn.linear_model._logistic.LogisticRegression", "sklearn.linear_model._ridge.RidgeClassifier",
    "sklearn.linear_model._perceptron.Perceptron",
    "sklearn.linear_model._passive_aggressive.PassiveAggressiveClassifier",
    "sklearn.naive_bayes.MultinomialNB", "sklearn.naive_bayes.ComplementNB",
    "sklearn.calibration.CalibratedClassifierCV", "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration", "sklearn.isotonic.IsotonicRegression",
    "sklearn.frozen._frozen.FrozenEstimator",
    "sklearn.multiclass.OneVsRestClassifier", "sklearn.preprocessing._label.LabelBinarizer",
    "sklearn.preprocessing._label.LabelEncoder",
    "sklearn.utils._bunch.Bunch",
    "lrp_cli.bow.kernels.BowKernel", "lrp_cli.bow.kernels.linear_kernel", "lrp_cli.bow.kernels.hik_kernel",
    "lrp_cli.bow.kernels.additive_chi2_kernel", "lrp_cli.bow.kernels.chi2_kernel",
    "lrp_cli.bow.kernels.rbf_kernel",
    "scipy.sparse._csr.csr_matrix", "scipy.sparse._csr.csr_array",  # an SVM fitted on sparse data keeps these
    "builtins.slice", "builtins.frozenset", "numpy.float64", "numpy.float32", "numpy.int64",
]


class TextModelError(ModelLoadError):
    """A text model file that cannot be loaded or explained; the message is one line naming the file/step."""


@dataclass
class TextModel:
    """A loaded text pipeline: its vectorizer, the steps between, the classifier, and class names."""

    path: str
    vectorizer: object
    steps: list  # (name, transformer) between vectorizer and classifier
    classifier: object
    classes: list
    sha256: str = ""
    kind: str = "sklearn-text"
    cache: dict = field(default_factory=dict, repr=False)  # per-model objects built once (analyzer, vocabulary)

    @property
    def one_vs_one(self) -> bool:
        """Return True when the classifier is a native one-vs-one multi-class SVM (needs a class pair)."""
        from lrp_cli.bow.classifier import is_one_vs_one

        return is_one_vs_one(self.classifier)


def read_model_file(path: Path):
    """Return the object stored in a .joblib/.pkl (joblib) or .skops file, or raise TextModelError."""
    name = path.name
    if not path.is_file():
        raise TextModelError(f"{name}: no such file")
    try:
        if path.suffix.lower() == ".skops":
            import skops.io as sio

            return sio.load(path, trusted=SKOPS_TRUSTED)
        import joblib

        return joblib.load(path)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, ImportError, OSError) as exc:
        raise TextModelError(f"{name}: not a readable model file ({type(exc).__name__}: {exc})".splitlines()[0]) \
            from exc
    except Exception as exc:  # skops raises its own exception types (e.g. untrusted types)
        raise TextModelError(f"{name}: cannot load model ({type(exc).__name__}: {exc})".splitlines()[0]) from exc


def flat_steps(obj) -> list:
    """Return the (name, estimator) steps of a Pipeline, nested Pipelines flattened, passthrough steps dropped;
    a bare estimator is one step."""
    if not isinstance(obj, Pipeline):
        return [(type(obj).__name__, obj)]
    out = []
    for name, step in obj.steps:
        if step is None or step == "passthrough":
            continue
        out.extend(flat_steps(step) if isinstance(step, Pipeline) else [(name, step)])
    return out


def is_vectorizer(step) -> bool:
    """Return True for the vectorizers whose analysis we reproduce (Count/Tfidf/Hashing)."""
    return isinstance(step, (CountVectorizer, HashingVectorizer))


def check_vectorizer(step, where: str) -> None:
    """Raise TextModelError unless `step` is a fitted vectorizer reading strings."""
    if not is_vectorizer(step):
        raise TextModelError(f"{where}: {type(step).__name__} is not a supported vectorizer ({VECTORIZERS})")
    if step.input != "content":
        raise TextModelError(f"{where}: {type(step).__name__}(input={step.input!r}) reads files; "
                             "only input='content' is supported")
    if isinstance(step, CountVectorizer) and not hasattr(step, "vocabulary_"):
        raise TextModelError(f"{where}: the {type(step).__name__} is not fitted")
    if getattr(step, "use_idf", False) and not hasattr(step, "idf_"):
        raise TextModelError(f"{where}: the {type(step).__name__} has no idf_ (not fitted)")


def check_transform(step, where: str) -> None:
    """Raise TextModelError unless `step` is a supported step between vectorizer and classifier."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_selection import SelectorMixin
    from sklearn.preprocessing import MaxAbsScaler, Normalizer, StandardScaler

    if isinstance(step, StandardScaler) and step.with_mean:
        raise TextModelError(f"{where}: StandardScaler(with_mean=True) shifts the features; "
                             "only StandardScaler(with_mean=False) is supported")
    if not isinstance(step, (TfidfTransformer, Normalizer, MaxAbsScaler, StandardScaler, SelectorMixin,
                             TruncatedSVD)):
        raise TextModelError(f"{where}: {type(step).__name__} is not supported here; supported steps: "
                             f"{TRANSFORMS}")


def linear_base(est):
    """Return the linear model inside a FrozenEstimator (or the estimator itself)."""
    inner = getattr(est, "estimator", None)
    return inner if type(est).__name__ == "FrozenEstimator" and inner is not None else est


def linear_ovr(clf) -> bool:
    """Return True for a fitted OneVsRestClassifier whose estimators are all linear models."""
    from sklearn.multiclass import OneVsRestClassifier

    return isinstance(clf, OneVsRestClassifier) and hasattr(clf, "estimators_") and all(
        isinstance(est, LinearClassifierMixin) for est in clf.estimators_)


def check_classifier(clf, where: str) -> None:
    """Raise TextModelError unless `clf` is a supported fitted text classifier."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.naive_bayes import ComplementNB, MultinomialNB

    from lrp_cli.bow.classifier import ClassifierError
    from lrp_cli.bow.classifier import check_classifier as check_svm_classifier
    from lrp_cli.bow.kernels import UnsupportedKernelError

    name = type(clf).__name__
    if not hasattr(clf, "classes_"):
        raise TextModelError(f"{where}: the {name} is not fitted (or not a classifier; supported: {CLASSIFIERS})")
    if isinstance(clf, LinearClassifierMixin) or isinstance(clf, (MultinomialNB, ComplementNB)) or linear_ovr(clf):
        return
    if isinstance(clf, CalibratedClassifierCV):
        for cc in clf.calibrated_classifiers_:
            if not isinstance(linear_base(cc.estimator), LinearClassifierMixin):
                raise TextModelError(f"{where}: CalibratedClassifierCV over {type(cc.estimator).__name__}; "
                                     "only a linear model inside is supported")
        return
    try:
        check_svm_classifier(clf)
    except UnsupportedKernelError as exc:
        raise TextModelError(f"{where}: unsupported kernel: {exc}") from exc
    except ClassifierError as exc:
        if "is not an SVC" in str(exc):
            raise TextModelError(f"{where}: {name} is not a supported classifier; supported: {CLASSIFIERS}") from exc
        raise TextModelError(f"{where}: {exc}") from exc


def split_pipeline(steps: list, name: str, vectorizer_steps: list | None):
    """Return (vectorizer, middle steps, classifier) from flat steps, checking every step."""
    if vectorizer_steps is not None:
        steps = vectorizer_steps + steps
    if not steps or not is_vectorizer(steps[0][1]):
        first = type(steps[0][1]).__name__ if steps else "nothing"
        raise TextModelError(f"{name}: step 1 ({first}) must be a vectorizer ({VECTORIZERS}); "
                             "for a bare classifier give the vectorizer file too (--vectorizer FILE)")
    if len(steps) < 2:
        raise TextModelError(f"{name}: the pipeline has no classifier after its vectorizer")
    check_vectorizer(steps[0][1], f"{name}: step 1 ({steps[0][0]})")
    for i, (step_name, step) in enumerate(steps[1:-1], start=2):
        check_transform(step, f"{name}: step {i} ({step_name})")
    check_classifier(steps[-1][1], f"{name}: step {len(steps)} ({steps[-1][0]})")
    return steps[0][1], steps[1:-1], steps[-1][1]


def load_text_model(path, vectorizer=None, content=None) -> TextModel:
    """Return the TextModel stored at `path` (optionally with a vectorizer or pre-classifier Pipeline saved in the
    file `vectorizer`; content: the object already read from `path`), or raise TextModelError (one line naming the
    file and the step)."""
    p = Path(path)
    obj = read_model_file(p) if content is None else content
    vec_steps = None if vectorizer is None else flat_steps(read_model_file(Path(vectorizer)))
    vec, middle, clf = split_pipeline(flat_steps(obj), p.name, vec_steps)
    from lrp_cli.outputs import sha256_file

    return TextModel(path=str(p), vectorizer=vec, steps=middle, classifier=clf,
                     classes=[str(c) for c in clf.classes_], sha256=sha256_file(p))
