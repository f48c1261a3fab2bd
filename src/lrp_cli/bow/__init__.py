"""Bag-of-visual-words image classifiers (dense SIFT, codebook, p-means pooling, kernel SVM) and their LRP.

Import the building blocks from here so pickled pipelines always resolve to the same module paths. They load
on first use, so that the command line starts without importing scikit-learn.
"""

import importlib

_HOMES = {
    "CodebookMapping": "codebook", "MappedSet": "codebook",
    "DenseFeatures": "features", "FeatureGroup": "features", "LocalFeatureSet": "features",
    "BowKernel": "kernels", "additive_chi2_kernel": "kernels", "chi2_kernel": "kernels", "hik_kernel": "kernels",
    "linear_kernel": "kernels", "rbf_kernel": "kernels",
    "PMeansPooling": "pooling",
}
__all__ = sorted(_HOMES)


def __getattr__(name):
    """Returns a building block, importing its module on first use."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
