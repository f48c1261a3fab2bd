"""`lrp evaluate` on ONNX text models (kinds/onnx_text.py, text/units.py id_copies): word-deletion curves recomputed
by brute force (each perturbed id sequence built by hand and run through onnxruntime alone), occlusion by leaving
each word out, accuracy from --label-field, the id copies of delete and unk, and the usage errors. Two models: an
LSTM over token ids built here with onnx.helper (symbolic token axis, batch fixed to 1 as the exporters write it)
and the committed 2-layer bidirectional LSTM fixture (fixed length 7, with start/end tokens and padding)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from lrp_cli import kinds
from lrp_cli.cli import main
from lrp_cli.explanation import Settings
from lrp_cli.text.units import id_copies
from lrp_cli.text.vocabulary import Encoded, Tokenizer

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "sequences" / "bilstm2_legacy.onnx"  # ids [1, 7], 12-row embedding
WORDS = ["<pad>", "<unk>", "the", "good", "bad", "movie", "not", "very", "plot", "is", "<s>", "</s>"]
VOCAB = {w: i for i, w in enumerate(WORDS)}
# space-separated known words (at most 5: the fixture reads 7 ids with <s> and </s>); labels a, b or c
DOCS = [("the good movie is not", "a"), ("very bad plot", "b"), ("the movie is very good", "c"),
        ("not bad", "a"), ("good plot is bad", "b")]
RUN = CliRunner()
#: onnxruntime float32: lrp evaluate scores the copies in batches, the brute force one sequence a run; MLAS may sum
#: a batch's products in another order, a few float32 ulps (1.2e-7) per op over at most 7 LSTM steps of width <= 8,
#: so 1e-5 of the scores' scale bounds the difference with a wide margin and is far below any deleted word's effect.
TOL = 1e-5


def symbolic_lstm(path: Path, seed: int = 0, emb: int = 4, hidden: int = 6, classes: int = 3) -> Path:
    """Writes ids [1, T] -> Gather -> Transpose -> LSTM -> last state -> Gemm -> logits [1, 3] (T symbolic)."""
    rng = np.random.default_rng(seed)
    weights = {"table": rng.normal(size=(len(WORDS), emb)), "W": rng.normal(scale=0.6, size=(1, 4 * hidden, emb)),
               "R": rng.normal(scale=0.4, size=(1, 4 * hidden, hidden)),
               "B": rng.normal(scale=0.2, size=(1, 8 * hidden)),
               "dense": rng.normal(size=(classes, hidden)), "bias": rng.normal(scale=0.1, size=classes),
               "axes": np.asarray([0], dtype=np.int64)}
    inits = [numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np.float32), k) for k, v in weights.items()]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("Transpose", ["e"], ["x"], perm=[1, 0, 2]),
             helper.make_node("LSTM", ["x", "W", "R", "B"], ["", "h"], hidden_size=hidden),
             helper.make_node("Squeeze", ["h", "axes"], ["last"]),
             helper.make_node("Gemm", ["last", "dense", "bias"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "lstm", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "T"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def text_model(tmp_path: Path, kind: str, unknown: bool = True) -> Path:
    """Writes the model (symbolic: the LSTM above; fixed: the fixture), its vocabulary and its [text] sidecar."""
    path = tmp_path / f"{kind}.onnx"
    symbolic_lstm(path) if kind == "symbolic" else shutil.copy(FIXTURE, path)
    (tmp_path / "vocab.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    extra = "start_id = 10\nend_id = 11\n" if kind == "fixed" else ""
    (tmp_path / f"{kind}.lrp.toml").write_text(
        'labels = ["a", "b", "c"]\n[text]\nvocabulary = "vocab.txt"\n' + ("unknown_id = 1\n" if unknown else "")
        + extra, encoding="utf-8")
    return path


def rows_file(tmp_path: Path, docs=DOCS) -> Path:
    rows = tmp_path / "docs.jsonl"
    rows.write_text("".join(json.dumps({"id": f"d{k}", "text": t, "y": y}) + "\n" for k, (t, y) in enumerate(docs)))
    return rows


def evaluate(model: Path, rows: Path, out: Path, *extra):
    return RUN.invoke(main, ["evaluate", str(rows), "--model", str(model), "--text-field", "text", "--id-field", "id",
                             "--out", str(out), *map(str, extra)])


def run_eval(model: Path, rows: Path, out: Path, *extra) -> dict:
    result = evaluate(model, rows, out, *extra)
    assert result.exit_code == 0, result.output
    return json.loads((out / "evaluation.json").read_text())


def brute_ids(kind: str, words: list[str], fill: int | None = None, removed=()) -> np.ndarray:
    """The [1, T] ids of the words with those at `removed` deleted (fill None) or made `fill`, built by hand."""
    ids = [fill if k in removed else VOCAB[w] for k, w in enumerate(words)]
    ids = [i for i in ids if i is not None]
    if kind == "fixed":
        ids = ([10] + ids + [11] + [0] * 7)[:7]
    return np.asarray([ids or [0]], dtype=np.int64)


def brute_scores(session: ort.InferenceSession, sequences: list[np.ndarray]) -> np.ndarray:
    """One onnxruntime run per sequence (the model file as written, batch 1)."""
    name = session.get_inputs()[0].name
    return np.stack([session.run(None, {name: ids})[0][0] for ids in sequences]).astype(np.float64)


@pytest.mark.parametrize("kind", ["symbolic", "fixed"])
@pytest.mark.parametrize("perturbation", ["delete", "unk"])
def test_deletion_curves_equal_onnxruntime_on_each_perturbed_id_sequence(tmp_path, kind, perturbation):
    model = text_model(tmp_path, kind)
    out = tmp_path / "out"
    doc = run_eval(model, rows_file(tmp_path), out, "--methods", "lrp,gradient-x-input,random", "--steps", "3",
                   "--label-field", "y", "--perturbation", perturbation, "--save-maps")
    session = ort.InferenceSession(str(model))
    keys = {"morf": lambda r: -r, "lerf": np.abs}  # stable argsort: ties keep reading order
    fill = None if perturbation == "delete" else 1
    assert len(doc["runs"]) == 3 * 2 * len(DOCS) and doc["settings"]["units"] == "word"
    for run in doc["runs"]:
        k = int(run["input"].rsplit("d", 1)[1])
        text, label = DOCS[k]
        words = text.split()
        relevance = np.load(out / "docs" / f"d{k}.{run['method']}.relevance.npy").astype(np.float64)
        order = np.argsort(keys[run["order"]](relevance), kind="stable")
        counts = np.arange(4) * len(words) // 3
        full = brute_scores(session, [brute_ids(kind, words)])[0]
        assert run["target"] == int(np.argmax(full))  # --target pred: the class of the whole text
        scores = brute_scores(session, [brute_ids(kind, words, fill, set(order[:c])) for c in counts])
        scale = np.abs(scores).max()
        np.testing.assert_allclose(run["scores"], scores[:, run["target"]], rtol=0, atol=TOL * scale)
        # the predicted class per step (a margin well above TOL: random weights leave no near-ties here)
        assert run["predicted"] == scores.argmax(axis=1).tolist()
        assert run["correct"] == [int(p == "abc".index(label)) for p in scores.argmax(axis=1)]
    for entry in doc["summary"]:
        curves = [r["correct"] for r in doc["runs"] if (r["method"], r["order"]) == (entry["method"], entry["order"])]
        assert entry["accuracy"]["n"] == len(DOCS)
        assert entry["accuracy"]["curve"] == pytest.approx(np.mean(curves, axis=0).tolist())


@pytest.mark.parametrize("kind", ["symbolic", "fixed"])
def test_occlusion_is_the_score_drop_of_leaving_each_word_out(tmp_path, kind):
    model = text_model(tmp_path, kind)
    out = tmp_path / "out"
    run_eval(model, rows_file(tmp_path), out, "--methods", "occlusion", "--steps", "2", "--save-maps",
             "--target", "b")
    session = ort.InferenceSession(str(model))
    for k, (text, _) in enumerate(DOCS):
        words = text.split()
        scores = brute_scores(session, [brute_ids(kind, words)] + [brute_ids(kind, words, None, {i})
                                                                  for i in range(len(words))])[:, 1]
        saved = np.load(out / "docs" / f"d{k}.occlusion.relevance.npy")
        # the difference of two float32 scores, saved as float32: TOL of the scores' scale
        np.testing.assert_allclose(saved, scores[0] - scores[1:], rtol=0, atol=TOL * np.abs(scores).max())


def test_the_kinds_own_relevance_is_its_explanation_of_the_target(tmp_path):
    model_path = text_model(tmp_path, "symbolic")
    out = tmp_path / "out"
    run_eval(model_path, rows_file(tmp_path), out, "--methods", "lrp,gradient", "--steps", "2", "--save-maps",
             "--target", "c")
    model = kinds.load_model(model_path)
    for method in ("lrp", "gradient"):
        settings = Settings(method=method, target="c")
        for k, (text, _) in enumerate(DOCS):
            item = model.expand([], Settings(kind_options={"text": text}))[0]
            (expl,) = model.explain(model.prepare(item, settings), settings)
            expected = [t["relevance"] for t in expl.extra["text"].tokens]
            saved = np.load(out / "docs" / f"d{k}.{method}.relevance.npy")
            np.testing.assert_allclose(saved, expected, rtol=1e-6, atol=1e-7)  # the same float32 run, saved as float32


def test_id_copies_remove_or_replace_words_keep_specials_and_pad_again():
    tok = Tokenizer(VOCAB, re.compile(r"\w+"), unknown_id=1, start_id=10, end_id=11, length=7, padding_side="left")
    enc = tok.encode("the good movie")  # [0, 0, <s>, the, good, movie, </s>]
    assert enc.ids.tolist() == [[0, 0, 10, 2, 3, 5, 11]]
    keep = np.asarray([[True, True, True], [True, False, True], [False, False, False]])
    (length, (rows, ids)), = id_copies(enc, tok, keep, None).items()
    assert length == 7 and ids[np.argsort(rows)].tolist() == [[0, 0, 10, 2, 3, 5, 11], [0, 0, 0, 10, 2, 5, 11],
                                                               [0, 0, 0, 0, 0, 10, 11]]
    (length, (rows, ids)), = id_copies(enc, tok, keep, 1).items()
    assert ids[np.argsort(rows)].tolist() == [[0, 0, 10, 2, 3, 5, 11], [0, 0, 10, 2, 1, 5, 11],
                                              [0, 0, 10, 1, 1, 1, 11]]
    # a model of any length: one group per length, in the rows' order within it; nothing left reads as one padding id
    free = Tokenizer(VOCAB, re.compile(r"\w+"), padding_id=0)
    enc = Encoded(np.asarray([[2, 3, 5]]), [("the", 0, 3, 0), ("good", 4, 8, 1), ("movie", 9, 14, 2)], [], {})
    groups = id_copies(enc, free, np.asarray([[True, False, True], [False, False, False], [False, True, True]]), None)
    assert {n: (r.tolist(), i.tolist()) for n, (r, i) in groups.items()} == {1: ([1], [[0]]),
                                                                              2: ([0, 2], [[2, 5], [3, 5]])}


def test_copies_of_one_length_score_in_one_batch(tmp_path):
    model = kinds.load_model(text_model(tmp_path, "symbolic"))
    item = model.expand([], Settings(kind_options={"text": "the good movie is not"}))[0]
    unit = model.unit_input(item, Settings(), "delete")
    keep = np.ones((4, 5), dtype=bool)
    keep[np.arange(4), np.arange(4)] = False
    scores = unit.score(keep)
    assert model.onnx.bind((1, 4)).scores_batched  # the batch rewrite passed its check: one run for the four
    session = ort.InferenceSession(str(model.path))
    expected = brute_scores(session, [brute_ids("symbolic", "the good movie is not".split(), None, {i})
                                      for i in range(4)])
    np.testing.assert_allclose(scores, expected, rtol=0, atol=TOL * np.abs(expected).max())


def test_unk_without_an_unknown_id_top_k_and_a_bad_label_are_reported(tmp_path):
    rows = rows_file(tmp_path, [("the good movie", "a"), ("very bad plot", "z")])
    model = text_model(tmp_path, "symbolic", unknown=False)
    result = evaluate(model, rows, tmp_path / "out", "--perturbation", "unk")
    assert result.exit_code == 2 and "has no [text] unknown_id" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    result = evaluate(model, rows, tmp_path / "out", "--target", "top:2", "--methods", "random")
    assert result.exit_code == 2 and "--target top:2: lrp evaluate follows one class" in result.output
    result = evaluate(model, rows, tmp_path / "out", "--label-field", "y", "--methods", "lrp", "--steps", "2")
    assert result.exit_code == 1 and "label 'z': not a class of the model (classes: a, b, c)" in result.output
    doc = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert doc["errors"][0]["input"].endswith("d1") and {r["input"] for r in doc["runs"]} == {doc["runs"][0]["input"]}


def test_lrp_check_measures_word_regions_on_the_words_read(tmp_path):
    model_path = text_model(tmp_path, "symbolic")
    text = "the good movie is not bad"
    (tmp_path / "review.txt").write_text(text, encoding="utf-8")
    (tmp_path / "spec.toml").write_text(f'model = "{model_path.name}"\n[[case]]\nname = "good"\n'
                                        'inputs = ["review.txt"]\ntarget = "a"\n  [[case.region]]\n'
                                        '  name = "good"\n  words = ["good", "bad"]\n  min_positive_share = 0.0\n')
    result = RUN.invoke(main, ["check", str(tmp_path / "spec.toml")])
    assert result.exit_code == 0, result.output
    model = kinds.load_model(model_path)
    settings = Settings(target="a")
    (expl,) = model.explain(model.prepare(model.expand([], Settings(kind_options={"text": text}))[0], settings),
                            settings)
    positive = np.maximum([t["relevance"] for t in expl.extra["text"].tokens], 0.0)  # the, good, ..., bad
    share = float(re.search(r"share\[good\]=([0-9.]+)", result.output).group(1))
    assert share == pytest.approx((positive[1] + positive[5]) / positive.sum(), abs=1e-3)  # printed to 3 decimals
