"""The compiled engine end to end: `lrp compile` files run by a bare onnxruntime session, the cache, engine
selection and errors.

Agreement bound with the NumPy engine (both float32 here): 1e-5 relative L2, float32 rounding of two different
summation orders (the zennit fixtures' float32 noise floor is 1e-7 to 1e-5 relative, see
test_zennit_conformance.py), on inputs that keep every ReLU and MaxPool decision 1e-4 (relative) away from its
boundary, asserted, so that no CPU's rounding takes one the other way; the bundled models' random inputs do not keep
such a margin and are compared on onnxruntime's own forward instead (ort_agreement.py).
"""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import helper

import ort_agreement
from conftest import onnx_model, save_model
from lrp_cli import api
from lrp_cli.cli import main
from lrp_cli.engines import onnx_engine
from lrp_cli.rules import Epsilon

RUN = CliRunner()
BOUND = 1e-5


def relative_l2(a, b):
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


@pytest.mark.numeric
@pytest.mark.parametrize("method,composite", [("lrp", "epsilon-plus-flat"), ("lrp", "epsilon-gamma-box"),
                                              ("gradient", None)])
def test_compiled_file_in_a_bare_session_reproduces_explain_save_raw(tiny_cnn_path, tmp_path, method, composite):
    x = np.random.default_rng(3).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
    assert ort_agreement.decision_margin(api.load_model(tiny_cnn_path), x) >= ort_agreement.DECISION_MARGIN
    np.save(tmp_path / "x.npy", x)
    flags = ["--method", method] + (["--composite", composite] if composite else [])
    out = tmp_path / "model.lrp.onnx"
    result = RUN.invoke(main, ["compile", str(tiny_cnn_path), "-o", str(out)] + flags)
    assert result.exit_code == 0, result.output
    result = RUN.invoke(main, ["explain", str(tmp_path / "x.npy"), "--model", str(tiny_cnn_path), "--out",
                               str(tmp_path / "o"), "--save-raw", "--engine", "numpy", "--target", "1"] + flags)
    assert result.exit_code == 0, result.output
    reference = np.load(tmp_path / "o" / "x.relevance.npy").astype(np.float64)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    relevance, scores, target = session.run(["relevance", "scores", "target_index"],
                                            {"x": x, "target": np.array([1], dtype=np.int64)})
    assert relative_l2(relevance.astype(np.float64), reference) <= BOUND
    assert target[0] == 1 and scores.shape == (1, 4)
    doc = json.loads((tmp_path / "o" / "x.json").read_text())
    assert scores[0, 1] == pytest.approx(doc["f_x"], rel=1e-5)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["lrp_cli.rules"]) == doc["rules"] and meta["lrp_cli.method"] == method
    predicted = session.run(["target_index"], {"x": x, "target": np.array([-1], dtype=np.int64)})[0]
    assert predicted[0] == int(np.argmax(scores))


def test_cache_compiles_once_and_a_second_process_starts_warm(tiny_cnn_path, tmp_path, monkeypatch):
    monkeypatch.setenv("LRP_CLI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(onnx_engine, "_SESSIONS", {})  # other tests' sessions of the same bytes
    model = api.load_model(tiny_cnn_path)
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
    first = api.explain_array(model, x, api.Settings(engine="onnxruntime"))[0]
    files = list((tmp_path / "cache").glob("*.lrp.onnx"))
    assert len(files) == 1 and first.extra["engine"] == "onnxruntime"
    onnx_engine._SESSIONS.clear()  # as a new process would start
    again = api.explain_array(api.load_model(tiny_cnn_path), x, api.Settings(engine="onnxruntime"))[0]
    assert again.timing["compile"] == 0.0 and list((tmp_path / "cache").glob("*.lrp.onnx")) == files
    np.testing.assert_array_equal(again.relevance, first.relevance)
    api.explain_array(model, x, api.Settings(engine="onnxruntime", composite="paper-epsilon"))
    assert len(list((tmp_path / "cache").glob("*.lrp.onnx"))) == 2  # other rules, another graph


def test_cache_entry_keeps_its_weights_beside_the_graph_and_runs_as_compiled_in_memory(tmp_path, monkeypatch):
    """The cached graph stores its initializers in an external .data file (mapped by onnxruntime, not copied);
    its session gives bit for bit the relevance of a session of the same graph compiled in memory."""
    from conftest import REPO
    monkeypatch.setenv("LRP_CLI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(onnx_engine, "_SESSIONS", {})
    model = api.load_model(REPO / "models" / "shapes-cnn.onnx")
    x = np.random.default_rng(3).uniform(0, 1, model.graph.input_shape).astype(np.float32)
    cached = api.explain_array(model, x, api.Settings(engine="onnxruntime"))[0]
    (graph_file,) = (tmp_path / "cache").glob("*.lrp.onnx")
    (data_file,) = (tmp_path / "cache").glob(f"{graph_file.name}.*.data")
    assert data_file.name.startswith(graph_file.name) and data_file.stat().st_size > 20 * graph_file.stat().st_size
    settings = api.Settings(engine="numpy")
    rules = api.rules_for(model, settings, api.preprocess_config(model, settings))
    compiled = onnx_engine.compile_model(model.path, model.graph, "lrp", rules, model.session.get_outputs()[0].name)
    session = ort.InferenceSession(compiled.model.SerializeToString(), onnx_engine.session_options(),
                                   providers=["CPUExecutionProvider"])  # same kernels under $LRP_CLI_ORT_OPTIONS
    fresh = session.run(["relevance"], {model.graph.input_name: x, "target": np.array([-1])})[0]
    np.testing.assert_array_equal(cached.relevance, fresh.reshape(cached.relevance.shape))


@pytest.mark.numeric
def test_top_k_and_layer_sums_on_the_compiled_engine(tiny_cnn_path):
    model = api.load_model(tiny_cnn_path)
    x = np.random.default_rng(1).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
    assert ort_agreement.decision_margin(model, x) >= ort_agreement.DECISION_MARGIN
    fast = api.explain_array(model, x, api.Settings(target="top:3", engine="onnxruntime"))
    slow = api.explain_array(model, x, api.Settings(target="top:3", engine="numpy"))
    assert [e.target["index"] for e in fast] == [e.target["index"] for e in slow]
    for a, b in zip(fast, slow):
        assert relative_l2(a.relevance.astype(np.float64), b.relevance.astype(np.float64)) <= BOUND
        assert a.propagation.f_x == pytest.approx(b.propagation.f_x, rel=1e-5)
        assert [(r.name, r.op, r.rule) for r in a.propagation.layers] == [
            (r.name, r.op, r.rule) for r in b.propagation.layers]
        np.testing.assert_allclose([r.relevance_sum for r in a.propagation.layers],
                                   [r.relevance_sum for r in b.propagation.layers], rtol=1e-4)
        assert a.prediction["index"] == b.prediction["index"]


def lrn_model(tmp_path):
    """Conv -> LRN -> Flatten -> MatMul: LRN has no derivative, so its gradient compiles nowhere."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("LRN", ["c"], ["n"], name="lrn", size=3),
             helper.make_node("Flatten", ["n"], ["f"]), helper.make_node("MatMul", ["f", "d"], ["y"], name="fc")]
    inits = {"w": rng.standard_normal((2, 3, 3, 3)).astype(np.float32),
             "d": rng.standard_normal((2 * 4 * 4, 3)).astype(np.float32)}
    return save_model(onnx_model(nodes, [1, 3, 6, 6], "y", inits), tmp_path / "lrn.onnx")


def test_what_does_not_compile_is_an_error_under_onnxruntime(tmp_path):
    path = lrn_model(tmp_path)
    model = api.load_model(path)
    x = np.ones((1, 3, 6, 6), dtype=np.float32)
    assert api.explain_array(model, x, api.Settings(method="lrp"))[0].extra["engine"] == "onnxruntime"
    np.save(tmp_path / "x.npy", x)
    result = RUN.invoke(main, ["explain", str(tmp_path / "x.npy"), "--model", str(path), "--method", "gradient",
                               "--engine", "onnxruntime", "--out", str(tmp_path / "o")])
    assert result.exit_code == 3 and "cannot compile node lrn (LRN)" in result.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    result = RUN.invoke(main, ["compile", str(path), "--method", "gradient", "-o", str(tmp_path / "g.onnx")])
    assert result.exit_code == 3 and "cannot compile node lrn (LRN)" in result.output
    assert not (tmp_path / "g.onnx").exists()


def test_engine_option_errors(tiny_cnn_path, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 16, 16), dtype=np.float32))
    base = ["explain", str(x), "--model", str(tiny_cnn_path), "--out", str(tmp_path / "o")]
    result = RUN.invoke(main, base + ["--engine", "onnxruntime", "--precision", "float64"])
    assert result.exit_code == 2 and "float32 only" in result.output
    result = RUN.invoke(main, base + ["--providers", "NoSuchExecutionProvider"])
    assert result.exit_code == 2 and "NoSuchExecutionProvider" in result.output
    doc_dir = tmp_path / "d"
    result = RUN.invoke(main, base[:-1] + [str(doc_dir), "--precision", "float64"])
    assert result.exit_code == 0 and json.loads((doc_dir / "x.json").read_text())["engine"] == "numpy"


def expand_model(tmp_path):
    """Conv -> GlobalAveragePool -> Expand (16 copies per element) -> Flatten -> MatMul: LRP compiles except the
    Expand, whose adjoint would need 16 gathers."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
             helper.make_node("Expand", ["g", "shape"], ["e"], name="expand"),
             helper.make_node("Flatten", ["e"], ["f"]), helper.make_node("MatMul", ["f", "d"], ["y"], name="fc")]
    inits = {"w": rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "shape": np.array([1, 2, 4, 4]),
             "d": rng.standard_normal((2 * 4 * 4, 3)).astype(np.float32)}
    return save_model(onnx_model(nodes, [1, 3, 6, 6], "y", inits), tmp_path / "expand.onnx")


def test_inspect_shows_which_nodes_compile_and_auto_falls_back(tmp_path):
    path = expand_model(tmp_path)
    result = RUN.invoke(main, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["engine"] == "numpy"
    assert {n["name"]: n["compiles"] for n in report["nodes"]} == {
        "conv": True, "gap": True, "expand": False, "Flatten_3": True, "fc": True}
    assert "copies one element 16 times" in report["compile_errors"]["expand"]
    expl = api.explain_array(api.load_model(path), np.ones((1, 3, 6, 6), np.float32), api.Settings())[0]
    assert expl.extra["engine"] == "numpy"
    table = RUN.invoke(main, ["inspect", str(path)]).output
    assert "engine under --engine auto: numpy" in table and "not compiled: cannot compile node expand" in table


BUNDLED = ["shapes-cnn", "digits-mlp"]


@pytest.mark.numeric
@pytest.mark.parametrize("method", ["epsilon-plus-flat", "epsilon-alpha2-beta1-flat", "epsilon-gamma-box",
                                    "paper-epsilon", "gradient"])
@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_models_compiled_float32_match_numpy_float64(name, method, tmp_path):
    """The compiled float32 run against the NumPy engine's float64 backward on the forward values onnxruntime
    computed (ort_agreement: 1e-5 relative, measured 1e-7 to 2e-7), its forward against NumPy's float64 forward
    (1e-5 of each tensor's scale). Against NumPy's own float64 forward no bound holds on every CPU: on this input a
    pool1 window of shapes-cnn has its two largest inputs 1.3e-6 apart (of 1.9), within onnxruntime's float32
    round-off there (2.4e-6), and some kernels route that window's relevance to the other pixel (7.7e-4 to 3.6e-3
    relative L2, docs/testing.md)."""
    from conftest import REPO
    model = api.load_model(REPO / "models" / f"{name}.onnx")
    x = np.random.default_rng(2).uniform(0, 1, model.graph.input_shape).astype(np.float32)
    lrp = method != "gradient"
    settings = api.Settings(engine="onnxruntime", method="lrp" if lrp else method, composite=method if lrp else None)
    agreement = ort_agreement.probe(model, x, settings, tmp_path)
    ort_agreement.assert_agrees(agreement, api.explain_array(model, x, settings)[0])


def _epsilon_one_percent_too_large(original):
    return lambda site, rule: original(site, Epsilon(rule.epsilon * 1.01))


def _relu_gradient_from_a_shifted_kink(site, x, y):
    return site.b.indicator(site.b.op("Greater", [x, site.b.scalar(1e-3)]))


@pytest.mark.numeric
@pytest.mark.parametrize("method,breakage", [("paper-epsilon", "epsilon"), ("gradient", "relu")])
def test_a_slightly_wrong_compiled_rule_fails_the_same_forward_comparison(method, breakage, tmp_path, monkeypatch):
    """The comparison the numeric tests make is sharp: an epsilon 1 % too large in every compiled epsilon rule
    (measured 4.5e-4; 0.1 % gives 4.5e-5), or a gradient that switches ReLUs at 1e-3 instead of 0 (3.0e-3), moves
    the compiled relevance 10x past the 1e-5 bound that the unbroken run of the same case keeps with 1.6e-7
    (test_bundled_models_compiled_float32_match_numpy_float64)."""
    from conftest import REPO
    from lrp_cli.engines import onnx_nodes, onnx_rules
    if breakage == "epsilon":
        monkeypatch.setitem(onnx_rules.RULE_EMITTERS, Epsilon,
                            _epsilon_one_percent_too_large(onnx_rules.RULE_EMITTERS[Epsilon]))
    else:
        monkeypatch.setitem(onnx_nodes.SLOPES, "Relu", _relu_gradient_from_a_shifted_kink)
    model = api.load_model(REPO / "models" / "shapes-cnn.onnx")
    x = np.random.default_rng(2).uniform(0, 1, model.graph.input_shape).astype(np.float32)
    lrp = method != "gradient"
    settings = api.Settings(method="lrp" if lrp else method, composite=method if lrp else None)
    agreement = ort_agreement.probe(model, x, settings, tmp_path)
    assert agreement.forward_error <= ort_agreement.FORWARD_BOUND  # the forward is the model's own, unbroken
    assert agreement.backward_error > 10 * ort_agreement.BACKWARD_BOUND


def test_ort_options_reach_every_session_and_a_bad_entry_is_a_usage_error(tiny_cnn_path, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_engine, "_SESSIONS", {})
    monkeypatch.setenv("LRP_CLI_ORT_OPTIONS", "threads=1, optimization=basic,session.set_denormal_as_zero=1")
    model = api.load_model(tiny_cnn_path)
    compiled = onnx_engine.session_for(model, "gradient", {})
    assert compiled.session.get_session_options().intra_op_num_threads == 1
    options = model.session.get_session_options()  # the model's own session
    assert options.intra_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    tag = onnx_engine._platform_tag()
    monkeypatch.setenv("LRP_CLI_ORT_OPTIONS", "optimization=disable")
    assert onnx_engine._platform_tag() != tag  # an optimized form of other settings is not reused
    assert onnx_engine.session_for(model, "gradient", {}) is not compiled
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 16, 16), np.float32))
    for bad in ("threads=two", "optimization=max", "intra_op=1", "session.log_id"):
        monkeypatch.setenv("LRP_CLI_ORT_OPTIONS", bad)
        result = RUN.invoke(main, ["explain", str(tmp_path / "x.npy"), "--model", str(tiny_cnn_path), "--out",
                                   str(tmp_path / "o")])
        assert result.exit_code == 2 and f"$LRP_CLI_ORT_OPTIONS: '{bad}'" in result.output, result.output
