"""`lrp evaluate` (pixel flipping) on a vision transformer with both transformer composites.

The golden tiny ViT (tests/fixtures/transformers/vit_legacy17.onnx) has random weights, so its curves rank
nothing: this checks that the run works end to end (every method and order scored, curves that start at the
explained score and move as pixels flip), not which method wins.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lrp_cli.cli import main

VIT = Path(__file__).parent / "fixtures" / "transformers" / "vit_legacy17.onnx"
METHODS = ("lrp", "gradient-x-input", "random")


@pytest.mark.slow
@pytest.mark.parametrize("composite", ["attnlrp", "cp-lrp"])
def test_pixel_flipping_runs_on_a_vit_with_each_transformer_composite(tmp_path, composite):
    paths = []
    for k in range(2):
        paths.append(tmp_path / f"noise{k}.png")
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (32, 32, 3)).astype(np.uint8)).save(paths[-1])
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["evaluate", *map(str, paths), "--model", str(VIT), "--composite", composite,
                                       "--methods", ",".join(METHODS), "--steps", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "evaluation.json").read_text())
    assert {(s["method"], s["order"]) for s in doc["summary"]} == {(m, o) for m in METHODS for o in ("morf", "lerf")}
    runs = [r for r in doc["runs"] if r["method"] == "lrp"]
    assert len(runs) == 4 and all(len(r["scores"]) == 6 for r in runs)
    assert all(np.isfinite(r["scores"]).all() and r["scores"][0] != r["scores"][-1] for r in runs)
    explained = {r["input"]: r["scores"][0] for r in runs if r["order"] == "morf"}
    assert all(r["scores"][0] == pytest.approx(explained[r["input"]]) for r in runs)  # both orders start there
