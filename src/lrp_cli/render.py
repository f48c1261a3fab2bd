"""Heatmap rendering: pixel relevance, scaling (Eq 35 or a percentile, docs/rendering.md), colormaps, overlay."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from lrp_cli.errors import OptionError

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


@dataclass(frozen=True)
class Scale:
    """What a pixel map is divided by to fit [-1, 1] (--scale, --normalize): max|R| (Eq 35), or the `percentile`-th
    percentile of |R| with larger values clipped to +-1; each map's own, or `divisor`, shared by a batch."""

    percentile: float | None = None
    divisor: float | None = None

    def spec(self) -> str:
        """Returns the --scale text of this scale: "max" or "percentile:P"."""
        return "max" if self.percentile is None else f"percentile:{self.percentile:g}"

    def statistic(self, magnitudes: np.ndarray) -> float:
        """Returns the divisor for these |R| values: their maximum, or their percentile (linear interpolation);
        a percentile of 0 (more than P % of the values are 0) gives way to the maximum, so a sparse map still
        shows its non-zero pixels."""
        top = float(magnitudes.max()) if magnitudes.size else 0.0
        if self.percentile is None:
            return top
        value = float(np.percentile(magnitudes, self.percentile)) if magnitudes.size else 0.0
        return value if value > 0 else top

    def divisor_of(self, heat: np.ndarray) -> float:
        """Returns what this map is divided by: the shared divisor, else the statistic of its own |R|."""
        return self.divisor if self.divisor is not None else self.statistic(np.abs(finite(heat)).ravel())

    def shared(self, maps: list[np.ndarray]) -> "Scale":
        """Returns this scale with the divisor of all maps' pixels pooled (--normalize global)."""
        pooled = [np.abs(finite(m)).ravel() for m in maps]
        return replace(self, divisor=self.statistic(np.concatenate(pooled) if pooled else np.zeros(0)))

    def document(self, heat: np.ndarray) -> dict:
        """Returns the JSON record of how this map was scaled: scale, normalize, divisor and the fraction of
        pixels clipped (|R| above the divisor)."""
        divisor = self.divisor_of(heat)
        clipped = float((np.abs(finite(heat)) > divisor).mean()) if divisor > 0 else 0.0
        return {"scale": self.spec(), "normalize": "image" if self.divisor is None else "global",
                "divisor": divisor, "clipped": clipped}

    def caption(self, shared: bool) -> str:
        """Returns the HTML report's words for this scale."""
        if self.percentile is None:
            return ("max|R| over the whole batch (--normalize global)" if shared
                    else "each heatmap scaled by its own max|R| (Eq 35)")
        what = f"{self.percentile:g}th percentile of |R|"
        whose = (f"the {what} over the whole batch (--normalize global)" if shared
                 else f"each heatmap scaled by its own {what}")
        return f"{whose}, larger values clipped"


def parse_scale(text: str) -> Scale:
    """Returns the Scale of a --scale value, "max" or "percentile:P" with 0 < P <= 100; OptionError otherwise."""
    text = text.strip()
    if text == "max":
        return Scale()
    kind, _, number = text.partition(":")
    try:
        percentile = float(number)
    except ValueError:
        percentile = math.nan
    if kind != "percentile" or not 0 < percentile <= 100:
        raise OptionError(f"--scale {text}: expected max or percentile:P with 0 < P <= 100 (e.g. percentile:99.5)")
    return Scale(percentile)


def normalize(heat: np.ndarray, scale: Scale = Scale()) -> np.ndarray:
    """Returns heat / divisor in [-1, 1], values beyond clipped: the divisor is max|heat| (Eq 35) by default, or
    what `scale` says. NaN and Inf pixels (an overflowed relevance pass) become 0."""
    heat = finite(heat)
    divisor = scale.divisor_of(heat)
    return np.clip(heat / divisor, -1.0, 1.0) if divisor > 0 else np.zeros_like(heat)


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
                   scale: Scale = Scale()) -> dict[str, np.ndarray]:
    """Returns {"heatmap": ..., "overlay": ...}, the uint8 [H, W, 3] images of a pixel map scaled as normalize
    does (by its own max|R|, or as `scale` says)."""
    normalized = normalize(heat, scale)
    return {"heatmap": colorize(normalized, cmap), "overlay": overlay(picture, normalized, cmap)}
