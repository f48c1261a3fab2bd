"""Binary kernel decision functions f(x) = b + sum_i a_i k(s_i, x) (Eq 20) read out of fitted sklearn SVMs.

Supports SVC / NuSVC (binary, or native one-vs-one multi-class for an explicit pair of classes) and
OneVsRestClassifier over them. Every decision is oriented so that f(x) > 0 is evidence for the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.multiclass import OneVsRestClassifier
from sklearn.svm import SVC, NuSVC

from lrp_cli.bow.kernels import BowKernel, kernel_of


class ClassifierError(ValueError):
    """Raised when a classifier is not a supported SVM or a one-vs-one model lacks a class pair."""


@dataclass
class BinaryDecision:
    """One kernel decision function: support vectors (n_sv, V), coefficients a_i = alpha_i y_i, bias b."""

    support: np.ndarray
    coef: np.ndarray
    intercept: float
    kernel: BowKernel

    def value(self, X: np.ndarray) -> np.ndarray:
        """Return f(x) for each row of X (n, V)."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        return self.intercept + self.coef @ self.kernel(self.support, X)

    def flipped(self) -> "BinaryDecision":
        """Return the decision -f (evidence for the other class)."""
        return BinaryDecision(self.support, -self.coef, -self.intercept, self.kernel)


def support_matrix(svc, columns=None) -> np.ndarray:
    """Return the support vectors of a fitted SVC/NuSVC as a dense matrix, also for callable kernels.

    columns (sparse support vectors only, e.g. a text vocabulary): keep these columns and fold all the others
    into one last column holding the norm of what was dropped, so that distances and dot products to any point
    that is zero outside `columns` (and 0 in the last column) stay exact for linear, rbf and poly kernels.
    """
    if sparse.issparse(svc.support_vectors_) and not callable(svc.kernel):
        S = sparse.csr_matrix(svc.support_vectors_, dtype=np.float64)
        if columns is None:
            return S.toarray()
        kept = S[:, columns].toarray()
        rest = np.sqrt(np.maximum(np.asarray(S.multiply(S).sum(axis=1)).ravel() - (kept ** 2).sum(axis=1), 0.0))
        return np.concatenate([kept, rest[:, None]], axis=1)
    if callable(svc.kernel):
        # sklearn keeps only the training matrix for callable kernels (libsvm saw a precomputed Gram).
        xfit = getattr(svc, "_BaseLibSVM__Xfit", None)
        if xfit is None:
            raise ClassifierError("the SVM does not hold its training data (callable kernel)")
        return np.asarray(xfit, dtype=np.float64)[svc.support_]
    return np.asarray(svc.support_vectors_, dtype=np.float64)


def dual_coefficients(svc) -> np.ndarray:
    """Return dual_coef_ as a dense array (sklearn stores it sparse for an SVM fitted on sparse data)."""
    dual = svc.dual_coef_
    return dual.toarray() if sparse.issparse(dual) else np.asarray(dual, dtype=np.float64)


def check_svm(svc) -> None:
    """Raise ClassifierError/UnsupportedKernelError unless `svc` is a fitted SVC/NuSVC we can explain."""
    if not isinstance(svc, (SVC, NuSVC)):
        raise ClassifierError(f"classifier {type(svc).__name__} is not an SVC or NuSVC")
    if not hasattr(svc, "dual_coef_"):
        raise ClassifierError("the SVM is not fitted")
    kernel_of(svc)


def check_classifier(clf) -> None:
    """Raise ClassifierError/UnsupportedKernelError unless `clf` is a supported fitted SVM classifier."""
    if isinstance(clf, OneVsRestClassifier):
        if not hasattr(clf, "estimators_"):
            raise ClassifierError("the OneVsRestClassifier is not fitted")
        for est in clf.estimators_:
            check_svm(est)
    else:
        check_svm(clf)


def is_one_vs_one(clf) -> bool:
    """Return True for a native multi-class SVC/NuSVC (one-vs-one); these need a class pair."""
    return isinstance(clf, (SVC, NuSVC)) and len(clf.classes_) > 2


def binary_svm_decision(svc, support=support_matrix) -> BinaryDecision:
    """Return the decision of a binary SVC/NuSVC, positive for classes_[1] (as sklearn's); support(svc) gives
    the support-vector matrix (default: dense, all columns)."""
    return BinaryDecision(support(svc), dual_coefficients(svc)[0],
                          float(svc.intercept_[0]), kernel_of(svc))


def pair_decision(svc, i: int, j: int, support=support_matrix) -> BinaryDecision:
    """Return the one-vs-one decision between classes i < j of a multi-class SVC, positive for i; support: see
    binary_svm_decision."""
    starts = np.concatenate([[0], np.cumsum(svc.n_support_)])
    si, sj = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
    S = support(svc)
    # libsvm layout: class i's SVs carry their pair-(i, j) coefficient in row j - 1, class j's in row i.
    dual = dual_coefficients(svc)
    coef = np.concatenate([dual[j - 1, si], dual[i, sj]])
    n = len(svc.classes_)
    pair_index = sum(n - 1 - a for a in range(i)) + (j - i - 1)
    return BinaryDecision(np.concatenate([S[si], S[sj]]), np.asarray(coef, dtype=np.float64),
                          float(svc.intercept_[pair_index]), kernel_of(svc))


def class_scores(clf, X: np.ndarray) -> np.ndarray:
    """Return decision values per class (n, n_classes); binary f becomes [-f, f]."""
    dec = np.asarray(clf.decision_function(X), dtype=np.float64)
    if dec.ndim == 1:
        return np.stack([-dec, dec], axis=1)
    return dec


def target_decision(clf, target: int, pair=None, support=support_matrix) -> BinaryDecision:
    """Return the binary decision explaining class index `target` (pair: the two classes for one-vs-one;
    support: see binary_svm_decision)."""
    n = len(clf.classes_)
    if not 0 <= target < n:
        raise ClassifierError(f"target {target} is out of range for {n} classes")
    if isinstance(clf, OneVsRestClassifier):
        if len(clf.estimators_) == 1:  # two classes: one estimator, positive for classes_[1]
            d = binary_svm_decision(clf.estimators_[0], support)
            return d if target == 1 else d.flipped()
        return binary_svm_decision(clf.estimators_[target], support)
    if n == 2:
        d = binary_svm_decision(clf, support)
        return d if target == 1 else d.flipped()
    if pair is None:
        raise ClassifierError("one-vs-one multi-class SVM: give a pair of classes to explain")
    i, j = sorted(int(c) for c in pair)
    if target not in (i, j) or i == j:
        raise ClassifierError(f"target {target} must be one of the pair ({i}, {j})")
    d = pair_decision(clf, i, j, support)
    return d if target == i else d.flipped()
