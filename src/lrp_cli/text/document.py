"""The neutral result of explaining one text, shared by every text model kind, and its JSON document."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

SCHEMA = "lrp-cli/text-explanation/1"


@dataclass
class TextExplanation:
    """Token relevance of one text and what checks it.

    tokens: [{text, start, end, relevance}] with offsets into `text`; f_x: the decomposed decision value;
    intercept: the bias share kept apart (None when it is not separable, e.g. inside a Taylor root point);
    residual: f_x - intercept - sum of token relevance (0 up to rounding for exact decompositions);
    target / prediction: {index, label, ...}; method: {name, decision, rule, ...}; model: {path, sha256, kind};
    source: {path or kind of input}; top_features: [{feature, value, relevance}]; notes: plain sentences;
    offsets False: no token could be placed (tokens is empty) and features_sum is what the features carry.
    """

    text: str
    tokens: list
    f_x: float
    intercept: float | None
    target: dict
    prediction: dict
    method: dict
    model: dict
    source: dict
    top_features: list = field(default_factory=list)
    offsets: bool = True
    notes: list = field(default_factory=list)
    features_sum: float | None = None  # without offsets: the relevance of all the document's features

    @property
    def relevance(self) -> np.ndarray:
        """Return the token relevances as an array."""
        return np.asarray([t["relevance"] for t in self.tokens], dtype=np.float64)

    @property
    def explained(self) -> float:
        """Return what the tokens (or, without offsets, the features) carry: their relevance sum."""
        if self.offsets:
            return float(self.relevance.sum())
        return float(self.features_sum or 0.0)

    @property
    def residual(self) -> float:
        """Return f_x minus the intercept minus the explained relevance (the conservation residual)."""
        return float(self.f_x - (self.intercept or 0.0) - self.explained)


def conservation(ex: TextExplanation) -> dict:
    """Return the conservation block: sums, residual and the residual relative to |f_x|."""
    residual = ex.residual
    return {"tokens_sum" if ex.offsets else "features_sum": ex.explained, "intercept": ex.intercept,
            "f_x": ex.f_x, "residual": residual, "relative_error": abs(residual) / max(abs(ex.f_x), 1e-12)}


def to_json(ex: TextExplanation, outputs: dict | None = None) -> dict:
    """Return the JSON document (schema lrp-cli/text-explanation/1) of an explanation."""
    r = ex.relevance
    doc = {
        "schema": SCHEMA,
        "input": {**ex.source, "chars": len(ex.text), "sha256": hashlib.sha256(ex.text.encode("utf-8")).hexdigest()},
        "model": ex.model,
        "method": ex.method,
        "target": ex.target,
        "prediction": ex.prediction,
        "f_x": ex.f_x,
        "intercept": ex.intercept,
        "conservation": conservation(ex),
        "relevance": {"sum": float(r.sum()), "positive": float(r[r > 0].sum()), "negative": float(r[r < 0].sum()),
                      "abs_max": float(np.abs(r).max()) if r.size else 0.0},
        "offsets": ex.offsets,
        "tokens": ex.tokens,
        "top_features": ex.top_features,
        "notes": ex.notes,
    }
    if outputs:
        doc["outputs"] = outputs
    return doc
