"""LIME for images (Ribeiro et al. 2016), as the `lime` package's LimeImageExplainer does it by default.

Superpixels by quickshift (kernel_size 4, max_dist 200, ratio 0.2); samples switch superpixels off at random
(numpy RandomState(seed).randint, first sample all on); an off superpixel takes its own per-channel mean; samples
are weighted by sqrt(exp(-d^2 / 0.25^2)) with d the cosine distance to the all-on sample; a ridge regression
(alpha 1) of the target score on the on/off pattern gives each superpixel's weight. The score is the
pre-softmax target score (the tensor the IR explains), not a probability.
"""

from __future__ import annotations

import numpy as np

from lrp_cli.methods.base import SCORE_CHUNK, Method, MethodInput
from lrp_cli.preprocess import tensor_to_display
from lrp_cli.propagate import Propagation

KERNEL_WIDTH = 0.25
QUICKSHIFT = {"kernel_size": 4, "max_dist": 200, "ratio": 0.2}


def superpixels(rgb: np.ndarray, seed: int) -> np.ndarray:
    """Returns the [H, W] quickshift segmentation of an RGB image in [0, 1], labels 0..F-1."""
    from skimage.segmentation import quickshift
    segments = quickshift(rgb, rng=seed, **QUICKSHIFT)
    return np.unique(segments, return_inverse=True)[1].reshape(segments.shape)


def sample_patterns(features: int, samples: int, seed: int) -> np.ndarray:
    """Returns the [samples, features] 0/1 on-off patterns; the first sample keeps every superpixel on."""
    patterns = np.random.RandomState(seed).randint(0, 2, samples * features).reshape(samples, features)
    patterns[0, :] = 1
    return patterns


def kernel_weights(patterns: np.ndarray) -> np.ndarray:
    """Returns sqrt(exp(-d^2 / width^2)), d the cosine distance of each pattern to the all-on pattern (d = 1 for
    the all-off pattern, as scikit-learn's cosine distance)."""
    on = patterns.sum(axis=1)
    distance = 1 - np.sqrt(on / patterns.shape[1])
    return np.sqrt(np.exp(-distance ** 2 / KERNEL_WIDTH ** 2))


def segment_means(x: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Returns the [C, H, W] image in which every pixel holds its superpixel's per-channel mean."""
    counts = np.bincount(segments.ravel())
    means = np.stack([np.bincount(segments.ravel(), channel.ravel()) / counts for channel in x])
    return means[:, segments].astype(x.dtype)


def superpixel_weights(score, x: np.ndarray, segments: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """Returns LIME's weight of each superpixel: the weighted ridge fit of the target score on the patterns.

    `score(batch)` gives the target score of an NCHW batch; `x` is one [C, H, W] input.
    """
    patterns = sample_patterns(int(segments.max()) + 1, samples, seed)
    return fit_weights(patterns, pattern_scores(score, x, segments, patterns))


def pattern_scores(score, x: np.ndarray, segments: np.ndarray, patterns: np.ndarray) -> np.ndarray:
    """Returns the scores of the samples, [S] or [S, K] as `score` gives one value or a row per input: each
    sample is x with its off superpixels set to their means."""
    hidden = segment_means(x, segments)
    scores = []
    for start in range(0, len(patterns), SCORE_CHUNK):
        keep = patterns[start:start + SCORE_CHUNK][:, segments].astype(bool)[:, None]
        scores.append(score(np.where(keep, x[None], hidden[None])))
    return np.concatenate(scores)


def fit_weights(patterns: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Returns the superpixel weights: the kernel-weighted ridge fit (alpha 1) of [S] scores on the patterns."""
    from sklearn.linear_model import Ridge
    return Ridge(alpha=1.0).fit(patterns, scores, sample_weight=kernel_weights(patterns)).coef_


class Lime(Method):
    """LIME with --samples (default 1000) and --seed (default 0); a superpixel's weight is spread evenly over
    its pixels (each pixel gets weight / its superpixel's size)."""

    name = "lime"
    defaults = {"samples": 1000, "seed": 0}

    def explain(self, job: MethodInput, target: int) -> Propagation:
        """Returns the LIME map of the target, each channel holding map / C; the segmentation and the samples'
        scores (every class) are computed once per input, so more targets cost no more forwards."""
        job.image_shape(self.name)
        samples, seed = job.options["samples"], job.options["seed"]

        def sampled():
            x = job.nchw(job.x.astype(np.float32))
            segments = superpixels(np.asarray(tensor_to_display(x, job.config), dtype=np.float64) / 255, seed)
            patterns = sample_patterns(int(segments.max()) + 1, samples, seed)
            scores = pattern_scores(lambda batch: job.scores(job.model_layout(batch)), x[0], segments,
                                    patterns)
            return segments, patterns, scores
        segments, patterns, scores = job.once((self.name, samples, seed), sampled)
        weights = fit_weights(patterns, scores[:, target])
        sizes = np.bincount(segments.ravel())
        return Propagation(job.spread(weights[segments] / sizes[segments]), job.score(target), [])
