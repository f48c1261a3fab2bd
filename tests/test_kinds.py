"""The model-kind protocol (kinds/base.py): a third kind is a module and a line in the registry, and the pipeline,
the batch and the CLI take it as they are. The kind here is a toy text model (a weight per word, the score their
sum), written against the protocol's docstrings alone."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lrp_cli import kinds, outputs
from lrp_cli.cli import main
from lrp_cli.explanation import Explanation, Settings, label_of, prediction
from lrp_cli.kinds.base import InputItem, Kind, LoadOptions, Model, OutputOptions
from lrp_cli.propagate import Propagation

RUN = CliRunner()


class WordsKind(Kind):
    name = "toy-words"

    def claims(self, path: Path) -> bool:
        return path.suffix == ".words"

    def load(self, path: Path, options: LoadOptions) -> Model:
        return WordsModel(path, json.loads(path.read_text()), outputs.sha256_file(path))


class WordsModel(Model):
    """Two classes: "negative" scores minus the positive one's sum of word weights."""

    kind = "toy-words"
    input_suffixes = frozenset({".txt"})

    def __init__(self, path, weights, sha256):
        self.path, self._weights, self.sha256, self.load_seconds = path, weights, sha256, 0.0

    @property
    def labels(self):
        return ["negative", "positive"]

    def check_settings(self, settings: Settings) -> None:
        pass

    def prepare(self, item: InputItem, settings: Settings):
        return item.path, item.path.read_text().split()

    def explain(self, prepared, settings: Settings) -> list[Explanation]:
        path, words = prepared
        contributions = np.array([self._weights.get(w, 0.0) for w in words])
        scores = np.array([-contributions.sum(), contributions.sum()])
        target = int(np.argmax(scores)) if settings.target == "pred" else self.labels.index(settings.target)
        relevance = contributions * (1 if target == 1 else -1)
        return [Explanation(path, None, None, scores, prediction(self, scores),
                            {"index": target, "label": label_of(self, target)},
                            Propagation(relevance, float(scores[target]), []), {}, None, None, None, {},
                            extra={"words": words})]

    def save(self, expl: Explanation, out_dir: Path, stem: str, options: OutputOptions) -> dict:
        document = {"f_x": expl.propagation.f_x, "target": expl.target, "score": expl.prediction["score"],
                    "tokens": [{"text": w, "relevance": float(r) / (options.scale.divisor or 1.0)}
                               for w, r in zip(expl.extra["words"], expl.relevance)]}
        outputs.write_all({out_dir / f"{stem}.json": outputs.json_bytes(document)})
        return document

    def summary_fields(self, document: dict) -> dict:
        total = sum(t["relevance"] for t in document["tokens"])
        return {"target": document["target"]["index"], "label": document["target"]["label"],
                "score": document["score"], "f_x": document["f_x"], "relevance_sum": total,
                "conservation_error": 0.0, "heatmap": None}

    def heat(self, expl: Explanation) -> np.ndarray:
        return expl.relevance


@pytest.fixture
def words_model(tmp_path, monkeypatch):
    monkeypatch.setattr(kinds, "KINDS", [WordsKind(), *kinds.KINDS])  # the registry's one line
    path = tmp_path / "sentiment.words"
    path.write_text(json.dumps({"good": 2.0, "bad": -3.0, "fine": 0.5}))
    return path


def test_a_new_kind_runs_through_the_unchanged_pipeline_batch_and_cli(words_model, tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text("good fine day")
    (docs / "sub" / "b.txt").write_text("bad good bad")
    (docs / "ignored.png").write_bytes(b"")  # not one of the kind's input suffixes
    out = tmp_path / "out"
    result = RUN.invoke(main, ["explain", str(docs), "--model", str(words_model), "--out", str(out), "--jobs", "2",
                               "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["input"], r["label"], r["f_x"]) for r in summary["results"]] == [
        (str(docs / "a.txt"), "positive", 2.5), (str(docs / "sub" / "b.txt"), "negative", 4.0)]
    b = json.loads((out / "sub" / "b.json").read_text())
    assert [t["relevance"] for t in b["tokens"]] == [3.0, -2.0, 3.0]  # the evidence for "negative"
    assert sum(t["relevance"] for t in b["tokens"]) == b["f_x"]


def test_a_new_kind_gets_global_normalization_and_a_default_inspect(words_model, tmp_path):
    (tmp_path / "a.txt").write_text("good good")
    (tmp_path / "b.txt").write_text("bad")
    out = tmp_path / "out"
    result = RUN.invoke(main, ["explain", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--model",
                               str(words_model), "--out", str(out), "--normalize", "global"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "b.json").read_text())["tokens"][0]["relevance"] == 1.0  # 3 over the batch's max 3
    assert json.loads((out / "a.json").read_text())["tokens"][0]["relevance"] == pytest.approx(2 / 3)
    result = RUN.invoke(main, ["inspect", str(words_model), "--json"])
    assert json.loads(result.output) == {"model": str(words_model), "kind": "toy-words", "error": None,
                                         "classes": ["negative", "positive"]}


def test_commands_a_kind_does_not_support_are_usage_errors(words_model, tmp_path):
    (tmp_path / "a.txt").write_text("good")
    result = RUN.invoke(main, ["compile", str(words_model), "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2 and "lrp compile takes an ONNX model" in result.output
    result = RUN.invoke(main, ["evaluate", str(tmp_path / "a.txt"), "--model", str(words_model), "--out",
                               str(tmp_path / "eval")])
    assert result.exit_code == 2 and "does not perturb" in result.output
