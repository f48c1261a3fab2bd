"""The pipeline's feature steps at one document: forward values, and relevance passed back to the features.

Element-wise and diagonal steps (tf-idf weighting, sublinear tf, binary, l1/l2/max normalisation, MaxAbsScaler,
StandardScaler(with_mean=False)) are, at x, maps that send feature j to feature j alone: relevance passes through
them unchanged (the z-rule on a diagonal map, Eq 56). A selector scatters relevance back to the kept columns.
TruncatedSVD is a linear map z = V x: the z-rule R_j = x_j sum_k V_kj R_k / z_k (exact when no z_k is 0;
what sits on a z_k = 0 is lost and shows in the residual).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import HashingVectorizer, TfidfVectorizer

# Which relevance rule each step kind gets, for the JSON's method description.
PASS_THROUGH = "identity (a diagonal map at x)"


def vectorizer_output(vec, counts: sparse.csr_matrix) -> sparse.csr_matrix:
    """Return the vectorizer's output for raw (signed, hashed) counts: binary, tf-idf weighting, normalisation
    as vec.transform computes them."""
    x = counts.astype(np.float64, copy=True)
    if vec.binary:
        x.data.fill(1.0)
    if isinstance(vec, TfidfVectorizer):
        if vec.sublinear_tf:
            x.data = np.log(x.data) + 1.0
        if vec.use_idf:
            x.data *= vec.idf_[x.indices]
    if isinstance(vec, (TfidfVectorizer, HashingVectorizer)) and vec.norm is not None:
        x.data /= row_norm(x.data, vec.norm)
    return x


def row_norm(values: np.ndarray, norm: str) -> float:
    """Return the l1, l2 or max norm of one row's values, 1 for a zero row (as sklearn's normalize leaves it)."""
    size = {"l1": lambda v: np.abs(v).sum(), "l2": lambda v: np.sqrt(np.dot(v, v)),
            "max": lambda v: np.abs(v).max(initial=0.0)}[norm](values)
    return size if size > 0 else 1.0


def forward(steps: list, x0) -> list:
    """Return the activations [x0, x1, ..., u]: x0 the vectorizer output, then each step's transform."""
    acts = [x0]
    for _, step in steps:  # a handful of pipeline steps
        acts.append(step.transform(acts[-1]))
    return acts


def _row(x) -> tuple[np.ndarray, np.ndarray]:
    """Return (indices, values) of the non-zero entries of a 1-row sparse or dense activation."""
    if sparse.issparse(x):
        x = sparse.csr_matrix(x)
        return x.indices, x.data.astype(np.float64)
    v = np.asarray(x, dtype=np.float64).ravel()
    idx = np.flatnonzero(v)
    return idx, v[idx]


def svd_backward(svd, x_in, z, r_out: np.ndarray) -> np.ndarray:
    """Return relevance on the SVD's input by the z-rule (0 / 0 = 0)."""
    z = np.asarray(z, dtype=np.float64).ravel()
    c = np.divide(r_out, z, out=np.zeros_like(z), where=z != 0)
    idx, val = _row(x_in)
    r_in = np.zeros(svd.components_.shape[1])
    r_in[idx] = val * (svd.components_[:, idx].T @ c)
    return r_in


def step_backward(step, x_in, x_out, r_out: np.ndarray) -> np.ndarray:
    """Return the relevance on a step's input features from the relevance on its outputs."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_selection import SelectorMixin

    if isinstance(step, TruncatedSVD):
        return svd_backward(step, x_in, x_out.toarray() if sparse.issparse(x_out) else x_out, r_out)
    if isinstance(step, SelectorMixin):
        r_in = np.zeros(x_in.shape[1])
        r_in[step.get_support(indices=True)] = r_out
        return r_in
    return r_out


def backward(steps: list, acts: list, r_u: np.ndarray) -> np.ndarray:
    """Return relevance on the vectorizer's features from relevance on the classifier's input features."""
    r = r_u
    for k in range(len(steps) - 1, -1, -1):  # the steps in reverse order
        r = step_backward(steps[k][1], acts[k], acts[k + 1], r)
    return r


def step_rule(step) -> str:
    """Return how relevance passes a step, for the JSON."""
    name = type(step).__name__
    if name == "TruncatedSVD":
        return "z-rule through the linear map"
    if hasattr(step, "get_support"):
        return "scattered back to the selected features"
    return PASS_THROUGH
