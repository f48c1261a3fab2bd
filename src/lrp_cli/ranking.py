"""Per-input faithfulness measures of `lrp evaluate` and a ranking of the methods with uncertainty.

The MoRF-LeRF area (Bluecher et al. 2024, "Decoupling pixel flipping and occlusion strategy for consistent XAI
benchmarks") is the mean over the steps of f(x_LeRF,k) - f(x_MoRF,k): the area between the two curves, which ranks
methods consistently where either curve alone depends on the fill. Methods are compared on the same inputs: the
paired differences of a measure, their mean, and a seeded percentile-bootstrap confidence interval of that mean.
"""

from __future__ import annotations

import numpy as np

#: measure -> (the order whose curves it reads, +1 when larger is better, -1 when smaller is)
MEASURES = {"morf_lerf_area": (None, 1), "aopc_morf": ("morf", 1), "aopc_lerf": ("lerf", -1),
            "aopc_negative": ("negative", 1)}
RESAMPLES = 10_000
CONFIDENCE = 0.95


def _key(run: dict) -> tuple:
    return run["input"], run["method"], run["target"]


def add_morf_lerf_areas(runs: list[dict]) -> None:
    """Sets `morf_lerf_area` on each MoRF and LeRF run whose partner curve (same input, method, target) is there:
    the mean over steps of the LeRF score minus the MoRF score, i.e. AOPC MoRF - AOPC LeRF."""
    curves = {(_key(run), run["order"]): run for run in runs}
    for (key, order), run in curves.items():
        if order in ("morf", "lerf") and (key, "morf") in curves and (key, "lerf") in curves:
            morf, lerf = curves[key, "morf"]["scores"], curves[key, "lerf"]["scores"]
            run["morf_lerf_area"] = float(np.mean(np.asarray(lerf, np.float64) - np.asarray(morf, np.float64)))


def measure_values(runs: list[dict], measure: str) -> dict[str, dict[tuple, float]]:
    """Returns method -> {(input, target): the measure}, in first-seen method order."""
    order, _ = MEASURES[measure]
    values: dict[str, dict[tuple, float]] = {}
    for run in runs:
        if order is None and "morf_lerf_area" in run and run["order"] == "morf":
            values.setdefault(run["method"], {})[run["input"], run["target"]] = run["morf_lerf_area"]
        elif order is not None and run["order"] == order:
            values.setdefault(run["method"], {})[run["input"], run["target"]] = run["aopc"]
    return values


def bootstrap_interval(differences: np.ndarray, seed: int, resamples: int = RESAMPLES,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Returns the percentile-bootstrap interval of the mean of `differences`: `resamples` resamples with
    replacement drawn by numpy's default_rng(seed), the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles."""
    differences = np.asarray(differences, np.float64)
    picks = np.random.default_rng(seed).integers(0, differences.size, size=(resamples, differences.size))
    means = differences[picks].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def compare(first: str, second: str, values: dict[str, dict[tuple, float]], sign: int, seed: int) -> dict:
    """Returns the paired comparison of two methods over their common inputs: n, the mean difference (first -
    second, oriented so positive means the first is better), its bootstrap CI and the verdict."""
    common = [key for key in values[first] if key in values[second]]
    differences = sign * np.array([values[first][key] - values[second][key] for key in common])
    entry = {"first": first, "second": second, "n": len(common),
             "mean_difference": float(differences.mean()) if common else None, "ci": None}
    if len(common) < 2:
        return entry | {"verdict": "not separated (fewer than 2 common inputs)"}
    low, high = bootstrap_interval(differences, seed)
    entry["ci"] = [low, high]
    if low > 0:
        return entry | {"verdict": f"{first} > {second}"}
    if high < 0:
        return entry | {"verdict": f"{second} > {first}"}
    return entry | {"verdict": "not separated"}


def rank(runs: list[dict], measure: str, seed: int) -> dict | None:
    """Returns the ranking by one measure (None when no run carries it): the methods from best to worst by their
    mean, and every pair compared, the better mean first."""
    values = measure_values(runs, measure)
    if not values:
        return None
    _, sign = MEASURES[measure]
    means = {method: float(np.mean(list(v.values()))) for method, v in values.items()}
    ordered = sorted(means, key=lambda method: -sign * means[method])
    pairs = [compare(a, b, values, sign, seed) for i, a in enumerate(ordered) for b in ordered[i + 1:]]
    return {"measure": measure, "better": "larger" if sign > 0 else "smaller", "confidence": CONFIDENCE,
            "resamples": RESAMPLES, "seed": seed, "methods": [{"method": m, "mean": means[m]} for m in ordered],
            "pairs": pairs}


def rankings(runs: list[dict], seed: int) -> list[dict]:
    """Returns the ranking by every measure the runs carry: the MoRF-LeRF area first, then AOPC per order."""
    return [r for r in (rank(runs, measure, seed) for measure in MEASURES) if r is not None]


def verdict_line(pair: dict, confidence: float = CONFIDENCE) -> str:
    """Returns e.g. "lrp > gradient: 95 % CI [0.41, 1.52]" or "lrp vs occlusion: not separated, 95 % CI [...]"."""
    interval = "" if pair["ci"] is None else f"{confidence * 100:.0f} % CI [{pair['ci'][0]:.3g}, {pair['ci'][1]:.3g}]"
    if pair["verdict"].startswith("not separated"):
        return f"{pair['first']} vs {pair['second']}: {pair['verdict']}" + (f", {interval}" if interval else "")
    return f"{pair['verdict']}: {interval}"
