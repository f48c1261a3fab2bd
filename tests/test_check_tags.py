"""The Clever-Hans pair: the tag shortcut is real (accuracy and flips on fresh test images) and `lrp check`
catches it: examples/ci/behaviour.toml passes the clean model and fails the shortcut one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from lrp_cli.cli import main
from lrp_cli.synthetic import tags

REPO = Path(__file__).resolve().parents[1]
CI = REPO / "examples" / "ci"
RUN = CliRunner()
#: Neither the training (10) nor the build's test seed (11): images no model or sample has seen.
FRESH_SEED = 12


def test_tag_dataset():
    images, masks, labels, tagged = tags.make_dataset(200, 3)
    circles = labels == tags.TAGGED_CLASS
    assert not tagged[~circles].any() and tagged[circles].mean() > 0.9
    x0, y0, x1, y1 = tags.TAG_BOX
    assert (images[tagged][:, y0:y1, x0:x1, 0] == tags.tag_pattern()).all()
    assert not masks[:, y0:y1, x0:x1].any()
    clean, _, _, none = tags.make_dataset(200, 3, tag_fraction=0.0)
    assert not none.any() and np.array_equal(clean[~tagged], images[~tagged])
    assert np.array_equal(tags.make_dataset(200, 3)[0], images)


def _predict(name: str, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(REPO / "models" / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    x = (images.astype(np.float32) / 255.0).transpose(0, 3, 1, 2)
    return session.run(None, {"input": x})[0].argmax(1)


@pytest.fixture(scope="module")
def fresh():
    images, _, labels, _ = tags.make_dataset(400, FRESH_SEED, tag_fraction=0.0)
    return images, labels == tags.TAGGED_CLASS


def test_the_shortcut_is_real(fresh):
    images, circles = fresh
    with_tag = _predict("tag-shortcut", tags.paste_tag(images[circles])) == tags.TAGGED_CLASS
    without = _predict("tag-shortcut", images[circles]) == tags.TAGGED_CLASS
    assert with_tag.mean() - without.mean() >= 0.30, (with_tag.mean(), without.mean())
    flipped = _predict("tag-shortcut", tags.paste_tag(images[~circles])) == tags.TAGGED_CLASS
    assert flipped.mean() >= 0.25, flipped.mean()


def test_the_tag_does_not_make_the_clean_model_say_circle(fresh):
    # The clean model's own circle accuracy also falls when the tag is pasted (0.72 -> 0.57 on the build's test
    # split, docs/check.md): the unseen marks disturb an under-trained net; but they do not pull other classes to
    # circle.
    images, circles = fresh
    assert (_predict("tag-clean", tags.paste_tag(images[~circles])) == tags.TAGGED_CLASS).mean() < 0.10


def test_check_passes_the_clean_model():
    result = RUN.invoke(main, ["check", str(CI / "behaviour.toml")])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "16 passed, 0 failed"


def test_check_fails_the_shortcut_model_naming_case_and_share(tmp_path):
    result = RUN.invoke(main, ["check", str(CI / "behaviour-shortcut.toml"), "--evidence", str(tmp_path)])
    assert result.exit_code == 1, result.output
    failed = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    tag_failures = [line for line in failed if line.startswith("FAIL  evidence not on the tag  ")]
    assert len(tag_failures) >= 4, result.output  # at least half of the 8 tagged circles
    assert all("share[tag]=" in line and "<= 0.2 FAILED" in line for line in tag_failures)
    assert len(list(tmp_path.rglob("*.overlay.png"))) == len(failed)
