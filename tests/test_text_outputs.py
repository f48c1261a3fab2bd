"""Text outputs (JSON, HTML, PNG, ANSI), text inputs, and the one-line errors of model loading."""

from __future__ import annotations

import hashlib
import io
import json

import joblib
import numpy as np
import pytest
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from lrp_cli.errors import InputError, ModelLoadError, OptionError
from lrp_cli.render import colorize
from lrp_cli.text import inputs, render
from lrp_cli.text.document import to_json
from lrp_cli.text.explain import explain_text
from lrp_cli.text.pipeline import load_text_model

TEXTS = ["good film", "bad film", "great plot", "awful plot"]
LABELS = ["pos", "neg", "pos", "neg"]


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "m.joblib"
    joblib.dump(make_pipeline(TfidfVectorizer(), LinearSVC()).fit(TEXTS, LABELS), path)
    return load_text_model(path)


def test_json_document_has_the_schema_offsets_and_conservation(model, tmp_path):
    text = "A good film, a <b>bad</b> plot."
    ex = explain_text(model, text, target="pos", source={"path": "r.txt"})
    doc = render.write_outputs(ex, tmp_path / "out", "sub/r")
    on_disk = json.loads((tmp_path / "out" / "sub" / "r.json").read_text())
    assert on_disk == doc
    assert doc["schema"] == "lrp-cli/text-explanation/1"
    assert doc["input"]["sha256"] == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert doc["target"] == {"index": 1, "label": "pos"} and doc["model"]["sha256"] == model.sha256
    assert [(t["text"], text[t["start"]:t["end"]]) for t in doc["tokens"]] == [(t["text"], t["text"])
                                                                               for t in doc["tokens"]]
    assert abs(doc["conservation"]["residual"]) < 1e-12
    assert sorted(p.name for p in (tmp_path / "out" / "sub").iterdir()) == ["r.html", "r.json", "r.png"]
    render.write_outputs(ex, tmp_path / "json-only", "r", formats=())
    assert [p.name for p in (tmp_path / "json-only").iterdir()] == ["r.json"]


def test_html_escapes_text_and_colours_tokens_like_the_image_heatmaps(model):
    ex = explain_text(model, "good <b>bad</b> film", target="pos")
    page = render.html_page(ex, cmap="jet")
    assert "&lt;b&gt;" in page and "<b>bad" not in page
    r = ex.relevance
    expected = colorize(r / np.abs(r).max(), "jet")
    for rgb, tok in zip(expected, ex.tokens):
        assert f'background:rgb{tuple(int(c) for c in rgb)}' in page
        assert f'title="{tok["relevance"]:+.6g}"' in page


def test_png_is_a_wrapped_text_heatmap(model):
    ex = explain_text(model, " ".join(["good bad film"] * 60), target="pos")
    img = np.asarray(render.png_image(ex).convert("RGB"))
    assert img.shape[1] == render.PNG_WIDTH * render.PNG_SCALE and img.shape[0] > 10 * render.LINE_HEIGHT
    top = colorize(np.array([np.sign(ex.relevance[np.argmax(np.abs(ex.relevance))])]), render.DEFAULT_CMAP)[0]
    assert (img.reshape(-1, 3) == top).all(axis=1).any()  # the most relevant word's background, at +-1
    Image.open(io.BytesIO(render.outputs.png_bytes(render.png_image(ex)))).verify()


def test_ansi_wraps_each_token_in_24_bit_colours(model):
    ex = explain_text(model, "good film", target="pos")
    out = render.ansi(ex)
    assert out.count("\x1b[48;2;") == len(ex.tokens) and out.endswith(render.headline(ex) + "\n")


def test_inputs_files_folders_globs_rows_and_literal_text(tmp_path):
    (tmp_path / "d" / "s").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("alpha", encoding="utf-8")
    (tmp_path / "d" / "s" / "b.txt").write_text("beta", encoding="utf-8")
    (tmp_path / "rows.jsonl").write_text('{"id": "r/1", "body": "one"}\n\n{"id": 7, "body": "two"}\n')
    (tmp_path / "rows.csv").write_text("body,other\nthree,x\n", encoding="utf-8")
    items = inputs.text_items([str(tmp_path / "d"), str(tmp_path / "rows.jsonl"), str(tmp_path / "d" / "*.txt"),
                               str(tmp_path / "rows.csv"), "-"], text="lit", text_field="body", id_field="id",
                              stdin=io.StringIO("from stdin"))
    got = [(i.stem, i.load()) for i in items]
    assert got == [("text", "lit"), ("a", "alpha"), ("s/b", "beta"), ("rows/r_1", "one"), ("rows/7", "two"),
                   ("a~2", "alpha"), ("rows/1", "three"), ("stdin", "from stdin")]


def test_input_errors_are_one_line(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"x": "one"}\n')
    with pytest.raises(OptionError, match="--text-field"):
        inputs.text_items([str(tmp_path / "rows.jsonl")])
    (row,) = inputs.text_items([str(tmp_path / "rows.jsonl")], text_field="body")  # its error comes with its text
    with pytest.raises(InputError, match="row 1 has no text field 'body'"):
        row.load()
    (missing,) = inputs.text_items([str(tmp_path / "nope.txt")])
    with pytest.raises(InputError, match="nope.txt: cannot read"):
        missing.load()


def _fitted_vectorizer():
    return CountVectorizer().fit(TEXTS)


@pytest.mark.parametrize("steps, message", [
    (lambda: [_fitted_vectorizer(), KNeighborsClassifier(1).fit(np.eye(4), LABELS)],
     r"step 2 \(kneighborsclassifier\): KNeighborsClassifier is not a supported classifier"),
    (lambda: [_fitted_vectorizer(), PCA(1), LogisticRegression().fit(np.eye(4), LABELS)],
     r"step 2 \(pca\): PCA is not supported here"),
    (lambda: [LogisticRegression().fit(np.eye(4), LABELS)], "must be a vectorizer"),
])
def test_unsupported_pipelines_fail_with_one_line_naming_the_step(tmp_path, steps, message):
    joblib.dump(make_pipeline(*steps()), tmp_path / "m.joblib")
    with pytest.raises(ModelLoadError, match=message) as info:
        load_text_model(tmp_path / "m.joblib")
    assert "\n" not in str(info.value)


def test_standard_scaler_with_mean_is_refused(tmp_path):
    joblib.dump(make_pipeline(_fitted_vectorizer(), StandardScaler(with_mean=True), LogisticRegression()),
                tmp_path / "m.joblib")
    with pytest.raises(ModelLoadError, match=r"with_mean=True"):
        load_text_model(tmp_path / "m.joblib")


def test_skops_file_and_bare_classifier_with_vectorizer_file(tmp_path):
    sio = pytest.importorskip("skops.io")
    pipe = make_pipeline(TfidfVectorizer(), LinearSVC()).fit(TEXTS, LABELS)
    sio.dump(pipe, tmp_path / "m.skops")
    a = explain_text(load_text_model(tmp_path / "m.skops"), "good plot")
    joblib.dump(pipe[0], tmp_path / "vec.joblib")
    joblib.dump(pipe[-1], tmp_path / "clf.joblib")
    b = explain_text(load_text_model(tmp_path / "clf.joblib", tmp_path / "vec.joblib"), "good plot")
    assert a.f_x == pytest.approx(b.f_x, abs=1e-12) and a.tokens == b.tokens
    with pytest.raises(ModelLoadError, match="give the vectorizer file too"):
        load_text_model(tmp_path / "clf.joblib")
    sio.dump(make_pipeline(TfidfVectorizer(), SVC()).fit(TEXTS, LABELS), tmp_path / "svc.skops")  # sparse SVs
    assert load_text_model(tmp_path / "svc.skops").classes == ["neg", "pos"]


def _drawn_by_pillow(ex, cmap):
    """The text PNG as ImageDraw draws it, word by word (the reference of the cached-mask drawing)."""
    from PIL import ImageDraw, ImageFont
    font = ImageFont.load_default_imagefont()
    levels = np.rint((ex.relevance / np.abs(ex.relevance).max() + 1) / 2 * (render.LEVELS - 1)).astype(int)
    items = [(render._latin1(render.headline(ex)) + "\n\n", None)]
    items += [(render._latin1(t), None if i is None else int(levels[i])) for t, i in render.pieces(ex)]
    pal, x, y, placed = render.palette(cmap), render.MARGIN, render.MARGIN, []
    for text, level in items:
        for part in render._words(text):
            if part == "\n":
                x, y = render.MARGIN, y + render.LINE_HEIGHT
                continue
            width = font.getlength(part)
            if x + width > render.PNG_WIDTH - render.MARGIN and x > render.MARGIN:
                x, y = render.MARGIN, y + render.LINE_HEIGHT
                if part.isspace():
                    continue
            placed.append((x, y, width, part, level))
            x += width
    img = Image.new("P", (render.PNG_WIDTH, max(p[1] for p in placed) + render.LINE_HEIGHT + render.MARGIN),
                    render.WHITE)
    draw = ImageDraw.Draw(img)
    for x, y, width, part, level in placed:
        if level is not None:
            draw.rectangle([x, y - 1, x + width - 1, y + render.LINE_HEIGHT - 3], fill=level)
        dark = level is None or render._ink(pal[level]) == (0, 0, 0)
        draw.text((x, y), part, fill=render.BLACK if dark else render.WHITE, font=font)
    return np.asarray(img).repeat(render.PNG_SCALE, 0).repeat(render.PNG_SCALE, 1)


@pytest.mark.parametrize("cmap", ["bwr", "jet"])
def test_png_words_from_the_glyph_cache_are_what_pillow_draws(model, cmap):
    text = "Good film,\n\nbad  plot. Ünïcode — " + "x" * 150 + " good " * 30  # a paragraph, an overlong word
    ex = explain_text(model, text, target="pos")
    for _ in range(2):  # drawn, then from the cache
        assert np.array_equal(np.asarray(render.png_image(ex, cmap)), _drawn_by_pillow(ex, cmap))
    written = Image.open(io.BytesIO(render.png_bytes(ex, cmap)))  # the file's own encoder: the same pixels
    assert np.array_equal(np.asarray(written), _drawn_by_pillow(ex, cmap))
    assert written.mode == "P" and written.getpalette() == render.png_image(ex, cmap).getpalette()


def test_text_json_is_the_general_writers_document(model):
    ex = explain_text(model, 'a "good" </script> film', target="pos")
    doc = to_json(ex, {"json": "x.json"})
    assert json.loads(render.json_bytes(doc)) == json.loads(render.outputs.json_bytes(doc))
    assert render.json_bytes(doc).decode().count("\n") > len(doc) + len(doc["tokens"])  # a line per token
    doc["f_x"] = float("nan")
    assert json.loads(render.json_bytes(doc))["f_x"] is None
