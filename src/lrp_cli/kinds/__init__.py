"""The model kinds, one module each behind the protocol of `kinds.base`; a new kind is a module and a line here.

The first kind whose `claims` accepts a file loads it, so a kind that sniffs contents goes before the one that
takes a suffix alone.
"""

from __future__ import annotations

import time
from pathlib import Path

from lrp_cli.errors import ModelLoadError
from lrp_cli.kinds.base import InputItem, Kind, LoadOptions, Model, OutputOptions
from lrp_cli.kinds.bow_model import BowKind
from lrp_cli.kinds.onnx_model import OnnxKind
from lrp_cli.kinds.onnx_text import OnnxTextKind
from lrp_cli.kinds.sklearn_text import SklearnTextKind

#: Tried in order by `load_model`.
KINDS: list[Kind] = [
    SklearnTextKind(),  # before BowKind: both take .joblib/.pkl/.skops, this one opens the file to tell
    BowKind(),
    OnnxTextKind(OnnxKind()),  # before OnnxKind: an ONNX file whose sidecar has a [text] vocabulary reads text
    OnnxKind(),  # last: it takes any file the others leave (ONNX files have no fixed suffix)
]


def kind_for(path: str | Path) -> Kind:
    """Returns the first kind that claims the model file at path (ModelLoadError when there is no such file)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file")
    return next(k for k in KINDS if k.claims(path))


def load_model(path: str | Path, options: LoadOptions = LoadOptions()) -> Model:
    """Returns the model at path, loaded by the first kind that claims it; its `load_seconds` include the
    claiming."""
    start = time.perf_counter()
    model = kind_for(path).load(Path(path), options)
    model.load_seconds = time.perf_counter() - start
    return model


__all__ = ["KINDS", "InputItem", "Kind", "kind_for", "LoadOptions", "Model", "OutputOptions", "load_model"]
