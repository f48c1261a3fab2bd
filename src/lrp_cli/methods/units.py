"""Model-agnostic relevance over deletable units (a text's words) for `lrp evaluate`, computed from a keep-mask
scorer (kinds.base.UnitInput.score: [M, n] bool -> [M, K] decision values, one model call for all M copies).

- occlusion: leave one unit out; R_i = f(x) - f(x without unit i).
- lime: LIME as the `lime` package's LimeTextExplainer(bow=False) samples a text: per sample a number of units
  to remove drawn from 1..n (RandomState(seed).randint), then that many units without replacement (.choice), the
  first sample keeping all; samples weighted by sqrt(exp(-d^2 / 0.25^2)), d the cosine distance to the all-on
  sample (lime's distance x 100 with kernel width 25 is the same); a ridge fit (alpha 1) of the target's
  decision value on the on/off patterns gives each unit's weight.
- random: U(0, 1) per unit from numpy's default_rng(seed), the floor any method must beat.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from lrp_cli.methods.lime import Lime, fit_weights

#: The methods this module computes, with the options they take (the CLI's --seed; LIME's sample count).
UNIT_METHODS = ("occlusion", "lime", "random")
LIME_SAMPLES = Lime.defaults["samples"]

KeepScorer = Callable[[np.ndarray], np.ndarray]


def occlusion(score: KeepScorer, n: int, target: int) -> np.ndarray:
    """Returns per unit the decision's drop when that unit alone is perturbed: f(x) - f(x without unit i)."""
    keep = np.ones((n + 1, n), dtype=bool)
    keep[np.arange(1, n + 1), np.arange(n)] = False
    values = np.asarray(score(keep), dtype=np.float64)[:, target]
    return values[0] - values[1:]


def lime_patterns(n: int, samples: int, seed: int) -> np.ndarray:
    """Returns the [samples, n] 0/1 patterns LimeTextExplainer draws for a text of n units (first: all on)."""
    rng = np.random.RandomState(seed)
    sizes = rng.randint(1, n + 1, samples - 1)
    patterns = np.ones((samples, n))
    for row, size in enumerate(sizes, start=1):  # one draw per sample, in lime's order of RandomState calls
        patterns[row, rng.choice(range(n), size, replace=False)] = 0
    return patterns


def lime(score: KeepScorer, n: int, target: int, seed: int = 0, samples: int = LIME_SAMPLES) -> np.ndarray:
    """Returns LIME's weight per unit (LimeTextExplainer's sampling and ridge fit on the target's decision)."""
    patterns = lime_patterns(n, samples, seed)
    values = np.asarray(score(patterns.astype(bool)), dtype=np.float64)[:, target]
    return fit_weights(patterns, values)


def random(n: int, seed: int = 0) -> np.ndarray:
    """Returns a seeded U(0, 1) value per unit."""
    return np.random.default_rng(seed).uniform(size=n)


def unit_relevance(method: str, score: KeepScorer, n: int, target: int, seed: int = 0) -> np.ndarray:
    """Returns the relevance per unit of one of UNIT_METHODS."""
    if method == "occlusion":
        return occlusion(score, n, target)
    if method == "lime":
        return lime(score, n, target, seed)
    return random(n, seed)
