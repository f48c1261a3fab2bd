"""The reference engine: every method of the registry (`lrp_cli.methods`) on a NumPy forward pass, in float32 or
float64 (the LRP walk of `propagate.py`, the gradients of `methods/gradient.py`, and the perturbation methods)."""

from __future__ import annotations

from lrp_cli.errors import OptionError
from lrp_cli.methods.base import Method, MethodInput
from lrp_cli.propagate import Propagation


def backward(method: Method, job: MethodInput, target: int) -> Propagation:
    """Returns the input relevance of `method` for the target, given the forward pass and rules in `job`."""
    try:
        return method.explain(job, target)
    except NotImplementedError as exc:
        raise OptionError(f"--method {method.name}: {exc}") from None
