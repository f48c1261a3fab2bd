"""The vectorizer's analysis redone with offsets: same features as scikit-learn's analyzer, tokens that are
slices of the original text, shares that add up, and the errors when offsets cannot be had."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from lrp_cli.errors import InputError
from lrp_cli.text import analysis
from lrp_cli.text.explain import explain_text, feature_columns, occurrence_groups, raw_counts
from lrp_cli.text.pipeline import load_text_model

DOCS = ["Hello  World! The café   is déjà vu; ΣΑΣ  İstanbul ﬁne.", "  a b  c ", "",
        "I ate the apple pie, the best pie.\n\tNew line"]
OPTIONS = [dict(), dict(ngram_range=(1, 3)), dict(stop_words="english", ngram_range=(1, 2)),
           dict(strip_accents="unicode"), dict(strip_accents="ascii", lowercase=False),
           dict(analyzer="char", ngram_range=(1, 4)), dict(analyzer="char_wb", ngram_range=(2, 5)),
           dict(analyzer="char_wb", ngram_range=(1, 1)), dict(token_pattern=r"(?u)\b(\w)\w*\b"),
           dict(tokenizer=str.split, token_pattern=None),
           dict(analyzer="char", strip_accents="unicode", ngram_range=(3, 3)),
           dict(preprocessor=str.upper)]


@pytest.mark.parametrize("options", OPTIONS, ids=[str(o) for o in OPTIONS])
def test_features_equal_sklearn_analyzer_and_tokens_are_slices(options):
    vec = CountVectorizer(**options).fit(DOCS + ["zzz"])
    reference = vec.build_analyzer()
    rng = np.random.default_rng(0)
    for doc in DOCS:
        an = analysis.analyze(vec, doc)
        assert an.features == reference(doc)
        assert all(doc[s:e] == t for t, s, e in an.tokens)
        r = rng.normal(size=len(an.features))
        units = np.bincount(an.unit, r[an.owner] * an.weight, minlength=an.n_units)
        # Every occurrence's relevance reaches the tokens; float64 sums of ~100 terms.
        assert an.to_tokens(units).sum() == pytest.approx(r.sum(), abs=1e-9)


def test_char_ngram_spans_map_back_through_lowercasing_and_whitespace_runs():
    vec = CountVectorizer(analyzer="char", ngram_range=(2, 2)).fit(["ab"])
    an = analysis.analyze(vec, "AB  \n C")
    assert an.features == ["ab", "b ", " c"]
    rel = an.to_tokens(np.bincount(an.unit, np.array([1.0, 2.0, 4.0])[an.owner] * an.weight, minlength=an.n_units))
    # "ab": 0.5 + 0.5; "b ": 1 to B, 1 to the collapsed run "  \n " (4 chars); " c": 2 to the run, 2 to C
    assert [t for t, _, _ in an.tokens] == ["AB", "  \n ", "C"]
    np.testing.assert_allclose(rel, [2.0, 3.0, 2.0])


def test_char_wb_padding_goes_to_the_word_edges():
    vec = CountVectorizer(analyzer="char_wb", ngram_range=(2, 2)).fit(["ab"])
    an = analysis.analyze(vec, "ab")
    assert an.features == [" a", "ab", "b "]
    assert sorted(zip(an.owner.tolist(), an.unit.tolist())) == [(0, 0), (0, 0), (1, 0), (1, 1), (2, 1), (2, 1)]


def test_token_offsets_survive_lowercasing_that_changes_length():
    vec = CountVectorizer().fit(["istanbul fine"])
    text = "İstanbul ﬁne city"
    an = analysis.analyze(vec, text)
    assert an.features == vec.build_analyzer()(text)
    # "İ".lower() is "i" + a combining dot, which the token pattern does not take: the token is "stanbul" at 1..8
    assert [(t, s, e) for t, s, e in an.tokens] == [("stanbul", 1, 8), ("ﬁne", 9, 12), ("city", 13, 17)]


def test_a_preprocessor_that_moves_characters_gives_no_offsets():
    vec = CountVectorizer(preprocessor=lambda s: s[::-1]).fit(["ab cd"])
    with pytest.raises(analysis.NoOffsets, match="cannot be traced"):
        analysis.analyze(vec, "ab cd")


def test_callable_analyzer_gives_features_only(tmp_path):
    vec = CountVectorizer(analyzer=str.split)
    path = tmp_path / "m.joblib"
    joblib.dump(make_pipeline(vec, LogisticRegression()).fit(["good a", "bad a"], [1, 0]), path)
    ex = explain_text(load_text_model(path), "good a good", target=1)
    assert not ex.offsets and ex.tokens == []
    assert any("per feature only" in n for n in ex.notes)
    assert ex.features_sum + ex.intercept == pytest.approx(ex.f_x, abs=1e-12)


def test_analysis_that_differs_from_the_vectorizer_is_an_input_error(tmp_path, monkeypatch):
    path = tmp_path / "m.joblib"
    joblib.dump(make_pipeline(CountVectorizer(), LogisticRegression()).fit(["good a", "bad a"], [1, 0]), path)
    model = load_text_model(path)
    real = analysis.analyze

    def drifted(vec, text):
        an = real(vec, text)
        an.features[0] = "other"
        return an

    monkeypatch.setattr(analysis, "analyze", drifted)
    with pytest.raises(InputError, match="differs from the vectorizer's at feature 0"):
        explain_text(model, "good a", source={"path": "doc.txt"})


def test_hashing_columns_and_signs_sum_to_the_vectorizer_counts():
    vec = HashingVectorizer(n_features=16, norm=None, alternate_sign=True)
    text = "one two three four five six seven eight nine ten one two"
    feats = vec.build_analyzer()(text)

    class Model:
        vectorizer, cache = vec, {}

    cols, signs = feature_columns(Model, feats)
    counts = raw_counts(occurrence_groups(cols, signs), 16)
    np.testing.assert_array_equal(counts.toarray(), vec.transform([text]).toarray())
