"""Explain one image with a BoW kernel SVM: pixel relevance by paper Algorithm 1, optionally tiled (Fig 6)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lrp_cli.bow.classifier import ClassifierError, class_scores, target_decision
from lrp_cli.bow.features import as_float_image
from lrp_cli.bow.relevance import layer1, layer2, layer3
from lrp_cli.bow.model import BowModel, BowModelError
from lrp_cli.ir.windows import tile_positions

LAYER_NAMES = ("layer3 BoW dimensions", "layer2 local features", "layer1 pixels")


@dataclass
class BowExplanation:
    """Pixel relevance of one image and the quantities that check it (not normalized; Eq 34 output).

    For tiled explanations `relevance` is the per-pixel average over the tiles covering a pixel
    (Fig 6), while f_x, scores, layer_sums and taylor_residual are means over tiles, and
    conservation_error compares the mean tile sum of pixel relevance with the mean tile f(x).
    """

    relevance: np.ndarray
    f_x: float
    target: int
    scores: np.ndarray
    layer_sums: list
    taylor_residual: float | None
    conservation_error: float
    n_tiles: int = 1
    tile: tuple | None = None
    tile_stride: int | None = None
    tile_f_x: list = field(default_factory=list)
    root_distance: float | None = None


def resolve_tiling(model: BowModel, shape: tuple, tile, tile_stride):
    """Return (tile_h, tile_w, stride) or None for a whole-image explanation.

    tile=None uses the model's training image size when the image is larger than it; tile=0 forces
    a whole-image explanation; the default stride is the metadata's tile_stride or a third of the tile.
    """
    h, w = shape
    if tile is None:
        size = model.input_size
        if size is None or (h <= size[0] and w <= size[1]):
            return None
        th, tw = size
    elif int(tile) <= 0:
        return None
    else:
        th = tw = int(tile)
    th, tw = min(th, h), min(tw, w)
    if (th, tw) == (h, w):
        return None
    stride = tile_stride or model.metadata.get("tile_stride") or max(1, max(th, tw) // 3)
    return th, tw, int(stride)


def _windows(shape, tiling) -> list:
    """Return the (y, x, h, w) windows to explain."""
    if tiling is None:
        return [(0, 0) + tuple(shape)]
    th, tw, s = tiling
    return [(y, x, th, tw) for y in tile_positions(shape[0], th, s) for x in tile_positions(shape[1], tw, s)]


def _resolve_pair(model: BowModel, pair):
    """Return the pair as two class indices (labels or indices accepted)."""
    if pair is None:
        return None
    out = []
    for c in pair:
        if isinstance(c, str) and c in model.classes:
            out.append(model.classes.index(c))
        else:
            try:
                out.append(int(c))
            except (TypeError, ValueError) as exc:
                raise BowModelError(f"{model.path}: unknown class {c!r} in pair") from exc
    if len(out) != 2 or out[0] == out[1] or not all(0 <= c < len(model.classes) for c in out):
        raise BowModelError(f"{model.path}: pair must name two different classes, got {pair!r}")
    return tuple(out)


def _choose_target(model, target, pair, scores) -> int:
    """Return the class index to explain: `target`, else the predicted class (within the pair)."""
    if target is not None:
        t = int(target)
        if not 0 <= t < len(model.classes):
            raise BowModelError(f"{model.path}: target {t} out of range for {len(model.classes)} classes")
        return t
    if pair is not None:
        return pair[0] if scores[pair[0]] >= scores[pair[1]] else pair[1]
    return int(np.argmax(scores))


def _bow_vectors(model: BowModel, img: np.ndarray, windows: list):
    """Return (mapped sets, BoW matrix) for every window of the image (all windows in one batch)."""
    crops = [img[y:y + h, x:x + w] for y, x, h, w in windows]
    mapped = model.mapping.transform(model.features.transform(crops))
    return mapped, model.pooling.transform(mapped)


def explain_bow(model: BowModel, image, target=None, tile=None, tile_stride=None, pair=None) -> BowExplanation:
    """Return the BowExplanation (pixel relevance by Eqs 24/25, 27/31, 34) of `image` for class `target`.

    image: HxWx3 float64 in [0, 1]. target: class index, None = predicted class. tile / tile_stride:
    explain overlapping tiles and average them (see resolve_tiling). pair: two classes (indices or
    labels) for one-vs-one multi-class SVMs, required there.
    """
    img = as_float_image(image)
    if model.one_vs_one and pair is None:
        raise BowModelError(f"{model.path}: one-vs-one multi-class SVM; give a pair of classes to explain")
    pair = _resolve_pair(model, pair)
    tiling = resolve_tiling(model, img.shape[:2], tile, tile_stride)
    windows = _windows(img.shape[:2], tiling)
    try:
        mapped, X = _bow_vectors(model, img, windows)
    except ValueError as exc:
        raise BowModelError(f"{model.path}: {exc}") from exc
    clf = model.classifier
    scores = class_scores(clf, X).mean(axis=0)
    t = _choose_target(model, target, pair, scores)
    try:
        dec = target_decision(clf, t, pair)
    except ClassifierError as exc:
        raise BowModelError(f"{model.path}: {exc}") from exc
    return _explain_windows(model, dec, img.shape[:2], windows, mapped, X, t, scores, tiling)


def _coverage(windows: list, shape: tuple) -> np.ndarray:
    """Return how many windows cover each pixel (H, W)."""
    # Eq 34's difference array with relevance = area spreads exactly 1 over every window.
    areas = np.array([h * w for _, _, h, w in windows], dtype=np.float64)
    return np.rint(layer1([areas], [np.array([[y, x, y + h, x + w] for y, x, h, w in windows])], shape))


def _explain_windows(model, dec, shape, windows, mapped, X, target, scores, tiling) -> BowExplanation:
    """Return the BowExplanation averaging the per-window decompositions."""
    # f at the support vectors is the same for every window; the Taylor root search needs it.
    f_sv = None if dec.kernel.decomposable else dec.value(dec.support)
    per_window = [layer3(dec, xv, f_sv) for xv in X]  # Eq 24 or a root search per window
    r3 = np.stack([r for r, _, _ in per_window])
    r2 = layer2(r3, mapped, model.pooling.p)
    offsets = np.array([[y, x, y, x] for y, x, _, _ in windows])
    # All windows spread their R2 into one image-sized difference array (Eq 34), shifted to their origin.
    total = layer1(r2, [np.stack([ms.boxes[g] for ms in mapped]) + offsets[:, None, :] for g in range(len(r2))],
                   shape)
    fxs = dec.value(X)
    f_x = float(fxs.mean())
    # The sum of `total` is the sum of every window's pixel relevance, hence the mean over windows.
    mean_sums = (r3.sum(axis=1).mean(), sum(r.sum(axis=1) for r in r2).mean(), total.sum() / len(windows))
    err = abs(mean_sums[2] - f_x) / abs(f_x) if f_x != 0 else abs(mean_sums[2])
    resid = [res for _, res, _ in per_window if res is not None]
    dists = [root.distance for _, _, root in per_window if root is not None]
    return BowExplanation(
        relevance=total / np.maximum(_coverage(windows, shape), 1), f_x=f_x, target=target, scores=scores,
        layer_sums=[(n, float(v)) for n, v in zip(LAYER_NAMES, mean_sums)],
        taylor_residual=float(np.mean(resid)) if resid else None, conservation_error=float(err),
        n_tiles=len(windows), tile=None if tiling is None else tiling[:2],
        tile_stride=None if tiling is None else tiling[2], tile_f_x=[float(v) for v in fxs],
        root_distance=float(np.mean(dists)) if dists else None)
