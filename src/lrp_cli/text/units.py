"""A text's words as deletable units (`lrp evaluate`'s word deletion, `lrp check`'s word regions), for both text
kinds: the words are the tokens an explanation places, with their character spans, and a row's --label-field
names the true class.

- scikit-learn pipelines: the vectorizer's tokens (or a char analyzer's words); a perturbed copy of the text has
  some of them deleted or replaced by a token outside the vocabulary, and the copies are scored by one
  vectorizer + pipeline call (scikit-learn is imported by these functions only).
- token-id models (an ONNX embedding): the words read are positions in the id sequence; a perturbed copy has
  their ids removed (a fixed length padded again) or replaced by the sidecar's unknown_id, and the copies come
  grouped by their length, each group one batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from lrp_cli.errors import InputError, OptionError
from lrp_cli.text import analysis
from lrp_cli.text.decision import decision_values
from lrp_cli.text.vocabulary import Encoded, Tokenizer

if TYPE_CHECKING:
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
    from sklearn.feature_extraction.text import HashingVectorizer
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
    from lrp_cli.text import steps
    if model.one_vs_one:
        raise OptionError(f"{model.path}: a one-vs-one SVM has no decision value per class; lrp evaluate needs one")
    u = steps.forward(model.steps, model.vectorizer.transform(texts))[-1]
    return decision_values(model.classifier, u)


def row_label(source, resolve: Callable[[str], int]) -> int | None:
    """Return the class index of the true class a row names (its --label-field value, resolved by `resolve`), None
    without one; InputError when it names no class (that row fails, the batch goes on)."""
    label = dict(source).get("label")
    if label is None:
        return None
    try:
        return resolve(label)
    except OptionError as exc:
        raise InputError(str(exc)) from None


def id_fill(tokenizer: Tokenizer, perturbation: str, sidecar) -> int | None:
    """Return the id a perturbed word takes: None (delete: its id is removed) or the [text] unknown_id; OptionError
    when the sidecar has none."""
    if perturbation == "delete":
        return None
    if tokenizer.unknown_id is None:
        raise OptionError(f"--perturbation unk: {sidecar} has no [text] unknown_id to put in a word's place; use "
                          "--perturbation delete")
    return tokenizer.unknown_id


def id_copies(encoded: Encoded, tokenizer: Tokenizer, keep: np.ndarray,
              fill: int | None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Return length -> (rows of the [M, n] keep mask, their [m, length] ids): per row, the ids of the words where
    it is False replaced by `fill`, or removed (fill None) with the start/end tokens kept, then padded on the
    tokenizer's side to its fixed length (or to one id when nothing is left: a model reads no empty sequence).
    Words that the length cut off stay cut off."""
    ids = encoded.ids[0]
    positions = np.asarray([p for *_, p in encoded.words], dtype=np.int64)
    keep = np.asarray(keep, dtype=bool).reshape(-1, positions.size)
    if fill is not None:
        copies = np.repeat(ids[None], len(keep), axis=0)
        copies[:, positions] = np.where(keep, ids[positions], fill)
        return {ids.size: (np.arange(len(keep)), copies)}
    read = np.zeros((len(keep), ids.size), dtype=bool)  # padding is dropped, then added again
    read[:, encoded.specials] = True
    read[:, positions] = keep
    counts = read.sum(axis=1)
    groups: dict[int, list] = {}
    for count in np.unique(counts):  # at most n + 1 counts; a fixed length makes them one group
        rows = np.flatnonzero(counts == count)
        kept = np.broadcast_to(ids, read[rows].shape)[read[rows]].reshape(rows.size, count)
        pad = np.full((rows.size, max(tokenizer.length or 0, 1, count) - count), tokenizer.padding_id, ids.dtype)
        copies = np.hstack([pad, kept] if tokenizer.padding_side == "left" else [kept, pad])
        groups.setdefault(copies.shape[1], []).append((rows, copies))
    return {length: (np.concatenate([rows for rows, _ in parts]), np.vstack([copies for _, copies in parts]))
            for length, parts in groups.items()}
