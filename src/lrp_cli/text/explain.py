"""Explain one text with a scikit-learn text pipeline: decision value -> features -> occurrences -> tokens.

Feature j's relevance is shared by its occurrences in proportion to each one's signed contribution to the raw
count (equal shares for plain counts; a hashed feature's sign as HashingVectorizer adds it; equal shares when the
signs cancel); an occurrence shares its relevance equally over its units (the n words of a word n-gram, the n
characters of a char n-gram, a char_wb n-gram's padding going to the word's edge characters). Relevance on
features absent from the document (a Taylor root point can make them count) is spread evenly over all the
document's occurrences, as the paper's Eq 27 does for unmapped BoW dimensions, and reported.
"""

from __future__ import annotations

from itertools import repeat

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model._base import LinearClassifierMixin

from lrp_cli.errors import InputError, OptionError
from lrp_cli.text import analysis, steps
from lrp_cli.text.decision import decompose
from lrp_cli.text.document import TextExplanation
from lrp_cli.text.pipeline import TextModel

TOP_FEATURES = 20


def _cached(model: TextModel, key: str, build):
    if key not in model.cache:
        model.cache[key] = build()
    return model.cache[key]


def feature_columns(model: TextModel, features: list) -> tuple[np.ndarray, np.ndarray]:
    """Return per feature occurrence (column, sign): column -1 for a feature outside the vocabulary."""
    vec = model.vectorizer
    if isinstance(vec, HashingVectorizer):
        if not features:
            return np.zeros(0, np.int64), np.zeros(0)
        from sklearn.feature_extraction import FeatureHasher

        hasher = _cached(model, "hasher", lambda: FeatureHasher(n_features=vec.n_features, input_type="string",
                                                                 alternate_sign=vec.alternate_sign))
        rows = hasher.transform([f] for f in features)  # one row per occurrence, one entry each
        return rows.indices.astype(np.int64), rows.data.astype(np.float64)
    cols = np.fromiter(map(vec.vocabulary_.get, features, repeat(-1)), dtype=np.int64, count=len(features))
    return cols, np.ones(len(features))


def n_features(model: TextModel) -> int:
    """Return the width of the vectorizer's output."""
    vec = model.vectorizer
    return vec.n_features if isinstance(vec, HashingVectorizer) else len(vec.vocabulary_)


def occurrence_groups(cols: np.ndarray, signs: np.ndarray):
    """Return (columns present, per in-vocabulary occurrence its index among them, summed signs per column)."""
    ok = cols >= 0
    present, inverse = np.unique(cols[ok], return_inverse=True)
    return present, inverse, np.bincount(inverse, signs[ok], minlength=len(present))


def raw_counts(groups, width: int) -> sparse.csr_matrix:
    """Return the 1 x width matrix of summed (signed) occurrence counts, as the vectorizer counts them."""
    present, _, total = groups
    nz = total != 0  # a hashed column whose signs cancel is not stored
    return sparse.csr_matrix((total[nz], present[nz], [0, int(nz.sum())]), shape=(1, width))


def occurrence_relevance(r_x0: np.ndarray, cols: np.ndarray, signs: np.ndarray, groups):
    """Return (relevance per occurrence, relevance of features absent from the document spread over them)."""
    present, inverse, total = groups
    ok = cols >= 0
    count = np.bincount(inverse, minlength=len(present))
    t = total[inverse]
    share = np.where(t != 0, signs[ok] / np.where(t != 0, t, 1.0), 1.0 / count[inverse])
    r_occ = np.zeros(len(cols))
    r_occ[ok] = r_x0[present][inverse] * share
    elsewhere = r_x0.copy()
    elsewhere[present] = 0.0  # summed on its own, so that no rounding of the present ones leaks in
    absent = float(elsewhere.sum())
    if ok.any() and absent != 0.0:
        r_occ[ok] += absent / ok.sum()
    return r_occ, absent


def resolve_class(model: TextModel, value, what: str) -> int:
    """Return the class index named by `value` (a label or an index)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if 0 <= int(value) < len(model.classes):
            return int(value)
    elif str(value) in model.classes:
        return model.classes.index(str(value))
    elif str(value).lstrip("-").isdigit():
        return resolve_class(model, int(value), what)
    raise OptionError(f"{what} {value!r}: not a class of the model (classes: {', '.join(model.classes)})")


def prediction(model: TextModel, u) -> dict:
    """Return {index, label, probability (when the classifier gives one)} of the classifier at u."""
    clf = model.classifier
    if isinstance(clf, LinearClassifierMixin):  # its predict, without the input validation that costs a forward
        scores = np.asarray(u @ clf.coef_.T).ravel() + clf.intercept_
        index = int(scores[0] > 0) if scores.size == 1 else int(np.argmax(scores))
    else:
        index = int(np.flatnonzero(clf.classes_ == clf.predict(u)[0])[0])
    out = {"index": index, "label": model.classes[index]}
    try:
        out["probability"] = float(clf.predict_proba(u)[0, index])
    except AttributeError:  # LinearSVC, SVC(probability=False), ... have no probabilities
        pass
    return out


def _targets(model: TextModel, target, pair, predicted: int):
    """Return (target index, pair as sorted indices or None); the index is None for the winner of a pair."""
    if model.one_vs_one:
        if pair is None:
            raise OptionError("one-vs-one multi-class SVM: give a pair of classes to explain (--pair A,B)")
        pair = sorted(resolve_class(model, p, "pair class") for p in pair)
    else:
        pair = None
    if target is None or target == "pred":
        return (None if pair else predicted), pair
    index = resolve_class(model, target, "target")
    if pair and index not in pair:
        raise OptionError(f"target {target!r} is not one of the pair {model.classes[pair[0]]},{model.classes[pair[1]]}")
    return index, pair


def _class_score(model: TextModel, u, index: int, pair) -> float | None:
    """Return the decision value of class `index` at u (None for a one-vs-one prediction outside the pair)."""
    if pair and index not in pair:
        return None
    return decompose(model.classifier, u, index, pair, model.cache).f_x


def _top_features(model: TextModel, features, cols, x0, r_x0, groups, top: int) -> list:
    """Return the `top` features of largest |relevance|: name, vectorizer value, count and relevance."""
    present, inverse, _ = groups
    candidates = np.union1d(present, np.flatnonzero(r_x0))
    order = candidates[np.argsort(-np.abs(r_x0[candidates]), kind="stable")][:top]
    counts = np.zeros(len(r_x0), np.int64)
    counts[present] = np.bincount(inverse, minlength=len(present))
    value = dict(zip(x0.indices.tolist(), x0.data.tolist()))
    names: dict[int, dict] = {int(c): {} for c in order}  # hashing: several strings may share a column
    for feature, c in zip(features, cols.tolist()):  # one pass over the document's features, not one per column
        if c in names:
            names[c][feature] = None
    return [{"feature": " | ".join(names[c]) or _feature_name(model, c), "column": c, "count": int(counts[c]),
             "value": value.get(c, 0.0), "relevance": float(r_x0[c])} for c in order.tolist()]


def _feature_name(model: TextModel, column: int) -> str:
    vec = model.vectorizer
    if isinstance(vec, HashingVectorizer):
        return f"<hash column {column}>"
    return str(_cached(model, "names", vec.get_feature_names_out)[column])


def _tokens(an: analysis.Analysis, r_occ: np.ndarray, char_level: bool) -> list:
    unit_rel = np.bincount(an.unit, r_occ[an.owner] * an.weight, minlength=an.n_units)
    rel = an.to_tokens(unit_rel)
    return [{"text": t, "start": s, "end": e, "relevance": float(r)} for (t, s, e), r in zip(an.tokens, rel)
            if not (char_level and r == 0.0 and t.isspace())]


def trace(model: TextModel, text: str, features: list, name: str):
    """Return the Analysis with offsets, or None (with the reason) when the analysis has none; raise InputError
    when our analysis differs from the vectorizer's."""
    try:
        an = analysis.analyze(model.vectorizer, text)
    except analysis.NoOffsets as exc:
        return None, str(exc)
    if an.features != features:
        k = next((i for i, (a, b) in enumerate(zip(an.features, features)) if a != b),
                 min(len(an.features), len(features)))
        mine = an.features[k] if k < len(an.features) else "<end>"
        theirs = features[k] if k < len(features) else "<end>"
        raise InputError(f"{name}: our analysis of the text differs from the vectorizer's at feature {k} "
                         f"({mine!r} vs {theirs!r}); no offsets can be trusted")
    return an, None


def explain_text(model: TextModel, text: str, target=None, pair=None, source: dict | None = None,
                 top: int = TOP_FEATURES) -> TextExplanation:
    """Return the TextExplanation of `text` (target: None/'pred', a label or an index; pair: two classes for a
    one-vs-one SVM; source: what the JSON says about the input)."""
    source = source or {"kind": "text"}
    name = source.get("path") or source.get("kind", "text")
    analyzer = _cached(model, "analyzer", model.vectorizer.build_analyzer)
    features = list(analyzer(text))
    an, why = trace(model, text, features, name)
    cols, signs = feature_columns(model, features)
    groups = occurrence_groups(cols, signs)
    x0 = steps.vectorizer_output(model.vectorizer, raw_counts(groups, n_features(model)))
    acts = steps.forward(model.steps, x0)
    u = acts[-1]
    pred = prediction(model, u)
    t, pair = _targets(model, target, pair, pred["index"])
    if t is None:  # the winner of the pair: the pair's decision oriented for its first class is positive
        t = pair[0] if decompose(model.classifier, u, pair[0], pair, model.cache).f_x >= 0 else pair[1]
    dec = decompose(model.classifier, u, t, pair, model.cache)
    pred = {"index": pred["index"], "label": pred["label"],
            "score": dec.f_x if t == pred["index"] else _class_score(model, u, pred["index"], pair), **pred}
    r_x0 = steps.backward(model.steps, acts, dec.relevance)
    r_occ, absent = occurrence_relevance(r_x0, cols, signs, groups)
    method = {"name": "lrp", "decision": dec.decision, "rule": dec.rule,
              "steps": [{"name": n, "type": type(s).__name__, "rule": steps.step_rule(s)} for n, s in model.steps],
              **dec.details}
    notes = []
    if absent:
        where = ("spread evenly over its feature occurrences (paper Eq 27)" if (cols >= 0).any()
                 else "no feature of the model occurs in the text to carry it: it is in the residual")
        notes.append(f"{absent:.6g} of relevance sat on features absent from the text; {where}")
    if an is None:
        notes.append(f"no character offsets: {why}; relevance is given per feature only")
    char_level = model.vectorizer.analyzer in ("char", "char_wb")
    return TextExplanation(
        text=text, tokens=_tokens(an, r_occ, char_level) if an is not None else [], f_x=dec.f_x,
        intercept=dec.intercept,
        target={"index": t, "label": model.classes[t], **({"pair": [model.classes[p] for p in pair]} if pair else {})},
        prediction=pred, method=method,
        model={"path": model.path, "sha256": model.sha256, "kind": model.kind}, source=source,
        top_features=_top_features(model, features, cols, x0, r_x0, groups, top), offsets=an is not None, notes=notes,
        features_sum=float(r_occ.sum()))
