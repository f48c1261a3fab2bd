"""`lrp inspect`: what the model kind of a file says of it (for ONNX: op support, the IR and each layer's rule)."""

from __future__ import annotations

from pathlib import Path

from lrp_cli import kinds
from lrp_cli.explanation import Settings


def inspect_model(path, composite: str | None = None, verify: bool = False) -> tuple[dict, str]:
    """Returns (the inspection report, its text) of the model file at path; ModelLoadError when there is none."""
    kind = kinds.kind_for(path)
    report = kind.describe(Path(path), Settings(composite=composite), verify)
    return report, kind.format_description(report)
