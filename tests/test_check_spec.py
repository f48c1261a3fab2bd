"""`lrp check` spec errors: a corpus of broken specs, each exit 2 with one stderr line naming the file, the key
and (where the key is written in the file) its line; never a traceback, never a report file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lrp_cli.cli import main

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "shapes-cnn.onnx"
SHAPES = REPO / "sample_images" / "shapes"
RUN = CliRunner()

HEAD = f'model = "{MODEL}"\n'
CASE = f'''
[[case]]
name = "objects"
inputs = ["{SHAPES}/circle_[0-9].png"]
expect = "circle"

  [[case.region]]
  name = "object"
  mask = "{SHAPES}/{{stem}}.mask.png"
  min_positive_share = 0.1
'''
VALID = HEAD + CASE


def _swap(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new)


def _case_with(line: str) -> str:
    return VALID.replace('expect = "circle"\n', f'expect = "circle"\n{line}\n')


def _region_with(line: str) -> str:
    return VALID + f"  {line}\n"


def _second_region(lines: str) -> str:
    return VALID + "\n  [[case.region]]\n" + "".join(f"  {x}\n" for x in lines.split(";"))


def _baseline(lines: str) -> str:
    return VALID + "\n  [case.baseline]\n" + "".join(f"  {x}\n" for x in lines.split(";"))


#: (id, spec text, the key the message must name). Line numbers are checked where the key is in the text.
CORPUS = [
    ("toml-unclosed-table", VALID + "[[case\n", "invalid TOML"),
    ("toml-unclosed-string", HEAD + 'composite = "epsilon\n', "invalid TOML"),
    ("toml-duplicate-key", HEAD + HEAD + CASE, "invalid TOML"),
    ("toml-bare-value", VALID + "what\n", "invalid TOML"),
    ("toml-bad-array", HEAD + "size = [64, 64\n" + CASE, "invalid TOML"),
    ("toml-binary", "\x00\x01model = 1", "invalid TOML"),
    ("missing-model", CASE, "model"),
    ("missing-cases", HEAD, "case"),
    ("missing-case-name", _swap('name = "objects"\n', ""), "case[0]"),
    ("missing-inputs", _swap(f'inputs = ["{SHAPES}/circle_[0-9].png"]\n', ""), "case[0]"),
    ("missing-baseline-dir", _baseline("min_similarity = 0.9"), "case[0].baseline"),
    ("missing-baseline-limit", _baseline('dir = "b"'), "case[0].baseline"),
    ("unknown-top", HEAD + "colour = 1\n" + CASE, "colour"),
    ("unknown-top-explain-only", HEAD + "jobs = 2\n" + CASE, "jobs"),
    ("unknown-case", _case_with("expected = 3"), "case[0].expected"),
    ("unknown-region", _region_with("min_share = 0.2"), "case[0].region[0].min_share"),
    ("unknown-baseline", _baseline('dir = "b";min_similarity = 0.9;metrc = "cosine"'), "case[0].baseline.metrc"),
    ("type-model", _swap(f'model = "{MODEL}"', "model = 3"), "model"),
    ("type-composite", HEAD + "composite = 1\n" + CASE, "composite"),
    ("choice-composite", HEAD + 'composite = "epsilon-minus"\n' + CASE, "composite"),
    ("choice-method", HEAD + 'method = "saliency"\n' + CASE, "method"),
    ("choice-precision", HEAD + 'precision = "float16"\n' + CASE, "precision"),
    ("choice-preset", HEAD + 'preset = "vgg"\n' + CASE, "preset"),
    ("choice-layout", HEAD + 'layout = "chw"\n' + CASE, "layout"),
    ("choice-cmap", HEAD + 'cmap = "viridis"\n' + CASE, "cmap"),
    ("bad-rule", HEAD + 'rule = "epsilon:abc"\n' + CASE, "rule"),
    ("bad-layer-rule", HEAD + 'layer_rule = ["conv*"]\n' + CASE, "layer-rule"),
    ("type-layer-rule", HEAD + "layer_rule = [1, 2]\n" + CASE, "layer_rule"),
    ("type-size", HEAD + 'size = "64,64"\n' + CASE, "size"),
    ("size-three", HEAD + "size = [64, 64, 3]\n" + CASE, "size"),
    ("size-float", HEAD + "size = [64.5, 64]\n" + CASE, "size"),
    ("size-mismatch", HEAD + "size = [32, 32]\n" + CASE, "size"),
    ("type-resize", HEAD + "resize = -3\n" + CASE, "resize"),
    ("type-bgr", HEAD + 'bgr = "yes"\n' + CASE, "bgr"),
    ("type-mean", HEAD + 'mean = ["a"]\n' + CASE, "mean"),
    ("type-labels", HEAD + "labels = true\n" + CASE, "labels"),
    ("missing-labels-file", HEAD + 'labels = "nope.txt"\n' + CASE, "nope.txt"),
    ("type-case", HEAD + "case = 3\n", "case"),
    ("type-name", _swap('name = "objects"', "name = 7"), "case[0].name"),
    ("type-inputs", _swap(f'inputs = ["{SHAPES}/circle_[0-9].png"]', "inputs = [1]"), "case[0].inputs"),
    ("type-expect", _swap('expect = "circle"', "expect = 1.5"), "case[0].expect"),
    ("type-expect-bool", _swap('expect = "circle"', "expect = true"), "case[0].expect"),
    ("type-expect-top", _case_with("expect_top = 0"), "case[0].expect_top"),
    ("type-min-score", _case_with('min_score = "high"'), "case[0].min_score"),
    ("type-conservation", _case_with("max_conservation_error = [1]"), "case[0].max_conservation_error"),
    ("type-region", HEAD + f'[[case]]\nname = "x"\ninputs = ["{SHAPES}"]\nregion = 5\n', "case[0].region"),
    ("type-baseline", _case_with("baseline = [1]"), "case[0].baseline"),
    ("share-above-one", _swap("min_positive_share = 0.1", "min_positive_share = 1.5"),
     "case[0].region[0].min_positive_share"),
    ("share-negative", _region_with("max_positive_share = -0.1"), "case[0].region[0].max_positive_share"),
    ("type-pointing", _region_with('pointing_game = "yes"'), "case[0].region[0].pointing_game"),
    ("type-mask", _swap(f'mask = "{SHAPES}/{{stem}}.mask.png"', "mask = 3"), "case[0].region[0].mask"),
    ("type-box", _second_region('box = "0,0,1,1";max_positive_share = 0.5'), "case[0].region[1].box"),
    ("box-three", _second_region("box = [0, 0, 1];max_positive_share = 0.5"), "case[0].region[1].box"),
    ("box-inverted", _second_region("box = [0.5, 0, 0.2, 1];max_positive_share = 0.5"), "case[0].region[1].box"),
    ("box-fraction-above-one", _second_region("box = [0, 0, 2, 1];max_positive_share = 0.5"),
     "case[0].region[1].box"),
    ("box-px-outside", _second_region('box = [0, 0, 80, 10];units = "px";max_positive_share = 0.5'),
     "case[0].region[1].box"),
    ("choice-units", _second_region('box = [0, 0, 1, 1];units = "cm";max_positive_share = 0.5'),
     "case[0].region[1].units"),
    ("units-on-mask", _region_with('units = "px"'), "case[0].region[0].units"),
    ("region-mask-and-box", _region_with("box = [0, 0, 1, 1]"), "case[0].region[0]"),
    ("region-neither", _second_region("max_positive_share = 0.5"), "case[0].region[1]"),
    ("region-asserts-nothing", _second_region("box = [0, 0, 1, 1]"), "case[0].region[1]"),
    ("case-asserts-nothing", HEAD + f'[[case]]\nname = "x"\ninputs = ["{SHAPES}"]\n', "case[0]"),
    ("choice-metric", _baseline('dir = "b";min_similarity = 0.9;metric = "pearson"'), "case[0].baseline.metric"),
    ("type-min-similarity", _baseline('dir = "b";min_similarity = "0.9"'), "case[0].baseline.min_similarity"),
    ("glob-no-match", _swap("circle_[0-9].png", "hexagon_*.png"), "case[0].inputs"),
    ("glob-unclosed-bracket", _swap("circle_[0-9].png", "circle_[0-9.png"), "case[0].inputs"),
    ("file-missing", _swap("circle_[0-9].png", "circle_9.png"), "case[0].inputs"),
    ("folder-empty", _swap(f"{SHAPES}/circle_[0-9].png", "{empty}"), "case[0].inputs"),
    ("no-inputs", _swap(f'["{SHAPES}/circle_[0-9].png"]', "[]"), "case[0].inputs"),
    ("mask-missing", _swap("{stem}.mask.png", "{stem}.nomask.png"), "case[0].region[0].mask"),
    ("mask-not-an-image", _swap(f"{SHAPES}/{{stem}}.mask.png", "{textfile}"), "case[0].region[0].mask"),
    ("mask-wrong-size", _swap(f"{SHAPES}/{{stem}}.mask.png", "{smallmask}"), "case[0].region[0].mask"),
    ("duplicate-name", VALID + CASE, "case[1].name"),
    ("expect-unknown-label", _swap('expect = "circle"', 'expect = "hexagon"'), "case[0].expect"),
    ("expect-index-out-of-range", _swap('expect = "circle"', "expect = 9"), "case[0].expect"),
    ("target-unknown", _case_with('target = "hexagon"'), "case[0].target"),
    ("target-top-k", _case_with('target = "top:2"'), "case[0].target"),
    ("expect-top-without-expect", _swap('expect = "circle"', "expect_top = 2\nmin_score = 0.1"),
     "case[0].expect_top"),
    ("target-expect-without-expect", _swap('expect = "circle"', 'target = "expect"\nmin_score = 0.1'),
     "case[0].target"),
    ("include-missing", 'include = "other.toml"\n' + VALID, "other.toml"),
    ("include-self", 'include = "spec.toml"\n' + VALID, "include"),
]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "empty").mkdir()
    (folder / "not-a-mask.png").write_text("not an image")
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(folder / "small-mask.png")
    return folder


def _write(folder: Path, text: str) -> Path:
    text = text.replace("{empty}", str(folder / "empty")).replace("{textfile}", str(folder / "not-a-mask.png"))
    text = text.replace("{smallmask}", str(folder / "small-mask.png"))
    path = folder / "spec.toml"
    path.write_bytes(text.encode("utf-8"))
    return path


def test_the_valid_spec_of_the_corpus_runs(corpus_dir):
    result = RUN.invoke(main, ["check", str(_write(corpus_dir, VALID))])
    assert result.exit_code in (0, 1), result.output
    assert result.output.splitlines()[-1].endswith("failed")


@pytest.mark.parametrize("name, text, key", CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_spec_is_exit_2_with_one_line(corpus_dir, name, text, key):
    path = _write(corpus_dir, text)
    junit = corpus_dir / f"{name}.xml"
    result = RUN.invoke(main, ["check", str(path), "--junit", str(junit)])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {path}"), lines[0]
    assert key in lines[0], lines[0]
    assert "Traceback" not in result.output and not junit.exists()
    written = [i for i, line in enumerate(text.splitlines(), 1) if line.strip().startswith(key.split(".")[-1]
                                                                                           + " =")]
    if "[" not in key.split(".")[-1] and len(written) == 1:
        assert lines[0].startswith(f"error: {path}:{written[0]}: "), lines[0]


def test_corpus_size():
    assert len(CORPUS) >= 80


def test_line_of_a_key_in_the_second_case(corpus_dir):
    text = VALID + CASE.replace('"objects"', '"more"').replace('expect = "circle"', 'expect = "circle"\nmin_scor = 1')
    path = _write(corpus_dir, text)
    result = RUN.invoke(main, ["check", str(path)])
    line = text.splitlines().index("min_scor = 1") + 1
    assert result.stderr.strip().startswith(f"error: {path}:{line}: case[1].min_scor: unknown key")


def test_missing_spec_file_and_empty_keyword(corpus_dir):
    result = RUN.invoke(main, ["check", str(corpus_dir / "nothing.toml")])
    assert result.exit_code == 2 and "cannot read the spec" in result.stderr
    result = RUN.invoke(main, ["check", str(_write(corpus_dir, VALID)), "-k", "no such case"])
    assert result.exit_code == 2 and result.stderr.strip() == "error: -k no such case: no case name contains it"


def test_unloadable_model_is_exit_3(corpus_dir):
    (corpus_dir / "broken.onnx").write_bytes(b"not onnx")
    result = RUN.invoke(main, ["check", str(_write(corpus_dir, _swap(str(MODEL), str(corpus_dir / "broken.onnx"))))])
    assert result.exit_code == 3 and len(result.stderr.splitlines()) == 1


def test_spec_error_in_a_real_process_has_no_traceback(corpus_dir):
    path = _write(corpus_dir, _region_with("min_share = 0.2"))
    done = subprocess.run([sys.executable, "-m", "lrp_cli", "check", str(path)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


_ABOVE_ONE, _BELOW_ZERO = repr(float(np.nextafter(1.0, 2.0))), repr(float(np.nextafter(0.0, -1.0)))
#: (id, the line at the edge of what a key allows, the same key one step past it, the key the error names).
EDGES = [
    ("min-share-one", "min_positive_share = 1.0", f"min_positive_share = {_ABOVE_ONE}", "min_positive_share"),
    ("max-share-zero", "max_positive_share = 0.0", f"max_positive_share = {_BELOW_ZERO}", "max_positive_share"),
    ("box-fraction-one", "box = [0, 0, 1.0, 1.0]", f"box = [0, 0, {_ABOVE_ONE}, 1.0]", "box"),
    ("box-fraction-zero", "box = [0.0, 0.0, 1, 1]", f"box = [{_BELOW_ZERO}, 0.0, 1, 1]", "box"),
    ("box-width-one-step", "box = [0.5, 0, 0.5000000000000001, 1]", "box = [0.5, 0, 0.5, 1]", "box"),
    ("box-height-one-step", "box = [0, 0.5, 1, 0.5000000000000001]", "box = [0, 0.5, 1, 0.5]", "box"),
]


@pytest.mark.parametrize("name, edge, past, key", EDGES, ids=[e[0] for e in EDGES])
def test_region_values_at_the_edge_load_and_one_step_past_do_not(corpus_dir, name, edge, past, key):
    from lrp_cli.check.spec import SpecError, load_spec
    region = "\n  [[case.region]]\n  {line}\n  max_positive_share = 1\n" if "share" not in key else \
        "\n  [[case.region]]\n  box = [0, 0, 1, 1]\n  {line}\n"
    load_spec(_write(corpus_dir, VALID + region.format(line=edge)))
    with pytest.raises(SpecError, match=rf"case\[0\]\.region\[1\]\.{key}"):
        load_spec(_write(corpus_dir, VALID + region.format(line=past)))


def test_expect_top_one_is_the_least(corpus_dir):
    from lrp_cli.check.spec import SpecError, load_spec
    assert load_spec(_write(corpus_dir, _case_with("expect_top = 1"))).cases[0].expect_top == 1
    with pytest.raises(SpecError, match=r"case\[0\]\.expect_top: expected a positive integer, got 0"):
        load_spec(_write(corpus_dir, _case_with("expect_top = 0")))
