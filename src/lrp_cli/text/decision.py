"""A text classifier's decision value for one target class, decomposed onto its input features u.

- Linear models (any LinearClassifierMixin, or one per class in a OneVsRestClassifier): f = w . u + b;
  R_j = u_j w_j exactly, b reported apart.
- Naive Bayes (MultinomialNB, ComplementNB) is log-linear: the joint log-likelihood of class c is
  u . log theta_c + log prior_c. Binary: f = the log-odds jll_target - jll_other; multi-class: f = jll_target minus
  the mean jll over the classes (argmax-preserving). Both linear in u: decomposed as above.
- CalibratedClassifierCV over linear models: f = the mean of its base estimators' decision values (a linear
  model, before the monotone calibration); the calibrated probability is the prediction's score.
- SVC / NuSVC / OneVsRestClassifier(SVC): the BoW module's decomposition: sum-decomposable kernels exactly
  (Eq 24, bias apart); rbf / poly by the first-order Taylor expansion at a root x0 (Eq 25), residual reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np
from scipy import sparse

N_CANDIDATES = 16  # support vectors the Taylor root search tries (as the BoW module's default)


@dataclass
class Decomposition:
    """Relevance of the classifier's input features for one decision value f_x (intercept None: not separable)."""

    relevance: np.ndarray
    f_x: float
    intercept: float | None
    decision: str
    rule: str
    details: dict = field(default_factory=dict)


def _row(u) -> sparse.csr_matrix:
    return sparse.csr_matrix(u, dtype=np.float64)


def linear_decomposition(w: np.ndarray, b: float, u, decision: str) -> Decomposition:
    """Return R_j = u_j w_j and f = w . u + b."""
    x = _row(u)
    r = np.zeros(x.shape[1])
    r[x.indices] = x.data * w[x.indices]
    return Decomposition(r, float(r.sum() + b), float(b), decision, "R_j = x_j w_j (exact for a linear model)")


def linear_weights(coef: np.ndarray, intercept, target: int, n_classes: int):
    """Return (w, b) of the decision for class `target` of a linear model (binary: +-row 0, positive for
    classes_[1], as decision_function)."""
    coef = np.asarray(coef, dtype=np.float64).reshape(-1, np.shape(coef)[-1])
    b = np.broadcast_to(np.asarray(intercept, dtype=np.float64).ravel(), (coef.shape[0],))
    if coef.shape[0] == 1 and n_classes == 2:
        sign = 1.0 if target == 1 else -1.0
        return sign * coef[0], sign * float(b[0])
    return coef[target], float(b[target])


def naive_bayes_weights(clf, target: int):
    """Return (w, b, description) of the log-linear decision of a MultinomialNB / ComplementNB."""
    from sklearn.naive_bayes import ComplementNB

    lp = np.asarray(clf.feature_log_prob_, dtype=np.float64)
    prior = np.asarray(clf.class_log_prior_, dtype=np.float64)
    if isinstance(clf, ComplementNB) and len(clf.classes_) > 1:
        prior = np.zeros_like(prior)  # ComplementNB leaves the prior out of its joint log-likelihood
    if len(clf.classes_) == 2:
        other = 1 - target
        return (lp[target] - lp[other], prior[target] - prior[other],
                "log-odds: joint log-likelihood of the target minus that of the other class")
    return (lp[target] - lp.mean(axis=0), prior[target] - prior.mean(),
            "joint log-likelihood of the target minus its mean over the classes")


def calibrated_weights(clf, target: int):
    """Return (w, b, description): the mean of a CalibratedClassifierCV's linear base models."""
    from lrp_cli.text.pipeline import linear_base

    n = len(clf.classes_)
    parts = [linear_weights(linear_base(cc.estimator).coef_, linear_base(cc.estimator).intercept_, target, n)
             for cc in clf.calibrated_classifiers_]
    w = np.mean([p[0] for p in parts], axis=0)
    b = float(np.mean([p[1] for p in parts]))
    return w, b, (f"mean decision value of the {len(parts)} calibrated base estimator(s), before calibration")


def sparse_gram(part: dict, A, B) -> np.ndarray:
    """Return the kernel matrix between the rows of A and B (sparse or dense) for a linear / rbf / poly part."""
    from sklearn.metrics import pairwise

    if part["name"] == "rbf":
        return pairwise.rbf_kernel(A, B, gamma=part["gamma"])
    if part["name"] == "poly":
        return pairwise.polynomial_kernel(A, B, degree=part["degree"], gamma=part["gamma"], coef0=part["coef0"])
    return pairwise.linear_kernel(A, B)


def _sparse_support(svc):
    return sparse.csr_matrix(svc.support_vectors_, dtype=np.float64)


def _support_side(clf, target, pair, part):
    """Return (sparse decision, f at every support vector, their squared norms): what the root search needs of
    the support vectors, the same for every document."""
    from lrp_cli.bow.classifier import target_decision

    dec = target_decision(clf, target, pair, support=_sparse_support)
    S = dec.support
    return dec, dec.intercept + dec.coef @ sparse_gram(part, S, S), np.asarray(S.multiply(S).sum(axis=1)).ravel()


def _taylor_columns(clf, target, pair, part, x: sparse.csr_matrix, cache: dict):
    """Return (columns the root search can touch, f at every support vector) for a sparse kernel SVM: x's own
    columns and those of the support vectors find_root will search towards (chosen exactly as it will)."""
    from lrp_cli.bow.relevance import root_candidates

    key = ("support side", target, None if pair is None else tuple(pair))
    if key not in cache:
        cache[key] = _support_side(clf, target, pair, part)
    dec, f_sv, sq = cache[key]
    S = dec.support
    fx = float(dec.intercept + dec.coef @ sparse_gram(part, S, x)[:, 0])
    dist = np.sqrt(np.maximum(sq - 2.0 * (S @ x.T).toarray().ravel() + x.multiply(x).sum(), 0.0))
    keep, _ = root_candidates(dec.coef, f_sv, dist, np.sign(fx) or 1.0, N_CANDIDATES)
    cols = np.union1d(x.indices, S[keep].indices)
    return cols, f_sv


def svm_decomposition(clf, u, target: int, pair, cache: dict | None = None) -> Decomposition:
    """Return the BoW module's kernel decomposition of an SVM's decision for `target` (pair for one-vs-one;
    cache: a dict kept with the model, for what does not depend on the document)."""
    from sklearn.multiclass import OneVsRestClassifier

    from lrp_cli.bow.classifier import support_matrix, target_decision
    from lrp_cli.bow.kernels import kernel_of
    from lrp_cli.bow.relevance import find_root, kernel_terms, layer3_taylor

    x = _row(u)
    est = clf.estimators_[0] if isinstance(clf, OneVsRestClassifier) else clf
    kernel = kernel_of(est)
    if sparse.issparse(est.support_vectors_) and not callable(est.kernel):
        if kernel.decomposable:
            cols, f_sv = x.indices, None
        else:
            cols, f_sv = _taylor_columns(clf, target, pair, kernel.parts[0], x, {} if cache is None else cache)
        dec = target_decision(clf, target, pair, support=partial(support_matrix, columns=cols))
        view = np.concatenate([x[:, cols].toarray().ravel(), [0.0]])  # 0 in the folded-columns slot
    else:
        cols, f_sv = np.arange(x.shape[1]), None
        dec = target_decision(clf, target, pair)
        view = x.toarray().ravel()
    r = np.zeros(x.shape[1])
    fx = float(dec.value(view[None, :])[0])
    kernel_name = repr(kernel)
    if kernel.decomposable:
        r[cols] = kernel_terms(dec, view)[:len(cols)]
        return Decomposition(r, fx, dec.intercept, f"SVM decision value ({kernel_name})",
                             "Eq 24: per-dimension kernel terms, exact (sum-decomposable kernel)")
    root = find_root(dec, view, n_candidates=N_CANDIDATES, f_sv=f_sv)
    r[cols] = layer3_taylor(dec, view, root.x0)[:len(cols)]
    return Decomposition(r, fx, None, f"SVM decision value ({kernel_name})",
                         "Eq 25: first-order Taylor expansion at a root x0 of f (bias inside f(x0))",
                         {"root": {"f_x0": root.f_x0, "distance": root.distance, "found": root.found,
                                   "candidates": root.n_candidates}})


def linear_form(clf, target: int) -> tuple[np.ndarray, float, str] | None:
    """Return (w, b, description) of the decision value for class index `target` when the classifier's decision
    is linear in its input features (f = w . u + b), else None (kernel SVMs)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model._base import LinearClassifierMixin
    from sklearn.naive_bayes import ComplementNB, MultinomialNB

    from lrp_cli.text.pipeline import linear_ovr

    label = str(clf.classes_[target])
    if isinstance(clf, LinearClassifierMixin):
        w, b = linear_weights(clf.coef_, clf.intercept_, target, len(clf.classes_))
        return w, b, f"decision_function for class {label!r}: w . x + b"
    if isinstance(clf, (MultinomialNB, ComplementNB)):
        w, b, what = naive_bayes_weights(clf, target)
        return w, b, f"{type(clf).__name__} {what} (class {label!r})"
    if linear_ovr(clf):  # one binary linear model per class, positive for it (one in all for two classes)
        est = clf.estimators_[0] if len(clf.estimators_) == 1 else clf.estimators_[target]
        sign = -1.0 if len(clf.estimators_) == 1 and target == 0 else 1.0
        w, b = linear_weights(est.coef_, est.intercept_, 1, 2)
        return sign * w, sign * b, f"one-vs-rest decision_function for class {label!r}: w . x + b"
    if isinstance(clf, CalibratedClassifierCV):
        w, b, what = calibrated_weights(clf, target)
        return w, b, f"{what} (class {label!r})"
    return None


def decompose(clf, u, target: int, pair=None, cache: dict | None = None) -> Decomposition:
    """Return the decomposition of the classifier's decision value for class index `target` at input u (cache:
    see svm_decomposition)."""
    form = linear_form(clf, target)
    if form is not None:
        w, b, what = form
        return linear_decomposition(w, b, u, what)
    return svm_decomposition(clf, u, target, pair, cache)


def decision_values(clf, U) -> np.ndarray:
    """Return the [M, K] decision values of M inputs (rows of U) for every class, as `decompose` defines them
    (binary: -f and +f; kernel SVMs: decision_function, which a one-vs-one SVM does not give per class)."""
    classes = len(clf.classes_)
    forms = [linear_form(clf, t) for t in range(classes)]
    if all(f is not None for f in forms):
        W = np.stack([f[0] for f in forms], axis=1)
        return np.asarray(U @ W, dtype=np.float64) + np.asarray([f[1] for f in forms])
    from lrp_cli.bow.classifier import class_scores
    return class_scores(clf, U)
