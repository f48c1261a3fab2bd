"""`lrp train-bow` and `lrp explain` with a BoW pipeline, end to end from the command line."""

import json
import os

import numpy as np
import skops.io as sio
from click.testing import CliRunner
from PIL import Image
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from conftest import REPO
from lrp_cli.cli import main
from lrp_cli.importers.sklearn_bow import FORMAT
from lrp_cli.synthetic.polygons import make_scene, to_uint8, write_dataset

RUN = CliRunner()


def test_train_bow_then_explain_a_scene(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, 16, seed=3)
    model = tmp_path / "tiny.joblib"
    result = RUN.invoke(main, ["train-bow", str(data), "--out", str(model), "--n-words", "16", "--cv", "2",
                               "--c-grid", "1,10", "--kernel", "hik", "--scales", "2", "--test-fraction", "0.25"])
    assert result.exit_code == 0, result.output
    assert "cross-validated accuracy" in result.output and model.exists()
    image, _, _ = make_scene(np.random.default_rng(0), size=(136, 136), n_polygons=1, n_circles=1)
    Image.fromarray(to_uint8(image)).save(tmp_path / "scene.png")
    out = tmp_path / "out"
    result = RUN.invoke(main, ["explain", str(tmp_path / "scene.png"), "--model", str(model), "--out", str(out),
                               "--target", "positive", "--save-raw"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "scene.json").read_text())
    assert doc["model"]["kind"] == "sklearn-bow" and doc["target"]["label"] == "positive"
    assert doc["tiles"]["count"] == 4 and doc["ir_max_abs_diff"] is None
    assert np.load(out / "scene.relevance.npy").shape == (136, 136)
    assert Image.open(out / "scene.heatmap.png").size == (136, 136)
    # HIK is sum-decomposable: Eq 24 is exact, so every layer carries the same relevance.
    sums = [layer["relevance_sum"] for layer in doc["layers"]]
    assert np.allclose(sums, sums[0], rtol=1e-9)


def test_onnx_options_are_refused_for_bow_models(tmp_path):
    image = tmp_path / "i.png"
    Image.fromarray(np.zeros((102, 102), np.uint8)).save(image)
    result = RUN.invoke(main, ["explain", str(image), "--model", str(REPO / "models" / "polygons-bow-svm.joblib"),
                               "--rule", "epsilon", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "BoW" in result.output


def test_not_a_pickle_is_exit_3(tmp_path):
    bad = tmp_path / "bad.joblib"
    bad.write_text("no pickle here")
    image = tmp_path / "i.png"
    Image.fromarray(np.zeros((102, 102), np.uint8)).save(image)
    result = RUN.invoke(main, ["explain", str(image), "--model", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 3 and "bad.joblib" in result.output


def test_untrusted_type_in_a_skops_file_is_refused(tmp_path):
    # A pipeline that would call os.system: skops must refuse it before anything is instantiated.
    model = tmp_path / "evil.skops"
    sio.dump({"format": FORMAT, "pipeline": Pipeline([("run", FunctionTransformer(os.system))])}, model)
    image = tmp_path / "i.png"
    Image.fromarray(np.zeros((102, 102), np.uint8)).save(image)
    result = RUN.invoke(main, ["explain", str(image), "--model", str(model), "--out", str(tmp_path / "o")])
    assert result.exit_code == 3
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: evil.skops: ") and "UntrustedTypesFoundException" in lines[0]
    assert "['posix.system']" in lines[0]
    assert not (tmp_path / "o").exists()


def test_labels_tile_and_target_options_reach_a_bow_model(tmp_path):
    image, _, _ = make_scene(np.random.default_rng(1), size=(102, 102), n_polygons=1, n_circles=0)
    Image.fromarray(to_uint8(image)).save(tmp_path / "scene.png")
    (tmp_path / "names.txt").write_text("round\nangular\n")
    model = REPO / "models" / "polygons-bow-svm.joblib"
    out = tmp_path / "o"
    result = RUN.invoke(main, ["explain", str(tmp_path / "scene.png"), "--model", str(model), "--out", str(out),
                               "--labels", str(tmp_path / "names.txt"), "--target", "angular", "--tile", "0"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "scene.json").read_text())
    assert doc["target"] == {"index": 1, "label": "angular"} and doc["tiles"]["count"] == 1
    assert all(layer["name"] and layer["op"] == "bow" for layer in doc["layers"])
    top_k = RUN.invoke(main, ["explain", str(tmp_path / "scene.png"), "--model", str(model), "--out", str(out),
                              "--target", "top:2"])
    assert top_k.exit_code == 2 and top_k.stderr == ("error: --target top:K is not supported for BoW models; give "
                                                     "pred, an index or a label\n")
