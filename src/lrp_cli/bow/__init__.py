"""Bag-of-visual-words image classifiers (dense SIFT, codebook, p-means pooling, kernel SVM) and their LRP.

Import the building blocks from here so pickled pipelines always resolve to the same module paths.
"""

from lrp_cli.bow.codebook import CodebookMapping, MappedSet
from lrp_cli.bow.features import DenseFeatures, FeatureGroup, LocalFeatureSet
from lrp_cli.bow.kernels import (
    BowKernel,
    additive_chi2_kernel,
    chi2_kernel,
    hik_kernel,
    linear_kernel,
    rbf_kernel,
)
from lrp_cli.bow.pooling import PMeansPooling

__all__ = [
    "BowKernel",
    "CodebookMapping",
    "DenseFeatures",
    "FeatureGroup",
    "LocalFeatureSet",
    "MappedSet",
    "PMeansPooling",
    "additive_chi2_kernel",
    "chi2_kernel",
    "hik_kernel",
    "linear_kernel",
    "rbf_kernel",
]
