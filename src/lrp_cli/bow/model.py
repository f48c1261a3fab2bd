"""A loaded bag-of-visual-words pipeline (what importers/sklearn_bow.py gives and bow/explain.py explains), its
error type and the format tag train-bow writes."""

from __future__ import annotations

from dataclasses import dataclass, field

from lrp_cli.bow.classifier import is_one_vs_one
from lrp_cli.bow.codebook import CodebookMapping
from lrp_cli.bow.features import DenseFeatures
from lrp_cli.bow.pooling import PMeansPooling

FORMAT = "lrp-cli/sklearn-bow"


class BowModelError(Exception):
    """A BoW model file that cannot be loaded or explained; the message is one line naming the file."""


@dataclass
class BowModel:
    """A loaded BoW pipeline plus what the CLI needs to know about it."""

    pipeline: object  # sklearn.pipeline.Pipeline
    path: str
    classes: list
    metadata: dict = field(default_factory=dict)
    kind: str = "sklearn-bow"
    input_size: tuple | None = None

    @property
    def features(self) -> DenseFeatures:
        """Return the local-feature extraction step."""
        return self.pipeline.steps[0][1]

    @property
    def mapping(self) -> CodebookMapping:
        """Return the codebook-mapping step."""
        return self.pipeline.steps[1][1]

    @property
    def pooling(self) -> PMeansPooling:
        """Return the pooling step."""
        return self.pipeline.steps[2][1]

    @property
    def classifier(self):
        """Return the final SVM (SVC, NuSVC or OneVsRestClassifier)."""
        return self.pipeline.steps[-1][1]

    @property
    def one_vs_one(self) -> bool:
        """Return True when the classifier is a native one-vs-one multi-class SVM (needs a pair)."""
        return is_one_vs_one(self.classifier)
