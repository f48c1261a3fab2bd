"""What the compiled engine keeps in memory: it runs without the plain onnxruntime session of the model (built on
first use, by the NumPy engine, inspect and the scorers), and without the float32 copy of the IR.

These tests count constructions; the peak RSS they keep down is measured by benchmarks/bench.py."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
import ort_agreement

from lrp_cli import api
from lrp_cli.cli import main
from lrp_cli.engines import onnx_engine
from lrp_cli.ir.graph import Graph
from lrp_cli.kinds import onnx_runtime

RUN = CliRunner()


@pytest.fixture
def counted(monkeypatch):
    """Returns a dict counting plain sessions built (onnx_runtime.onnx_session) and IR copies made
    (Graph.astype)."""
    counts = {"session": 0, "astype": 0}
    build, astype = onnx_runtime.onnx_session, Graph.astype

    def counting_session(*args, **kwargs):
        counts["session"] += 1
        return build(*args, **kwargs)

    def counting_astype(self, dtype):
        counts["astype"] += 1
        return astype(self, dtype)

    monkeypatch.setattr(onnx_runtime, "onnx_session", counting_session)
    monkeypatch.setattr(Graph, "astype", counting_astype)
    return counts


@pytest.mark.numeric
def test_compiled_explanation_builds_no_plain_session_and_no_ir_copy(tiny_cnn_path, tmp_path, monkeypatch,
                                                                    counted):
    monkeypatch.setenv("LRP_CLI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(onnx_engine, "_SESSIONS", {})
    model = api.load_model(tiny_cnn_path)
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
    for engine in ("onnxruntime", "auto"):  # cold cache, then warm
        (expl,) = api.explain_array(model, x, api.Settings(engine=engine))
        assert expl.extra["engine"] == "onnxruntime"
    assert counted == {"session": 0, "astype": 0} and model.plain_session is None
    (numpy_expl,) = api.explain_array(model, x, api.Settings(engine="numpy"))
    api.explain_array(model, x, api.Settings(engine="numpy"))
    assert counted == {"session": 1, "astype": 1}  # built on first use, then kept
    scale = np.abs(numpy_expl.relevance).max()
    assert ort_agreement.decision_margin(model, x) >= ort_agreement.DECISION_MARGIN  # both engines decide alike
    np.testing.assert_allclose(expl.relevance, numpy_expl.relevance, rtol=0, atol=1e-5 * scale)


def test_command_line_compiled_run_builds_no_plain_session(tiny_cnn_path, tmp_path, monkeypatch, counted):
    monkeypatch.setenv("LRP_CLI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(onnx_engine, "_SESSIONS", {})
    np.save(tmp_path / "x.npy", np.random.default_rng(1).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32))
    result = RUN.invoke(main, ["explain", str(tmp_path / "x.npy"), "--model", str(tiny_cnn_path), "--out",
                               str(tmp_path / "o"), "--engine", "onnxruntime", "--no-progress"])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "o" / "x.json").read_text())
    assert doc["engine"] == "onnxruntime" and counted["session"] == 0


def test_lazy_session_reports_the_same_output_as_the_eager_one(tiny_cnn_path):
    model = api.load_model(tiny_cnn_path)
    assert model.plain_session is None
    name = model.output_name
    assert model.session.get_outputs()[0].name == name and model.session is model.session


def test_a_model_onnxruntime_rejects_still_exits_3_when_the_session_is_first_needed(tmp_path, monkeypatch):
    """The error that load_model used to raise comes from the first use of the session (the NumPy engine)."""
    from conftest import save_model, tiny_cnn
    path = save_model(tiny_cnn(), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 16, 16), dtype=np.float32))

    def reject(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : unsupported op\nsecond line")

    monkeypatch.setattr(api.ort, "InferenceSession", reject)
    result = RUN.invoke(main, ["explain", str(tmp_path / "x.npy"), "--model", str(path), "--out",
                               str(tmp_path / "o"), "--engine", "numpy", "--no-progress"])
    assert result.exit_code == 3
    assert "onnxruntime cannot load the model: [ONNXRuntimeError] : 1 : FAIL : unsupported op" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o" / "x.json").exists()


def torch_style_mlp():
    """Returns (an MLP whose dense weights are stored [out, in] for Gemm transB=1, as torch exports Linear, then
    one stored [in, out] for a MatMul; its weights by name)."""
    from onnx import helper

    from conftest import onnx_model
    rng = np.random.default_rng(7)
    weights = {"w1": rng.standard_normal((8, 12)).astype(np.float32), "b1": rng.standard_normal(8).astype(np.float32),
               "w2": rng.standard_normal((8, 6)).astype(np.float32),
               "w3": rng.standard_normal((5, 6)).astype(np.float32), "b3": rng.standard_normal(5).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="fc1", transB=1),
             helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
             helper.make_node("MatMul", ["a1", "w2"], ["h2"], name="fc2"),
             helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
             helper.make_node("Gemm", ["a2", "w3", "b3"], ["y"], name="fc3", transB=1)]
    return onnx_model(nodes, [1, 12], "y", weights), weights


def test_dense_adjoints_use_the_models_own_weights_and_store_no_copy():
    """LRP-epsilon of the MLP by hand in float64 (R_in = a * (W^T (R / stab(z)))) against the compiled graph,
    whose adjoint Gemms read the model's own initializers: no lrp/ initializer holds a weight or its transpose."""
    from lrp_cli.engines.onnx_compiler import compile_relevance
    from lrp_cli.importers.onnx_import import import_onnx
    from lrp_cli.rules import Epsilon
    model, w = torch_style_mlp()
    graph = import_onnx("<memory>", model=model)
    compiled = compile_relevance(model, graph, "lrp", {n.name: Epsilon(0.01) for n in graph.linear_nodes()})
    own = [a for name, a in w.items() if name.startswith("w")]
    added = [onnx.numpy_helper.to_array(t) for t in compiled.model.graph.initializer if t.name.startswith("lrp/")]
    assert not [a for a in added for o in own if a.shape in (o.shape, o.T.shape) and
                (np.array_equal(a, o) or np.array_equal(a, o.T))]
    adjoints = {n.input[1] for n in compiled.model.graph.node if n.op_type == "Gemm" and n.name.startswith("lrp/")}
    assert adjoints == {"w1", "w2", "w3"}

    x = np.random.default_rng(8).uniform(-1, 1, (1, 12))
    f64 = {k: v.astype(np.float64) for k, v in w.items()}
    layers = [(f64["w1"].T, f64["b1"]), (f64["w2"], 0.0), (f64["w3"].T, f64["b3"])]
    inputs, a = [], x
    for k, (weight, bias) in enumerate(layers):
        inputs.append(a)
        z = a @ weight + bias
        a = np.maximum(z, 0) if k < 2 else z
    target = int(np.argmax(a))
    r = np.zeros_like(a)
    r[0, target] = a[0, target]
    for (weight, bias), a_in in reversed(list(zip(layers, inputs))):
        z = a_in @ weight + bias
        r = a_in * ((r / (z + np.where(z >= 0, 0.01, -0.01))) @ weight.T)
    session = ort.InferenceSession(compiled.model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(["relevance"], {"x": x.astype(np.float32), "target": np.array([-1])})[0]
    np.testing.assert_allclose(got, r, rtol=0, atol=1e-5 * np.abs(r).max())


def test_equal_constants_are_one_initializer():
    from lrp_cli.engines.onnx_builder import GraphBuilder
    b = GraphBuilder()
    b.know([onnx.numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), name="model_w")])
    assert b.const(np.arange(6.0).reshape(2, 3)) == "model_w"  # float64 numbers cast to the model's float32
    first = b.const(np.ones((2, 2)))
    assert b.const(np.ones((2, 2))) == first and b.const(np.ones(4)) != first  # another shape
    assert b.const(np.ones((2, 2)), dtype=np.int64) != first and b.scalar(2.0) == b.scalar(2.0)
    assert len(b.initializers) == 4  # ones [2, 2], ones [4], int64 ones [2, 2], the scalar


def test_a_warm_start_opens_the_cached_optimized_graph_once_without_optimizing(tiny_cnn_path, tmp_path,
                                                                               monkeypatch):
    """A cold start writes onnxruntime's optimized form beside the compiled graph (a session made only to write
    it, then the one that runs); a warm start opens that file alone, optimizations off."""
    monkeypatch.setenv("LRP_CLI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(onnx_engine, "_SESSIONS", {})
    opened = []
    build = onnx_engine.ort.InferenceSession

    def counting(path, options, providers):
        opened.append((str(path), options.graph_optimization_level, options.optimized_model_filepath))
        return build(path, options, providers=providers)

    monkeypatch.setattr(onnx_engine.ort, "InferenceSession", counting)
    model = api.load_model(tiny_cnn_path)
    x = np.random.default_rng(2).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
    (cold,) = api.explain_array(model, x, api.Settings(engine="onnxruntime"))
    (optimized,) = (tmp_path / "cache").glob("*.ort.onnx")
    assert [o[2] != "" for o in opened] == [True, False]  # the writing session, then the running one
    assert opened[1] == (str(optimized), onnx_engine.ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "")
    onnx_engine._SESSIONS.clear()  # as a new process would start
    del opened[:]
    (warm,) = api.explain_array(api.load_model(tiny_cnn_path), x, api.Settings(engine="onnxruntime"))
    assert opened == [(str(optimized), onnx_engine.ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "")]
    np.testing.assert_array_equal(warm.relevance, cold.relevance)
    assert optimized.name.split(".")[1] == onnx_engine._platform_tag() and len(onnx_engine._platform_tag()) == 12


@pytest.mark.parametrize("damage", ["truncated optimized graph", "deleted weight files", "garbage graph"])
def test_a_damaged_cache_entry_is_compiled_again(tiny_cnn_path, tmp_path, monkeypatch, damage):
    """A cache entry a crash, a full disk or a clean-up left broken is rebuilt, not a fall-back to NumPy for good."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LRP_CLI_CACHE_DIR", str(cache))
    monkeypatch.setattr(onnx_engine, "_SESSIONS", {})
    x = np.random.default_rng(3).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
    settings = api.Settings(engine="onnxruntime")
    (first,) = api.explain_array(api.load_model(tiny_cnn_path), x, settings)
    if damage == "truncated optimized graph":
        (optimized,) = cache.glob("*.ort.onnx")
        optimized.write_bytes(optimized.read_bytes()[:100])
    elif damage == "deleted weight files":
        weights = list(cache.glob("*.data"))
        assert weights
        for path in weights:
            path.unlink()
    else:
        for path in cache.glob("*.onnx"):
            path.write_bytes(b"not a protobuf")
    onnx_engine._SESSIONS.clear()  # as a new process would start
    (again,) = api.explain_array(api.load_model(tiny_cnn_path), x, settings)
    assert again.extra["engine"] == "onnxruntime"
    np.testing.assert_array_equal(again.relevance, first.relevance)
    onnx_engine._SESSIONS.clear()
    assert api.explain_array(api.load_model(tiny_cnn_path), x, settings)[0].extra["engine"] == "onnxruntime"
