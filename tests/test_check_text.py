"""`lrp check` on text pipelines, through the CLI: word and regex regions measured on texts whose relevance is
known by hand (count features + a linear model: every occurrence of word j carries w_j), the spec errors, and
the text Clever-Hans demo (examples/ci/text-behaviour*.toml)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import joblib
import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from lrp_cli.cli import main

REPO = Path(__file__).resolve().parents[1]
RUN = CliRunner()
TOKEN = re.compile(r"(?u)\b\w\w+\b")
TRAIN = [("great lovely film", 1), ("superb great cast", 1), ("lovely superb story", 1),
         ("dull weak film", 0), ("boring dull cast", 0), ("weak boring story", 0)]
TEXTS = {"a": "Great film, DULL story. Regards, Great Fan", "b": "lovely cast but boring and weak; great great"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("check-text")
    pipe = make_pipeline(CountVectorizer(), LogisticRegression(C=10.0)).fit(*zip(*TRAIN))
    joblib.dump(pipe, folder / "model.joblib")
    for stem, text in TEXTS.items():
        (folder / f"{stem}.txt").write_text(text, encoding="utf-8")
    return pipe, folder


def word_relevance(pipe, text):
    vec, clf = pipe.steps[0][1], pipe.steps[-1][1]
    words = [m.group() for m in TOKEN.finditer(text)]
    return words, [m.span() for m in TOKEN.finditer(text)], np.asarray(
        [clf.coef_[0][vec.vocabulary_[w.lower()]] if w.lower() in vec.vocabulary_ else 0.0 for w in words])


def share(relevance, inside):
    positive = np.maximum(relevance, 0.0)
    return float(positive[inside].sum() / positive.sum())


def check(folder, spec_text, *extra):
    spec = folder / "spec.toml"
    spec.write_text(spec_text, encoding="utf-8")
    return RUN.invoke(main, ["check", str(spec), "--json", str(folder / "out.json"), *extra])


SPEC = '''model = "model.joblib"
[[case]]
name = "regions"
inputs = ["*.txt"]
target = 1
  [[case.region]]
  name = "great"
  words = ["GREAT"]
  max_positive_share = 1.0
  pointing_game = true
  [[case.region]]
  name = "signature"
  regex = "Regards, .*$|great great"
  min_positive_share = 0.0
'''


def test_word_and_regex_shares_equal_the_hand_computed_ones(setup):
    pipe, folder = setup
    result = check(folder, SPEC)
    results = json.loads((folder / "out.json").read_text())["specs"][0]["results"]
    assert result.exit_code == (0 if all(r["passed"] for r in results) else 1), result.output
    assert len(results) == 2
    for outcome in results:
        text = TEXTS[Path(outcome["input"]).stem]
        words, spans, relevance = word_relevance(pipe, text)
        measured = {m["name"]: m["value"] for m in outcome["measures"]}
        great = np.asarray([w.lower() == "great" for w in words])
        matches = [m.span() for m in re.finditer(r"Regards, .*$|great great", text)]
        signature = np.asarray([any(a < e and b > s for s, e in matches) for a, b in spans])
        # sums of a handful of float64 terms in another order
        assert measured["share[great]"] == pytest.approx(share(relevance, great), abs=1e-12)
        assert measured["share[signature]"] == pytest.approx(share(relevance, signature), abs=1e-12)
        assert measured["pointing[great]"] == ("inside" if great[np.argmax(relevance)] else "outside")
    assert 0 < results[0]["measures"][2]["value"] < 1  # "Regards, Great Fan": both regions share a word


@pytest.mark.parametrize("region,message", [
    ('words = ["a"]\n  box = [0, 0, 1, 1]', "case[0].region[0]: give exactly one of 'mask', 'box'"),
    ('regex = "(unclosed"', "case[0].region[0].regex: not a regular expression"),
    ('box = [0, 0, 1, 1]', "case[0].region[0].box: a sklearn-text model's regions take words or regex"),
    ('words = []', "case[0].region[0].words: lists no word"),
])
def test_region_errors_are_one_line_naming_the_spec_and_key(setup, region, message):
    _, folder = setup
    result = check(folder, f'model = "model.joblib"\n[[case]]\nname = "c"\ninputs = ["a.txt"]\n'
                           f'  [[case.region]]\n  {region}\n  max_positive_share = 0.5\n')
    assert result.exit_code == 2 and message in result.output and "spec.toml" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_picture_keys_on_text_and_word_regions_on_images_are_refused(setup, tmp_path):
    _, folder = setup
    result = check(folder, 'model = "model.joblib"\n[[case]]\nname = "c"\ninputs = ["a.txt"]\nmin_score = 0.5\n')
    assert result.exit_code == 2 and "case[0].min_score: applies to picture models" in result.output
    spec = tmp_path / "image.toml"
    spec.write_text(f'model = "{REPO}/models/shapes-cnn.onnx"\n[[case]]\nname = "c"\n'
                    f'inputs = ["{REPO}/sample_images/*.png"]\n  [[case.region]]\n  words = ["a"]\n'
                    '  max_positive_share = 0.5\n', encoding="utf-8")
    result = RUN.invoke(main, ["check", str(spec)])
    assert result.exit_code == 2 and "case[0].region[0].words: a onnx model's regions take mask or box" in \
        result.output


def test_clever_hans_spec_passes_the_clean_model_and_fails_the_shortcut(tmp_path):
    ci = REPO / "examples" / "ci"
    clean = RUN.invoke(main, ["check", str(ci / "text-behaviour.toml")])
    assert clean.exit_code == 0, clean.output
    shortcut = RUN.invoke(main, ["check", str(ci / "text-behaviour-shortcut.toml"), "--json", str(tmp_path / "s.json")])
    assert shortcut.exit_code == 1
    results = json.loads((tmp_path / "s.json").read_text())["specs"][0]["results"]
    failed = [r for r in results if not r["passed"]]
    assert failed and all(r["case"] == "the signature is no positive evidence" for r in failed)
    assert all(r["passed"] for r in results if r["case"] == "called negative")  # accuracy cannot tell them apart


def test_regex_region_takes_the_words_its_non_empty_matches_overlap():
    from lrp_cli.check.metrics import text_region_mask
    text = "someone said: sign here"
    spans = np.asarray([m.span() for m in re.finditer(r"\w+", text)])
    names = [text[a:b] for a, b in spans]
    assert text_region_mask(names, text, spans, None, "ome").tolist() == [True, False, False, False]
    assert text_region_mask(names, text, spans, None, "d: s").tolist() == [False, True, True, False]
    assert not text_region_mask(names, text, spans, None, r"(?=s)").any()  # zero-width matches hold no word
    assert text_region_mask(names, text, spans, ["SIGN", "x"], None).tolist() == [False, False, True, False]
