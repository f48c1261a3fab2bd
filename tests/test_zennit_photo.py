"""zennit agreement on a real photo with flat regions, where MaxPool windows tie at non-zero maxima.

`scripts/make_photo_fixtures.py` (torch + zennit, dev-only) stored zennit's float64 relevance (rounded to float32,
6e-8 relative) of a reduced-width VGG-like net on scikit-learn's "china" photo at 224x224, and the number of tied
MaxPool windows. Tolerances (relative L2): float64 with the default `maxpool:first` policy <= 1e-6; float32
within five times zennit's own float32/float64 difference (never tighter than 1e-4) for the NumPy walk, the
compiled graph against the float64 walk on its own forward (ort_agreement.py); `maxpool:split` differs by more than
1e-3, which only the ties can cause.
"""

from pathlib import Path

import numpy as np
import pytest

import ort_agreement
from lrp_cli import api
from lrp_cli.ir import windows
from lrp_cli.ir.layers import MaxPool

FIXTURE = Path(__file__).parent / "fixtures" / "zennit-photo"
COMPOSITES = ["epsilon-plus-flat", "epsilon-alpha2-beta1-flat", "epsilon-gamma-box", "paper-epsilon"]
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

_cache = {}


def fixture():
    """Returns (model, golden arrays, the normalized float32 input), loaded once."""
    if not _cache:
        golden = dict(np.load(FIXTURE / "vgg_photo.npz"))
        unit = golden["pixels"].astype(np.float32) / np.float32(255)
        x = ((unit - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)   # as the script normalizes
        _cache.update(model=api.load_model(FIXTURE / "vgg_photo.onnx"), golden=golden, x=x)
    return _cache["model"], _cache["golden"], _cache["x"]


def ours(composite, precision, layer_rules=(), engine="numpy"):
    model, golden, x = fixture()
    settings = api.Settings(composite=composite, target=str(int(golden["target"])), precision=precision,
                            layer_rules=layer_rules, engine=engine)
    return api.explain_array(model, x, settings)[0].relevance.astype(np.float64)


def relative_l2(a, b):
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


def test_the_photo_ties_maxpool_windows_as_in_torch():
    model, golden, x = fixture()
    graph = model.graph_for("float64")
    values = graph.forward(x.astype(np.float64))
    counts = []
    for node in graph.nodes:
        if isinstance(node.layer, MaxPool):
            x_in, y = values[node.inputs[0]], values[node.output]
            cols = windows.gather(windows.pad(x_in, node.layer.window, -np.inf), node.layer.window, y.shape[2:])
            counts.append(int((((cols == y[:, :, None, None]).sum(axis=(2, 3)) > 1) & (y != 0)).sum()))
    assert counts == golden["ties"].tolist() and sum(counts) > 100


@pytest.mark.slow
@pytest.mark.parametrize("composite", COMPOSITES)
def test_float64_first_maximum_matches_zennit_and_split_does_not(composite):
    reference = fixture()[1][f"{composite}/float64"].astype(np.float64)
    assert relative_l2(ours(composite, "float64"), reference) <= 1e-6
    assert relative_l2(ours(composite, "float64", ("*=maxpool:split",)), reference) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("composite", COMPOSITES)
def test_float32_is_within_the_reference_noise_floor(composite):
    golden = fixture()[1]
    floor = float(golden[f"{composite}/floor"])
    assert relative_l2(ours(composite, "float32"), golden[f"{composite}/float64"].astype(np.float64)) <= max(
        5 * floor, 1e-4)


@pytest.mark.slow
@pytest.mark.numeric
@pytest.mark.parametrize("composite", COMPOSITES)
def test_compiled_float32_is_the_float64_walk_on_its_own_forward(composite, tmp_path):
    """Whichever way a CPU's float32 rounding breaks the photo's ties, the compiled graph routes each window as the
    float64 walk does on the same forward values (measured 9e-8 to 2.6e-7 of the 1e-5 bound)."""
    model, golden, x = fixture()
    target = int(golden["target"])
    settings = api.Settings(composite=composite, target=str(target), engine="onnxruntime")
    ort_agreement.assert_agrees(ort_agreement.probe(model, x, settings, tmp_path, target))
