"""`lrp explain` on scikit-learn text pipelines, through the command line: .txt files, folders, globs, --text, stdin,
.jsonl/.csv rows, --pair, --vectorizer, --print, --target, colours, batches (--jobs, --skip-existing, --html,
--scheduler), and the one-line usage (exit 2) and model (exit 3) errors."""

import json

import joblib
import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.decomposition import PCA
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC, LinearSVC

from lrp_cli.cli import main
from lrp_cli.render import colorize
from test_distributed import cluster, local_two  # noqa: F401  (the shared LocalCluster fixtures)

RUN = CliRunner()
TEXTS = ["a good film with great actors", "a bad plot and dull actors", "great fun, good story",
         "dull, bad, boring film", "good acting but a bad ending", "great film", "bad film", "boring story"]
LABELS = ["pos", "neg", "pos", "neg", "neg", "pos", "neg", "neg"]
CONSERVATION = 1e-9  # float64 sums of a few dozen terms: rounding only (issue 19's bound for linear models)


def explain(*args, **kwargs):
    return RUN.invoke(main, ["explain", *map(str, args)], **kwargs)


@pytest.fixture(scope="module")
def pipe():
    return make_pipeline(TfidfVectorizer(), LinearSVC()).fit(TEXTS, LABELS)


@pytest.fixture(scope="module")
def model_path(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "sentiment.joblib"
    joblib.dump(pipe, path)
    return path


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a good film, great actors", encoding="utf-8")
    (folder / "sub" / "b.txt").write_text("dull and bad", encoding="utf-8")
    (folder / "skip.md").write_text("not a text input", encoding="utf-8")
    return folder


def check_document(doc, pipe, text):
    """The JSON's decision value is the pipeline's own, its tokens are the text's, and they add up."""
    assert doc["schema"] == "lrp-cli/text-explanation/1"
    d = float(pipe.decision_function([text])[0])
    assert doc["f_x"] == pytest.approx(d if doc["target"]["label"] == "pos" else -d, abs=1e-12)
    assert all(text[t["start"]:t["end"]] == t["text"] for t in doc["tokens"])
    total = sum(t["relevance"] for t in doc["tokens"]) + doc["intercept"]
    assert abs(total - doc["f_x"]) < CONSERVATION


def test_folder_writes_json_html_png_per_text_and_the_summary(pipe, model_path, docs, tmp_path):
    out = tmp_path / "out"
    result = explain(docs, "--model", model_path, "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "a.html", "a.json", "a.png", "sub", "sub/b.html", "sub/b.json", "sub/b.png", "summary.csv", "summary.json"]
    for stem, text in (("a", "a good film, great actors"), ("sub/b", "dull and bad")):
        check_document(json.loads((out / f"{stem}.json").read_text()), pipe, text)
    summary = json.loads((out / "summary.json").read_text())
    rows = {row["input"]: row for row in summary["results"]}
    a = rows[str(docs / "a.txt")]
    assert a["status"] == "ok" and a["label"] == pipe.predict(["a good film, great actors"])[0]
    assert a["score"] == pytest.approx(abs(pipe.decision_function(["a good film, great actors"])[0]), abs=1e-12)
    assert a["heatmap"] == str(out / "a.png")
    assert f"{docs / 'a.txt'}: target" in result.output and "score" in result.output
    assert (out / "summary.csv").read_text().splitlines()[0].startswith("input,status,target,label,score")


def test_literal_text_needs_no_input_and_stdin_is_a_dash(pipe, model_path, tmp_path):
    result = explain("--text", "a dull film", "--model", model_path, "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    check_document(json.loads((tmp_path / "o" / "text.json").read_text()), pipe, "a dull film")
    result = explain("-", "--model", model_path, "--out", tmp_path / "o", input="great actors\n")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "o" / "stdin.json").read_text())
    check_document(doc, pipe, "great actors\n")
    assert doc["input"]["kind"] == "stdin"


def test_save_raw_writes_the_tokens_relevance_beside_the_json(model_path, tmp_path):
    result = explain("--text", "a dull film, great actors", "--model", model_path, "--out", tmp_path, "--save-raw")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "text.json").read_text())
    raw = np.load(tmp_path / "text.relevance.npy")
    assert raw.dtype == np.float32 and doc["outputs"]["raw"] == str(tmp_path / "text.relevance.npy")
    np.testing.assert_allclose(raw, [t["relevance"] for t in doc["tokens"]], rtol=1e-6, atol=1e-12)  # float32


def test_no_input_and_no_text_is_a_usage_error(model_path, tmp_path):
    result = explain("--model", model_path, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "--text" in result.output and not (tmp_path / "o").exists()


def test_rows_of_jsonl_and_csv_with_a_bad_row_that_fails_alone(pipe, model_path, tmp_path):
    (tmp_path / "reviews.jsonl").write_text('{"id": "r1", "body": "great film"}\n{"id": "r2"}\n'
                                            '{"id": "r3", "body": "bad plot"}\n', encoding="utf-8")
    (tmp_path / "more.csv").write_text("body,stars\nboring story,1\n", encoding="utf-8")
    out = tmp_path / "out"
    result = explain(tmp_path / "reviews.jsonl", tmp_path / "more.csv", "--text-field", "body", "--id-field", "id",
                     "--model", model_path, "--out", out)
    assert result.exit_code == 1 and "1 of 4 inputs failed" in result.output
    assert "row 2 has no text field 'body'" in result.output
    check_document(json.loads((out / "reviews" / "r1.json").read_text()), pipe, "great film")
    check_document(json.loads((out / "reviews" / "r3.json").read_text()), pipe, "bad plot")
    doc = json.loads((out / "more" / "1.json").read_text())  # no id field in the csv: the row number
    check_document(doc, pipe, "boring story")
    assert doc["input"]["row"] == 1
    statuses = [row["status"] for row in json.loads((out / "summary.json").read_text())["results"]]
    assert statuses == ["ok", "error", "ok", "ok"]


def test_a_table_without_text_field_is_a_usage_error(model_path, tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"body": "great"}\n')
    result = explain(tmp_path / "rows.jsonl", "--model", model_path, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "--text-field" in result.output and not (tmp_path / "o").exists()


def test_target_label_and_index_and_the_usage_errors_of_targets(pipe, model_path, tmp_path):
    for target in ("neg", "0"):
        result = explain("--text", "great film", "--target", target, "--model", model_path, "--out", tmp_path / target)
        assert result.exit_code == 0, result.output
        doc = json.loads((tmp_path / target / "text.json").read_text())
        assert doc["target"] == {"index": 0, "label": "neg"}
        assert doc["f_x"] == pytest.approx(-pipe.decision_function(["great film"])[0], abs=1e-12)
        assert doc["prediction"]["score"] == pytest.approx(pipe.decision_function(["great film"])[0], abs=1e-12)
    for target in ("top:2", "meh", "5"):
        result = explain("--text", "x", "--target", target, "--model", model_path, "--out", tmp_path / "bad")
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("option", [["--method", "gradient"], ["--composite", "epsilon-plus-flat"],
                                    ["--rule", "epsilon"], ["--preset", "imagenet"], ["--tile", "10"],
                                    ["--precision", "float64"], ["--labels", "labels.txt"], ["--patch", "3"],
                                    ["--pair", "pos,neg"]])
def test_options_of_other_kinds_are_one_line_usage_errors(model_path, tmp_path, option):
    result = explain("--text", "great", *option, "--model", model_path, "--out", tmp_path / "o")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and option[0] in lines[0]
    assert not (tmp_path / "o").exists()


def test_text_options_on_an_image_model_are_usage_errors(tiny_cnn_path, rgb_image, tmp_path):
    for option in (["--text", "hello"], ["--text-field", "body"], ["--print"]):
        result = explain(rgb_image, *option, "--model", tiny_cnn_path, "--out", tmp_path / "o")
        assert result.exit_code == 2 and option[0] in result.output and "onnx" in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_an_unsupported_step_is_exit_3_naming_it_and_nothing_written(tmp_path):
    path = tmp_path / "pca.joblib"
    joblib.dump(make_pipeline(CountVectorizer().fit(TEXTS), PCA(1), LogisticRegression().fit(np.eye(4), LABELS[:4])),
                path)
    result = explain("--text", "great", "--model", path, "--out", tmp_path / "o")
    assert result.exit_code == 3
    (line,) = result.output.strip().splitlines()
    assert "step 2 (pca): PCA is not supported here; supported steps: TfidfTransformer" in line
    assert not (tmp_path / "o").exists()


def test_one_vs_one_svm_needs_a_pair_and_explains_its_winner(tmp_path):
    texts = TEXTS + ["an average film, fine", "fine story, average actors", "average"]
    labels = LABELS + ["mid", "mid", "mid"]
    svc = make_pipeline(TfidfVectorizer(), SVC(kernel="linear", decision_function_shape="ovo")).fit(texts, labels)
    path = tmp_path / "ovo.joblib"
    joblib.dump(svc, path)
    result = explain("--text", "a fine film", "--model", path, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "--pair" in result.output
    result = explain("--text", "a fine film", "--pair", "mid,pos", "--model", path, "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "o" / "text.json").read_text())
    assert doc["target"]["pair"] == ["mid", "pos"] and doc["target"]["label"] in ("mid", "pos")
    # classes_ sorted: mid, neg, pos; ovo column 1 is the (mid, pos) decision, positive for mid
    d = float(svc.decision_function(["a fine film"])[0, 1])
    assert doc["f_x"] == pytest.approx(d if doc["target"]["label"] == "mid" else -d, abs=1e-9)
    assert doc["f_x"] >= 0  # the winner of the pair


def test_bare_classifier_with_vectorizer_file(pipe, tmp_path):
    vec, clf = pipe.steps[0][1], pipe.steps[1][1]
    joblib.dump(vec, tmp_path / "vec.joblib")
    joblib.dump(clf, tmp_path / "clf.joblib")
    result = explain("--text", "great film", "--model", tmp_path / "clf.joblib", "--out", tmp_path / "o")
    assert result.exit_code == 3 and "--vectorizer" in result.output
    result = explain("--text", "great film", "--model", tmp_path / "clf.joblib", "--vectorizer",
                     tmp_path / "vec.joblib", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    check_document(json.loads((tmp_path / "o" / "text.json").read_text()), pipe, "great film")


def test_print_shows_each_token_on_its_colour(model_path, tmp_path):
    result = explain("--text", "great film", "--print", "--cmap", "jet", "--model", model_path, "--out",
                     tmp_path / "o", color=True)  # click keeps the colours for a terminal only
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "o" / "text.json").read_text())
    r = np.array([t["relevance"] for t in doc["tokens"]])
    for token, rgb in zip(doc["tokens"], colorize(r / np.abs(r).max(), "jet")):
        assert f"\x1b[48;2;{rgb[0]};{rgb[1]};{rgb[2]}m" in result.output and token["text"] in result.output


def html_colours(path):
    import re
    return re.findall(r'background:rgb\((\d+), (\d+), (\d+)\)', path.read_text())


def test_cmap_default_is_bwr_and_global_normalization_shares_one_divisor(model_path, tmp_path):
    (tmp_path / "a.txt").write_text("great great great film", encoding="utf-8")
    (tmp_path / "b.txt").write_text("film", encoding="utf-8")
    out = tmp_path / "own"
    assert explain(tmp_path / "a.txt", tmp_path / "b.txt", "--model", model_path, "--out", out).exit_code == 0
    shared = tmp_path / "shared"
    result = explain(tmp_path / "a.txt", tmp_path / "b.txt", "--model", model_path, "--out", shared, "--normalize",
                     "global")
    assert result.exit_code == 0, result.output
    docs = {s: json.loads((out / f"{s}.json").read_text()) for s in "ab"}
    divisor = max(abs(t["relevance"]) for d in docs.values() for t in d["tokens"])
    for stem, doc in docs.items():
        r = np.array([t["relevance"] for t in doc["tokens"]])
        own = [tuple(map(int, c)) for c in colorize(r / np.abs(r).max(), "bwr")]
        batch = [tuple(map(int, c)) for c in colorize(r / divisor, "bwr")]
        assert [tuple(map(int, c)) for c in html_colours(out / f"{stem}.html")] == own
        assert [tuple(map(int, c)) for c in html_colours(shared / f"{stem}.html")] == batch
    assert html_colours(shared / "b.html") != html_colours(out / "b.html")  # b's one token is its own max


def test_jobs_skip_existing_and_html_report(model_path, docs, tmp_path):
    out = tmp_path / "out"
    result = explain(docs, "--model", model_path, "--out", out, "--jobs", "2", "--html")
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    assert '"text"' in page and "good film" in page and '"a.png"' in page and "input.png" not in page
    first = (out / "a.json").read_bytes()
    (out / "sub" / "b.json").unlink()
    result = explain(docs, "--model", model_path, "--out", out, "--skip-existing", "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert (out / "sub" / "b.json").exists() and (out / "a.json").read_bytes() == first
    statuses = {r["input"]: r["status"] for r in json.loads((out / "summary.json").read_text())["results"]}
    assert statuses == {str(docs / "a.txt"): "skipped", str(docs / "sub" / "b.txt"): "ok"}


@pytest.mark.slow
@pytest.mark.usefixtures("local_two")
def test_rows_on_a_dask_cluster_give_the_local_files(model_path, tmp_path):
    rows = "".join(json.dumps({"id": f"r{i}", "body": text}) + "\n" for i, text in enumerate(TEXTS))
    (tmp_path / "rows.jsonl").write_text(rows + '{"id": "bad"}\n', encoding="utf-8")
    runs = {}
    for name, extra in (("local", []), ("cluster", ["--scheduler", "local:2"])):
        out = tmp_path / name
        result = explain(tmp_path / "rows.jsonl", "--text-field", "body", "--id-field", "id", "--model", model_path,
                         "--out", out, *extra)
        assert result.exit_code == 1 and "1 of 9 inputs failed" in result.output, result.output
        runs[name] = {p.name: p.read_bytes().replace(str(out).encode(), b"OUT") for p in (out / "rows").iterdir()}
    assert len(runs["local"]) == 3 * len(TEXTS) and runs["cluster"] == runs["local"]



def test_text_formats_choose_the_files_and_refuse_others(pipe, model_path, tmp_path):
    result = explain("--text", "great film", "--text-formats", "json", "--model", model_path, "--out", tmp_path / "j")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "j").iterdir()] == ["text.json"]
    check_document(json.loads((tmp_path / "j" / "text.json").read_text()), pipe, "great film")
    result = explain("--text", "great", "--text-formats", "json,pdf", "--model", model_path, "--out", tmp_path / "p")
    assert result.exit_code == 2 and "--text-formats: pdf" in result.output and not (tmp_path / "p").exists()
