"""p-means pooling of mapped local features into a BoW vector (paper Eq 19), then l1 normalization."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


def is_max(p) -> bool:
    """Return True when `p` selects max pooling ("max" or infinity)."""
    return isinstance(p, str) and p.lower() == "max" or (not isinstance(p, str) and np.isinf(float(p)))


def pmean(m: np.ndarray, p) -> np.ndarray:
    """Return the p-means (Eq 19) over local features (axis 0) of a mapping matrix (n, K)."""
    if is_max(p):
        return m.max(axis=0)
    p = float(p)
    if p == 1.0:
        return m.mean(axis=0)
    # Scale by the column maximum so that large p neither overflows nor underflows.
    top = np.abs(m).max(axis=0)
    safe = np.where(top > 0, top, 1.0)
    return safe * np.mean((m / safe) ** p, axis=0) ** (1.0 / p)


class PMeansPooling(TransformerMixin, BaseEstimator):
    """p-means pooling per feature group: list of MappedSet -> (n_images, V) BoW matrix.

    p: 1 (sum/mean pooling), any p > 0, or "max" (the p -> infinity limit).
    normalize: "l1" normalizes every group's block to sum 1 (one BoW histogram per group), or None.
    """

    def __init__(self, p=1.0, normalize="l1"):
        self.p = p
        self.normalize = normalize

    def fit(self, X, y=None):
        """Return self (pooling has no learned state)."""
        if self.normalize not in ("l1", None):
            raise ValueError(f"normalize must be 'l1' or None, got {self.normalize!r}")
        return self

    def __sklearn_is_fitted__(self) -> bool:
        """Return True: this step has no learned state, so it is always ready to transform."""
        return True

    def transform(self, X):
        """Return the (n_images, V) BoW matrix of a list of MappedSet."""
        return np.stack([self.pool(ms) for ms in X])

    def pool(self, mapped) -> np.ndarray:
        """Return the BoW vector (V,) of one MappedSet: pooled, normalized blocks concatenated."""
        return np.concatenate([self.pool_block(m) for m in mapped.mappings])

    def pool_block(self, m: np.ndarray) -> np.ndarray:
        """Return one group's pooled and normalized BoW block."""
        x = pmean(m, self.p)
        if self.normalize == "l1":
            total = np.abs(x).sum()
            x = x / total if total > 0 else x
        return x
