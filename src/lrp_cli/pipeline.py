"""One input through a model of any kind: load, check, prepare, explain, save, in the protocol's terms
(kinds.base). The batch, `lrp check`, `lrp evaluate` and the Python API call these; none of them asks which kind
of model it holds."""

from __future__ import annotations

from pathlib import Path

from lrp_cli import kinds
from lrp_cli.render import Scale
from lrp_cli.explanation import Explanation, Settings
from lrp_cli.kinds import InputItem, LoadOptions, Model, OutputOptions


def load_model(path: str | Path, output: str | None = None, labels: str | Path | None = None,
               layout: str | None = None, extra: tuple = ()) -> Model:
    """Returns the loaded model of whichever kind claims the file (an ONNX classifier, a BoW pipeline, ...);
    `extra`: the load options of one kind, as (name, value) pairs."""
    return kinds.load_model(path, LoadOptions(output, None if labels is None else Path(labels), layout, extra))


def check_settings(model: Model, settings: Settings) -> None:
    """Raises OptionError when the settings do not fit the model: options of another kind, then the kind's own
    checks."""
    model.check_kind_options(settings)
    model.check_settings(settings)


def item_of(input_path: str | Path) -> InputItem:
    """Returns the item of one input file, its stem the file's."""
    input_path = Path(input_path)
    return InputItem(input_path, input_path.stem)


def explain_item(model: Model, item: InputItem, settings: Settings) -> list[Explanation]:
    """Returns the explanations of one input item: one per target the --target setting selects."""
    return model.explain(model.prepare(item, settings), settings)


def explain(model: Model, input_path: str | Path, settings: Settings) -> list[Explanation]:
    """Returns the explanations of one input file (an image or `.npy` file for image models)."""
    return explain_item(model, item_of(input_path), settings)


def output_options(model: Model, cmap: str | None = None, save_raw: bool = False, scale: Scale = Scale(),
                   extra: dict | None = None) -> OutputOptions:
    """Returns the OutputOptions of a request (cmap None: the model kind's default colormap; extra: the kind
    options, passed through unread)."""
    return OutputOptions(cmap or model.default_cmap, save_raw, scale, dict(extra or {}))


def save_explanation(model: Model, expl: Explanation, out_dir: Path, stem: str, cmap: str | None = None,
                     save_raw: bool = False, scale: Scale = Scale(), extra: dict | None = None) -> dict:
    """Writes the files of one explanation all-or-nothing (images: heatmap, overlay, JSON, raw relevance),
    coloured as `scale` says; returns the JSON document."""
    return model.save(expl, Path(out_dir), stem, output_options(model, cmap, save_raw, scale, extra))


def global_scale(model: Model, explanations: list[Explanation], scale: Scale = Scale()) -> Scale:
    """Returns the scale with one divisor for all explanations (`--normalize global`): its statistic (max|R| or
    a percentile of |R|) over the relevance all their pictures colour."""
    return scale.shared([model.heat(e) for e in explanations])
