"""The inputs and outputs of text explanations, for every kind whose inputs are texts (the scikit-learn text
pipelines, ONNX models fed with text): the items of text arguments (text.inputs), an Explanation whose
extra["text"] is a text.document.TextExplanation, written by text.render (STEM.json, STEM.html, STEM.png), its
summary row, its --print lines, its heat and its words as units (`lrp evaluate`, `lrp check`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lrp_cli.errors import OptionError
from lrp_cli.explanation import Explanation, Settings
from lrp_cli.kinds.base import InputItem, OutputOptions, Units
from lrp_cli.text import inputs, render


class TextOutputs:
    """The input and output methods of the protocol (kinds.base.Model) for a text kind, mixed in before Model."""

    default_cmap = render.DEFAULT_CMAP
    input_suffixes = inputs.TEXT_SUFFIXES | inputs.TABLE_SUFFIXES
    unit_name = "word"
    #: A short text's work (scikit-learn's validation, the layout of its words, its JSON and HTML) holds the GIL:
    #: threads ran --jobs 2 at 1.3x one job, processes near 2x (benchmarks/RESULTS.md, 2026-12-06).
    jobs_backend = "loky"

    def expand(self, specs: list[str], settings: Settings) -> list[InputItem]:
        """Returns one item per text: files, folders and globs of .txt, `-`, --text, rows of .jsonl/.csv."""
        opts = settings.kind_options
        items = inputs.text_items(specs, opts.get("text"), opts.get("text_field"), opts.get("id_field"),
                                  label_field=opts.get("label_field"))
        return [InputItem(it.path or Path(it.stem), it.stem, it) for it in items]

    def check_text_formats(self, settings) -> None:
        """Raises the OptionError of a --text-formats value that names no text output."""
        unknown = set(settings.kind_options.get("text_formats") or ()) - set(render.FORMATS)
        if unknown:
            raise OptionError(f"--text-formats: {', '.join(sorted(unknown))} is not one of {', '.join(render.FORMATS)}")

    def save(self, expl: Explanation, out_dir: Path, stem: str, options: OutputOptions) -> dict:
        """Writes STEM.json, STEM.html and STEM.png (all or none; options.extra["text_formats"] may leave out the
        HTML and PNG; --save-raw adds STEM.relevance.npy, the tokens' relevance); returns the JSON document."""
        formats = options.extra.get("text_formats") or render.FORMATS
        return render.write_outputs(expl.extra["text"], out_dir, stem, options.cmap, options.scale, formats,
                                    options.save_raw)

    def summary_fields(self, document: dict) -> dict:
        """Returns the summary columns of a text explanation's JSON document (score: the predicted class's
        score; heatmap: STEM.png, else STEM.json; text: the first words, for the HTML report)."""
        files = document.get("outputs", {})
        return {"target": document["target"]["index"], "label": document["target"]["label"],
                "score": document["prediction"].get("score"), "f_x": document["f_x"],
                "relevance_sum": document["relevance"]["sum"],
                "conservation_error": document["conservation"]["relative_error"],
                "heatmap": files.get("png") or files.get("json"), "text": render.snippet(document)}

    def printed(self, expl: Explanation, options: OutputOptions) -> list[str]:
        """Returns the text on its relevance colours (ANSI 24-bit) when --print asked for it."""
        if not options.extra.get("print"):
            return []
        return [render.ansi(expl.extra["text"], options.cmap, options.scale).rstrip("\n")]

    def heat(self, expl: Explanation) -> np.ndarray:
        """Returns the token relevances, which the word colours scale."""
        return expl.extra["text"].relevance

    def units(self, expl: Explanation) -> Units:
        """Returns the relevance of the explanation's words (whitespace runs left out), with their spans."""
        from lrp_cli.text.units import words
        ex = expl.extra["text"]
        names, spans = words([(t["text"], t["start"], t["end"]) for t in ex.tokens])
        relevance = np.asarray([t["relevance"] for t in ex.tokens if not t["text"].isspace()], dtype=np.float64)
        return Units(names, relevance, ex.text, spans)
