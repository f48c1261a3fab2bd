"""Text -> token ids for models that read ids (an ONNX embedding), as a sidecar's [text] section says: the
vocabulary file, lowercasing, the token pattern, unknown / start / end / padding ids and a fixed length.

Every token keeps its character offsets into the text, and every id its token (or none: start, end, padding), so
that relevance on the ids maps back onto the words.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lrp_cli.errors import InputError, ModelLoadError

#: Words and single punctuation marks: an LSTM reads "not" and "!" as tokens of their own.
DEFAULT_PATTERN = r"\w+|[^\w\s]"


def read_vocabulary(path: Path) -> dict[str, int]:
    """Returns token -> id of a vocabulary file: a JSON object token -> id, or one token per line with its line
    number (from 0) as id (blank lines keep their number; a repeated token keeps its first id)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot read the vocabulary ({type(exc).__name__}: {exc})".splitlines()[0]) \
            from None
    if path.suffix.lower() == ".json":
        try:
            vocab = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"{path}: invalid vocabulary JSON ({exc})") from None
        ok = isinstance(vocab, dict) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                             for v in vocab.values())
        if not ok:
            raise ModelLoadError(f"{path}: a JSON vocabulary must be an object token -> id (integers >= 0)")
        return vocab
    vocab: dict[str, int] = {}
    for number, line in enumerate(text.split("\n")):
        token = line.rstrip("\r")
        if token:
            vocab.setdefault(token, number)
    return vocab


@dataclass(frozen=True)
class Tokenizer:
    """How one model turns text into ids (from its sidecar's [text] section)."""

    vocabulary: dict
    pattern: re.Pattern
    lowercase: bool = True
    unknown_id: int | None = None
    start_id: int | None = None
    end_id: int | None = None
    padding_id: int = 0
    length: int | None = None
    padding_side: str = "right"

    @classmethod
    def from_sidecar(cls, table: dict, sidecar: Path, model_length: int | None) -> "Tokenizer":
        """Returns the tokenizer of the [text] table of the sidecar file (its vocabulary file is beside it);
        `model_length` is the model's fixed number of ids, if it has one (the sidecar's `length` must agree)."""
        length = table.get("length", model_length)
        if model_length is not None and length != model_length:
            raise ModelLoadError(f"{sidecar}: [text] length = {length}, but the model reads {model_length} ids")
        folder = sidecar.parent
        padding = table.get("padding_id", 0)
        return cls(read_vocabulary(folder / table["vocabulary"]), re.compile(table.get("token_pattern",
                                                                                       DEFAULT_PATTERN)),
                   table.get("lowercase", True), table.get("unknown_id"), table.get("start_id"),
                   table.get("end_id"), padding[0] if isinstance(padding, list) else padding, length,
                   table.get("padding_side", "right"))

    def tokens(self, text: str) -> list[tuple[str, int, int, int | None]]:
        """Returns (token, start, end, id) of each match of the pattern, in order; id None for a token outside the
        vocabulary when there is no unknown_id."""
        out = []
        for match in self.pattern.finditer(text):  # one step per word of one text
            word = match.group()
            if not word:
                continue
            out.append((word, match.start(), match.end(),
                        self.vocabulary.get(word.lower() if self.lowercase else word, self.unknown_id)))
        return out

    def encode(self, text: str, name: str = "text") -> "Encoded":
        """Returns the text's ids and where its words are among them; InputError naming `name` when no token has
        an id."""
        found = self.tokens(text)
        known = [t for t in found if t[3] is not None]
        if not known:
            raise InputError(f"{name}: no token of the text is in the model's vocabulary")
        head = [self.start_id] if self.start_id is not None else []
        tail = [self.end_id] if self.end_id is not None else []
        kept = known if self.length is None else known[:max(self.length - len(head) - len(tail), 0)]
        pad = 0 if self.length is None else max(self.length - len(head) - len(kept) - len(tail), 0)
        first = pad if self.padding_side == "left" else 0  # where the start token (or the first word) sits
        ids = head + [t[3] for t in kept] + tail
        ids = [self.padding_id] * pad + ids if self.padding_side == "left" else ids + [self.padding_id] * pad
        words = first + len(head)
        specials = ([first] if head else []) + ([words + len(kept)] if tail else [])
        unknown = sum(t[3] == self.unknown_id for t in known) if self.unknown_id is not None else 0
        return Encoded(np.asarray([ids], dtype=np.int64),
                       [(word, start, end, words + k) for k, (word, start, end, _) in enumerate(kept)], specials,
                       {"unknown": unknown, "dropped": len(found) - len(known), "truncated": len(known) - len(kept)})


@dataclass(frozen=True)
class Encoded:
    """A text as a model reads it: ids [1, T] int64; words: (token, start, end, position in ids) of the words
    read; specials: the positions of the start and end tokens; counts: words read as unknown, left out (no id)
    and cut off (beyond the length)."""

    ids: np.ndarray
    words: list
    specials: list
    counts: dict
