"""What `lrp check` measures on a pixel relevance map R_p (relevance summed over channels at pixel p of the model
input): positive share of a region, the pointing game, similarity to a stored map, and region masks."""

from __future__ import annotations

import re

import numpy as np
from scipy.stats import rankdata

#: topk-iou compares the sets of the top 10 % of pixels by R_p.
TOP_FRACTION = 0.10


def positive_share(heat: np.ndarray, region: np.ndarray) -> float:
    """Returns sum_{p in region} max(R_p, 0) / sum_p max(R_p, 0), or 0.0 when there is no positive relevance."""
    positive = np.maximum(heat, 0.0)
    total = float(positive.sum())
    return float(positive[region].sum()) / total if total > 0 else 0.0


def pointing_game(heat: np.ndarray, region: np.ndarray) -> bool:
    """Returns whether the pixel of maximal R_p lies in the region (Zhang et al. 2018); ties: the first in
    row-major order."""
    return bool(region.flat[int(np.argmax(heat))])


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / norm if norm > 0 else float(np.array_equal(a, b))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Returns Spearman's rank correlation of two maps over all pixels (1.0 for two equal constant maps,
    0.0 when only one is constant)."""
    return _pearson(rankdata(a.ravel()), rankdata(b.ravel()))  # ties share their average rank


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Returns the cosine similarity of two maps over all pixels (1.0 for two all-zero maps, 0.0 for one)."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norm if norm > 0 else float(np.array_equal(a, b))


def top_pixels(heat: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """Returns the flat indices of the ceil(fraction * N) pixels of largest R_p (ties: the first in order)."""
    count = max(1, int(np.ceil(fraction * heat.size)))
    return np.argsort(-heat.ravel(), kind="stable")[:count]


def topk_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Returns the intersection over union of the top-10 % pixel sets of two maps."""
    top_a, top_b = top_pixels(a), top_pixels(b)
    shared = np.intersect1d(top_a, top_b).size
    return shared / (top_a.size + top_b.size - shared)


SIMILARITIES = {"spearman": spearman, "cosine": cosine, "topk-iou": topk_iou}


def box_mask(box: tuple[float, float, float, float], units: str, shape: tuple[int, int]) -> np.ndarray:
    """Returns the bool [H, W] mask of a box [x0, y0, x1, y1) in pixels or in fractions of the width (x) and
    height (y): the pixels whose centre lies inside the box (so two boxes that share an edge never share a pixel,
    and an edge at a half pixel falls the same way wherever it is)."""
    height, width = shape
    x0, y0, x1, y1 = box
    if units == "fraction":
        x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
    first = lambda edge: int(np.ceil(edge - 0.5))  # noqa: E731 - the first pixel whose centre k + 0.5 >= edge
    mask = np.zeros(shape, dtype=bool)
    mask[max(first(y0), 0):first(y1), max(first(x0), 0):first(x1)] = True
    return mask


def outline(mask: np.ndarray) -> np.ndarray:
    """Returns the bool map of the region's border pixels: inside, with a 4-neighbour outside (or the edge)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def text_region_mask(names: list[str], text: str, spans: np.ndarray, words: list[str] | None,
                     regex: str | None) -> np.ndarray:
    """Returns the bool [n] mask of a text's words in a region: the words equal to one of `words` ignoring case,
    or the words whose [start, end) span overlaps a non-empty match of `regex` in the text."""
    if words is not None:
        wanted = {w.casefold() for w in words}
        return np.fromiter((name.casefold() in wanted for name in names), dtype=bool, count=len(names))
    matches = np.asarray([m.span() for m in re.finditer(regex, text) if m.end() > m.start()],
                         dtype=np.int64).reshape(-1, 2)
    overlap = (spans[:, :1] < matches[None, :, 1]) & (spans[:, 1:] > matches[None, :, 0])
    return overlap.any(axis=1)
