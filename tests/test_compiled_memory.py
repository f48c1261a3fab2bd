"""What the compiled engine keeps in memory: it runs without the plain onnxruntime session of the model (built on
first use, by the NumPy engine, inspect and the scorers), and without the float32 copy of the IR.

These tests count constructions; the peak RSS they keep down is measured by benchmarks/bench.py."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from lrp_cli import api
from lrp_cli.cli import main
from lrp_cli.engines import onnx_engine
from lrp_cli.ir.graph import Graph

RUN = CliRunner()


@pytest.fixture
def counted(monkeypatch):
    """Returns a dict counting plain sessions built (api.onnx_session) and IR copies made (Graph.astype)."""
    counts = {"session": 0, "astype": 0}
    build, astype = api.onnx_session, Graph.astype

    def counting_session(*args, **kwargs):
        counts["session"] += 1
        return build(*args, **kwargs)

    def counting_astype(self, dtype):
        counts["astype"] += 1
        return astype(self, dtype)

    monkeypatch.setattr(api, "onnx_session", counting_session)
    monkeypatch.setattr(Graph, "astype", counting_astype)
    return counts


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
