"""Synthetic polygons-versus-circles images (paper Fig 6): grey tiles and scenes with shape masks.

A tile is positive iff it contains at least one polygon; negatives hold circles only, or nothing.
Shapes are filled, anti-aliased (drawn at 4x and box-downsampled) and never overlap, so the polygon
and circle masks are disjoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TILE = 102
SUPER = 4  # supersampling factor for anti-aliasing
RADIUS = (11.0, 20.0)
NOISE = 0.01


def _polygon_vertices(rng, cx, cy, r) -> list:
    """Return the vertices of a random convex-ish polygon (3-5 corners) inscribed in radius r."""
    n = int(rng.integers(3, 6))
    base = rng.uniform(0, 2 * np.pi)
    # Jitter the corner angles but keep them ordered so the polygon stays simple.
    angles = base + 2 * np.pi * (np.arange(n) + rng.uniform(-0.2, 0.2, n)) / n
    radii = r * rng.uniform(0.85, 1.0, n)
    return list(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles)))


def _place(rng, shape, radii, placed, margin=3.0, tries=200):
    """Return a centre (x, y) for a shape of radius r not overlapping `placed`, or None."""
    h, w = shape
    r = radii
    for _ in range(tries):  # rejection sampling of a handful of shapes
        cx, cy = rng.uniform(r + 1, w - r - 1), rng.uniform(r + 1, h - r - 1)
        if all(np.hypot(cx - px, cy - py) > r + pr + margin for px, py, pr in placed):
            return cx, cy
    return None


def _render(shape, shapes, background, rng):
    """Return (image, polygon_mask, circle_mask) for a list of (kind, cx, cy, r, level, vertices)."""
    h, w = shape
    big = (w * SUPER, h * SUPER)
    canvas = Image.new("F", big, float(background))
    masks = {"polygon": Image.new("L", big, 0), "circle": Image.new("L", big, 0)}
    draw = ImageDraw.Draw(canvas)
    for kind, cx, cy, r, level, verts in shapes:
        mdraw = ImageDraw.Draw(masks[kind])
        if kind == "polygon":
            pts = [(SUPER * x, SUPER * y) for x, y in verts]
            draw.polygon(pts, fill=float(level))
            mdraw.polygon(pts, fill=255)
        else:
            box = [SUPER * (cx - r), SUPER * (cy - r), SUPER * (cx + r), SUPER * (cy + r)]
            draw.ellipse(box, fill=float(level))
            mdraw.ellipse(box, fill=255)
    img = np.asarray(canvas, dtype=np.float64).reshape(h, SUPER, w, SUPER).mean(axis=(1, 3))
    img = np.clip(img + rng.normal(0.0, NOISE, img.shape), 0.0, 1.0)
    pm, cm = (np.asarray(masks[k], dtype=np.float64).reshape(h, SUPER, w, SUPER).mean(axis=(1, 3)) >= 127.5
              for k in ("polygon", "circle"))
    return img, pm, cm


def _shapes(rng, shape, n_polygons, n_circles, background) -> list:
    """Return non-overlapping random shape descriptions (kinds shuffled so neither is favoured)."""
    kinds = ["polygon"] * n_polygons + ["circle"] * n_circles
    rng.shuffle(kinds)
    placed, out = [], []
    for kind in kinds:
        r = rng.uniform(*RADIUS)
        c = _place(rng, shape, r, placed)
        if c is None:
            continue
        placed.append((c[0], c[1], r))
        # Shapes differ from the background by at least 0.25 in brightness, lighter or darker.
        level = np.clip(background + rng.choice([-1, 1]) * rng.uniform(0.25, 0.5), 0.0, 1.0)
        verts = _polygon_vertices(rng, c[0], c[1], r) if kind == "polygon" else None
        out.append((kind, c[0], c[1], r, level, verts))
    return out


def _scene(rng, shape, n_polygons, n_circles):
    """Return (image, polygon_mask, circle_mask) with the requested shapes on a random grey background."""
    background = rng.uniform(0.3, 0.7)
    return _render(shape, _shapes(rng, shape, n_polygons, n_circles, background), background, rng)


def make_tile(rng, positive: bool):
    """Return (image HxW float64 in [0, 1], polygon_mask, circle_mask) for one 102x102 training tile."""
    if positive:
        n_poly, n_circ = int(rng.integers(1, 3)), int(rng.integers(0, 3))
    else:
        # Negatives: circles only, or (one time in five) an empty tile.
        n_poly, n_circ = 0, (0 if rng.random() < 0.2 else int(rng.integers(1, 4)))
    while True:  # re-draw in the rare case the polygon could not be placed
        img, pm, cm = _scene(rng, (TILE, TILE), n_poly, n_circ)
        if not positive or pm.any():
            return img, pm, cm


def make_scene(rng, size=(306, 408), n_polygons=3, n_circles=3):
    """Return (image, polygon_mask, circle_mask) for a larger test scene of the given (H, W) size."""
    return _scene(rng, tuple(size), n_polygons, n_circles)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Return an image in [0, 1] as uint8."""
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def write_dataset(out_dir, n_per_class: int, seed: int = 0) -> dict:
    """Return {class: count} after writing out_dir/positive/*.png and out_dir/negative/*.png tiles."""
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    counts = {}
    for label, positive in (("positive", True), ("negative", False)):
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):  # one file per tile
            img, _, _ = make_tile(rng, positive)
            Image.fromarray(to_uint8(img)).save(folder / f"{label}_{i:05d}.png")
        counts[label] = n_per_class
    return counts
