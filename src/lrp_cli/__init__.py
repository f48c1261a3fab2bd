"""lrp-cli: Layer-wise Relevance Propagation heatmaps for exported image classifiers."""

__version__ = "0.1.0"
