"""The reference engine: the NumPy walk of `propagate.py` (LRP) and `methods/gradient.py`, in float32 or float64."""

from __future__ import annotations

from lrp_cli.errors import OptionError
from lrp_cli.ir.graph import Graph
from lrp_cli.methods.gradient import METHODS
from lrp_cli.propagate import Propagation, propagate


def backward(method: str, graph: Graph, values, target: int, rules) -> Propagation:
    """Returns the input relevance of `method` for the target, given a NumPy forward pass `values`."""
    if method == "lrp":
        return propagate(graph, values, target, rules)
    try:
        return METHODS[method](graph, values, target)
    except NotImplementedError as exc:
        raise OptionError(f"--method {method}: {exc}") from None
