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


def test_topk_iou_brute_force():
    a, b = RNG.normal(size=(10, 10)), RNG.normal(size=(10, 10))
    top = lambda m: set(np.argsort(-m.ravel())[:10].tolist())  # noqa: E731 - 10 % of 100 pixels
    expected = len(top(a) & top(b)) / len(top(a) | top(b))
    assert metrics.topk_iou(a, b) == pytest.approx(expected, abs=1e-15)
    assert metrics.topk_iou(a, a) == 1.0


def test_box_mask_fraction_and_px():
    frac = metrics.box_mask((0.5, 0.0, 1.0, 0.25), "fraction", (8, 8))
    px = metrics.box_mask((4, 0, 8, 2), "px", (8, 8))
    assert np.array_equal(frac, px) and frac.sum() == 8 and frac[0:2, 4:8].all()


def test_outline_of_a_square():
    mask = np.zeros((7, 7), dtype=bool)
    mask[1:6, 1:6] = True
    border = metrics.outline(mask)
    assert border.sum() == 16 and not border[2:5, 2:5].any() and border[1, 1:6].all()


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
