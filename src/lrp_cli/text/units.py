"""A text's words as deletable units (`lrp evaluate`'s word deletion, `lrp check`'s word regions): the words are
the tokens an explanation places (the vectorizer's tokens, or a char analyzer's words), with their character
spans; a perturbed copy of the text has some of them deleted or replaced by a token outside the vocabulary, and
the copies are scored by one vectorizer + pipeline call."""

from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer

from lrp_cli.errors import InputError, OptionError
from lrp_cli.text import analysis, steps
from lrp_cli.text.decision import decision_values
from lrp_cli.text.pipeline import TextModel

#: What `--perturbation unk` puts in a word's place: LimeTextExplainer's mask word, checked to be no feature.
UNK = "UNKWORDZ"


def words(tokens: list) -> tuple[list[str], np.ndarray]:
    """Return (word texts, [n, 2] spans) of an explanation's tokens [(text, start, end)], whitespace left out."""
    kept = [(t, s, e) for t, s, e in tokens if not t.isspace()]
    return [t for t, _, _ in kept], np.asarray([(s, e) for _, s, e in kept], dtype=np.int64).reshape(-1, 2)


def text_words(model: TextModel, text: str, name: str) -> tuple[list[str], np.ndarray]:
    """Return the words of `text` as the explanation places them; InputError when the analysis has no offsets."""
    try:
        found = analysis.analyze(model.vectorizer, text)
    except analysis.NoOffsets as exc:
        raise InputError(f"{name}: no word offsets ({exc}); words cannot be deleted") from None
    return words(found.tokens)


def replacement(model: TextModel, perturbation: str) -> str:
    """Return what a perturbed word becomes: '' (delete) or UNK, an OptionError when UNK is not outside the
    vocabulary (hashed features and character n-grams have no outside)."""
    if perturbation == "delete":
        return ""
    vec = model.vectorizer
    if isinstance(vec, HashingVectorizer) or vec.analyzer != "word":
        raise OptionError(f"--perturbation unk: {model.path}'s {type(vec).__name__} (analyzer {vec.analyzer!r}) "
                          "has no token outside its vocabulary; use --perturbation delete")
    inside = [f for f in vec.build_analyzer()(UNK) if f in vec.vocabulary_]
    if inside:
        raise OptionError(f"--perturbation unk: the unknown word {UNK!r} is a feature of {model.path} "
                          f"({inside[0]!r})")
    return f" {UNK} "


def perturbed_texts(text: str, spans: np.ndarray, keep: np.ndarray, fill: str) -> list[str]:
    """Return one text per row of the [M, n] keep mask: the words where it is False replaced by `fill`."""
    bounds = np.concatenate([[0], spans.ravel(), [len(text)]])
    gaps = [text[a:b] for a, b in zip(bounds[0::2], bounds[1::2])]  # n + 1 pieces between the words
    pieces = np.asarray([text[a:b] for a, b in spans], dtype=object)
    texts = []
    for row in keep:  # one string per perturbed copy
        shown = np.where(row, pieces, fill)
        texts.append(gaps[0] + "".join(w + g for w, g in zip(shown, gaps[1:])))
    return texts


def scores(model: TextModel, texts: list[str]) -> np.ndarray:
    """Return the [M, K] decision values of the texts: one vectorizer transform and one pass of the pipeline."""
    if model.one_vs_one:
        raise OptionError(f"{model.path}: a one-vs-one SVM has no decision value per class; lrp evaluate needs one")
    u = steps.forward(model.steps, model.vectorizer.transform(texts))[-1]
    return decision_values(model.classifier, u)
