"""Layer-wise Relevance Propagation (Bach et al. 2015) as a method of the registry: the rules of the settings."""

from __future__ import annotations

from lrp_cli.methods.base import Method, MethodInput
from lrp_cli.propagate import Propagation, propagate


class Lrp(Method):
    """LRP with the per-layer rules that model kind assigned (composite, --rule, --layer-rule)."""

    name = "lrp"

    def explain(self, job: MethodInput, target: int) -> Propagation:
        """Returns the input relevance of the target under the job's rules."""
        return propagate(job.graph, job.values, target, job.rules)
