"""Pixel-wise decomposition of BoW kernel classifiers (paper Algorithm 1).

Layer 3 (BoW dimensions): Eq 24 for sum-decomposable kernels, Eq 25 (first-order Taylor expansion
at a root x0 of f) otherwise. Layer 2 (local features): Eqs 27 / 31, and the indicator limit Eq 32
for max pooling. Layer 1 (pixels): Eq 34 with a 2-D difference array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lrp_cli.bow.pooling import is_max


@dataclass
class RootSearch:
    """A Taylor root point x0 with f(x0) ~ 0 and how it was found."""

    x0: np.ndarray
    f_x0: float
    distance: float
    found: bool
    n_candidates: int


def kernel_terms(dec, x: np.ndarray) -> np.ndarray:
    """Return sum_i a_i k^(d)(s_id, x_d) per dimension (Eq 24 without the bias): with the bias, sums to f(x)."""
    return dec.coef @ dec.kernel.perdim(dec.support, x)


def layer3_exact(dec, x: np.ndarray) -> np.ndarray:
    """Return R3 per BoW dimension by Eq 24 (b / V + sum_i a_i k^(d)(s_id, x_d)); sums to f(x) exactly."""
    return dec.intercept / x.size + kernel_terms(dec, x)


def layer3_taylor(dec, x: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """Return R3 per BoW dimension by Eq 25: (x - x0)_d * d f / d x_d (x0)."""
    return (x - x0) * (dec.coef @ dec.kernel.grad(dec.support, x0))


def root_candidates(coef: np.ndarray, f_sv: np.ndarray, dist: np.ndarray, sign: float, n_candidates: int):
    """Return (indices of the support vectors find_root searches towards, whether f changes sign there).

    Prefers support vectors of the other sign (sign * a_i < 0) at which f has the other sign, the n_candidates
    nearest to x (dist); else any support vector where f has the other sign; else (no crossing) those of the
    other sign, or all.
    """
    usable = (sign * coef < 0) & (sign * f_sv < 0)
    if not usable.any():  # fall back to any support vector on the other side of the boundary
        usable = sign * f_sv < 0
    if not usable.any():
        other = sign * coef < 0
        return np.flatnonzero(other if other.any() else np.ones_like(other)), False
    idx = np.flatnonzero(usable)
    return idx[np.argsort(dist[idx], kind="stable")[:n_candidates]], True


def _first_crossing(f_grid: np.ndarray, sign: float) -> np.ndarray:
    """Return, per row, the first grid index whose value has left the sign of f(x) (row must cross)."""
    return np.argmax(sign * f_grid <= 0, axis=1)


def find_root(dec, x: np.ndarray, n_candidates: int = 16, n_grid: int = 8, n_iter: int = 40,
              f_sv: np.ndarray | None = None) -> RootSearch:
    """Return the root x0 of f nearest to x found on segments from x towards support vectors.

    Segments go to support vectors of the opposite sign (a_i of the other sign) at which f has the
    other sign; on each segment the first sign change is bracketed on a coarse grid and refined by
    the Illinois method; the root nearest to x (Euclidean) wins. f_sv: f at the support vectors, if
    known (it does not depend on x, so tiles of one image share it).
    """
    fx = float(dec.value(x[None, :])[0])
    if fx == 0.0:
        return RootSearch(x.copy(), 0.0, 0.0, True, 0)
    sign = np.sign(fx)
    S = dec.support
    f_sv = dec.value(S) if f_sv is None else f_sv
    dist = np.linalg.norm(S - x[None, :], axis=1)
    keep, crossing = root_candidates(dec.coef, f_sv, dist, sign, n_candidates)
    if not crossing:
        return _closest_approach(dec, x, fx, S[keep])
    ends, f_ends, dist = S[keep], f_sv[keep], dist[keep]
    delta = ends - x[None, :]
    nc = ends.shape[0]

    def f_at(t: np.ndarray) -> np.ndarray:
        """Return f at x + t * delta for t of shape (nc,) or (nc, k)."""
        tt = t.reshape(nc, -1)
        pts = x[None, None, :] + tt[:, :, None] * delta[:, None, :]
        return dec.value(pts.reshape(-1, x.size)).reshape(tt.shape)

    grid = np.linspace(0.0, 1.0, n_grid + 1)
    f_grid = np.empty((nc, n_grid + 1))
    f_grid[:, 0], f_grid[:, -1] = fx, f_ends  # the segment ends are x and the support vectors
    f_grid[:, 1:-1] = f_at(np.tile(grid[1:-1], (nc, 1)))
    idx = _first_crossing(f_grid, sign)
    rows = np.arange(nc)
    t = _illinois(f_at, grid[idx - 1], grid[idx], f_grid[rows, idx - 1], f_grid[rows, idx], sign,
                  1e-12 * max(1.0, abs(fx)), n_iter)
    best = int(np.argmin(t * dist))
    x0 = x + t[best] * delta[best]
    return RootSearch(x0, float(dec.value(x0[None, :])[0]), float(t[best] * dist[best]), True, nc)


def _illinois(f_at, lo, hi, f_lo, f_hi, sign, tol, n_iter) -> np.ndarray:
    """Return per segment a t with |f| <= tol or a bracket narrower than 1e-12, by the Illinois method.

    Brackets: sign * f_lo > 0 >= sign * f_hi. Regula falsi converges superlinearly on these smooth
    kernels (a handful of kernel evaluations instead of ~40 for bisection); Illinois halves the value
    at an end kept twice in a row, so one end cannot stall.
    """
    t, kept = hi.copy(), np.zeros(lo.shape, dtype=np.int8)  # kept: +1 lo kept last step, -1 hi kept
    f_t = f_hi.copy()
    for _ in range(n_iter):  # iterations, vectorized over all candidate segments
        if np.all((np.abs(f_t) <= tol) | (hi - lo <= 1e-12)):
            break
        t = (lo * f_hi - hi * f_lo) / (f_hi - f_lo)
        f_t = f_at(t)[:, 0]
        left = sign * f_t > 0  # t is on x's side of the boundary: it becomes the new lo
        f_hi = np.where(left & (kept == -1), 0.5 * f_hi, f_hi)
        f_lo = np.where(~left & (kept == 1), 0.5 * f_lo, f_lo)
        lo, f_lo = np.where(left, t, lo), np.where(left, f_t, f_lo)
        hi, f_hi = np.where(left, hi, t), np.where(left, f_hi, f_t)
        kept = np.where(left, -1, 1).astype(np.int8)
    return t


def _closest_approach(dec, x: np.ndarray, fx: float, ends: np.ndarray, n_grid: int = 32) -> RootSearch:
    """Return the point of smallest |f| on segments x -> ends (no root exists there; found=False)."""
    ts = np.linspace(0.0, 1.0, n_grid + 1)
    pts = (x[None, None, :] + ts[None, :, None] * (ends - x[None, :])[:, None, :]).reshape(-1, x.size)
    vals = dec.value(pts)
    best = int(np.argmin(np.abs(vals)))
    return RootSearch(pts[best], float(vals[best]), float(np.linalg.norm(pts[best] - x)), False, ends.shape[0])


def layer3(dec, x: np.ndarray, f_sv: np.ndarray | None = None):
    """Return (R3, taylor_residual or None, RootSearch or None) for BoW vector x (f_sv: see find_root)."""
    if dec.kernel.decomposable:
        return layer3_exact(dec, x), None, None
    root = find_root(dec, x, f_sv=f_sv)
    r3 = layer3_taylor(dec, x, root.x0)
    fx = float(dec.value(x[None, :])[0])
    return r3, fx - float(r3.sum()), root


def layer2_block(r3: np.ndarray, m: np.ndarray, p) -> np.ndarray:
    """Return R2 per local feature for one BoW block: Eq 27 (p = 1), Eq 31 (p-means), Eq 32 (max).

    m: (..., n, K) mappings, r3: (..., K) block relevance; leading axes are a batch of images.
    """
    n = m.shape[-2]
    if is_max(p):
        top = m.max(axis=-2, keepdims=True)
        hit = (m == top) & (top != 0)
        # Indicator of the maximal element; ties share the relevance so that it is conserved.
        weights = hit / np.maximum(hit.sum(axis=-2, keepdims=True), 1)
    else:
        # Divide by the column maximum first: the ratio is unchanged and m**p cannot overflow.
        top = np.abs(m).max(axis=-2, keepdims=True)
        mp = (m / np.where(top > 0, top, 1.0)) ** float(p)
        total = mp.sum(axis=-2, keepdims=True)
        weights = mp / np.where(total == 0, 1.0, total)
    # Dimensions no local feature maps to (Z(x)) have all-zero weights; split them evenly instead.
    unmapped = ~(weights != 0).any(axis=-2)
    shared = np.where(unmapped, r3, 0.0).sum(axis=-1, keepdims=True) / n
    return np.einsum("...nk,...k->...n", weights, np.where(unmapped, 0.0, r3)) + shared


def layer2(r3: np.ndarray, mapped: list, p) -> list:
    """Return one (n_images, n_local) R2 array per feature group, splitting R3 (n_images, V) into blocks."""
    out, start = [], 0
    for g in range(len(mapped[0].mappings)):  # a few groups, each batched over images
        m = np.stack([ms.mappings[g] for ms in mapped])
        k = m.shape[-1]
        out.append(layer2_block(r3[:, start:start + k], m, p))
        start += k
    return out


def layer1(r2_groups: list, boxes_groups: list, shape: tuple) -> np.ndarray:
    """Return pixel relevance (H, W) by Eq 34: each R2 spread evenly over its box, via a difference array.

    Every group gives relevance (n,) and boxes (n, 4) as (y0, x0, y1, x1); boxes may come from
    several windows of one image (then their relevance adds up).
    """
    h, w = shape
    r2 = np.concatenate([np.ravel(r) for r in r2_groups])
    y0, x0, y1, x1 = np.concatenate([np.reshape(b, (-1, 4)) for b in boxes_groups]).T
    dens = r2 / ((y1 - y0) * (x1 - x0))
    corners = np.concatenate([y0 * (w + 1) + x0, y0 * (w + 1) + x1, y1 * (w + 1) + x0, y1 * (w + 1) + x1])
    diff = np.bincount(corners, np.concatenate([dens, -dens, -dens, dens]), minlength=(h + 1) * (w + 1))
    return np.cumsum(np.cumsum(diff.reshape(h + 1, w + 1), axis=0), axis=1)[:h, :w]
