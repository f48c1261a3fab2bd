"""Cluttered 64x64 images of simple shapes, each with the exact mask of its object.

The bundled ``shapes-cnn`` model is trained on these images, and because every image comes with the
pixels that make up the object, tests and ``lrp check`` can ask whether a heatmap's relevance lies on
the object rather than on the clutter around it.

Only numpy is used for drawing, so the same seed gives the same bytes on every platform.
"""

from __future__ import annotations

import numpy as np

SIZE = 64
CLASSES = ("circle", "square", "triangle", "cross")

# Pixel centres, so that a shape's outline does not depend on which corner is called (0, 0).
_YY, _XX = (np.mgrid[0:SIZE, 0:SIZE] + 0.5).astype(np.float64)

_RADIUS_RANGE = (8.0, 18.0)
# The farthest any class reaches from its centre, in radii, at any rotation: keeps shapes inside.
_REACH = 1.2
_MIN_CONTRAST = 90.0  # RGB distance between the shape and the background it covers


def make_sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Return one (image uint8 HxWx3, mask bool HxW, label int) drawn with ``rng``."""
    label = int(rng.integers(len(CLASSES)))
    image, mask = _render(rng, label)
    return image, mask, label


def make_dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (images uint8 [n,64,64,3], masks bool [n,64,64], labels int64 [n]) for ``seed``.

    Every class gets n // len(CLASSES) images (the first n % len(CLASSES) classes one more), in a
    shuffled order, so that accuracies on small sets are not skewed by chance imbalance.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    masks = np.empty((n, SIZE, SIZE), dtype=bool)
    for i, label in enumerate(labels):
        images[i], masks[i] = _render(rng, int(label))
    return images, masks, labels


def shape_mask(label: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Return the bool HxW mask of class ``label`` centred at (cx, cy), scaled and rotated."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = _XX - cx, _YY - cy
    u = (c * dx + s * dy) / radius
    v = (-s * dx + c * dy) / radius
    return _SHAPES[CLASSES[label]](u, v)


def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Half-side 0.8 gives about the circle's area, so size alone does not give the class away.
    return np.maximum(np.abs(u), np.abs(v)) <= 0.8


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    inradius = _REACH / 2.0  # equilateral: inradius is half the circumradius
    inside = np.ones(u.shape, dtype=bool)
    for k in range(3):
        a = 2.0 * np.pi * k / 3.0
        inside &= u * np.cos(a) + v * np.sin(a) <= inradius
    return inside


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    half_width = 0.3
    return ((au <= half_width) & (av <= 1.0)) | ((av <= half_width) & (au <= 1.0))


_SHAPES = {"circle": _circle, "square": _square, "triangle": _triangle, "cross": _cross}


def _render(rng: np.random.Generator, label: int) -> tuple[np.ndarray, np.ndarray]:
    canvas = _background(rng)
    radius = rng.uniform(*_RADIUS_RANGE)
    margin = _REACH * radius + 1.0
    cx, cy = rng.uniform(margin, SIZE - margin, size=2)
    mask = shape_mask(label, cx, cy, radius, rng.uniform(0.0, 2.0 * np.pi))
    colour = _contrasting_colour(rng, canvas[mask].mean(axis=0))
    canvas[mask] = colour + _shading(rng, cx, cy, radius)[mask]
    canvas += rng.normal(0.0, 3.0, size=canvas.shape)  # sensor noise, so flat areas are not exactly flat
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), mask


def _background(rng: np.random.Generator) -> np.ndarray:
    canvas = rng.uniform(40.0, 215.0, size=3) + _smooth_noise(rng)
    if rng.random() < 0.6:
        canvas += _stripes(rng)
    for _ in range(int(rng.integers(3, 9))):
        _add_blob(rng, canvas)
    for _ in range(int(rng.integers(0, 4))):
        _add_line(rng, canvas)
    return canvas


def _smooth_noise(rng: np.random.Generator) -> np.ndarray:
    grid = int(rng.integers(3, 7))
    coarse = rng.uniform(-1.0, 1.0, size=(grid, grid, 3)) * rng.uniform(10.0, 40.0)
    up = _upsampler(grid)
    return np.einsum("yi,ijc,xj->yxc", up, coarse, up)


def _upsampler(grid: int) -> np.ndarray:
    # Bilinear upsampling as a (SIZE x grid) matrix, so a whole channel is two matrix products.
    t = (np.arange(SIZE) + 0.5) / SIZE * (grid - 1)
    return np.stack([np.interp(t, np.arange(grid), e) for e in np.eye(grid)], axis=1)


def _stripes(rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0.0, np.pi)
    period = rng.uniform(4.0, 16.0)
    phase = rng.uniform(0.0, 2.0 * np.pi)
    wave = np.sin(2.0 * np.pi * (_XX * np.cos(angle) + _YY * np.sin(angle)) / period + phase)
    return wave[..., None] * rng.uniform(-15.0, 15.0, size=3)


def _add_blob(rng: np.random.Generator, canvas: np.ndarray) -> None:
    # Soft-edged and smaller than any shape, so a blob is never mistaken for a circle.
    cx, cy = rng.uniform(0.0, SIZE, size=2)
    sigma = rng.uniform(1.0, 3.0)
    alpha = rng.uniform(0.4, 0.9) * np.exp(-((_XX - cx) ** 2 + (_YY - cy) ** 2) / (2.0 * sigma**2))
    _blend(canvas, rng.uniform(0.0, 255.0, size=3), alpha)


def _add_line(rng: np.random.Generator, canvas: np.ndarray) -> None:
    # Thin straight strokes: edges in the clutter, so edges alone do not mean "object".
    x0, y0 = rng.uniform(0.0, SIZE, size=2)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    length = rng.uniform(5.0, 14.0)
    dx, dy = np.cos(angle), np.sin(angle)
    along = np.clip((_XX - x0) * dx + (_YY - y0) * dy, 0.0, length)
    dist = np.hypot(_XX - (x0 + along * dx), _YY - (y0 + along * dy))
    alpha = np.clip(1.0 - dist / 1.0, 0.0, 1.0) * rng.uniform(0.3, 0.7)
    _blend(canvas, rng.uniform(0.0, 255.0, size=3), alpha)


def _blend(canvas: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> None:
    canvas += alpha[..., None] * (colour - canvas)


def _contrasting_colour(rng: np.random.Generator, behind: np.ndarray) -> np.ndarray:
    # Drawn in one batch rather than a retry loop, so the number of draws per image is fixed.
    candidates = rng.uniform(0.0, 255.0, size=(16, 3))
    distance = np.linalg.norm(candidates - behind, axis=1)
    good = np.flatnonzero(distance >= _MIN_CONTRAST)
    return candidates[good[0] if good.size else int(np.argmax(distance))]


def _shading(rng: np.random.Generator, cx: float, cy: float, radius: float) -> np.ndarray:
    # A gentle light gradient across the object, so it is not a flat colour the net could key on.
    angle = rng.uniform(0.0, 2.0 * np.pi)
    strength = rng.uniform(0.0, 12.0) / radius
    ramp = (_XX - cx) * np.cos(angle) + (_YY - cy) * np.sin(angle)
    return (ramp * strength)[..., None] * np.ones(3)
