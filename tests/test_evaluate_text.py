"""`lrp evaluate` on scikit-learn text pipelines, through the CLI: word-deletion curves recomputed by brute force
(the pipeline's own decision_function on each perturbed text, one call per step), accuracy from --label-field,
occlusion by leaving each word out, LIME equal to the `lime` package's LimeTextExplainer, and the usage errors."""

from __future__ import annotations

import json
import re

import joblib
import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from lrp_cli.cli import main

RUN = CliRunner()
TOKEN = re.compile(r"(?u)\b\w\w+\b")  # CountVectorizer's default token_pattern, independent of lrp_cli's analysis
TRAIN = [("a great film with a lovely cast", 1), ("great acting and a lovely story", 1),
         ("superb and lovely, a great watch", 1), ("a dull film with a weak cast", 0),
         ("dull acting and a weak boring story", 0), ("boring, weak and dull, a waste", 0)]
DOCS = [("a great cast but a dull weak story and boring acting", 0),
        ("lovely film, superb story, great great acting, one weak scene", 1),
        ("the cast was great", 0)]  # the last label is wrong on purpose: accuracy must not be all ones


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text-eval")
    pipe = make_pipeline(CountVectorizer(), LogisticRegression(C=10.0)).fit(*zip(*TRAIN))
    joblib.dump(pipe, folder / "model.joblib")
    rows = folder / "docs.jsonl"
    rows.write_text("".join(json.dumps({"id": f"d{k}", "text": t, "y": y}) + "\n" for k, (t, y) in enumerate(DOCS)))
    return pipe, folder / "model.joblib", rows


def evaluate(*args):
    return RUN.invoke(main, ["evaluate", *map(str, args)])


def run_eval(model, rows, out, *extra):
    result = evaluate(rows, "--model", model, "--text-field", "text", "--id-field", "id", "--out", out, *extra)
    assert result.exit_code == 0, result.output
    return json.loads((out / "evaluation.json").read_text()), result.output


def word_spans(text):
    return [m.span() for m in TOKEN.finditer(text)]


def without(text, spans, removed, fill=""):
    """The text with the words at the `removed` indices replaced by fill (right to left, offsets stay valid)."""
    for k in sorted(removed, reverse=True):
        a, b = spans[k]
        text = text[:a] + fill + text[b:]
    return text


def lrp_word_relevance(pipe, text):
    """Hand-worked LRP of count features + a linear model: each occurrence of word j carries w_j (x_j w_j over
    its x_j occurrences); out-of-vocabulary words carry 0."""
    vec, clf = pipe.steps[0][1], pipe.steps[-1][1]
    return np.asarray([clf.coef_[0][vec.vocabulary_[w]] if w in vec.vocabulary_ else 0.0
                       for w in (text[a:b].lower() for a, b in word_spans(text))])


@pytest.mark.parametrize("perturbation,fill", [("delete", ""), ("unk", " UNKWORDZ ")])
def test_deletion_curves_equal_the_pipelines_decision_on_each_perturbed_text(linear_model, tmp_path, perturbation,
                                                                            fill):
    pipe, model, rows = linear_model
    doc, _ = run_eval(model, rows, tmp_path / "out", "--methods", "lrp", "--steps", "4", "--label-field", "y",
                      "--perturbation", perturbation, "--target", "1")
    keys = {"morf": lambda r: -r, "lerf": np.abs}
    assert len(doc["runs"]) == 2 * len(DOCS) and doc["settings"]["units"] == "word"
    for run in doc["runs"]:
        k = int(run["input"].rsplit("d", 1)[1])
        text, label = DOCS[k]
        spans = word_spans(text)
        order = np.argsort(keys[run["order"]](lrp_word_relevance(pipe, text)), kind="stable")
        counts = np.arange(5) * len(spans) // 4
        expected = [pipe.decision_function([without(text, spans, order[:c], fill)])[0] for c in counts]
        # float64 sums of a few dozen terms in a different order: 1e-9 is far above rounding, far below any word
        np.testing.assert_allclose(run["scores"], expected, rtol=0, atol=1e-9)
        assert run["aopc"] == pytest.approx(np.mean(expected[0] - np.asarray(expected)), abs=1e-9)
        assert run["correct"] == [int((d > 0) == label) for d in expected]
    for entry in doc["summary"]:
        curves = [r["correct"] for r in doc["runs"] if r["order"] == entry["order"]]
        assert entry["accuracy"]["curve"] == pytest.approx(np.mean(curves, axis=0).tolist())


def test_morf_removes_the_decision_faster_than_lerf_and_random_in_between(linear_model, tmp_path):
    _, model, rows = linear_model
    doc, output = run_eval(model, rows, tmp_path / "out", "--steps", "5", "--label-field", "y")
    summary = {(s["method"], s["order"]): s["aopc_mean"] for s in doc["summary"]}
    assert {m for m, _ in summary} == {"lrp", "occlusion", "lime", "random"}
    assert summary["lrp", "morf"] > summary["random", "morf"] > summary["lrp", "lerf"]
    assert "accuracy over the 3 labelled inputs" in output and "ranking by morf_lerf_area" in output


def test_occlusion_is_the_decision_drop_of_leaving_each_word_out(linear_model, tmp_path):
    pipe, model, rows = linear_model
    out = tmp_path / "out"
    run_eval(model, rows, out, "--methods", "occlusion", "--steps", "2", "--save-maps", "--target", "1")
    for k, (text, _) in enumerate(DOCS):
        spans = word_spans(text)
        full = pipe.decision_function([text])[0]
        expected = [full - pipe.decision_function([without(text, spans, [i])])[0] for i in range(len(spans))]
        saved = np.load(out / "docs" / f"d{k}.occlusion.relevance.npy")
        np.testing.assert_allclose(saved, expected, rtol=1e-6, atol=1e-6)  # saved as float32


def test_lime_equals_lime_text_explainer_for_the_same_samples_and_seed(linear_model, tmp_path):
    from lime.lime_text import LimeTextExplainer
    pipe, model, rows = linear_model
    out = tmp_path / "out"
    run_eval(model, rows, out, "--methods", "lime", "--steps", "2", "--save-maps", "--seed", "7", "--target", "1")
    for k, (text, _) in enumerate(DOCS):
        words = [text[a:b] for a, b in word_spans(text)]
        explainer = LimeTextExplainer(bow=False, split_expression=lambda s, w=words: w, mask_string="",
                                      random_state=7)
        decision = pipe.decision_function
        exp = explainer.explain_instance(text, lambda texts: np.stack([-decision(texts), decision(texts)], 1),
                                         labels=(1,), num_features=len(words), num_samples=1000)
        reference = np.zeros(len(words))
        for index, weight in exp.as_map()[1]:
            reference[index] = weight
        saved = np.load(out / "docs" / f"d{k}.lime.relevance.npy")
        # the same ridge fit with its columns in another order; saved as float32
        np.testing.assert_allclose(saved, reference, rtol=1e-5, atol=1e-6)


def test_random_is_seeded(linear_model, tmp_path):
    _, model, rows = linear_model
    maps = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        run_eval(model, rows, tmp_path / name, "--methods", "random", "--steps", "2", "--save-maps", "--seed", seed)
        maps[name] = np.load(tmp_path / name / "docs" / "d0.random.relevance.npy")
    assert np.array_equal(maps["a"], maps["b"]) and not np.array_equal(maps["a"], maps["c"])


@pytest.mark.parametrize("args,message", [
    (["--perturbation", "flip"], "--perturbation flip: a sklearn-text model's words take delete, unk"),
    (["--protocol", "samek2017"], "--protocol"),
    (["--strip"], "--strip: apply to pictures"),
    (["--patch", "3"], "--patch: apply to pictures"),
])
def test_picture_options_on_text_are_one_line_usage_errors(linear_model, tmp_path, args, message):
    _, model, rows = linear_model
    result = evaluate(rows, "--model", model, "--text-field", "text", "--out", tmp_path / "out", *args)
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unk_on_a_char_analyzer_and_a_bad_label_are_reported(tmp_path):
    pipe = make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 3)), LogisticRegression())
    joblib.dump(pipe.fit(*zip(*TRAIN)), tmp_path / "chars.joblib")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"text": "a great film", "y": 1}) + "\n" + json.dumps({"text": "dull", "y": 5}) + "\n")
    result = evaluate(rows, "--model", tmp_path / "chars.joblib", "--text-field", "text", "--perturbation", "unk",
                      "--out", tmp_path / "out")
    assert result.exit_code == 2 and "has no token outside its vocabulary" in result.output
    result = evaluate(rows, "--model", tmp_path / "chars.joblib", "--text-field", "text", "--label-field", "y",
                      "--methods", "lrp", "--steps", "2", "--out", tmp_path / "out")
    assert result.exit_code == 1 and "label 5: not a class of the model" in result.output
    assert json.loads((tmp_path / "out" / "evaluation.json").read_text())["errors"][0]["input"].endswith("2")


def test_jobs_give_the_same_curves(linear_model, tmp_path):
    _, model, rows = linear_model
    one, _ = run_eval(model, rows, tmp_path / "one", "--methods", "lrp,occlusion", "--steps", "3")
    two, _ = run_eval(model, rows, tmp_path / "two", "--methods", "lrp,occlusion", "--steps", "3", "--jobs", "2")
    key = lambda run: (run["input"], run["method"], run["order"])  # noqa: E731
    assert sorted(map(key, one["runs"])) == sorted(map(key, two["runs"]))
    scores = {key(run): run["scores"] for run in two["runs"]}
    assert all(run["scores"] == scores[key(run)] for run in one["runs"])
