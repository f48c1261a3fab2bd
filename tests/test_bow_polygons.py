"""Synthetic polygons-vs-circles data and the Fig-6 quality measure of the shipped BoW model."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrp_cli.synthetic.polygons import make_scene, make_tile, write_dataset

MODEL = Path(__file__).resolve().parents[1] / "models" / "polygons-bow-svm.joblib"


def test_tiles_follow_the_labelling_rule():
    rng = np.random.default_rng(0)
    for _ in range(20):
        img, pm, cm = make_tile(rng, True)
        assert img.shape == (102, 102) and 0.0 <= img.min() and img.max() <= 1.0
        assert pm.any() and not (pm & cm).any()
        img, pm, cm = make_tile(rng, False)
        assert not pm.any()


def test_scene_and_dataset(tmp_path):
    img, pm, cm = make_scene(np.random.default_rng(1), size=(306, 408), n_polygons=3, n_circles=2)
    assert img.shape == pm.shape == cm.shape == (306, 408)
    assert pm.sum() > 0 and cm.sum() > 0 and not (pm & cm).any()
    assert write_dataset(tmp_path, 3, seed=2) == {"positive": 3, "negative": 3}
    files = sorted((tmp_path / "positive").glob("*.png"))
    assert len(files) == 3 and np.asarray(Image.open(files[0])).shape == (102, 102)


@pytest.mark.slow
def test_fig6_polygons_positive_circles_negative():
    if not MODEL.is_file():
        pytest.skip("run scripts/build_polygons_bow.py first")
    from lrp_cli.bow.explain import explain_bow
    from lrp_cli.importers.sklearn_bow import load_bow_model

    model = load_bow_model(MODEL)
    rng = np.random.default_rng(2024)
    poly, circ, wins = [], [], 0
    while len(poly) < 24:  # 204x204 scenes, each explained over 4x4 tiles of 102 px, stride 34 (Fig 6)
        img, pm, cm = make_scene(rng, size=(204, 204), n_polygons=int(rng.integers(1, 3)),
                                 n_circles=int(rng.integers(1, 3)))
        if not (pm.any() and cm.any()):  # a shape could not be placed: no comparison possible
            continue
        exp = explain_bow(model, img, target=model.classes.index("positive"), tile=102, tile_stride=34)
        assert exp.n_tiles == 16
        # Mean f over tiles can be near 0, so check the layer sums absolutely, not relative to f.
        sums = dict(exp.layer_sums)
        assert sums["layer1 pixels"] == pytest.approx(exp.f_x - (exp.taylor_residual or 0.0), abs=1e-9)
        poly.append(exp.relevance[pm].mean())
        circ.append(exp.relevance[cm].mean())
        wins += poly[-1] > circ[-1]
    print(f"\nmean relevance over {len(poly)} scenes: polygons {np.mean(poly):.3e}, circles {np.mean(circ):.3e}; "
          f"polygons > circles in {wins} scenes")
    # Fig 6: polygons positive, circles weakly negative (chi2 kernel, Taylor Eq 46).
    assert np.mean(poly) > 0 > np.mean(circ)
    assert wins >= 0.75 * len(poly)
