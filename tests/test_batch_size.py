"""--batch-size N: every item of a batched pass equals its batch-1 run (both engines, every target kind, the layer
kinds of the zennit and transformer fixtures), a bad input is reported alone, and the batch options still work.

Bounds (float32 noise of a different summation order: BLAS picks other kernels for N rows than for one): input
relevance max |batched - single| <= 1e-5 * max |single|, f(x) and node sums within 1e-5 relative (of |f(x)| for
the node sums); float64 1e-12. The compiled engine measured 0 on every model here (onnxruntime runs each item with
the same kernels), the NumPy engine up to 7.6e-6 (shapes-cnn, float32).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper
from click.testing import CliRunner
from conftest import REPO, onnx_model, save_model
from PIL import Image
from test_batch import make_folder, output_contents
import test_distributed

from lrp_cli import api, batch, batched
from lrp_cli.cli import main
from lrp_cli.engines import onnx_engine
from lrp_cli.errors import InputError

RUN = CliRunner()
SHAPES = REPO / "models" / "shapes-cnn.onnx"
FIXTURES = REPO / "tests" / "fixtures"
BOUND = {"float32": 1e-5, "float64": 1e-12}


def inputs(model, count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 1, model.graph.input_shape).astype(np.float32) for _ in range(count)]


def explain_batch(model, xs, settings):
    names = [Path(f"item{k}.npy") for k in range(len(xs))]
    return batched.explain_arrays(model, xs, settings, names, [None] * len(xs))


def assert_same(batch_explanations, single_explanations, precision="float32"):
    bound = BOUND[precision]
    assert [e.target for e in batch_explanations] == [e.target for e in single_explanations]
    for got, want in zip(batch_explanations, single_explanations):
        assert got.extra["engine"] == want.extra["engine"]
        assert got.prediction["index"] == want.prediction["index"]
        assert got.relevance.shape == want.relevance.shape
        assert np.abs(got.relevance - want.relevance).max() <= bound * np.abs(want.relevance).max()
        assert got.propagation.f_x == pytest.approx(want.propagation.f_x, rel=bound)
        assert [r.name for r in got.propagation.layers] == [r.name for r in want.propagation.layers]
        for a, b in zip(got.propagation.layers, want.propagation.layers):
            assert abs(a.relevance_sum - b.relevance_sum) <= bound * abs(want.propagation.f_x) + 1e-30
        assert np.array_equal(got.x, want.x)


@pytest.mark.parametrize("engine", ["numpy", "onnxruntime"])
@pytest.mark.parametrize("method", ["lrp", "gradient", "gradient-x-input"])
@pytest.mark.parametrize("target", ["pred", "top:2", "bee"])
def test_each_batched_item_equals_its_batch_one_run(tiny_cnn_path, engine, method, target):
    model = api.load_model(tiny_cnn_path)
    xs = inputs(model, 3)
    settings = api.Settings(engine=engine, method=method, target=target)
    for got, x in zip(explain_batch(model, xs, settings), xs):
        assert_same(got, api.explain_array(model, x, settings))
    assert batched.batch_model(model, 3) is not None  # the batch did run as one pass


@pytest.mark.parametrize("engine", ["numpy", "onnxruntime"])
def test_a_short_batch_is_padded_to_the_batch_size(tiny_cnn_path, engine):
    """Two inputs at --batch-size 4 run on the batch-4 model (the last input repeated), not on a batch-2 one."""
    model = api.load_model(tiny_cnn_path)
    xs = inputs(model, 2, seed=7)
    settings = api.Settings(engine=engine, target="top:2")
    got = batched.explain_arrays(model, xs, settings, [Path("a.npy"), Path("b.npy")], [None, None], size=4)
    assert len(got) == 2 and [e.input_path.name for e in got[1]] == ["b.npy", "b.npy"]
    for explanations, x in zip(got, xs):
        assert_same(explanations, api.explain_array(model, x, settings))
    assert model.batch_sizes == {4}


def test_float64_batch_equals_batch_one_to_1e_12():
    model = api.load_model(REPO / "models" / "digits-mlp.onnx")
    xs = inputs(model, 4)
    settings = api.Settings(engine="numpy", precision="float64", target="top:3")
    for got, x in zip(explain_batch(model, xs, settings), xs):
        assert_same(got, api.explain_array(model, x, settings), "float64")


SLOW = pytest.mark.slow  # 3-18 s each on 2 busy cores
FIXTURE_MODELS = [FIXTURES / "zennit" / f"{name}.onnx" for name in ("alexnet", "resnet18", "squeezenet1_1")] + [
    FIXTURES / "transformers" / "convnext_legacy17.onnx"] + [
    pytest.param(FIXTURES / "zennit" / f"{name}.onnx", marks=SLOW)
    for name in ("densenet121", "googlenet", "mobilenet_v2", "vgg11")]


@pytest.mark.parametrize("path", FIXTURE_MODELS, ids=lambda p: p.stem)
def test_every_layer_kind_of_the_fixtures_batches_per_item(path):
    """Conv (grouped, depthwise, BN folded), Dense, MaxPool, AvgPool, GlobalAvgPool, Add, Concat, Reshape, ReLU,
    LayerNorm, GELU: both engines (the compiled one where the model compiles; auto falls back to NumPy)."""
    model = api.load_model(path)
    assert batched.batch_model(model, 2) is not None
    xs = inputs(model, 2, seed=3)
    for engine in ("numpy", "auto"):
        settings = api.Settings(engine=engine)
        for got, x in zip(explain_batch(model, xs, settings), xs):
            assert_same(got, api.explain_array(model, x, settings))


def routing_model():
    """Returns a small classifier of the layer kinds the fixtures lack: Pad, Slice and Gather (index maps), Resize,
    ConvTranspose, a SiLU gate (Sigmoid x Mul), AveragePool."""
    rng = np.random.default_rng(0)

    def weights(*shape):
        return rng.standard_normal(shape).astype(np.float32) * 0.5
    nodes = [
        helper.make_node("Pad", ["x", "p"], ["pad"], mode="edge", name="pad"),
        helper.make_node("Slice", ["pad", "st", "en", "ax"], ["sl"], name="slice"),
        helper.make_node("Resize", ["sl", "", "sc"], ["rs"], mode="linear", name="resize"),
        helper.make_node("ConvTranspose", ["rs", "wt", "bt"], ["ct"], strides=[2, 2], pads=[1, 1, 1, 1],
                         name="deconv"),
        helper.make_node("Sigmoid", ["ct"], ["sg"], name="sig"),
        helper.make_node("Mul", ["ct", "sg"], ["silu"], name="silu"),
        helper.make_node("Gather", ["silu", "idx"], ["ga"], axis=1, name="gather"),
        helper.make_node("Conv", ["ga", "wc", "bc"], ["cv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["cv"], ["re"], name="relu"),
        helper.make_node("AveragePool", ["re"], ["ap"], kernel_shape=[2, 2], strides=[2, 2], name="avg"),
        helper.make_node("Flatten", ["ap"], ["fl"], name="flatten"),
        helper.make_node("MatMul", ["fl", "wd"], ["y"], name="fc"),
    ]
    i64 = np.int64
    inits = {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1], i64), "st": np.array([1], i64), "en": np.array([7], i64),
             "ax": np.array([3], i64), "sc": np.array([1, 1, 2, 2], np.float32), "wt": weights(2, 3, 3, 3),
             "bt": weights(3), "idx": np.array([2, 0, 1, 0], i64), "wc": weights(4, 4, 3, 3), "bc": weights(4),
             "wd": weights(4 * 15 * 11, 4) * 0.1}
    return onnx_model(nodes, [1, 2, 6, 6], "y", inits)


@pytest.mark.parametrize("engine", ["numpy", "auto"])
@pytest.mark.parametrize("method", ["lrp", "gradient"])
def test_routing_layer_kinds_batch_per_item(tmp_path, engine, method):
    model = api.load_model(save_model(routing_model(), tmp_path / "routing.onnx"))
    assert batched.batch_model(model, 3) is not None
    xs = inputs(model, 3, seed=6)
    settings = api.Settings(engine=engine, method=method, composite="epsilon-gamma-box" if method == "lrp" else None)
    for got, x in zip(explain_batch(model, xs, settings), xs):
        assert_same(got, api.explain_array(model, x, settings))


def test_a_model_whose_constants_fix_batch_one_runs_one_at_a_time():
    """The ViT fixture concatenates a class token exported at batch 1: it cannot take 2 rows, so each input runs
    alone and gives exactly the batch-1 result."""
    model = api.load_model(FIXTURES / "transformers" / "vit_legacy17.onnx")
    assert batched.batch_model(model, 2) is None
    xs = inputs(model, 2)
    for got, x in zip(explain_batch(model, xs, api.Settings()), xs):
        want = api.explain_array(model, x, api.Settings())
        assert np.array_equal(got[0].relevance, want[0].relevance)


def test_a_literal_batch_of_one_in_a_reshape_is_not_batched(tmp_path):
    w = np.random.default_rng(0).standard_normal((12, 3)).astype(np.float32)
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"], name="flatten"),
             helper.make_node("MatMul", ["flat", "w"], ["y"], name="fc")]
    path = save_model(onnx_model(nodes, [1, 3, 2, 2], "y", {"w": w, "shape": np.array([1, 12], np.int64)}),
                      tmp_path / "fixed.onnx")
    model = api.load_model(path)
    assert batched.batch_model(model, 3) is None
    xs = inputs(model, 3)
    for got, x in zip(explain_batch(model, xs, api.Settings()), xs):
        assert np.array_equal(got[0].relevance, api.explain_array(model, x, api.Settings())[0].relevance)


@pytest.mark.parametrize("engine", ["numpy", "onnxruntime"])
def test_a_non_finite_input_fails_alone_and_the_others_are_explained(engine):
    model = api.load_model(SHAPES)
    xs = inputs(model, 3)
    xs[1][0, 0, 5, 5] = np.inf
    results = explain_batch(model, xs, api.Settings(engine=engine))
    assert isinstance(results[1], InputError) and "item1.npy" in str(results[1])
    for k in (0, 2):
        want = api.explain_array(model, xs[k], api.Settings(engine=engine))
        assert np.array_equal(results[k][0].relevance, want[0].relevance)


def test_the_batched_compiled_graph_takes_n_inputs_and_n_targets():
    model = api.load_model(SHAPES)
    model4 = batched.batch_model(model, 4)
    rules = api.rules_for(model4, api.Settings(), api.preprocess_config(model4, api.Settings()))
    compiled = onnx_engine.session_for(model4, "lrp", rules)
    shapes = {i.name: i.shape for i in compiled.session.get_inputs()}
    assert shapes == {"input": [4, 3, 64, 64], "target": [4]}
    meta = compiled.session.get_modelmeta().custom_metadata_map
    assert meta["lrp_cli.batch_size"] == "4" and "[N]" in json.loads(meta["lrp_cli.io"])["inputs"]["target"]
    runs = compiled.run_items(np.concatenate(inputs(model, 4)), [0, 1, 2, -1])
    assert [run.target for run in runs[:3]] == [0, 1, 2] and runs[3].target == int(np.argmax(runs[3].scores))
    assert onnx.load(str(compiled.path)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4


def images(folder, count, broken=()):
    """Writes `count` 64x64 PNGs of bright squares and discs (the shapes-cnn classes) and broken files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    for k in range(count):
        picture = np.zeros((64, 64, 3), np.uint8)
        top, left = rng.integers(8, 32, 2)
        picture[top:top + 24, left:left + 24] = rng.integers(128, 256, 3)
        Image.fromarray(picture).save(folder / f"im{k:02d}.png")
    return make_folder(folder, 0, broken)


def explain(*args):
    return RUN.invoke(main, ["explain", *map(str, args), "--model", SHAPES, "--no-progress"])


def test_cli_outputs_of_a_batched_run_equal_a_batch_one_run(tmp_path):
    """Compiled engine (auto): every file byte for byte (timings aside); the broken input is one error row."""
    folder = images(tmp_path / "in", 7, broken=["bad.png"])
    out = tmp_path / "out"
    one = explain(folder, "--out", out, "--save-raw")
    expected = output_contents(out)
    shutil.rmtree(out)
    three = explain(folder, "--out", out, "--save-raw", "--batch-size", "3", "--jobs", "2")
    assert one.exit_code == three.exit_code == 1
    assert three.stderr.count("error:") == 1 and "bad.png" in three.stderr
    assert output_contents(out) == expected
    rows = json.loads((out / "summary.json").read_text())
    assert (rows["ok"], rows["failed"]) == (7, 1)


def test_cli_numpy_batch_json_and_heatmaps_within_float32_noise(tmp_path):
    folder = images(tmp_path / "in", 4)
    for name, size in (("one", "1"), ("four", "4")):
        result = explain(folder, "--out", tmp_path / name, "--engine", "numpy", "--target", "top:2",
                         "--batch-size", size)
        assert result.exit_code == 0, result.output
    for path in sorted((tmp_path / "one").glob("im*.json")):
        want, got = json.loads(path.read_text()), json.loads((tmp_path / "four" / path.name).read_text())
        assert got["target"] == want["target"] and got["prediction"]["index"] == want["prediction"]["index"]
        assert got["f_x"] == pytest.approx(want["f_x"], rel=1e-5)
        assert got["relevance"]["sum"] == pytest.approx(want["relevance"]["sum"], rel=1e-5)
        for a, b in zip(got["layers"], want["layers"]):
            assert a["relevance_sum"] == pytest.approx(b["relevance_sum"], abs=1e-5 * abs(want["f_x"]))
        heat = [np.asarray(Image.open(folder_ / path.name.replace(".json", ".heatmap.png")), np.int16)
                for folder_ in (tmp_path / "one", tmp_path / "four")]
        assert np.abs(heat[0] - heat[1]).max() <= 1  # one 8-bit level of colormap rounding at most


def test_skip_existing_and_global_scale_with_batches(tmp_path):
    folder = images(tmp_path / "in", 5)
    out = tmp_path / "out"
    assert explain(folder, "--out", out, "--batch-size", "2").exit_code == 0
    (out / "im03.json").unlink()
    again = explain(folder, "--out", out, "--batch-size", "2", "--skip-existing")
    statuses = [row["status"] for row in json.loads((out / "summary.json").read_text())["results"]]
    assert again.exit_code == 0 and statuses == ["skipped"] * 3 + ["ok", "skipped"]
    contents = []
    for size in ("1", "3"):
        shutil.rmtree(out)
        assert explain(folder, "--out", out, "--normalize", "global", "--batch-size", size).exit_code == 0
        contents.append(output_contents(out))
    assert contents[0] == contents[1]


def test_batches_a_worker_lost_are_one_error_row_per_input(tmp_path):
    items = [batch.InputItem(tmp_path / f"{k}.png", str(k)) for k in range(3)]
    result = batch.failed_result(items[:2], "the Dask workers running it died")
    assert [[row["input"] for row in rows] for rows in result.rows] == [[str(items[0].path)], [str(items[1].path)]]
    assert len(result.lines) == 2 and all(err for _, err in result.lines)
    assert batch.in_batches(items, 2) == [items[:2], items[2:]]


def test_batch_size_must_be_positive(tmp_path):
    result = explain(images(tmp_path / "in", 1), "--out", tmp_path / "out", "--batch-size", "0")
    assert result.exit_code == 2 and "--batch-size" in result.output


cluster, local_two = test_distributed.cluster, test_distributed.local_two  # a shared LocalCluster for local:2


@pytest.mark.slow
@pytest.mark.usefixtures("local_two")
def test_scheduler_takes_chunks_of_batches(tmp_path):
    folder = images(tmp_path / "in", 5, broken=["bad.png"])
    out = tmp_path / "out"
    assert explain(folder, "--out", out).exit_code == 1
    expected = output_contents(out)
    shutil.rmtree(out)
    result = explain(folder, "--out", out, "--batch-size", "2", "--scheduler", "local:2")
    assert result.exit_code == 1 and result.output.count("bad.png") == 1
    assert output_contents(out) == expected


def test_lrp_compile_batch_size_runs_n_inputs_in_a_bare_session(tiny_cnn_path, tmp_path):
    """Each row of the batch-3 file's outputs equals `lrp explain --save-raw` of that input (compiled engine, the
    same float32 kernels: within 1e-5 of max |R|), its node sums [L*3] node-major."""
    import onnxruntime as ort
    xs = inputs(api.load_model(tiny_cnn_path), 3, seed=4)
    for k, x in enumerate(xs):
        np.save(tmp_path / f"x{k}.npy", x)
    out = tmp_path / "model3.lrp.onnx"
    result = RUN.invoke(main, ["compile", str(tiny_cnn_path), "-o", str(out), "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    result = RUN.invoke(main, ["explain", *(str(tmp_path / f"x{k}.npy") for k in range(3)), "--model",
                               str(tiny_cnn_path), "--out", str(tmp_path / "o"), "--save-raw", "--target", "2"])
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    relevance, target, sums = session.run(["relevance", "target_index", "layer_relevance_sums"],
                                          {"x": np.concatenate(xs), "target": np.array([2, 2, 2], np.int64)})
    assert relevance.shape == (3, 3, 16, 16) and list(target) == [2, 2, 2]
    for k in range(3):
        want = np.load(tmp_path / "o" / f"x{k}.relevance.npy")
        assert np.abs(relevance[k] - want[0]).max() <= 1e-5 * np.abs(want).max()
        doc = json.loads((tmp_path / "o" / f"x{k}.json").read_text())
        layer_sums = sums.reshape(-1, 3)[:, k]
        assert layer_sums == pytest.approx([r["relevance_sum"] for r in doc["layers"]], rel=1e-5, abs=1e-6)


def test_lrp_compile_batch_size_of_a_model_fixing_batch_one_is_a_usage_error(tmp_path):
    result = RUN.invoke(main, ["compile", str(FIXTURES / "transformers" / "vit_legacy17.onnx"), "-o",
                               str(tmp_path / "v.lrp.onnx"), "--batch-size", "2"])
    assert result.exit_code == 2 and "error: --batch-size 2" in result.output
    assert not (tmp_path / "v.lrp.onnx").exists()
