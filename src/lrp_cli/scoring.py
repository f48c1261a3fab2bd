"""Class scores of many inputs at once, for any model kind (`Model.score_batch`): perturbation methods and
pixel-flipping curves score hundreds of perturbed copies of one input in batched runs."""

from __future__ import annotations

import numpy as np

from lrp_cli.explanation import Settings
from lrp_cli.kinds.onnx_scoring import DEFAULT_CHUNK


def score_batch(model, xs: np.ndarray, chunk: int = DEFAULT_CHUNK, tiling: dict | None = None) -> np.ndarray:
    """Returns the [N, K] class scores of N inputs: for ONNX models the pre-softmax scores (the tensor the IR
    explains) of model inputs in the model-input layout, scored in runs of at most `chunk`; for BoW pipelines the
    decision values of [N, H, W, 3] RGB images in [0, 1], averaged over tiles (`tiling`: Settings.tiling)."""
    return model.score_batch(xs, Settings(tiling=tiling or {}), chunk)
