"""`--batch-size N` for ONNX models: inputs of one model-input shape explained in one pass on either engine.

The work is the ONNX kind's (kinds/onnx_explain.py, OnnxModel.for_batch); these names stay for scripts and tests.
"""

from __future__ import annotations

from lrp_cli.kinds.onnx_explain import BATCHED_METHODS, NotBatchable, explain_arrays

__all__ = ["BATCHED_METHODS", "NotBatchable", "batch_model", "explain_arrays"]


def batch_model(model, size: int):
    """Returns the ONNX model re-bound to batches of `size` (cached), or None when its graph does not take it."""
    return model.for_batch(size)
