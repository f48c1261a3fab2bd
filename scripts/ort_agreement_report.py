"""Prints, for the cases of the numeric tests that once failed on other CPUs, how onnxruntime's float32 run compares
with the NumPy engine in float64 on this CPU and under $LRP_CLI_ORT_OPTIONS (docs/testing.md).

Per case: the compiled relevance against the NumPy float64 run on its own forward (the old test's measure), the
NumPy float32 run against it (that old test's "floor"), the compiled relevance against the NumPy float64 backward on
onnxruntime's forward values (the measure the tests use now), the forward's largest per-tensor error, and each
MaxPool window or ReLU whose decision onnxruntime takes the other way: its float64 margin (gap between the window's
two largest inputs, |pre-activation|) beside onnxruntime's float32 round-off of that tensor.

Run from the repository: `PYTHONPATH=src python scripts/ort_agreement_report.py` (add `qemu-x86_64 -cpu Haswell`
in front to see another CPU's kernels)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import ort_agreement  # noqa: E402  (the tests' own comparison, from tests/)
from lrp_cli import api  # noqa: E402
from lrp_cli.ir import layers as L  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "transformers"
VIT_OVERRIDES = ("*=epsilon:0.001", "*Softmax=constant", "*attn/MatMul_1=value:0.001", "*norm*=identity")


def cases():
    """Yields (label, model, input, settings, target) for every case the report covers."""
    shapes = api.load_model(REPO / "models" / "shapes-cnn.onnx")
    x = np.random.default_rng(2).uniform(0, 1, shapes.graph.input_shape).astype(np.float32)
    for composite in ("epsilon-plus-flat", "epsilon-alpha2-beta1-flat", "epsilon-gamma-box", "paper-epsilon"):
        yield f"shapes-cnn {composite}", shapes, x, api.Settings(composite=composite), -1
    yield "shapes-cnn gradient", shapes, x, api.Settings(method="gradient"), -1
    vit = api.load_model(FIXTURES / "vit_legacy17.onnx")
    ref = np.load(FIXTURES / "vit_legacy17.npz")
    target = int(ref["target"])
    yield ("vit_legacy17 overrides1", vit, ref["input"],
           api.Settings(composite="cp-lrp", layer_rules=VIT_OVERRIDES, target=str(target)), target)


def flipped_decisions(model, ort_values: dict, own: dict) -> list[str]:
    """Returns one line per MaxPool/ReLU node where onnxruntime's forward decides otherwise than float64's."""
    lines = []
    for node in model.graph.nodes:
        source, mine = ort_values[node.inputs[0]], own[node.inputs[0]]
        noise = float(np.abs(source - mine).max())
        if isinstance(node.layer, L.MaxPool):
            theirs = ort_agreement.window_gaps(source, node)[0]
            ours, gaps, _ = ort_agreement.window_gaps(mine, node)
            flips = theirs != ours
        elif isinstance(node.layer, L.Activation) and node.op == "Relu":
            flips, gaps = (source > 0) != (mine > 0), np.abs(mine)
        else:
            continue
        if flips.any():
            lines.append(f"    {node.name}: {int(flips.sum())} decision(s) the other way, float64 margin "
                         f"{float(gaps[flips].min()):.2e}, onnxruntime round-off of its input {noise:.2e}")
    return lines


def main() -> None:
    """Prints the report."""
    features = np._core._multiarray_umath.__cpu_features__
    print(f"CPU features seen: AVX512F={features.get('AVX512F')} AVX2={features.get('AVX2')} "
          f"AVX={features.get('AVX')}; LRP_CLI_ORT_OPTIONS='{os.environ.get('LRP_CLI_ORT_OPTIONS', '')}'")
    with tempfile.TemporaryDirectory() as folder:
        os.environ.setdefault("LRP_CLI_CACHE_DIR", folder)
        for label, model, x, settings, target in cases():
            agreement = ort_agreement.probe(model, x, settings, Path(folder), target)
            own_settings = dict(method=settings.method, composite=settings.composite,
                                layer_rules=settings.layer_rules, target=str(agreement.target))
            f64 = api.explain_array(model, x, api.Settings(engine="numpy", precision="float64", **own_settings))[0]
            f32 = api.explain_array(model, x, api.Settings(engine="numpy", **own_settings))[0]
            print(f"{label}: vs own float64 {ort_agreement.relative_l2(agreement.relevance, f64.relevance):.2e} "
                  f"(NumPy float32 {ort_agreement.relative_l2(f32.relevance, f64.relevance):.2e}); same forward "
                  f"{agreement.backward_error:.2e}, sums {agreement.sums_error:.2e}; forward "
                  f"{agreement.forward_error:.2e}")
            own = model.graph_for("float64").forward(x.astype(np.float64))
            for line in flipped_decisions(model, agreement.values, own):
                print(line)


if __name__ == "__main__":
    main()
