"""Dense local features on a regular grid: SIFT-like gradient histograms and colour quantiles.

Every local feature l keeps its square support region area(l) as a box (y0, x0, y1, x1) in image
coordinates (half-open), which the pixel layer of LRP (paper Eq 34) needs. Boxes always lie fully
inside the image so that spreading relevance over them conserves it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import groupby

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import gaussian_filter
from sklearn.base import BaseEstimator, TransformerMixin

N_ORIENT = 8
N_CELLS = 4
QUANTILES = np.linspace(0.1, 0.9, 9)
GREY_WEIGHTS = np.array([0.299, 0.587, 0.114])
BATCH = 32  # images per vectorized batch: 32 tiles of 102 px need ~25 MB per orientation map


@dataclass
class FeatureGroup:
    """One kind of local feature at one scale: descriptors (n, D) and their support boxes (n, 4)."""

    name: str
    descriptors: np.ndarray
    boxes: np.ndarray


@dataclass
class LocalFeatureSet:
    """All local features of one image, one FeatureGroup per (descriptor kind, scale)."""

    shape: tuple
    groups: list = field(default_factory=list)


def as_float_image(image) -> np.ndarray:
    """Return `image` as a float64 HxWx3 array in [0, 1] (grey images are repeated to 3 channels)."""
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 image, got shape {arr.shape}")
    return arr[:, :, :3]


def grid_origins(length: int, side: int, step: int) -> np.ndarray:
    """Return the top-left coordinates of a centred regular grid of windows of `side` inside `length`."""
    if length < side:
        return np.zeros(0, dtype=np.int64)
    count = (length - side) // step + 1
    # Centre the grid so that both borders lose the same margin.
    offset = (length - side - (count - 1) * step) // 2
    return offset + step * np.arange(count, dtype=np.int64)


def orientation_maps(channels: np.ndarray, smooth: float) -> np.ndarray:
    """Return (..., H, W, 8) gradient magnitudes soft-binned by orientation (linear interpolation between bins).

    channels: (..., H, W); leading axes are a batch (smoothing and gradients act on the last two only).
    """
    sigma = (0.0,) * (channels.ndim - 2) + (smooth, smooth)
    img = gaussian_filter(channels, sigma) if smooth > 0 else channels
    gy, gx = np.gradient(img, axis=(-2, -1))
    mag = np.hypot(gx, gy)
    pos = (np.arctan2(gy, gx) % (2 * np.pi)) / (2 * np.pi / N_ORIENT)
    lo = np.floor(pos).astype(np.int64) % N_ORIENT
    frac = (pos - np.floor(pos))[..., None]
    out = np.zeros(channels.shape + (N_ORIENT,))
    # lo and its neighbour hi never coincide, so two scatters fill each pixel's two bins.
    np.put_along_axis(out, lo[..., None], mag[..., None] * (1.0 - frac), axis=-1)
    np.put_along_axis(out, (lo[..., None] + 1) % N_ORIENT, mag[..., None] * frac, axis=-1)
    return out


def cell_weights(cell: int) -> np.ndarray:
    """Return (4, 4*cell) separable weights: triangular cell membership times a Gaussian window."""
    side = N_CELLS * cell
    u = (np.arange(side) + 0.5 - side / 2.0) / cell  # position in cell units, in (-2, 2)
    centres = np.arange(N_CELLS) - (N_CELLS - 1) / 2.0
    tri = np.clip(1.0 - np.abs(u[None, :] - centres[:, None]), 0.0, None)
    gauss = np.exp(-0.5 * (u / (N_CELLS / 2.0)) ** 2)  # sigma = half the descriptor width
    w = tri * gauss[None, :]
    return w / w.sum()


def band_matrix(origins: np.ndarray, w: np.ndarray, length: int) -> np.ndarray:
    """Return (n, 4, length): row (k, c) holds cell c's weights placed at the k-th window origin."""
    n, (cells, side) = len(origins), w.shape
    out = np.zeros((n, cells, length))
    cols = origins[:, None, None] + np.arange(side)[None, None, :]
    out[np.arange(n)[:, None, None], np.arange(cells)[None, :, None], cols] = w[None, :, :]
    return out


def sift_descriptors(channels, cell, ys, xs, smooth, min_norm) -> np.ndarray:
    """Return (B, len(ys)*len(xs), 128) SIFT-like descriptors of a batch of channels (B, H, W) on the grid."""
    omap = orientation_maps(channels, smooth)  # (B, H, W, 8)
    w = cell_weights(cell)
    b, h, wd = channels.shape
    ny, nx = len(ys), len(xs)
    # The weights are separable, so pooling is two matrix products: over rows, then over columns,
    # each one BLAS call for the whole batch.
    rows = band_matrix(ys, w, h).reshape(ny * N_CELLS, h)
    a = rows @ np.moveaxis(omap, 1, 0).reshape(h, -1)  # (ny*4, B*W*8)
    a = np.moveaxis(a.reshape(ny * N_CELLS, b, wd, N_ORIENT), 2, 3)  # (ny*4, B, 8, W)
    d = a @ band_matrix(xs, w, wd).reshape(nx * N_CELLS, wd).T  # (ny*4, B, 8, nx*4)
    # Descriptor layout: orientation-major, then cell row, then cell column (as in SIFT).
    d = d.reshape(ny, N_CELLS, b, N_ORIENT, nx, N_CELLS).transpose(2, 0, 4, 3, 1, 5)
    return normalize_sift(d.reshape(b, ny * nx, N_ORIENT * N_CELLS * N_CELLS), min_norm)


def normalize_sift(d: np.ndarray, min_norm: float) -> np.ndarray:
    """Return SIFT-normalized descriptors (unit norm, clipped at 0.2) scaled down for low contrast."""
    norm = np.linalg.norm(d, axis=-1, keepdims=True)
    unit = d / np.maximum(norm, 1e-12)
    unit = np.minimum(unit, 0.2)
    unit /= np.maximum(np.linalg.norm(unit, axis=-1, keepdims=True), 1e-12)
    # Flat regions would otherwise turn noise into full-strength descriptors.
    strength = np.minimum(1.0, norm / min_norm) if min_norm > 0 else 1.0
    return unit * strength


def quantile_descriptors(images, side, ys, xs) -> np.ndarray:
    """Return (B, n, 2*9*3) colour quantiles (0.1..0.9) of the upper and lower half of each window."""
    win = sliding_window_view(images, (side, side), axis=(1, 2))[:, ys][:, :, xs]  # (B, ny, nx, 3, side, side)
    half = side // 2
    top = win[..., :half, :].reshape(win.shape[:4] + (-1,))
    bottom = win[..., half:, :].reshape(win.shape[:4] + (-1,))
    q = np.stack([np.quantile(top, QUANTILES, axis=-1), np.quantile(bottom, QUANTILES, axis=-1)])
    # q: (2 halves, 9, B, ny, nx, 3) -> (B, n, 54)
    return np.moveaxis(q, (2, 3, 4), (0, 1, 2)).reshape(images.shape[0], len(ys) * len(xs), -1)


def grid_boxes(ys, xs, side) -> np.ndarray:
    """Return (n, 4) boxes (y0, x0, y1, x1) for the grid, in the same order as the descriptors."""
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    yy, xx = yy.ravel(), xx.ravel()
    return np.stack([yy, xx, yy + side, xx + side], axis=1).astype(np.int64)


class DenseFeatures(TransformerMixin, BaseEstimator):
    """Dense-grid local feature extractor: images -> list of LocalFeatureSet.

    scales: SIFT scales; the cell side is round(magnif * scale) px and the support 4 cells wide
        (scale 3 -> 36 px, as in the paper). step: grid step in px (None -> round(2 * scale)).
    color: "grey" (one 128-d SIFT on grey values) or "rgb" (SIFT per colour channel, 384-d).
    quantiles: also emit 54-d colour-quantile features per scale (their own group / codebook).
    min_norm: descriptors whose raw norm is below this are scaled down (flat regions -> ~0).
    """

    def __init__(self, scales=(2.0, 3.0), step=None, magnif=3.0, color="grey", quantiles=False,
                 min_norm=0.003):
        self.scales = scales
        self.step = step
        self.magnif = magnif
        self.color = color
        self.quantiles = quantiles
        self.min_norm = min_norm

    def fit(self, X, y=None):
        """Return self (the extractor has no learned state)."""
        if self.color not in ("grey", "rgb"):
            raise ValueError(f"color must be 'grey' or 'rgb', got {self.color!r}")
        return self

    def __sklearn_is_fitted__(self) -> bool:
        """Return True: this step has no learned state, so it is always ready to transform."""
        return True

    def transform(self, X):
        """Return one LocalFeatureSet per image of X (runs of equal-size images are processed in batches)."""
        out = []
        for _, run in groupby((as_float_image(img) for img in X), key=np.shape):  # consecutive equal sizes
            run = list(run)
            for i in range(0, len(run), BATCH):
                out += self.extract_batch(np.stack(run[i:i + BATCH]))
        return out

    def group_names(self) -> list:
        """Return the names of the feature groups this extractor emits, in order."""
        names = []
        for s in self.scales:
            names.append(f"sift@{s:g}")
            if self.quantiles:
                names.append(f"quantile@{s:g}")
        return names

    def geometry(self, scale) -> tuple:
        """Return (cell, side, step) in pixels for one scale."""
        cell = max(1, int(round(self.magnif * scale)))
        step = self.step if self.step is not None else max(1, int(round(2 * scale)))
        return cell, N_CELLS * cell, int(step)

    def min_size(self) -> int:
        """Return the smallest image side for which every scale yields at least one feature."""
        return max(self.geometry(s)[1] for s in self.scales)

    def extract(self, image) -> LocalFeatureSet:
        """Return the LocalFeatureSet of one image (HxWx3 float in [0, 1])."""
        return self.extract_batch(as_float_image(image)[None])[0]

    def extract_batch(self, images: np.ndarray) -> list:
        """Return one LocalFeatureSet per image of a (B, H, W, 3) batch of equal-size images."""
        b, h, w = images.shape[:3]
        if min(h, w) < self.min_size():
            raise ValueError(f"image {h}x{w} is smaller than the largest local feature ({self.min_size()} px)")
        channels = [images @ GREY_WEIGHTS] if self.color == "grey" else [images[..., c] for c in range(3)]
        out = [LocalFeatureSet(shape=(h, w)) for _ in range(b)]
        for s in self.scales:
            cell, side, step = self.geometry(s)
            ys, xs = grid_origins(h, side, step), grid_origins(w, side, step)
            boxes = grid_boxes(ys, xs, side)
            desc = np.concatenate(
                [sift_descriptors(ch, cell, ys, xs, 0.5 * s, self.min_norm) for ch in channels], axis=2)
            quant = quantile_descriptors(images, side, ys, xs) if self.quantiles else None
            for i, fs in enumerate(out):  # attach the batch's rows to each image's set (no computation)
                fs.groups.append(FeatureGroup(f"sift@{s:g}", desc[i], boxes))
                if quant is not None:
                    fs.groups.append(FeatureGroup(f"quantile@{s:g}", quant[i], boxes))
        return out
