"""Number-for-number agreement with zennit 1.0 on small torchvision architectures (golden files).

`scripts/make_zennit_fixtures.py` (needs torch, torchvision and zennit; never run by `make test`) exported each
model to ONNX and stored zennit's input relevance for four composites, and torch autograd's gradient, in float32
and float64. Tolerances (relative L2 error, ||ours - ref|| / ||ref||):
- float64 against zennit's float64 maps: 1e-6;
- float32 against zennit's float64 maps: within the float32/float64 noise floor of the reference itself
  (five times ||zennit32 - zennit64|| / ||zennit64||: two float32 implementations that order their sums
  differently each sit about one floor away from float64), and never tighter than 1e-4, for the NumPy walk;
- the compiled onnxruntime graph (engines/onnx_compiler.py) against the NumPy float64 backward on its own forward
  values (ort_agreement.py: 1e-5, measured 1.2e-7 to 5.9e-7): onnxruntime's kernels, and so its float32 round-off
  and its side of any near-tie, depend on the CPU (docs/testing.md), while that backward is the float64 walk that
  matches zennit above.
"""

from pathlib import Path

import numpy as np
import pytest

import ort_agreement
from lrp_cli import api

FIXTURES = Path(__file__).parent / "fixtures" / "zennit"
MODELS = sorted(p.stem for p in FIXTURES.glob("*.npz"))
LRP = ["epsilon-plus-flat", "epsilon-alpha2-beta1-flat", "epsilon-gamma-box", "paper-epsilon"]
METHODS = LRP + ["gradient", "gradient-x-input"]

_loaded = {}


def fixture(name):
    """Returns (loaded model, golden arrays) of one fixture, loaded once."""
    if name not in _loaded:
        _loaded[name] = (api.load_model(FIXTURES / f"{name}.onnx"), dict(np.load(FIXTURES / f"{name}.npz")))
    return _loaded[name]


def relative_l2(ours, reference):
    return float(np.linalg.norm((ours - reference).ravel()) / np.linalg.norm(reference.ravel()))


def ours(name, method, precision):
    model, golden = fixture(name)
    settings = api.Settings(method="lrp" if method in LRP else method, composite=method if method in LRP else None,
                            target=str(int(golden["target"])), precision=precision, engine="numpy")
    explanation = api.explain_array(model, golden["input"], settings)[0]
    assert explanation.extra["engine"] == "numpy"
    return explanation.relevance.astype(np.float64)


@pytest.mark.skipif(not MODELS, reason="no zennit fixtures in tests/fixtures/zennit")
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", MODELS)
def test_float64_matches_zennit(name, method):
    reference = fixture(name)[1][f"{method}/float64"]
    assert relative_l2(ours(name, method, "float64"), reference) <= 1e-6


#: onnxruntime takes seconds to start a session on the compiled graphs of these (thousands of nodes).
SLOW_TO_COMPILE = {"densenet121", "googlenet"}
COMPILED_CASES = [pytest.param(name, marks=[pytest.mark.slow] if name in SLOW_TO_COMPILE else []) for name in MODELS]


@pytest.mark.skipif(not MODELS, reason="no zennit fixtures in tests/fixtures/zennit")
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", MODELS)
def test_float32_is_within_the_reference_noise_floor(name, method):
    golden = fixture(name)[1]
    reference = golden[f"{method}/float64"]
    floor = relative_l2(golden[f"{method}/float32"].astype(np.float64), reference)
    assert relative_l2(ours(name, method, "float32"), reference) <= max(5 * floor, 1e-4)


@pytest.mark.numeric
@pytest.mark.skipif(not MODELS, reason="no zennit fixtures in tests/fixtures/zennit")
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", COMPILED_CASES)
def test_compiled_float32_is_the_float64_walk_on_its_own_forward(name, method, tmp_path):
    model, golden = fixture(name)
    target = int(golden["target"])
    settings = api.Settings(method="lrp" if method in LRP else method, composite=method if method in LRP else None,
                            target=str(target), engine="onnxruntime")
    ort_agreement.assert_agrees(ort_agreement.probe(model, golden["input"], settings, tmp_path, target))


@pytest.mark.skipif(not MODELS, reason="no zennit fixtures in tests/fixtures/zennit")
@pytest.mark.parametrize("name", MODELS)
def test_onnx_export_reproduces_the_torch_logits(name):
    model, golden = fixture(name)
    scores = model.graph_for("float64").forward(golden["input"].astype(np.float64))[model.graph.output_name]
    np.testing.assert_allclose(scores.ravel(), golden["logits"].ravel(), atol=1e-4 * np.abs(golden["logits"]).max())
