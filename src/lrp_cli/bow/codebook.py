"""Visual-word codebooks (k-means) and the local-feature mappings m(l): hard, soft (Eq 36), rank (Eq 64),
sparse (regularized coding, Eqs 37-38)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.cluster import KMeans
from sklearn.decomposition import sparse_encode

MAPPINGS = ("hard", "soft", "rank", "sparse")
BATCH = 32  # feature sets mapped per call: bounds the (descriptors, words) distance matrix


def sparse_mapping(descriptors: np.ndarray, centers: np.ndarray, alpha: float) -> np.ndarray:
    """Return the regularized coding of Eqs 37-38 with the codebook B fixed to the k-means centres:
    m(l) = argmin_c ||l - B c||^2 + alpha ||c||_1 with c >= 0 (non-negative, so histogram kernels apply)."""
    codes = sparse_encode(np.asarray(descriptors, dtype=np.float64), centers, algorithm="lasso_cd",
                          alpha=alpha, positive=True)
    return np.maximum(codes, 0.0)


@dataclass
class MappedSet:
    """Mapped local features of one image: per group an (n_local, n_words) matrix m and the boxes."""

    shape: tuple
    names: list = field(default_factory=list)
    mappings: list = field(default_factory=list)
    boxes: list = field(default_factory=list)


def distances(descriptors: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Return the (n, K) Euclidean distances between descriptors and codebook centres."""
    sq = (np.einsum("ij,ij->i", descriptors, descriptors)[:, None]
          - 2.0 * descriptors @ centers.T + np.einsum("ij,ij->i", centers, centers)[None, :])
    return np.sqrt(np.maximum(sq, 0.0))


def hard_mapping(dist: np.ndarray) -> np.ndarray:
    """Return the one-hot nearest-word mapping (n, K)."""
    m = np.zeros_like(dist)
    m[np.arange(dist.shape[0]), np.argmin(dist, axis=1)] = 1.0
    return m


def soft_mapping(dist: np.ndarray, beta: float) -> np.ndarray:
    """Return the soft codebook mapping of Eq 36: softmax over words of -beta * distance."""
    z = -beta * (dist - dist.min(axis=1, keepdims=True))  # shift for numerical stability
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def rank_mapping(dist: np.ndarray, p: float, n: int) -> np.ndarray:
    """Return the rank mapping of Eq 64: p**-rank for the n nearest words (rank 1 = nearest), else 0."""
    k = dist.shape[1]
    n = min(int(n), k)
    rows = np.arange(dist.shape[0])[:, None]
    near = np.argpartition(dist, n - 1, axis=1)[:, :n] if n < k else np.tile(np.arange(k), (dist.shape[0], 1))
    order = np.argsort(dist[rows, near], axis=1, kind="stable")
    near = near[rows, order]
    m = np.zeros_like(dist)
    m[rows, near] = float(p) ** -np.arange(1, n + 1, dtype=np.float64)[None, :]
    return m


class CodebookMapping(TransformerMixin, BaseEstimator):
    """Per feature group k-means codebook and mapping: list of LocalFeatureSet -> list of MappedSet.

    mapping: "hard", "soft" (Eq 36, parameter soft_beta; None -> 1 / mean nearest-word distance)
    or "rank" (Eq 64, parameters rank_p and rank_n). n_words: codebook size per group.
    max_fit_samples: k-means runs on at most this many randomly drawn descriptors per group.
    """

    def __init__(self, n_words=128, mapping="rank", rank_p=2.0, rank_n=4, soft_beta=None, sparse_alpha=0.05,
                 max_fit_samples=50000, random_state=0):
        self.n_words = n_words
        self.mapping = mapping
        self.rank_p = rank_p
        self.rank_n = rank_n
        self.soft_beta = soft_beta
        self.sparse_alpha = sparse_alpha
        self.max_fit_samples = max_fit_samples
        self.random_state = random_state

    def fit(self, X, y=None):
        """Return self after fitting one k-means codebook per feature group of X."""
        if self.mapping not in MAPPINGS:
            raise ValueError(f"mapping must be one of {MAPPINGS}, got {self.mapping!r}")
        rng = np.random.default_rng(self.random_state)
        self.group_names_ = [g.name for g in X[0].groups]
        self.centers_, self.betas_ = [], []
        for gi in range(len(self.group_names_)):
            desc = np.concatenate([fs.groups[gi].descriptors for fs in X], axis=0)
            if desc.shape[0] > self.max_fit_samples:
                desc = desc[rng.choice(desc.shape[0], self.max_fit_samples, replace=False)]
            km = KMeans(n_clusters=self.n_words, n_init=1, max_iter=100, random_state=self.random_state)
            km.fit(desc)
            self.centers_.append(km.cluster_centers_.astype(np.float64))
            nearest = distances(desc, self.centers_[-1]).min(axis=1)
            self.betas_.append(float(self.soft_beta) if self.soft_beta is not None
                               else 1.0 / max(float(nearest.mean()), 1e-12))
        return self

    def transform(self, X):
        """Return one MappedSet per LocalFeatureSet of X (each group mapped in one call per batch of sets)."""
        return [ms for i in range(0, len(X), BATCH) for ms in self._transform_batch(X[i:i + BATCH])]

    def _transform_batch(self, X) -> list:
        """Return one MappedSet per LocalFeatureSet of X, mapping each group's descriptors in one call."""
        for fs in X:
            self._check_groups(fs)
        out = [MappedSet(shape=tuple(fs.shape)) for fs in X]
        for gi, name in enumerate(self.group_names_):
            groups = [fs.groups[gi] for fs in X]
            m = self.map_descriptors(gi, np.concatenate([g.descriptors for g in groups], axis=0))
            ends = np.cumsum([g.descriptors.shape[0] for g in groups])[:-1]
            for ms, g, mi in zip(out, groups, np.split(m, ends)):  # hand each set its rows back
                ms.names.append(name)
                ms.mappings.append(mi)
                ms.boxes.append(g.boxes)
        return out

    def n_dims(self) -> list:
        """Return the BoW block size (number of words) of each group."""
        return [c.shape[0] for c in self.centers_]

    def map_descriptors(self, gi: int, descriptors: np.ndarray) -> np.ndarray:
        """Return m(l) (n, K) for the descriptors of group `gi`."""
        dist = distances(np.asarray(descriptors, dtype=np.float64), self.centers_[gi])
        if self.mapping == "hard":
            return hard_mapping(dist)
        if self.mapping == "soft":
            return soft_mapping(dist, self.betas_[gi])
        if self.mapping == "sparse":
            return sparse_mapping(descriptors, self.centers_[gi], self.sparse_alpha)
        return rank_mapping(dist, self.rank_p, self.rank_n)

    def map(self, features) -> MappedSet:
        """Return the MappedSet of one image's LocalFeatureSet."""
        return self.transform([features])[0]

    def _check_groups(self, features) -> None:
        """Raise ValueError unless the feature groups are the ones the codebooks were fitted on."""
        if [g.name for g in features.groups] != self.group_names_:
            raise ValueError("feature groups do not match the codebook's groups")
