"""`lrp check` on a non-square model input (6 rows, 10 columns) built here, whose relevance is known by hand:
boxes and masks land on the right pixels (a swapped width and height cannot pass), px boxes at the input's edge,
the default target of a misclassified input, the documented defaults of a spec, and the Markdown order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import helper
from PIL import Image

from conftest import onnx_model, save_model
from lrp_cli import api
from lrp_cli.check import metrics, reports, runner
from lrp_cli.check.spec import load_spec
from lrp_cli.cli import main

RUN = CliRunner()
H, W = 6, 10
OBJECT = (slice(3, 6), slice(6, 10))  # rows 3-5, columns 6-9: box [0.6, 0.5, 1, 1] = [6, 3, 10, 6] px
PEAK = (1, 2)  # row 1, column 2


def _weights() -> np.ndarray:
    """[H*W, 3]: class 0 "object" looks at OBJECT only, class 1 "peak" at the top-left with a peak at PEAK,
    class 2 "none" weighs every pixel -0.1."""
    maps = np.zeros((3, H, W), dtype=np.float32)
    maps[0][OBJECT] = 1.0
    maps[1, 0:2, 0:4] = 0.5
    maps[1][PEAK] = 5.0
    maps[2] = -0.1
    return maps.reshape(3, -1).T.copy()


@pytest.fixture
def grid_model(tmp_path) -> Path:
    """A one-layer classifier on 1x1x6x10 inputs: with the epsilon rule (no bias) R_p = x_p w_pk, so every
    share below is known from the weights."""
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "w"], ["y"], name="dense")]
    path = save_model(onnx_model(nodes, [1, 1, H, W], "y", {"w": _weights()}), tmp_path / "grid.onnx")
    (tmp_path / "grid.lrp.toml").write_text('labels = ["object", "peak", "none"]\n')
    return path


def _input(folder: Path, name: str, object_scale: float = 1.0, seed: int | None = None) -> Path:
    x = np.ones((1, 1, H, W), dtype=np.float32)
    if seed is not None:
        x = np.random.default_rng(seed).uniform(0.5, 1.5, x.shape).astype(np.float32)
    x[0, 0][OBJECT] *= object_scale
    np.save(folder / f"{name}.npy", x)
    return folder / f"{name}.npy"


def _spec(folder: Path, model: Path, body: str) -> Path:
    path = folder / "spec.toml"
    path.write_text(f'model = "{model}"\nrule = "epsilon:1e-9"\n' + body, encoding="utf-8")
    return path


def _case(name: str, inputs: str, *lines: str, region: tuple[str, ...] = ()) -> str:
    """Returns the TOML of one [[case]] named `name` on one input, with its own `lines` and one region's."""
    body = "".join(f"{line}\n" for line in lines)
    regions = "  [[case.region]]\n" + "".join(f"  {line}\n" for line in region) if region else ""
    return f'\n[[case]]\nname = "{name}"\ninputs = ["{inputs}"]\n{body}{regions}'


def _check(spec: Path, *options) -> tuple[object, dict]:
    report = spec.parent / "r.json"
    result = RUN.invoke(main, ["check", str(spec), "--json", str(report), *map(str, options)])
    document = json.loads(report.read_text()) if report.exists() else None
    return result, document


def _measures(document: dict) -> list[dict[str, object]]:
    return [{m["name"]: m["value"] for m in r["measures"]} for r in document["specs"][0]["results"]]


def test_the_model_and_its_relevance_are_as_designed(grid_model, tmp_path):
    # The independent path: the relevance straight from the API is x_p w_pk, here 1 on OBJECT and 0 elsewhere.
    model = api.load_model(grid_model)
    x = np.load(_input(tmp_path, "ones"))
    expl = api.explain_array(model, x, api.Settings(rule="epsilon:1e-9", target="0"))[0]
    expected = np.zeros((H, W))
    expected[OBJECT] = 1.0
    np.testing.assert_allclose(api.pixel_map(model, expl), expected, atol=1e-6)


def test_boxes_and_pointing_on_a_non_square_input(grid_model, tmp_path):
    _input(tmp_path, "ones")
    spec = _spec(tmp_path, grid_model, f'''
[[case]]
name = "object"
inputs = ["ones.npy"]
expect = "object"
  [[case.region]]
  name = "fraction"
  box = [0.6, 0.5, 1.0, 1.0]
  min_positive_share = 1.0
  pointing_game = true
  [[case.region]]
  name = "px"
  box = [6, 3, 10, 6]
  units = "px"
  min_positive_share = 1.0
  [[case.region]]
  name = "corner"
  box = [0, 0, 0.6, 0.5]
  max_positive_share = 0.0

[[case]]
name = "peak"
inputs = ["ones.npy"]
target = "peak"
  [[case.region]]
  name = "peak"
  box = [{PEAK[1]}, {PEAK[0]}, {PEAK[1] + 1}, {PEAK[0] + 1}]
  units = "px"
  pointing_game = true
  max_positive_share = 0.6
''')
    result, document = _check(spec)
    assert result.exit_code == 0, result.output
    first, second = _measures(document)
    # share 1 exactly: every positive R_p lies in the 12 pixels of OBJECT (epsilon 1e-9 leaves 1e-10 of it)
    assert first["share[fraction]"] == pytest.approx(1.0, abs=1e-9) and first["share[px]"] == pytest.approx(1.0)
    assert first["share[corner]"] == 0.0 and first["pointing[fraction]"] == "inside"
    # class peak: R = 5 at PEAK, 0.5 on the 7 other top-left pixels: 5 / 8.5 of the positive relevance
    assert second["share[peak]"] == pytest.approx(5 / 8.5, rel=1e-6) and second["pointing[peak]"] == "inside"


@pytest.mark.parametrize("box, ok", [("[0, 0, 10, 6]", True), ("[0, 0, 11, 6]", False), ("[0, 0, 10, 7]", False),
                                     ("[0, 0, 6, 10]", False), ("[9, 5, 10, 6]", True)])
def test_px_box_at_the_edge_of_a_non_square_input(grid_model, tmp_path, box, ok):
    _input(tmp_path, "ones")
    spec = _spec(tmp_path, grid_model, _case("edge", "ones.npy", region=(f"box = {box}", 'units = "px"',
                                                                       "max_positive_share = 1.0")))
    result, _ = _check(spec)
    if ok:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 2 and f"case[0].region[0].box: {box.replace(' ', '').replace(',', ', ')} " \
            "lies outside the 10x6 px model input" in result.output, result.output


def test_a_box_between_pixel_centres_is_a_spec_error(grid_model, tmp_path):
    _input(tmp_path, "ones")
    spec = _spec(tmp_path, grid_model, _case("thin", "ones.npy", region=("box = [2.6, 0, 3.4, 6]", 'units = "px"',
                                                                       "max_positive_share = 1.0")))
    result, _ = _check(spec)
    assert result.exit_code == 2 and "holds no pixel centre of the 10x6 px model input" in result.output


@pytest.mark.parametrize("size, ok", [((W, H), True), ((H, W), False)])
def test_mask_of_a_tensor_input_is_the_model_grid(grid_model, tmp_path, size, ok):
    _input(tmp_path, "ones")
    picture = np.zeros(size[::-1], dtype=np.uint8)
    picture[:3, :] = 255  # the top three rows of a 10 x 6 mask
    Image.fromarray(picture).save(tmp_path / "ones.mask.png")
    spec = _spec(tmp_path, grid_model, _case("masked", "ones.npy", 'target = "peak"',
                                             region=('mask = "{stem}.mask.png"', "min_positive_share = 1.0")))
    result, document = _check(spec)
    if ok:
        assert result.exit_code == 0, result.output
        assert _measures(document)[0]["share[region0]"] == pytest.approx(1.0)  # class peak: rows 0-1 only
    else:
        assert result.exit_code == 2 and "is 6x10 px but its input" in result.output and "is 10x6" in result.output


def test_a_misclassified_input_explains_its_expected_class_by_default(grid_model, tmp_path):
    # Halving OBJECT makes "peak" win (6 < 8.5): the prediction fails, and the explained class is still "object".
    x = np.load(_input(tmp_path, "dim", object_scale=0.5))
    model = api.load_model(grid_model)
    assert int(np.argmax(model.run_onnxruntime(x)[1])) == 1
    def body(*target):
        return _case("expected", "dim.npy", 'expect = "object"', *target,
                     region=("box = [0.6, 0.5, 1.0, 1.0]", "min_positive_share = 0.99"))
    result, document = _check(_spec(tmp_path, grid_model, body()))
    assert result.exit_code == 1
    measured = _measures(document)[0]
    assert measured["predicted"] == "peak" and measured["share[region0]"] == pytest.approx(1.0)
    result, document = _check(_spec(tmp_path, grid_model, body('target = "pred"')))
    assert _measures(document)[0]["share[region0]"] == 0.0  # the other target measures something else
    result, document = _check(_spec(tmp_path, grid_model, body('target = "expect"')))
    assert _measures(document)[0]["share[region0]"] == pytest.approx(1.0)


def test_the_baseline_metric_is_spearman_by_default(grid_model, tmp_path):
    _input(tmp_path, "varied", seed=4)
    spec = _spec(tmp_path, grid_model, '''
[[case]]
name = "stable"
inputs = ["varied.npy"]
target = "object"
  [case.baseline]
  dir = "base"
  min_similarity = 0.9999
''')
    assert _check(spec, "--update-baselines")[0].exit_code == 0
    stored_path = tmp_path / "base" / "varied.relevance.npy"
    stored = np.load(stored_path)
    np.save(stored_path, stored ** 5)  # the same ranks (R >= 0 here), another direction: cosine < 0.9999
    heat, changed = stored[0, 0].astype(np.float64), (stored[0, 0] ** 5).astype(np.float64)
    assert metrics.cosine(heat, changed) < 0.999 and metrics.spearman(heat, changed) == pytest.approx(1.0)
    result, document = _check(spec)
    assert result.exit_code == 0, result.output
    assert list(_measures(document)[0]) == ["spearman[baseline]"]


def test_documented_defaults_of_a_spec(grid_model, tmp_path):
    _input(tmp_path, "ones")
    spec_path = _spec(tmp_path, grid_model, '''
[[case]]
name = "defaults"
inputs = ["ones.npy"]
expect = "peak"
  [[case.region]]
  box = [0, 0, 0.5, 0.5]
  min_positive_share = 0.5
  [case.baseline]
  dir = "b"
  min_similarity = 0.5

[[case]]
name = "no expect"
inputs = ["ones.npy"]
min_score = 0
''')
    spec = load_spec(spec_path)
    region, baseline = spec.cases[0].regions[0], spec.cases[0].baseline
    assert (region.units, region.name, region.pointing_game, region.max_positive_share) == ("fraction", "region0",
                                                                                              False, None)
    assert baseline.metric == "spearman"
    assert (spec.cases[0].target, spec.cases[0].expect_top) == (None, None)
    prepared = runner.prepare(spec_path)
    assert prepared.cmap == "jet"
    assert (prepared.settings.method, prepared.settings.precision, prepared.settings.composite,
            prepared.settings.rule) == ("lrp", "float32", None, "epsilon:1e-9")
    assert [job.target for job in prepared.jobs] == ["1", "pred"]  # expect's class by default, else pred
    # expect without expect_top: the prediction must equal it (top 1)
    outcome = runner.run_groups([runner.groups(prepared)])[0][0]
    assert outcome.measures[0].text() == "predicted=object == peak" and not outcome.measures[0].passed


@pytest.mark.parametrize("key, step", [("min_positive_share", np.inf), ("max_positive_share", -np.inf)])
def test_share_limits_hold_at_the_edge_and_fail_one_step_past(grid_model, tmp_path, key, step):
    # Class object on ones: the box [0.6, 0.5, 0.8, 1] holds 6 of its 12 equal pixels, a share of (about) 0.5.
    _input(tmp_path, "ones")
    def body(limit: float) -> str:
        return _case("half", "ones.npy", 'target = "object"',
                     region=("box = [0.6, 0.5, 0.8, 1.0]", f"{key} = {limit!r}"))
    _, document = _check(_spec(tmp_path, grid_model, body(0.5)))
    share = _measures(document)[0]["share[region0]"]
    assert share == pytest.approx(0.5, abs=1e-12)
    at_edge, _ = _check(_spec(tmp_path, grid_model, body(share)))
    assert at_edge.exit_code == 0, at_edge.output  # a share equal to its limit passes
    past, _ = _check(_spec(tmp_path, grid_model, body(float(np.nextafter(share, step)))))
    assert past.exit_code == 1, past.output


def test_markdown_lists_failures_first_then_in_run_order(grid_model, tmp_path):
    _input(tmp_path, "a")
    _input(tmp_path, "b")
    cases = "".join(_case(name, 'a.npy", "b.npy', 'target = "object"', region=("box = [0.6, 0.5, 1.0, 1.0]",
                                                                               f"{key} = 0.5"))
                    for name, key in (("passes", "min_positive_share"), ("fails", "max_positive_share")))
    first = _spec(tmp_path, grid_model, cases)
    second = first.with_name("second.toml")
    second.write_text(first.read_text())
    results = runner.run_specs([first, second])
    table = [line.split(" | ")[:4] for line in reports.markdown_text(results).splitlines()[4:]]
    expected = [(verdict, str(spec), case, f"{tmp_path}/{stem}.npy") for verdict, case in (("❌ FAIL", "fails"),
                                                                                              ("✅ PASS", "passes"))
                for spec in (first, second) for stem in ("a", "b")]
    got = [(row[0].lstrip("| "), row[1], row[2], row[3]) for row in table]
    assert got == [(v, s, c, i) for v, s, c, i in expected], got


def test_mask_of_an_image_input_is_brought_to_the_non_square_grid(grid_model, tmp_path):
    # A white 20x12 image resized to the 10x6 input: the mask drawn on the image's OBJECT area (rows 6-11,
    # columns 12-19) lands on OBJECT, so class object's relevance is all inside it and none in the transposed spot.
    Image.fromarray(np.full((12, 20), 255, dtype=np.uint8)).save(tmp_path / "white.png")
    masks = {"object": (slice(6, 12), slice(12, 20)), "transposed": (slice(0, 6), slice(0, 12))}
    for name, area in masks.items():
        picture = np.zeros((12, 20), dtype=np.uint8)
        picture[area] = 255
        Image.fromarray(picture).save(tmp_path / f"white.{name}.png")
    spec = _spec(tmp_path, grid_model, 'preset = "unit"\n' + "".join(
        _case(name, "white.png", 'target = "object"',
              region=(f'mask = "{{stem}}.{name}.png"', "min_positive_share = 0")) for name in masks))
    result, document = _check(spec)
    assert result.exit_code == 0, result.output
    shares = [m["share[region0]"] for m in _measures(document)]
    assert shares[0] == pytest.approx(1.0) and shares[1] == 0.0


def test_evidence_of_a_non_square_input_outlines_the_box(grid_model, tmp_path):
    _input(tmp_path, "ones")
    spec = _spec(tmp_path, grid_model, _case("fails", "ones.npy", 'target = "object"',
                                             region=("box = [0.6, 0.5, 1.0, 1.0]", "max_positive_share = 0.5")))
    result, _ = _check(spec, "--evidence", tmp_path / "ev")
    assert result.exit_code == 1
    heatmap = np.asarray(Image.open(tmp_path / "ev" / "spec" / "fails" / "ones.heatmap.png"))
    assert heatmap.shape == (H, W, 3)
    magenta = (heatmap == (255, 0, 255)).all(axis=2)
    expected = np.zeros((H, W), dtype=bool)
    expected[3, 6:10] = expected[5, 6:10] = expected[3:6, 6] = expected[3:6, 9] = True
    assert np.array_equal(magenta, expected)


def test_an_including_spec_keys_win_over_the_included_ones(grid_model, tmp_path):
    _input(tmp_path, "ones")
    base = _spec(tmp_path, grid_model, 'precision = "float64"\ncmap = "seismic"\n[[case]]\nname = "base"\n'
                                       'inputs = ["ones.npy"]\nmin_score = 0\n')
    (tmp_path / "sub").mkdir()
    top = tmp_path / "sub" / "top.toml"
    top.write_text(f'include = "../{base.name}"\nprecision = "float32"\n')
    spec = load_spec(top)
    assert spec.settings["precision"] == "float32" and spec.settings["cmap"] == "seismic"
    assert spec.settings["rule"] == "epsilon:1e-9" and spec.model == grid_model
    assert [item.path for item in spec.cases[0].inputs] == [tmp_path / "ones.npy"]  # against base's folder
