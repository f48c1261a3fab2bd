"""Heatmap rendering: pixel relevance, normalization (Eq 35), colormaps, overlay."""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Colour stops (position in [0, 1], RGB in [0, 1]); position 0.5 is relevance 0.
COLORMAP_STOPS = {
    "bwr": [(0.0, (0, 0, 1)), (0.5, (1, 1, 1)), (1.0, (1, 0, 0))],
    "seismic": [(0.0, (0, 0, 0.816)), (0.5, (0.816, 0.816, 0.816)), (1.0, (0.816, 0, 0))],
    "coldnhot": [(0.0, (0, 1, 1)), (0.25, (0, 0, 1)), (0.5, (0, 0, 0)), (2 / 3, (1, 0, 0)),
                 (5 / 6, (1, 1, 0)), (1.0, (1, 1, 1))],
    "gray": [(0.0, (0, 0, 0)), (1.0, (1, 1, 1))],
}
COLORMAPS = ("jet",) + tuple(COLORMAP_STOPS)


def pixel_relevance(relevance: np.ndarray) -> np.ndarray:
    """Returns the [H, W] map of an input-shaped relevance tensor: summed over channels and batch; a flat
    [1, N] input is shown square when N is a square number."""
    if relevance.ndim == 4:
        return relevance.sum(axis=(0, 1))
    if relevance.ndim == 3:
        return relevance.sum(axis=0)
    if relevance.ndim == 2 and relevance.shape[0] > 1:  # already a pixel map (BoW models)
        return relevance
    side = int(round(np.sqrt(relevance.size)))
    if side * side == relevance.size:
        return relevance.reshape(side, side)
    return relevance.reshape(1, -1)


def finite(heat: np.ndarray) -> np.ndarray:
    """Returns the map with NaN and Inf pixels set to 0 (neutral)."""
    return np.where(np.isfinite(heat), heat, 0.0)


def normalize(heat: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Returns heat / max|heat| (Eq 35) in [-1, 1]; `scale` replaces max|heat| for global normalization.
    NaN and Inf pixels (an overflowed relevance pass) become 0."""
    heat = finite(heat)
    scale = float(np.abs(heat).max()) if scale is None else float(scale)
    return heat / scale if scale > 0 else np.zeros_like(heat)


def _jet(t: np.ndarray) -> np.ndarray:
    channels = [np.clip(1.5 - np.abs(4.0 * t - shift), 0.0, 1.0) for shift in (3.0, 2.0, 1.0)]
    return np.stack(channels, axis=-1)


def _stops(t: np.ndarray, stops) -> np.ndarray:
    positions = [p for p, _ in stops]
    return np.stack([np.interp(t, positions, [c[k] for _, c in stops]) for k in range(3)], axis=-1)


def colorize(normalized: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """Returns the uint8 [H, W, 3] colour image of a map in [-1, 1] (0 is the colormap's centre: green in jet)."""
    t = (np.clip(normalized, -1.0, 1.0) + 1.0) / 2.0
    rgb = _jet(t) if cmap == "jet" else _stops(t, COLORMAP_STOPS[cmap])
    return np.round(rgb * 255).astype(np.uint8)


def overlay(picture: Image.Image | None, normalized: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """Returns the uint8 [H, W, 3] blend of the picture (greyed) and the heatmap, opaque where |R| is large; a
    non-image input (picture None) is blended onto mid-grey."""
    if picture is None:
        picture = Image.new("RGB", normalized.shape[::-1], (128, 128, 128))
    base = np.asarray(picture.convert("L").convert("RGB").resize(normalized.shape[::-1]), dtype=np.float64)
    heat = colorize(normalized, cmap).astype(np.float64)
    alpha = (0.3 + 0.7 * np.sqrt(np.abs(np.clip(normalized, -1, 1))))[:, :, None]
    return np.round(base * (1 - alpha) + heat * alpha).astype(np.uint8)



def heatmap_images(heat: np.ndarray, picture: Image.Image | None, cmap: str = "jet",
                   scale: float | None = None) -> dict[str, np.ndarray]:
    """Returns {"heatmap": ..., "overlay": ...}, the uint8 [H, W, 3] images of a pixel map scaled as normalize
    does (by its own max|R|, or by `scale`)."""
    normalized = normalize(heat, scale)
    return {"heatmap": colorize(normalized, cmap), "overlay": overlay(picture, normalized, cmap)}
