"""The random baseline: a seeded uniform map, the floor any explanation method must beat."""

from __future__ import annotations

import numpy as np

from lrp_cli.methods.base import Method, MethodInput
from lrp_cli.propagate import Propagation


class RandomMap(Method):
    """U(0, 1) per pixel from numpy's default_rng(--seed) (default 0), spread over the input channels; inputs
    that are not images get one value per element."""

    name = "random"
    defaults = {"seed": 0}

    def explain(self, job: MethodInput, target: int) -> Propagation:
        """Returns the random map (independent of the target, reproducible for a seed)."""
        rng = np.random.default_rng(job.options["seed"])
        if len(job.graph.input_shape) != 4:
            return Propagation(rng.uniform(size=job.x.shape).astype(job.x.dtype), job.score(target), [])
        _, height, width = job.image_shape(self.name)
        return Propagation(job.spread(rng.uniform(size=(height, width))), job.score(target), [])
