"""Occlusion (Zeiler & Fergus 2014): slide a patch filled with the preset's mean pixel over the input; a pixel's
relevance is the mean drop of the target score over the patches that cover it."""

from __future__ import annotations

import math

import numpy as np

from lrp_cli.ir.windows import tile_positions
from lrp_cli.errors import OptionError
from lrp_cli.methods.base import SCORE_CHUNK, Method, MethodInput
from lrp_cli.propagate import Propagation

#: Default patch: the input side over this (16 px at 224, 3 px at 32), so the map has the same grain at any size.
PATCHES_PER_SIDE = 14


def default_patch(height: int, width: int) -> int:
    """Returns the default patch side: ceil(min(H, W) / 14)."""
    return max(1, math.ceil(min(height, width) / PATCHES_PER_SIDE))


def patch_origins(height: int, width: int, patch: int, stride: int) -> list[tuple[int, int]]:
    """Returns the (top, left) of every patch: every `stride` px, plus one flush with the far border."""
    rows, cols = tile_positions(height, patch, stride), tile_positions(width, patch, stride)
    return [(top, left) for top in rows for left in cols]


def occlusion_drops(score, x: np.ndarray, fill: np.ndarray, origins: list, patch: int) -> np.ndarray:
    """Returns f(x) - f(x occluded) for each patch origin: [P] or [P, K], as `score` gives one value or a row.

    `score(batch)` scores an NCHW batch; `x` is one [C, H, W] input, `fill` its [C] patch value.
    """
    base = score(x[None])[0]
    drops = []
    for start in range(0, len(origins), SCORE_CHUNK):  # a chunk of occluded copies at a time bounds memory
        chunk = origins[start:start + SCORE_CHUNK]
        batch = np.repeat(x[None], len(chunk), axis=0)
        for i, (top, left) in enumerate(chunk):
            batch[i, :, top:top + patch, left:left + patch] = fill[:, None, None]
        drops.append(base - score(batch))
    return np.concatenate(drops)


def spread_drops(origins: list, drops: np.ndarray, shape: tuple[int, int], patch: int) -> np.ndarray:
    """Returns the [H, W] mean of the [P] drops of the patches covering each pixel."""
    total = np.zeros(shape)
    count = np.zeros(shape)
    for (top, left), drop in zip(origins, drops):
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
        """Returns the occlusion map of the target, each channel holding map / C; the occluded copies are scored
        once per input, for every class, so more targets cost no more forwards."""
        options = self.options_for(job)
        channels, height, width = job.image_shape(self.name)
        origins = patch_origins(height, width, options["patch"], options["stride"])

        def drops():
            fill = job.config.mean_pixel(channels).astype(np.float32)
            x = job.nchw(job.x.astype(np.float32))[0]
            return occlusion_drops(lambda batch: job.scores(job.model_layout(batch)), x, fill, origins,
                                   options["patch"])
        all_drops = job.once((self.name, options["patch"], options["stride"]), drops)
        heat = spread_drops(origins, all_drops[:, target], (height, width), options["patch"])
        return Propagation(job.spread(heat), job.score(target), [])
