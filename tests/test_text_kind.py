"""The sklearn text kind behind the kinds.base protocol."""

from __future__ import annotations

import json

import joblib
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import make_pipeline
from sklearn.svm import LinearSVC

from lrp_cli.kinds import base


def test_kind_claims_loads_expands_explains_and_saves(tmp_path):
    from lrp_cli.explanation import Settings
    from lrp_cli.kinds.sklearn_text import SklearnTextKind

    path = tmp_path / "sentiment.joblib"
    joblib.dump(make_pipeline(TfidfVectorizer(), LinearSVC()).fit(["good film", "bad film"], ["pos", "neg"]), path)
    kind = SklearnTextKind()
    assert kind.claims(path) and not kind.claims(tmp_path / "absent.joblib")
    model = kind.load(path, base.LoadOptions())
    settings = Settings(kind_options={"text": "a good film"})
    model.check_settings(settings)
    (item,) = model.expand([], settings)
    (expl,) = model.explain(model.prepare(item, settings), settings)
    doc = model.save(expl, tmp_path / "out", item.stem, base.OutputOptions())
    assert json.loads((tmp_path / "out" / "text.json").read_text()) == doc
    row = model.summary_fields(doc)
    assert row["label"] == "pos" and abs(row["conservation_error"]) < 1e-12
