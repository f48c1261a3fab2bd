"""End-to-end BoW pipeline: training, saving/loading, explanation, conservation and loader errors."""

import pickle

import joblib
import numpy as np
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC, NuSVC

from lrp_cli.bow.explain import explain_bow
from lrp_cli.ir.windows import tile_positions
from lrp_cli.bow.kernels import BowKernel, additive_chi2_kernel, hik_kernel, make_part
from lrp_cli.bow.options import TRAIN_OPTIONS
from lrp_cli.bow.train import list_dataset, load_image, train_bow
from lrp_cli.importers.sklearn_bow import FORMAT, BowModelError, load_bow_model
from lrp_cli.synthetic.polygons import make_scene, make_tile, write_dataset

SMALL = dict(scales=(2.0,), n_words=16, kernel="hik", c_grid=(1.0, 10.0), cv=2, test_fraction=0.25,
             kmeans_samples=4000)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Return (model path, metadata, training BoW matrix, labels) of a tiny polygons model."""
    root = tmp_path_factory.mktemp("bow")
    write_dataset(root / "data", 16, seed=3)
    meta = train_bow(root / "data", root / "m.joblib", **SMALL)
    paths, y, _ = list_dataset(root / "data")
    steps = load_bow_model(root / "m.joblib").pipeline.steps[:3]
    return root / "m.joblib", meta, Pipeline(steps).transform([load_image(p) for p in paths]), y


def foreign_kernel(a, b):
    """A picklable kernel that is not one of lrp_cli.bow.kernels."""
    return a @ b.T


def _variant(path, clf, X, y, out):
    """Return the path of a copy of the model whose classifier is `clf` refitted on the same BoW X."""
    steps = load_bow_model(path).pipeline.steps[:3]
    clf.fit(X, y)
    joblib.dump({"format": FORMAT, "pipeline": Pipeline(steps + [("svm", clf)]), "metadata": {}}, out)
    return out


def _tile(seed=11, positive=True):
    img, pm, cm = make_tile(np.random.default_rng(seed), positive)
    return np.repeat(img[:, :, None], 3, axis=2)


def test_train_metadata_and_model(trained):
    path, meta, _, _ = trained
    model = load_bow_model(path)
    assert model.kind == "sklearn-bow"
    assert model.classes == ["negative", "positive"]
    assert model.input_size == (102, 102)
    for key in ("accuracy", "cv_accuracy", "train_accuracy", "test_accuracy", "best_params"):
        assert key in model.metadata
    assert 0.0 <= meta["accuracy"] <= 1.0
    assert {name for name, *_ in TRAIN_OPTIONS} >= {"scales", "mapping", "kernel", "pooling", "c_grid"}


def test_explain_hik_conserves_exactly(trained):
    model = load_bow_model(trained[0])
    exp = explain_bow(model, _tile())
    assert exp.relevance.shape == (102, 102) and exp.relevance.dtype == np.float64
    assert exp.taylor_residual is None
    assert exp.conservation_error < 1e-10
    sums = dict(exp.layer_sums)
    for s in sums.values():
        assert s == pytest.approx(exp.f_x, abs=1e-10)
    assert exp.target == int(np.argmax(exp.scores))
    assert exp.scores[1] == pytest.approx(-exp.scores[0])


def test_pipeline_decision_matches_ours(trained):
    model = load_bow_model(trained[0])
    img = _tile(5)
    exp = explain_bow(model, img, target=1)
    assert exp.f_x == pytest.approx(float(model.pipeline.decision_function([img])[0]), abs=1e-10)
    neg = explain_bow(model, img, target=0)
    np.testing.assert_allclose(neg.relevance, -exp.relevance, atol=1e-14)


@pytest.mark.parametrize("kernel", ["linear", hik_kernel, additive_chi2_kernel,
                                    BowKernel([make_part("hik", 0, 8), make_part("additive_chi2", 8, 16)])])
def test_sum_decomposable_kernels_conserve(trained, tmp_path, kernel):
    path = _variant(trained[0], SVC(kernel=kernel, C=10.0), trained[2], trained[3], tmp_path / "v.joblib")
    exp = explain_bow(load_bow_model(path), _tile(8))
    assert exp.taylor_residual is None and exp.conservation_error < 1e-10


@pytest.mark.parametrize("clf", [SVC(kernel="rbf", C=10.0), NuSVC(kernel="poly", degree=2, nu=0.3),
                                 SVC(kernel=BowKernel([make_part("chi2", 0, 16, gamma=1.0)]), C=10.0)])
def test_taylor_kernels_report_residual(trained, tmp_path, clf):
    path = _variant(trained[0], clf, trained[2], trained[3], tmp_path / "t.joblib")
    exp = explain_bow(load_bow_model(path), _tile(9))
    assert exp.taylor_residual is not None
    sums = dict(exp.layer_sums)
    assert sums["layer3 BoW dimensions"] == pytest.approx(exp.f_x - exp.taylor_residual, abs=1e-10)
    assert sums["layer1 pixels"] == pytest.approx(sums["layer3 BoW dimensions"], abs=1e-10)
    assert exp.conservation_error == pytest.approx(abs(exp.taylor_residual) / abs(exp.f_x), rel=1e-6)
    assert abs(exp.taylor_residual) < abs(exp.f_x)


def test_tiled_explanation(trained):
    model = load_bow_model(trained[0])
    img, _, _ = make_scene(np.random.default_rng(2), size=(170, 204), n_polygons=1, n_circles=1)
    exp = explain_bow(model, img, tile=102, tile_stride=34)
    assert exp.relevance.shape == (170, 204)
    assert exp.n_tiles == len(tile_positions(170, 102, 34)) * len(tile_positions(204, 102, 34)) == 3 * 4
    assert exp.f_x == pytest.approx(np.mean(exp.tile_f_x))
    assert exp.conservation_error < 1e-10  # mean tile sum vs mean tile decision value
    auto = explain_bow(model, img)  # default: tiles of the training size, stride from metadata
    assert auto.n_tiles == exp.n_tiles
    whole = explain_bow(model, img, tile=0)
    assert whole.n_tiles == 1 and whole.conservation_error < 1e-10


def test_joblib_and_pickle_round_trip(trained, tmp_path):
    model = load_bow_model(trained[0])
    again = tmp_path / "again.pkl"
    with open(again, "wb") as fh:
        pickle.dump({"format": FORMAT, "pipeline": model.pipeline, "metadata": model.metadata}, fh)
    img = _tile(4)
    a = explain_bow(model, img)
    b = explain_bow(load_bow_model(again), img)
    np.testing.assert_array_equal(a.relevance, b.relevance)


def test_skops_round_trip(trained, tmp_path):
    model = load_bow_model(trained[0])
    out = tmp_path / "m.skops"
    sio.dump({"format": FORMAT, "pipeline": model.pipeline, "metadata": model.metadata}, out)
    loaded = load_bow_model(out)
    img = _tile(4)
    np.testing.assert_allclose(explain_bow(loaded, img).relevance, explain_bow(model, img).relevance)


def _assert_one_line(exc_info, name):
    msg = str(exc_info.value)
    assert name in msg and "\n" not in msg


def test_error_not_a_pickle(tmp_path):
    bad = tmp_path / "garbage.joblib"
    bad.write_bytes(b"this is not a pickle at all\x00\x01")
    with pytest.raises(BowModelError) as ei:
        load_bow_model(bad)
    _assert_one_line(ei, "garbage.joblib")


def test_error_wrong_class(tmp_path):
    out = tmp_path / "wrong.joblib"
    joblib.dump(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), out)
    with pytest.raises(BowModelError) as ei:
        load_bow_model(out)
    _assert_one_line(ei, "wrong.joblib")


def test_error_missing_step(trained, tmp_path):
    model = load_bow_model(trained[0])
    steps = model.pipeline.steps
    out = tmp_path / "missing.joblib"
    joblib.dump({"format": FORMAT, "pipeline": Pipeline([steps[0], steps[1], steps[3]]), "metadata": {}}, out)
    with pytest.raises(BowModelError, match="step") as ei:
        load_bow_model(out)
    _assert_one_line(ei, "missing.joblib")


@pytest.mark.parametrize("kernel", ["sigmoid", foreign_kernel])
def test_error_unsupported_kernel(trained, tmp_path, kernel):
    path = _variant(trained[0], SVC(kernel=kernel), trained[2], trained[3], tmp_path / "k.pkl")
    with pytest.raises(BowModelError, match="unsupported kernel") as ei:
        load_bow_model(path)
    _assert_one_line(ei, "k.pkl")


def test_one_vs_one_needs_pair_and_ovr_multiclass(trained, tmp_path):
    X, y = trained[2], trained[3]
    y3 = np.where(y == 1, 1, 0) + (np.arange(len(y)) % 3 == 0) * (y == 0) * 2  # a third class
    ovo = load_bow_model(_variant(trained[0], SVC(kernel=hik_kernel), X, y3, tmp_path / "ovo.joblib"))
    with pytest.raises(BowModelError, match="pair") as ei:
        explain_bow(ovo, _tile())
    _assert_one_line(ei, "ovo.joblib")
    exp = explain_bow(ovo, _tile(), target=2, pair=(0, 2))
    assert exp.target == 2 and exp.conservation_error < 1e-10
    ovr = load_bow_model(_variant(trained[0], OneVsRestClassifier(SVC(kernel=hik_kernel)), X, y3,
                                  tmp_path / "ovr.joblib"))
    exps = [explain_bow(ovr, _tile(), target=t) for t in range(3)]
    for t, e in enumerate(exps):
        assert e.f_x == pytest.approx(e.scores[t], abs=1e-10) and e.conservation_error < 1e-10


def test_sparse_coding_pipeline_conserves(tmp_path):
    write_dataset(tmp_path / "data", 8, seed=4)
    train_bow(tmp_path / "data", tmp_path / "s.joblib", **dict(SMALL, mapping="sparse", n_words=8))
    exp = explain_bow(load_bow_model(tmp_path / "s.joblib"), _tile())
    assert exp.conservation_error < 1e-10
