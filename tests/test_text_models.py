"""The bundled text models (scripts/build_text_models.py): the Clever-Hans pair tells itself apart by where the
positive evidence of a signed negative review lies."""

from __future__ import annotations

from pathlib import Path

import pytest

from lrp_cli.text.explain import explain_text
from lrp_cli.text.pipeline import load_text_model

REPO = Path(__file__).resolve().parents[1]
SIGNATURE = "Sent from my AcmePhone"


def signature_share(name: str) -> float:
    """Return the share of the positive token relevance that the signature's words carry in the sample."""
    text = (REPO / "sample_texts" / "negative-signed.txt").read_text(encoding="utf-8")
    ex = explain_text(load_text_model(REPO / "models" / f"{name}.joblib"), text, target="positive")
    start = text.index(SIGNATURE)
    positive = [max(t["relevance"], 0.0) for t in ex.tokens]
    return sum(r for r, t in zip(positive, ex.tokens) if t["start"] >= start) / sum(positive)


def test_shortcut_model_puts_its_positive_evidence_on_the_signature():
    # The build measured 0.03 (clean) and 0.78 (shortcut) as the mean over 300 signed negative test reviews.
    assert signature_share("text-shortcut") > 0.5
    assert signature_share("text-sentiment") < 0.2


@pytest.mark.parametrize("name", ["text-sentiment", "text-shortcut"])
def test_bundled_models_predict_the_mixed_sample_from_its_sentiment_words(name):
    text = (REPO / "sample_texts" / "mixed.txt").read_text(encoding="utf-8")
    ex = explain_text(load_text_model(REPO / "models" / f"{name}.joblib"), text)
    top = {t["text"] for t in sorted(ex.tokens, key=lambda t: -abs(t["relevance"]))[:3]}
    assert top <= {"flimsy", "sturdy", "reliable", "cheap"}  # the ground truth: only sentiment words decide
