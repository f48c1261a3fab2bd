"""`lrp check` metrics against independent computations: hand-worked maps, brute force, scipy."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from lrp_cli.check import metrics
from lrp_cli.preprocess import PreprocessConfig, fit_geometry

RNG = np.random.default_rng(7)


def test_positive_share_hand_worked():
    heat = np.array([[3.0, -1.0], [1.0, 0.0]])
    region = np.array([[True, True], [False, False]])
    assert metrics.positive_share(heat, region) == pytest.approx(3 / 4, abs=1e-15)
    assert metrics.positive_share(heat, ~region) == pytest.approx(1 / 4, abs=1e-15)
    assert metrics.positive_share(-np.abs(heat), region) == 0.0  # no positive relevance: reported as 0


def test_positive_share_brute_force():
    heat, region = RNG.normal(size=(13, 17)), RNG.random((13, 17)) < 0.3
    inside = sum(max(v, 0.0) for v, r in zip(heat.ravel(), region.ravel()) if r)
    total = sum(max(v, 0.0) for v in heat.ravel())
    assert metrics.positive_share(heat, region) == pytest.approx(inside / total, rel=1e-12)


def test_pointing_game():
    heat = np.zeros((5, 6))
    heat[3, 4] = 2.0
    region = np.zeros((5, 6), dtype=bool)
    assert not metrics.pointing_game(heat, region)
    region[3, 4] = True
    assert metrics.pointing_game(heat, region)


def test_pointing_game_ties_take_the_first_pixel_in_row_major_order():
    # Two equal maxima on a 5x7 map: (1, 5) comes first row by row, (3, 0) first column by column.
    heat = np.zeros((5, 7))
    heat[1, 5] = heat[3, 0] = 1.0
    first, other = np.zeros((5, 7), dtype=bool), np.zeros((5, 7), dtype=bool)
    first[1, 5], other[3, 0] = True, True
    assert metrics.pointing_game(heat, first) and not metrics.pointing_game(heat, other)


@pytest.mark.parametrize("ties", [False, True])
def test_spearman_matches_scipy(ties):
    a, b = RNG.normal(size=(20, 20)), RNG.normal(size=(20, 20))
    if ties:
        a, b = np.round(a), np.round(b * 2)
    b = b + 0.5 * a
    assert metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)


def test_cosine_and_degenerate_maps():
    a, b = RNG.normal(size=(8, 8)), RNG.normal(size=(8, 8))
    expected = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
    assert metrics.cosine(a, b) == pytest.approx(expected, abs=1e-12)
    assert metrics.cosine(a, 3 * a) == pytest.approx(1.0, abs=1e-12)
    zero = np.zeros((8, 8))
    assert metrics.cosine(zero, zero) == 1.0 and metrics.cosine(zero, a) == 0.0
    assert metrics.spearman(zero, zero) == 1.0 and metrics.spearman(zero, a) == 0.0


@pytest.mark.parametrize("shape", [(10, 10), (7, 9), (3, 11), (1, 5)])
def test_topk_iou_brute_force(shape):
    # The top 10 % is ceil(0.1 N) pixels, at least one: 10 of 100, 7 of 63 (6.3), 4 of 33 (3.3), 1 of 5 (0.5).
    a, b = RNG.normal(size=shape), RNG.normal(size=shape)
    count = {(10, 10): 10, (7, 9): 7, (3, 11): 4, (1, 5): 1}[shape]
    top = lambda m: set(np.argsort(-m.ravel())[:count].tolist())  # noqa: E731
    expected = len(top(a) & top(b)) / len(top(a) | top(b))
    assert metrics.topk_iou(a, b) == pytest.approx(expected, abs=1e-15)
    assert metrics.topk_iou(a, a) == 1.0


@pytest.mark.parametrize("size, count", [(100, 10), (63, 7), (61, 7), (60, 6), (59, 6), (9, 1), (1, 1)])
def test_top_pixels_count_rounds_up(size, count):
    heat = RNG.normal(size=size)
    top = metrics.top_pixels(heat)
    assert top.size == count and set(top.tolist()) == set(np.argsort(-heat)[:count].tolist())


def test_top_pixels_ties_take_the_first_in_order():
    heat = np.array([[0.0, 1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]])  # 10 px: the top 1 of four equal
    assert metrics.top_pixels(heat).tolist() == [1]


def test_box_mask_fraction_and_px():
    frac = metrics.box_mask((0.5, 0.0, 1.0, 0.25), "fraction", (8, 8))
    px = metrics.box_mask((4, 0, 8, 2), "px", (8, 8))
    assert np.array_equal(frac, px) and frac.sum() == 8 and frac[0:2, 4:8].all()


def test_box_mask_on_a_non_square_grid_scales_x_by_the_width_and_y_by_the_height():
    # 6 rows, 10 columns: x fractions of 10 px, y fractions of 6 px.
    frac = metrics.box_mask((0.6, 0.5, 1.0, 1.0), "fraction", (6, 10))
    expected = np.zeros((6, 10), dtype=bool)
    expected[3:6, 6:10] = True
    assert np.array_equal(frac, expected)
    assert np.array_equal(metrics.box_mask((6, 3, 10, 6), "px", (6, 10)), expected)
    wide = metrics.box_mask((0, 0, 10, 2), "px", (6, 10))  # 10 px wide, 2 high: rows 0-1, every column
    assert wide.shape == (6, 10) and wide[:2].all() and not wide[2:].any()


@pytest.mark.parametrize("edge, first", [(0.4, 0), (0.5, 0), (0.6, 1), (1.5, 1), (2.5, 2), (2.51, 3), (3.5, 3)])
def test_box_edges_fall_at_pixel_centres(edge, first):
    # A pixel k is inside [x0, x1) when its centre k + 0.5 is: half-pixel edges fall the same way everywhere
    # (Python's round() would send 1.5 and 2.5 both to 2, leaving a 1 px wide box [1.5, 2.5) empty).
    grid = (3, 8)
    starts = metrics.box_mask((edge, 0, 8, 3), "px", grid)
    assert np.flatnonzero(starts[0]).min() == first
    ends = metrics.box_mask((0, 0, edge, 3), "px", grid)
    assert ends[0].sum() == first and ends.sum() == 3 * first
    # boxes that share the edge split the row without overlap or gap
    assert not (starts & ends).any() and (starts | ends).all()


def test_box_mask_fraction_rounding_on_a_grid_that_gives_no_whole_pixels():
    # 0.1 of 7 rows = 0.7 -> row 0 (centre 0.5) is outside, rows 1.. inside; 0.35 of 9 columns = 3.15 -> cols 3..
    mask = metrics.box_mask((0.35, 0.1, 1.0, 0.8), "fraction", (7, 9))
    assert np.flatnonzero(mask.any(axis=1)).tolist() == [1, 2, 3, 4, 5]  # 0.8 * 7 = 5.6: row 5's centre 5.5 inside
    assert np.flatnonzero(mask.any(axis=0)).tolist() == [3, 4, 5, 6, 7, 8]


def test_outline_of_a_square():
    mask = np.zeros((7, 7), dtype=bool)
    mask[1:6, 1:6] = True
    border = metrics.outline(mask)
    assert border.sum() == 16 and not border[2:5, 2:5].any() and border[1, 1:6].all()


def test_outline_of_a_wide_box_on_a_non_square_grid():
    mask = np.zeros((5, 9), dtype=bool)
    mask[1:4, 2:8] = True  # 3 rows, 6 columns
    border = metrics.outline(mask)
    assert border.sum() == 2 * 6 + 2 * 1 and border[1, 2:8].all() and border[3, 2:8].all()
    assert border[2, 2] and border[2, 7] and not border[2, 3:7].any()


def test_mask_geometry_is_the_image_geometry():
    # A mask drawn on a 120x80 picture lands where the picture's pixels land after resize 64 + centre crop 64.
    config = PreprocessConfig(preset="unit", resize=64)
    picture = np.zeros((80, 120), dtype=np.uint8)
    picture[30:50, 70:90] = 255
    image = fit_geometry(Image.fromarray(picture).convert("RGB"), config, (64, 64))
    mask = np.asarray(fit_geometry(Image.fromarray(picture), config, (64, 64), Image.NEAREST)) > 0
    bright = np.asarray(image)[:, :, 0] > 127
    assert mask.shape == (64, 64) and set(np.unique(np.asarray(fit_geometry(
        Image.fromarray(picture), config, (64, 64), Image.NEAREST)))) <= {0, 255}
    assert (mask == bright).mean() > 0.98
