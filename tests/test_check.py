"""`lrp check` end to end on the bundled shapes-cnn: console lines, exit codes, JUnit read back, Markdown, JSON,
evidence images, baselines, -k and --jobs."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from junitparser import Failure, JUnitXml
from PIL import Image

from lrp_cli import api
from lrp_cli.check import metrics
from lrp_cli.cli import main

REPO = Path(__file__).resolve().parents[1]
SHAPES = REPO / "sample_images" / "shapes"
RUN = CliRunner()


def _spec(folder: Path, body: str, name: str = "spec.toml") -> Path:
    path = folder / name
    path.write_text(f'model = "{REPO}/models/shapes-cnn.onnx"\n' + body, encoding="utf-8")
    return path


OBJECT_CASES = f'''
[[case]]
name = "crosses"
inputs = ["{SHAPES}/cross_[0-9].png"]
expect = "cross"
max_conservation_error = 0.5

  [[case.region]]
  name = "object"
  mask = "{SHAPES}/{{stem}}.mask.png"
  min_positive_share = 0.2

[[case]]
name = "corner is unused"
inputs = ["{SHAPES}/cross_0.png"]
target = "pred"

  [[case.region]]
  name = "corner"
  box = [0, 0, 1, 0.5]
  max_positive_share = 0.01
'''


def _expected_share(stem: str, target: str, box=None) -> float:
    """The share computed here from `lrp_cli.api` directly, as an independent path to the same number."""
    model = api.load_model(REPO / "models" / "shapes-cnn.onnx")
    expl = api.explain(model, SHAPES / f"{stem}.png", api.Settings(target=target))[0]
    heat = api.pixel_map(model, expl).astype(np.float64)  # the check sums in float64, as here
    mask = (np.asarray(Image.open(SHAPES / f"{stem}.mask.png")) > 0 if box is None
            else metrics.box_mask(box, "fraction", heat.shape))
    return float(np.maximum(heat, 0)[mask].sum() / np.maximum(heat, 0).sum())


def test_check_reports_every_case_and_input(tmp_path):
    spec = _spec(tmp_path, OBJECT_CASES)
    junit, markdown, report = tmp_path / "j.xml", tmp_path / "s.md", tmp_path / "r.json"
    result = RUN.invoke(main, ["check", str(spec), "--junit", str(junit), "--markdown", str(markdown),
                               "--json", str(report), "--evidence", str(tmp_path / "ev")])
    lines = result.output.splitlines()
    assert result.exit_code == 1, result.output
    assert [line.split("  ")[:2] for line in lines[:3]] == [["PASS", "crosses"], ["PASS", "crosses"],
                                                             ["FAIL", "corner is unused"]]
    assert lines[-1] == "2 passed, 1 failed"
    # The reported share is the one computed straight from the API (the check adds no pass of its own).
    document = json.loads(report.read_text())
    first = document["specs"][0]["results"][0]
    share = next(m for m in first["measures"] if m["name"] == "share[object]")
    assert abs(share["value"] - _expected_share("cross_0", "3")) < 1e-9
    corner = document["specs"][0]["results"][2]
    value = corner["measures"][0]["value"]
    assert abs(value - _expected_share("cross_0", "pred", (0, 0, 1, 0.5))) < 1e-9
    assert f"share[corner]={value:.3g} <= 0.01" in lines[2]
    # JUnit, read back by a consumer: one suite, three cases, one failure naming the measured share and limit.
    xml = JUnitXml.fromfile(str(junit))
    suites = list(xml)
    assert len(suites) == 1 and suites[0].tests == 3 and suites[0].failures == 1
    failures = [r for case in suites[0] for r in case.result if isinstance(r, Failure)]
    assert len(failures) == 1 and failures[0].message == f"share[corner]={value:.3g} <= 0.01"
    root = ET.parse(junit).getroot()  # the plain schema CI systems read
    assert root.tag == "testsuites" and root.find("testsuite/testcase/failure").get("message")
    assert "| ❌ FAIL |" in markdown.read_text() and "1 failed" in markdown.read_text().splitlines()[0]
    # Evidence: only the failing (case, input), with the region outlined in magenta on both images.
    evidence = sorted(p.name for p in (tmp_path / "ev").rglob("*.png"))
    assert evidence == ["cross_0.heatmap.png", "cross_0.overlay.png"]
    heatmap = np.asarray(Image.open(next((tmp_path / "ev").rglob("cross_0.heatmap.png"))))
    magenta = (heatmap == (255, 0, 255)).all(axis=2)
    assert magenta[31, :].all() and magenta[0, :].all() and not magenta[33:, 1:-1].any()


def test_keyword_and_jobs_select_and_agree(tmp_path):
    spec = _spec(tmp_path, OBJECT_CASES)
    one = RUN.invoke(main, ["check", str(spec), "-k", "cross"])
    assert one.exit_code == 0 and one.output.splitlines()[-1] == "2 passed, 0 failed"
    two = RUN.invoke(main, ["check", str(spec), "-k", "cross", "--jobs", "2"])
    assert two.output == one.output


def test_baselines_update_then_compare(tmp_path):
    body = f'''
[[case]]
name = "stable"
inputs = ["{SHAPES}/circle_[0-9].png"]

  [case.baseline]
  dir = "baselines"
  metric = "cosine"
  min_similarity = 0.999
'''
    spec = _spec(tmp_path, body)
    missing = RUN.invoke(main, ["check", str(spec)])
    assert missing.exit_code == 1 and "cosine[baseline]=missing" in missing.output
    written = RUN.invoke(main, ["check", str(spec), "--update-baselines"])
    assert written.exit_code == 0 and written.output.count("cosine[baseline]=written") == 2
    stored = np.load(tmp_path / "baselines" / "circle_0.relevance.npy")
    assert stored.shape == (1, 3, 64, 64) and stored.dtype == np.float32
    same = RUN.invoke(main, ["check", str(spec)])
    assert same.exit_code == 0 and "cosine[baseline]=1 >= 0.999" in same.output
    np.save(tmp_path / "baselines" / "circle_0.relevance.npy", -stored)  # a drifted heatmap
    drifted = RUN.invoke(main, ["check", str(spec)])
    assert drifted.exit_code == 1 and "cosine[baseline]=-1 >= 0.999 FAILED" in drifted.output


def test_prediction_assertions_and_an_unreadable_input(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"no png")
    body = f'''
[[case]]
name = "circle"
inputs = ["{SHAPES}/circle_0.png", "broken.png"]
expect = "square"
expect_top = 4
min_score = 1.01
'''
    result = RUN.invoke(main, ["check", str(_spec(tmp_path, body))])
    lines = result.output.splitlines()
    assert result.exit_code == 1 and lines[-1] == "0 passed, 2 failed"
    assert "predicted=circle in top 4 for square" in lines[0] and "min_score" not in lines[0]
    assert "score=" in lines[0] and ">= 1.01 FAILED" in lines[0]
    assert lines[1].startswith("FAIL  circle  ") and "error:" in lines[1] and "broken.png" in lines[1]


def test_include_shares_cases_and_resolves_paths_per_file(tmp_path):
    base = _spec(tmp_path, OBJECT_CASES, "base.toml")
    (tmp_path / "other").mkdir()
    other = tmp_path / "other" / "variant.toml"
    other.write_text(f'include = "../{base.name}"\nmodel = "{REPO}/models/shapes-cnn.onnx"\nprecision = "float64"\n')
    result = RUN.invoke(main, ["check", str(other), "-k", "cross"])
    assert result.exit_code == 0 and result.output.splitlines()[-1] == "2 passed, 0 failed"


@pytest.mark.slow
def test_real_model_spec_on_efficientnet(tmp_path):
    spec = REPO / "examples" / "ci" / "real-model.toml"
    if not (REPO / "models" / "efficientnet-lite0.onnx").exists():  # build it as `make demo` does, elsewhere
        from lrp_cli import zoo
        built = zoo.get("efficientnet-lite0", tmp_path / "models")
        spec = tmp_path / "real-model.toml"
        spec.write_text(f'include = "{REPO}/examples/ci/real-model.toml"\nmodel = "{built}"\n', encoding="utf-8")
    report = tmp_path / "r.json"
    result = RUN.invoke(main, ["check", str(spec), "--json", str(report)])
    assert result.exit_code == 0, result.output
    shares = {m["name"]: m["value"] for r in json.loads(report.read_text())["specs"][0]["results"]
              for m in r["measures"]}
    assert shares["share[face]"] >= 0.5 and shares["share[cup]"] >= 0.5 and shares["pointing[face]"] == "inside"
