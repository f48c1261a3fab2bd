"""The ONNX text kind (kinds/onnx_text.py, text/vocabulary.py): text -> token ids as a sidecar's [text] section
says, each word the relevance of its id's position, the text outputs; and the bundled LSTM demo."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lrp_cli import kinds
from lrp_cli.cli import main
from lrp_cli.errors import InputError, ModelLoadError, OptionError
from lrp_cli.explanation import Settings
from lrp_cli.kinds.onnx_explain import explain_array
from lrp_cli.kinds.onnx_model import OnnxKind
from lrp_cli.kinds.onnx_text import OnnxTextModel
from lrp_cli.text.vocabulary import DEFAULT_PATTERN, Tokenizer, read_vocabulary

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "sequences" / "bilstm2_legacy.onnx"  # ids [1, 7], 12-row embedding
LSTM_DEMO = ROOT / "models" / "text-lstm.onnx"
WORDS = ["<pad>", "<unk>", "the", "good", "bad", "movie", "not", "very", "plot", "is", "<s>", "</s>"]
VOCAB = {w: i for i, w in enumerate(WORDS)}


def tokenizer(**kw) -> Tokenizer:
    return Tokenizer(VOCAB, re.compile(kw.pop("pattern", DEFAULT_PATTERN)), **kw)


# -- tokenisation -------------------------------------------------------------------------------------------------
def test_tokens_keep_their_offsets_and_look_up_lowercased_words():
    text = "The  movie, is GOOD!"
    found = tokenizer(unknown_id=1).tokens(text)
    assert [text[s:e] for _, s, e, _ in found] == [w for w, *_ in found] == ["The", "movie", ",", "is", "GOOD", "!"]
    assert [i for *_, i in found] == [2, 5, 1, 9, 3, 1]  # "," and "!" are not in the vocabulary: unknown
    assert [i for *_, i in tokenizer(unknown_id=1, lowercase=False).tokens(text)] == [1, 5, 1, 9, 1, 1]


def test_without_an_unknown_id_unknown_words_are_left_out_and_counted():
    enc = tokenizer().encode("the movie , sadly")
    assert enc.ids.tolist() == [[2, 5]]
    assert [(w, p) for w, _, _, p in enc.words] == [("the", 0), ("movie", 1)]
    assert enc.counts == {"unknown": 0, "dropped": 2, "truncated": 0}


def test_a_token_pattern_decides_what_a_word_is():
    enc = tokenizer(pattern=r"[a-z]+", unknown_id=1).encode("the-movie!")
    assert enc.ids.tolist() == [[2, 5]]


@pytest.mark.parametrize("side, ids, positions", [
    ("right", [10, 2, 5, 11, 0, 0, 0], [1, 2]),
    ("left", [0, 0, 0, 10, 2, 5, 11], [4, 5]),
])
def test_length_pads_on_its_side_around_start_and_end_tokens(side, ids, positions):
    enc = tokenizer(start_id=10, end_id=11, length=7, padding_side=side).encode("the movie")
    assert enc.ids.tolist() == [ids]
    assert [p for *_, p in enc.words] == positions
    assert [ids[p] for p in enc.specials] == [10, 11]


def test_length_truncates_the_words_and_keeps_the_end_token():
    enc = tokenizer(unknown_id=1, end_id=11, length=4).encode("the good bad movie is not")
    assert enc.ids.tolist() == [[2, 3, 4, 11]]
    assert enc.counts["truncated"] == 3 and [w for w, *_ in enc.words] == ["the", "good", "bad"]


def test_a_text_without_a_known_token_is_an_input_error():
    with pytest.raises(InputError, match="review.txt: no token"):
        tokenizer().encode("sadly, nothing", "review.txt")


def test_vocabulary_files_by_line_number_or_json(tmp_path):
    lines = tmp_path / "v.txt"
    lines.write_text("<pad>\n\nthe\nmovie\nthe\n", encoding="utf-8")
    assert read_vocabulary(lines) == {"<pad>": 0, "the": 2, "movie": 3}  # a blank line keeps its number
    as_json = tmp_path / "v.json"
    as_json.write_text(json.dumps({"the": 4, "movie": 7}))
    assert read_vocabulary(as_json) == {"the": 4, "movie": 7}
    as_json.write_text(json.dumps({"the": "4"}))
    with pytest.raises(ModelLoadError, match="v.json: a JSON vocabulary must be an object token -> id"):
        read_vocabulary(as_json)


# -- the kind on a 2-layer bidirectional LSTM over token ids ------------------------------------------------------
def text_model(tmp_path: Path, sidecar: str, name: str = "m") -> Path:
    path = tmp_path / f"{name}.onnx"
    shutil.copy(FIXTURE, path)
    (tmp_path / "vocab.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    (tmp_path / f"{name}.lrp.toml").write_text('labels = ["a", "b", "c"]\n[text]\nvocabulary = "vocab.txt"\n'
                                              'unknown_id = 1\npadding_id = 0\n' + sidecar, encoding="utf-8")
    return path


def explain_text(path: Path, text: str, settings: Settings):
    model = kinds.load_model(path)
    item = model.expand([], Settings(kind_options={"text": text}))[0]
    prepared = model.prepare(item, settings)
    return model, prepared, model.explain(prepared, settings)


@pytest.mark.parametrize("method", ["lrp", "gradient", "gradient-x-input"])
def test_each_word_gets_the_relevance_of_its_position_in_the_id_tensor(tmp_path, method):
    path = text_model(tmp_path, "start_id = 10\nend_id = 11\n")
    settings = Settings(method=method, precision="float64", target="pred")
    model, prepared, (expl,) = explain_text(path, "The movie is not GOOD", settings)
    assert isinstance(model, OnnxTextModel)
    ids = prepared[3].ids
    assert ids.tolist() == [[10, 2, 5, 9, 6, 3, 11]]  # the fixed length 7 comes from the model
    # independently: the plain ONNX kind explains the same ids (a copy of the file without a [text] section)
    plain = tmp_path / "plain" / "m.onnx"
    plain.parent.mkdir()
    shutil.copy(FIXTURE, plain)
    (reference,) = explain_array(OnnxKind().load(plain, kinds.LoadOptions()), ids, settings)
    words = expl.extra["text"].tokens
    assert [w["text"] for w in words] == ["The", "movie", "is", "not", "GOOD"]
    # the same computation on the same ids: equal up to float64 rounding
    np.testing.assert_allclose([w["relevance"] for w in words], reference.relevance[0, 1:6], rtol=1e-12, atol=1e-15)


def test_lrp_words_and_what_is_kept_apart_add_up_to_f_x(tmp_path):
    path = text_model(tmp_path, "start_id = 10\nend_id = 11\n")
    settings = Settings(precision="float64")
    model, prepared, (expl,) = explain_text(path, "the good movie", settings)
    doc = model.save(expl, tmp_path / "out", "t", kinds.OutputOptions())
    c = doc["conservation"]
    r_ids = expl.relevance[0]  # [<s>, the, good, movie, </s>, <pad>, <pad>]
    absorbed = expl.propagation.f_x - r_ids.sum()  # what biases and stabilisers kept (independent of the records)
    assert r_ids[5:].tolist() == [0.0, 0.0]  # padding gets none
    # the intercept is the absorbed share (from the layer records) plus the start/end tokens; tolerance: float64
    # sums over a few hundred records
    assert c["intercept"] == pytest.approx(absorbed + r_ids[0] + r_ids[4], rel=1e-9, abs=1e-12)
    assert c["tokens_sum"] == pytest.approx(r_ids[1:4].sum(), rel=1e-12)
    assert c["tokens_sum"] + c["intercept"] == pytest.approx(doc["f_x"], rel=1e-9, abs=1e-12)
    assert abs(c["residual"]) < 1e-9 * max(1.0, abs(doc["f_x"]))
    assert any("start/end tokens" in n for n in doc["notes"])


def test_json_html_and_png_are_written_through_the_text_renderer(tmp_path):
    path = text_model(tmp_path, "")
    out = tmp_path / "out"
    (tmp_path / "review.txt").write_text("the plot is not very good", encoding="utf-8")
    result = CliRunner().invoke(main, ["explain", str(tmp_path / "review.txt"), "--model", str(path), "--out",
                                       str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "review.json").read_text())
    assert doc["schema"] == "lrp-cli/text-explanation/1" and doc["model"]["kind"] == "onnx-text"
    assert [t["text"] for t in doc["tokens"]] == "the plot is not very good".split()
    assert (out / "review.html").read_text().count('class="t"') == 6
    assert (out / "review.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rows_of_a_jsonl_file_are_texts(tmp_path):
    path = text_model(tmp_path, "")
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"id": "r1", "review": "good movie"}\n{"id": "r2", "review": "bad plot"}\n')
    model = kinds.load_model(path)
    items = model.expand([str(rows)], Settings(kind_options={"text_field": "review", "id_field": "id"}))
    assert [i.stem for i in items] == ["rows/r1", "rows/r2"]
    assert model.prepare(items[1], Settings())[3].ids.tolist() == [[4, 8, 0, 0, 0, 0, 0]]


@pytest.mark.parametrize("line, key", [
    ("length = 0", "length"), ('token_pattern = "("', "token_pattern"), ("start_id = 1.5", "start_id"),
    ('padding_side = "middle"', "padding_side"), ("lowercase = 1", "lowercase"), ("colour = 3", "'colour'"),
])
def test_sidecar_errors_are_one_line_naming_the_sidecar_and_key(tmp_path, line, key):
    path = text_model(tmp_path, line + "\n")
    result = CliRunner().invoke(main, ["explain", "x.txt", "--model", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 3
    message = result.output.strip()
    assert "\n" not in message and str(tmp_path / "m.lrp.toml") in message and key in message


def test_a_length_the_model_does_not_read_and_a_missing_vocabulary_are_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match=r"m.lrp.toml: \[text\] length = 9, but the model reads 7 ids"):
        kinds.load_model(text_model(tmp_path, "length = 9\n"))
    text_model(tmp_path, "length = 7\n")
    (tmp_path / "vocab.txt").unlink()
    with pytest.raises(ModelLoadError, match="vocab.txt: cannot read the vocabulary"):
        kinds.load_model(tmp_path / "m.onnx")


def test_methods_without_a_meaning_on_ids_and_image_options_are_usage_errors(tmp_path):
    model = kinds.load_model(text_model(tmp_path, ""))
    with pytest.raises(OptionError, match="--method occlusion: a text model reading token ids"):
        model.check_settings(Settings(method="occlusion"))
    with pytest.raises(OptionError, match="--size: not an option of text models"):
        model.check_settings(Settings(preprocess={"size": (3, 3), "preset": None}))


def test_cli_text_rows_and_print(tmp_path):
    path = text_model(tmp_path, "")
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"id": "r1", "review": "good movie"}\n')
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["explain", "--text", "the plot is bad", str(rows), "--text-field", "review",
                                       "--id-field", "id", "--model", str(path), "--out", str(out), "--print",
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (out / "text.json").is_file() and (out / "rows" / "r1.png").is_file()
    assert "\nthe plot is bad\nm.onnx: target" in result.output  # --print: the words (colours off without a tty)


# -- the bundled demo ---------------------------------------------------------------------------------------------
def test_the_lstm_demo_reads_a_review_of_any_length_and_finds_the_sentiment_words():
    model = kinds.load_model(LSTM_DEMO)
    settings = Settings(target="positive")
    words = {}
    for text in ("Overall a reliable kettle.", "The lid is flimsy and the switch feels cheap, sadly."):
        item = model.expand([], Settings(kind_options={"text": text}))[0]
        (expl,) = model.explain(model.prepare(item, settings), settings)
        words.update({t["text"]: t["relevance"] for t in expl.extra["text"].tokens})
    assert words["reliable"] == max(words.values())  # the positive word carries the most positive evidence
    assert min(words, key=words.get) in ("flimsy", "cheap")


def test_a_text_sidecar_on_a_model_that_does_not_read_ids_is_a_load_error(tmp_path):
    path = tmp_path / "eeg.onnx"
    shutil.copy(ROOT / "tests" / "fixtures" / "sequences" / "eeg_legacy.onnx", path)
    (tmp_path / "v.txt").write_text("a\nb\n")
    (tmp_path / "eeg.lrp.toml").write_text('[text]\nvocabulary = "v.txt"\n')
    with pytest.raises(ModelLoadError, match=r"eeg.onnx: a \[text\] model reads token ids \[N, T\]; its input is "
                                             r"\[1, 4, 16\]"):
        kinds.load_model(path)


def test_texts_explained_in_one_batch_get_what_they_get_alone(tmp_path):
    path = text_model(tmp_path, "")
    texts = ["the good movie", "bad plot", "the plot is not very good"]
    for k, text in enumerate(texts):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"t{k}.txt").write_text(text)
    words = {}
    for size in ("1", "3"):
        out = tmp_path / f"out{size}"
        result = CliRunner().invoke(main, ["explain", str(tmp_path / "in"), "--model", str(path), "--out", str(out),
                                           "--batch-size", size, "--no-progress"])
        assert result.exit_code == 0, result.output
        words[size] = [[t["relevance"] for t in json.loads((out / f"t{k}.json").read_text())["tokens"]]
                       for k in range(3)]
    assert [len(w) for w in words["3"]] == [3, 2, 6]
    for alone, batched in zip(words["1"], words["3"]):  # float32, the same products in another order
        np.testing.assert_allclose(batched, alone, rtol=1e-4, atol=1e-6)
