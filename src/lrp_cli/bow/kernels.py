"""Kernels over BoW vectors, their per-dimension terms (Eq 23) and gradients (Eqs 45, 48).

Kernels are module-level functions or instances of the module-level class BowKernel, so SVC models
using them (kernel=callable) pickle and load. BowKernel is a weighted sum of kernels over slices of
the BoW vector (Eq 21), e.g. one exponential chi2 kernel per SIFT scale.

Note on chi2 (Eq 44): the paper prints the denominator squared, but its derivative (Eq 45) is the
derivative of the usual exp(-gamma * sum (x - y)^2 / (x + y)); we implement that usual kernel
(the same as sklearn's chi2_kernel) with gamma = sigma, so Eqs 45-46 hold exactly.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import pairwise

from lrp_cli.bow.options import KERNEL_NAMES

DECOMPOSABLE = frozenset({"linear", "hik", "additive_chi2"})
CHUNK_ELEMENTS = 1 << 22  # bound the (rows, cols, dims) temporaries of elementwise kernels


class UnsupportedKernelError(ValueError):
    """Raised for SVM kernels whose relevance we cannot compute (precomputed, sigmoid, foreign callables)."""


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Return num / den with the paper's convention 0 / 0 = 0."""
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def _chunked(X, Y, term) -> np.ndarray:
    """Return sum_d term(X[:, None, d], Y[None, :, d]) computed in row chunks to bound memory."""
    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    out = np.empty((X.shape[0], Y.shape[0]))
    rows = max(1, CHUNK_ELEMENTS // max(1, Y.shape[0] * X.shape[1]))
    for i in range(0, X.shape[0], rows):  # loop over memory chunks, not over samples
        out[i:i + rows] = term(X[i:i + rows, None, :], Y[None, :, :]).sum(axis=2)
    return out


def linear_kernel(X, Y) -> np.ndarray:
    """Return the linear kernel matrix X Y^T."""
    return np.asarray(X, dtype=np.float64) @ np.asarray(Y, dtype=np.float64).T


def hik_kernel(X, Y) -> np.ndarray:
    """Return the histogram intersection kernel matrix sum_d min(x_d, y_d) (Eq 42)."""
    return _chunked(X, Y, np.minimum)


def additive_chi2_kernel(X, Y) -> np.ndarray:
    """Return the additive chi2 kernel matrix sum_d 2 x_d y_d / (x_d + y_d) (sum-decomposable, PSD)."""
    return _chunked(X, Y, lambda a, b: _safe_ratio(2.0 * a * b, a + b))


def chi2_kernel(X, Y, gamma=1.0) -> np.ndarray:
    """Return the exponential chi2 kernel matrix exp(-gamma sum_d (x_d - y_d)^2 / (x_d + y_d)) (Eq 44)."""
    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    return pairwise.chi2_kernel(np.maximum(X, 0.0), np.maximum(Y, 0.0), gamma=gamma)


def rbf_kernel(X, Y, gamma=1.0) -> np.ndarray:
    """Return the Gaussian RBF kernel matrix exp(-gamma ||x - y||^2) (Eq 47 with sigma = 1 / gamma)."""
    return pairwise.rbf_kernel(np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64), gamma=gamma)


def poly_kernel(X, Y, gamma=1.0, degree=3, coef0=1.0) -> np.ndarray:
    """Return the polynomial kernel matrix (gamma <x, y> + coef0)^degree."""
    return (gamma * linear_kernel(X, Y) + coef0) ** degree


def part_gram(part: dict, X, Y) -> np.ndarray:
    """Return the kernel matrix of one kernel part (without its weight) on its own dimensions."""
    name, g = part["name"], part.get("gamma", 1.0)
    if name == "linear":
        return linear_kernel(X, Y)
    if name == "hik":
        return hik_kernel(X, Y)
    if name == "additive_chi2":
        return additive_chi2_kernel(X, Y)
    if name == "chi2":
        return chi2_kernel(X, Y, g)
    if name == "rbf":
        return rbf_kernel(X, Y, g)
    if name == "poly":
        return poly_kernel(X, Y, g, part.get("degree", 3), part.get("coef0", 1.0))
    raise UnsupportedKernelError(f"unknown kernel {name!r}")


def part_perdim(part: dict, S: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Return the per-dimension kernel terms k^(d)(s_d, x_d) (Eq 23) as an (n_sv, dims) matrix."""
    name = part["name"]
    if name == "linear":
        return S * x[None, :]
    if name == "hik":
        return np.minimum(S, x[None, :])
    if name == "additive_chi2":
        return _safe_ratio(2.0 * S * x[None, :], S + x[None, :])
    raise UnsupportedKernelError(f"kernel {name!r} is not sum-decomposable")


def part_grad(part: dict, S: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """Return d k(s_i, x) / d x_d at x = x0 for every support vector s_i, as an (n_sv, dims) matrix."""
    name, g = part["name"], part.get("gamma", 1.0)
    x0 = x0[None, :]
    if name == "linear":
        return S.copy()
    if name == "hik":
        # Subgradient of min(s, x): 1 below s, 0 above, 1/2 at the kink.
        return (x0 < S) + 0.5 * (x0 == S)
    if name == "additive_chi2":
        return _safe_ratio(2.0 * S ** 2, (S + x0) ** 2)
    k = part_gram(part, S, x0)  # (n_sv, 1)
    if name == "chi2":
        return k * g * (_safe_ratio(4.0 * S ** 2, (S + x0) ** 2) - 1.0)  # Eq 45
    if name == "rbf":
        return k * 2.0 * g * (S - x0)  # Eq 48
    if name == "poly":
        deg, c0 = part.get("degree", 3), part.get("coef0", 1.0)
        base = g * (S @ x0.T) + c0
        return deg * base ** (deg - 1) * g * S
    raise UnsupportedKernelError(f"unknown kernel {name!r}")


def make_part(name, start=0, stop=None, weight=1.0, gamma=1.0, degree=3, coef0=1.0) -> dict:
    """Return a kernel-part description (a plain dict, so it pickles and serializes with skops)."""
    if name not in KERNEL_NAMES:
        raise UnsupportedKernelError(f"unknown kernel {name!r}; choose from {', '.join(KERNEL_NAMES)}")
    return {"name": name, "start": int(start), "stop": None if stop is None else int(stop),
            "weight": float(weight), "gamma": float(gamma), "degree": int(degree), "coef0": float(coef0)}


class BowKernel:
    """Callable kernel: a weighted sum of kernels over slices of the BoW vector (Eq 21).

    parts: list of dicts from make_part(); each part acts on X[:, start:stop].
    """

    def __init__(self, parts):
        self.parts = [dict(p) for p in parts]

    def __call__(self, X, Y) -> np.ndarray:
        """Return the kernel matrix between the rows of X and Y."""
        X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
        out = np.zeros((X.shape[0], Y.shape[0]))
        for p in self.parts:  # one term per kernel of the sum (a handful)
            sl = slice(p["start"], p["stop"])
            out += p["weight"] * part_gram(p, X[:, sl], Y[:, sl])
        return out

    def __repr__(self) -> str:
        return "BowKernel(" + ", ".join(f"{p['name']}[{p['start']}:{p['stop']}]" for p in self.parts) + ")"

    @property
    def decomposable(self) -> bool:
        """Return True when every part is sum-decomposable (Eq 23), so Eq 24 is exact."""
        return all(p["name"] in DECOMPOSABLE for p in self.parts)

    def _blockwise(self, S: np.ndarray, x: np.ndarray, per_part) -> np.ndarray:
        """Return (n_sv, V) with each part's weighted per_part(part, S block, x block); other dims 0."""
        out = np.zeros(S.shape)
        for p in self.parts:
            sl = slice(p["start"], p["stop"])
            out[:, sl] += p["weight"] * per_part(p, S[:, sl], x[sl])
        return out

    def perdim(self, S: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Return the weighted per-dimension terms (n_sv, V); dims outside every part get 0."""
        return self._blockwise(S, x, part_perdim)

    def grad(self, S: np.ndarray, x0: np.ndarray) -> np.ndarray:
        """Return the weighted gradients d k(s_i, .) / d x_d at x0, as (n_sv, V)."""
        return self._blockwise(S, x0, part_grad)


_FUNCTION_KERNELS = {linear_kernel: "linear", hik_kernel: "hik", additive_chi2_kernel: "additive_chi2",
                     chi2_kernel: "chi2", rbf_kernel: "rbf"}


def kernel_of(svc) -> BowKernel:
    """Return the BowKernel equivalent to a fitted SVC/NuSVC's kernel, or raise UnsupportedKernelError."""
    k = svc.kernel
    if isinstance(k, BowKernel):
        return k
    if callable(k):
        name = _FUNCTION_KERNELS.get(k)
        if name is None:
            raise UnsupportedKernelError(
                f"callable kernel {getattr(k, '__qualname__', k)!r} is not one of lrp_cli.bow.kernels")
        return BowKernel([make_part(name)])
    if k == "linear":
        return BowKernel([make_part("linear")])
    if k == "rbf":
        return BowKernel([make_part("rbf", gamma=svc._gamma)])
    if k == "poly":
        return BowKernel([make_part("poly", gamma=svc._gamma, degree=svc.degree, coef0=svc.coef0)])
    raise UnsupportedKernelError(f"kernel {k!r} is not supported (use linear, rbf, poly or lrp_cli.bow.kernels)")
