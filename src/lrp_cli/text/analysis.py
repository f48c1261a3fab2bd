"""The vectorizer's analysis of one document, redone with character offsets into the original text.

We reproduce scikit-learn's CountVectorizer/TfidfVectorizer/HashingVectorizer analysis (preprocessor, lowercasing,
accent stripping, token pattern or tokenizer, stop words, word n-grams, char and char_wb n-grams) keeping, for every
feature occurrence, the units it covers: word tokens for the word analyzer, characters for the char analyzers.
`analyze` returns the feature sequence next to the offsets; the caller checks that sequence against the
vectorizer's own analyzer, element by element (what `transform` counts), so the offsets can never describe
a different document than the one the model saw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

import numpy as np

WHITESPACE_RUNS = re.compile(r"\s\s+")  # the vectorizers' whitespace normalisation for char n-grams
WORDS = re.compile(r"\S+|\s+")


class NoOffsets(ValueError):
    """The analysis cannot be traced to character offsets (a callable analyzer, an untraceable preprocessor)."""


@dataclass
class Mapped:
    """A transformed text and, for each of its characters, the span [start, end) of the original it came from."""

    text: str
    start: np.ndarray
    end: np.ndarray

    @classmethod
    def identity(cls, text: str) -> "Mapped":
        """Return the original text mapped onto itself."""
        pos = np.arange(len(text))
        return cls(text, pos, pos + 1)


def _traced(text: str, func) -> Mapped | None:
    """Return func(text) traced word by word (runs of whitespace count as words), each word character by
    character where that gives the same result, else as a whole; None if the pieces do not add up to func(text)."""
    parts, starts, ends = [], [], []
    for m in WORDS.finditer(text):  # per word of one document, only when the cheap check failed
        word, out = m.group(), func(m.group())
        chars = [func(c) for c in word]
        if "".join(chars) == out:
            spans = [(m.start() + k, m.start() + k + 1, c) for k, c in enumerate(chars)]
        else:
            spans = [(m.start(), m.end(), out)]
        for a, b, piece in spans:
            parts.append(piece)
            starts.append(np.full(len(piece), a))
            ends.append(np.full(len(piece), b))
    whole = "".join(parts)
    if whole != func(text):
        return None
    if not parts:
        return Mapped(whole, np.zeros(0, int), np.zeros(0, int))
    return Mapped(whole, np.concatenate(starts), np.concatenate(ends))


def preprocess(text: str, func, kind: str) -> Mapped:
    """Return func(text) with offsets. kind "lower" (str.lower only: it maps each character to one character
    unless the length changes), "builtin" (lowercasing and accent stripping: one to one on ASCII text) or
    "custom": the identity where that holds, else traced word by word and character by character; NoOffsets
    when the trace does not add up."""
    out = func(text)
    same_length = len(out) == len(text)
    if out == text or (same_length and (kind == "lower" or (kind == "builtin" and text.isascii()))):
        return Mapped.identity(out)
    mapped = _traced(text, func)
    if mapped is None:
        raise NoOffsets("the preprocessor changes the text in a way that cannot be traced to its characters")
    return mapped


def collapse_whitespace(m: Mapped) -> Mapped:
    """Return the text with runs of whitespace replaced by one space (as the char analyzers do), with offsets."""
    runs = list(WHITESPACE_RUNS.finditer(m.text))
    if not runs:
        return m
    keep = np.ones(len(m.text), bool)
    end = m.end.copy()
    for r in runs:  # one step per whitespace run
        keep[r.start() + 1:r.end()] = False
        end[r.start()] = m.end[r.end() - 1]
    return Mapped(WHITESPACE_RUNS.sub(" ", m.text), m.start[keep], end[keep])


@dataclass
class Analysis:
    """One document's feature occurrences and the units (tokens or characters) each one covers.

    features: the feature strings in the vectorizer's order; pairs (owner[k], unit[k]) say that occurrence owner[k]
    covers unit unit[k] and gives it the share weight[k] of its relevance (shares of one occurrence add to 1).
    tokens: the output tokens [(text, start, end)] with offsets into the original text; to_tokens sums unit
    relevance onto them.
    """

    features: list
    owner: np.ndarray
    unit: np.ndarray
    weight: np.ndarray
    n_units: int
    tokens: list
    to_tokens: object  # callable: unit relevance (n_units,) -> token relevance (len(tokens),)


def _ranges(starts: np.ndarray, lengths: np.ndarray):
    """Return (owner, position) pairs covering [starts[i], starts[i] + lengths[i]) for every i."""
    owner = np.repeat(np.arange(len(starts)), lengths)
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return owner, np.repeat(starts, lengths) + np.arange(int(lengths.sum())) - first


def _shares(owner: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    return 1.0 / np.repeat(lengths, lengths).astype(np.float64) if len(owner) else np.zeros(0)


def word_tokens(vec, mapped: Mapped) -> tuple[list, np.ndarray]:
    """Return (tokens, (n, 2) spans in the preprocessed text): the token pattern's matches (its group when it has
    one), or a custom tokenizer's tokens found in order in the text (NoOffsets when one is not found)."""
    text = mapped.text
    if vec.tokenizer is None:
        pattern = re.compile(vec.token_pattern)
        group = 1 if pattern.groups == 1 else 0
        spans = [m.span(group) for m in pattern.finditer(text)]
        return [text[a:b] for a, b in spans], np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    tokens, spans, cursor = [], [], 0
    for tok in vec.tokenizer(text):  # one step per token of one document
        at = text.find(tok, cursor)
        if at < 0 or not tok:
            raise NoOffsets(f"the custom tokenizer's token {tok!r} is not a piece of the text")
        tokens.append(tok)
        spans.append((at, at + len(tok)))
        cursor = at + len(tok)
    return tokens, np.asarray(spans, dtype=np.int64).reshape(-1, 2)


def analyze_words(vec, mapped: Mapped, text: str) -> Analysis:
    """Return the Analysis of the word analyzer: n-grams of the tokens left after stop-word removal."""
    found, spans = word_tokens(vec, mapped)
    stop = vec.get_stop_words()
    kept = np.arange(len(found)) if stop is None else np.asarray(
        [i for i, t in enumerate(found) if t not in stop], dtype=np.int64)
    words = found if stop is None else [found[i] for i in kept]
    min_n, max_n = vec.ngram_range
    features, starts, lengths = [], [], []
    for n in range(min_n, min(max_n, len(words)) + 1):  # a few n-gram orders
        features.extend(words if n == 1 else [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)])
        starts.append(np.arange(len(words) - n + 1))
        lengths.append(np.full(len(words) - n + 1, n))
    starts = np.concatenate(starts) if starts else np.zeros(0, int)
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, int)
    owner, unit = _ranges(starts, lengths)
    first = mapped.start[spans[:, 0]].tolist()
    last = mapped.end[np.maximum(spans[:, 1] - 1, spans[:, 0])].tolist()
    tokens = [(text[s:e], s, e) for s, e in zip(first, last)]
    return Analysis(features, owner, unit, _shares(owner, lengths), len(words), tokens,
                    partial(_scatter, kept, len(tokens)))


def _scatter(index: np.ndarray, size: int, values: np.ndarray) -> np.ndarray:
    return np.bincount(index, values, minlength=size) if size else np.zeros(0)


def char_occurrences(text: str, min_n: int, max_n: int):
    """Return (features, starts, lengths) of the char analyzer's n-grams of `text`, in its order."""
    size = len(text)
    feats, starts, lengths = [], [], []
    for n in range(min_n, min(max_n, size) + 1):  # a few n-gram orders
        idx = np.arange(size - n + 1)
        feats.extend(text[i:i + n] for i in range(size - n + 1))
        starts.append(idx)
        lengths.append(np.full(len(idx), n))
    if not starts:
        return feats, np.zeros(0, int), np.zeros(0, int)
    return feats, np.concatenate(starts), np.concatenate(lengths)


def char_wb_occurrences(text: str, min_n: int, max_n: int):
    """Return (features, starts, lengths, lo, hi) of the char_wb analyzer's n-grams: starts in the padded-word
    coordinates shifted to `text` (one before the word), and the word's [lo, hi] to clip the padding onto."""
    feats, starts, lengths, los, his = [], [], [], [], []
    for m in re.finditer(r"\S+", text):  # per word of one document, as the vectorizer's own loop
        w = " " + m.group() + " "
        for n in range(min_n, max_n + 1):
            offsets = range(max(1, len(w) - n + 1))
            feats.extend(w[o:o + n] for o in offsets)
            starts.extend(m.start() - 1 + o for o in offsets)
            lengths.extend(min(n, len(w)) for _ in offsets)
            los.extend(m.start() for _ in offsets)
            his.extend(m.end() - 1 for _ in offsets)
            if len(w) <= n:  # a word shorter than n is counted once, as the whole padded word
                break
    arr = [np.asarray(v, dtype=np.int64) for v in (starts, lengths, los, his)]
    return (feats, *arr)


def analyze_chars(vec, mapped: Mapped, text: str) -> Analysis:
    """Return the Analysis of the char / char_wb analyzers: units are characters of the whitespace-collapsed text;
    output tokens are the original's words (and whitespace runs that received relevance)."""
    flat = collapse_whitespace(mapped)
    min_n, max_n = vec.ngram_range
    if vec.analyzer == "char":
        features, starts, lengths = char_occurrences(flat.text, min_n, max_n)
        owner, unit = _ranges(starts, lengths)
    else:
        features, starts, lengths, lo, hi = char_wb_occurrences(flat.text, min_n, max_n)
        owner, unit = _ranges(starts, lengths)
        unit = np.clip(unit, lo[owner], hi[owner])  # the padding spaces belong to the word's edge characters
    segments = [(m.group(), m.start(), m.end()) for m in WORDS.finditer(text)]
    return Analysis(features, owner, unit, _shares(owner, lengths), len(flat.text), segments,
                    partial(_chars_to_segments, flat, segments, len(text)))


def _chars_to_segments(flat: Mapped, segments: list, size: int, unit_rel: np.ndarray) -> np.ndarray:
    """Return per segment the relevance of its original characters; each unit's share spreads evenly over the
    original span it came from (a difference array)."""
    dens = unit_rel / np.maximum(flat.end - flat.start, 1)
    diff = np.bincount(flat.start, dens, minlength=size + 1) - np.bincount(flat.end, dens, minlength=size + 1)
    chars = np.cumsum(diff)[:size]
    if not segments:
        return np.zeros(0)
    return np.add.reduceat(chars, np.asarray([s for _, s, _ in segments]))


def analyze(vec, text: str) -> Analysis:
    """Return the Analysis of `text` by `vec`, or raise NoOffsets (callable analyzer, untraceable steps)."""
    if callable(vec.analyzer):
        raise NoOffsets("the vectorizer's analyzer is a callable, which gives features without offsets")
    if vec.preprocessor is not None or callable(vec.strip_accents):
        kind = "custom"
    else:
        kind = "builtin" if vec.strip_accents else "lower"
    mapped = preprocess(text, vec.build_preprocessor(), kind)
    if vec.analyzer == "word":
        return analyze_words(vec, mapped, text)
    return analyze_chars(vec, mapped, text)
