"""Occlusion (Zeiler & Fergus 2014): slide a patch filled with the preset's mean pixel over the input; a pixel's
relevance is the mean drop of the target score over the patches that cover it."""

from __future__ import annotations

import math

import numpy as np

from lrp_cli.ir.windows import tile_positions
from lrp_cli.errors import OptionError
from lrp_cli.methods.base import Method, MethodInput
from lrp_cli.propagate import Propagation
from lrp_cli.scoring import DEFAULT_CHUNK, score_batch

#: Default patch: the input side over this (16 px at 224, 3 px at 32), so the map has the same grain at any size.
PATCHES_PER_SIDE = 14


def default_patch(height: int, width: int) -> int:
    """Returns the default patch side: ceil(min(H, W) / 14)."""
    return max(1, math.ceil(min(height, width) / PATCHES_PER_SIDE))


def patch_origins(height: int, width: int, patch: int, stride: int) -> list[tuple[int, int]]:
    """Returns the (top, left) of every patch: every `stride` px, plus one flush with the far border."""
    rows, cols = tile_positions(height, patch, stride), tile_positions(width, patch, stride)
    return [(top, left) for top in rows for left in cols]


def occlusion_map(score, x: np.ndarray, fill: np.ndarray, patch: int, stride: int) -> np.ndarray:
    """Returns the [H, W] mean score drop of the patches covering each pixel.

    `score(batch)` gives the target score of an NCHW batch; `x` is one [C, H, W] input, `fill` its [C] patch value.
    """
    _, height, width = x.shape
    origins = patch_origins(height, width, patch, stride)
    base = score(x[None])[0]
    drops = []
    for start in range(0, len(origins), DEFAULT_CHUNK):  # a chunk of occluded copies at a time bounds memory
        chunk = origins[start:start + DEFAULT_CHUNK]
        batch = np.repeat(x[None], len(chunk), axis=0)
        for i, (top, left) in enumerate(chunk):
            batch[i, :, top:top + patch, left:left + patch] = fill[:, None, None]
        drops.append(base - score(batch))
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    for (top, left), drop in zip(origins, np.concatenate(drops)):
        total[top:top + patch, left:left + patch] += drop
        count[top:top + patch, left:left + patch] += 1
    return total / np.maximum(count, 1)


class Occlusion(Method):
    """Occlusion with --patch N (default ceil(min(H, W) / 14)) and --stride S (default half the patch)."""

    name = "occlusion"
    defaults = {"patch": None, "stride": None}

    def options_for(self, job: MethodInput) -> dict:
        """Returns patch and stride, the defaults derived from the input size."""
        _, height, width = job.image_shape(self.name)
        patch = job.options["patch"] or default_patch(height, width)
        if patch > min(height, width):
            raise OptionError(f"--patch {patch}: larger than the {height}x{width} model input")
        return {"patch": patch, "stride": job.options["stride"] or max(1, math.ceil(patch / 2))}

    def explain(self, job: MethodInput, target: int) -> Propagation:
        """Returns the occlusion map of the target, each channel holding map / C."""
        options = self.options_for(job)
        channels = job.image_shape(self.name)[0]
        fill = job.config.mean_pixel(channels).astype(np.float32)

        def score(batch):
            return score_batch(job.model, job.model_layout(batch))[:, target]
        x = job.nchw(job.x.astype(np.float32))[0]
        heat = occlusion_map(score, x, fill, options["patch"], options["stride"])
        return Propagation(job.spread(heat), job.score(target), [])
