"""Pixel flipping (paper section "Pixel flipping experiments", Figs 18-24) and AOPC (Samek et al. 2017).

A relevance map orders the input's units (pixels with all their channels, or P x P patches with the map summed
over the patch); the first k/N of the units in that order (or of a prefix of them: --units, --max-fraction) are
replaced by a perturbation, for k = 0..N, and the model scores every perturbed input in one batched run. The curve
of the target's pre-softmax score f(x_k) shows how fast the explanation finds what the model needs;
AOPC = mean_k (f(x_0) - f(x_k)) sums it up. `--protocol samek2017` fixes units, prefix and fill to the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from lrp_cli.errors import InputError, OptionError
from lrp_cli.explanation import Settings
from lrp_cli.kinds.base import Subject, UnitInput, Unsupported
from lrp_cli.kinds.bow_model import bow_subject as bow_subject  # the kinds' Subjects, by their former names here
from lrp_cli.kinds.onnx_model import onnx_subject as onnx_subject

from lrp_cli.methods.units import UNIT_METHODS

#: Sort keys per order; a stable ascending argsort of the key puts equal keys in flat-index order.
ORDER_KEYS = {
    "morf": lambda r: -r,  # most relevant first (Figs 18/19)
    "lerf": np.abs,  # |R| closest to zero first (Fig 20)
    "negative": lambda r: r,  # most negative first (Figs 21/24)
}
#: Perturbations of a picture's pixels; a kind whose inputs are units (a text's words) names its own
#: (Model.unit_perturbations, e.g. delete and unk), which the command line lists after these.
PERTURBATIONS = ("flip", "mean", "uniform", "blur", "road")
UNIT_PERTURBATIONS = ("delete", "unk")
PROTOCOLS = ("samek2017",)
#: Samek et al. 2017: 9 x 9 regions of a 224 x 224 input, uniform noise, AOPC over the first L = 100 regions (a
#: step each); smaller inputs get regions scaled by their side / 224, so about as many of them tile the input.
SAMEK_REGION, SAMEK_SIDE, SAMEK_STEPS = 9, 224, 100
#: The command's defaults, chosen by the measurements in docs/evaluate-protocols.md: ROAD's fill (the random order's
#: MoRF-LeRF area ~0, LRP separated from random by the widest margins) over all pixels in ROAD's 10 steps (each
#: step one sparse solve); the other fills keep the paper's 100 steps.
DEFAULT_PERTURBATION, ROAD_STEPS, STEPS = "road", 10, 100
#: Scores a stack of model inputs [N, ...] (model layout): returns [N, classes] pre-softmax scores.
Scorer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class FlipSettings:
    """How to perturb: the orders, the perturbation, the unit size, the number of steps, the seed, blur width; the
    prefix of the units the curve covers (a count or a fraction; None: all) and whether a full-range curve is
    scored beside a prefix; the protocol that fixes these per input size (`for_image`). The field defaults are
    the paper's pixel flipping; the command's defaults are flip_settings'."""

    orders: tuple[str, ...] = ("morf", "lerf")
    perturbation: str = "flip"
    patch: int = 1
    steps: int = 100
    seed: int = 0
    blur_sigma: float | None = None
    units: int | None = None
    max_fraction: float | None = None
    full_range: bool = True
    protocol: str | None = None

    def __post_init__(self):
        unknown = [o for o in self.orders if o not in ORDER_KEYS]
        if unknown or not self.orders:
            raise OptionError(f"--order {','.join(self.orders)}: unknown order '{(unknown or [''])[0]}'; "
                              f"orders: {', '.join(ORDER_KEYS)}")
        if self.perturbation not in PERTURBATIONS + UNIT_PERTURBATIONS:
            raise OptionError(f"--perturbation {self.perturbation}: choose one of "
                              f"{', '.join(PERTURBATIONS + UNIT_PERTURBATIONS)}")
        if self.patch < 1 or self.steps < 1:
            raise OptionError(f"--patch {self.patch} / --steps {self.steps}: both must be at least 1")
        if self.blur_sigma is not None and not self.blur_sigma > 0:
            raise OptionError(f"--blur-sigma {self.blur_sigma}: must be positive")
        if self.units is not None and self.max_fraction is not None:
            raise OptionError("--units and --max-fraction both set the prefix: give one")
        if self.units is not None and self.units < 1:
            raise OptionError(f"--units {self.units}: must be at least 1")
        if self.max_fraction is not None and not 0 < self.max_fraction <= 1:
            raise OptionError(f"--max-fraction {self.max_fraction}: must be in (0, 1]")
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise OptionError(f"--protocol {self.protocol}: choose one of {', '.join(PROTOCOLS)}")

    def for_image(self, image_shape: tuple[int, int]) -> "FlipSettings":
        """Returns the settings in force for an H x W input: the protocol's regions, prefix and steps filled in."""
        if self.protocol is None:
            return self
        return replace(self, patch=samek_region(image_shape), units=SAMEK_STEPS, steps=SAMEK_STEPS, protocol=None)

    def prefix(self, total: int) -> int:
        """Returns how many of `total` units the curve covers: --units (at most all), round(--max-fraction x
        total) (at least one), else all."""
        if self.units is not None:
            return min(self.units, total)
        if self.max_fraction is not None:
            return max(1, min(total, round(self.max_fraction * total)))
        return total


def flip_settings(orders: str, protocol: str | None, perturbation: str | None, patch: int | None,
                  steps: int | None, max_fraction: float | None, units: int | None, seed: int = 0,
                  blur_sigma: float | None = None) -> FlipSettings:
    """Returns the FlipSettings of the command's options (None: not given): by default ROAD's fill in ROAD_STEPS
    steps (uniform noise under a protocol; STEPS steps for the other fills); a protocol sets the patch, steps and
    prefix itself, so giving one of those beside it is an OptionError."""
    if protocol is not None:
        given = [name for name, value in (("--patch", patch), ("--steps", steps), ("--max-fraction", max_fraction),
                                          ("--units", units)) if value is not None]
        if given:
            raise OptionError(f"--protocol {protocol} sets the regions, steps and prefix: drop {', '.join(given)}")
    perturbation = perturbation or ("uniform" if protocol is not None else DEFAULT_PERTURBATION)
    steps = steps or (ROAD_STEPS if perturbation == "road" and protocol is None else STEPS)
    return FlipSettings(tuple(o.strip() for o in orders.split(",")), perturbation, patch or 1, steps, seed,
                        blur_sigma, units, max_fraction, True, protocol)


def samek_region(image_shape: tuple[int, int]) -> int:
    """Returns the side of Samek et al.'s regions for an H x W input: 9 at 224, scaled by min(H, W) / 224 (at
    least 1 pixel)."""
    return max(1, round(SAMEK_REGION * min(image_shape) / SAMEK_SIDE))


def protocol_note(settings: FlipSettings, image_shape: tuple[int, int] | None) -> str | None:
    """Returns the line that says what the protocol became for this input size (None without a protocol)."""
    if settings.protocol is None:
        return None
    if image_shape is None:
        return (f"{settings.protocol}: {SAMEK_REGION}x{SAMEK_REGION} regions at {SAMEK_SIDE}x{SAMEK_SIDE}, scaled "
                f"per image by min(H, W) / {SAMEK_SIDE}; the first {SAMEK_STEPS} regions, one a step")
    region = samek_region(image_shape)
    rows, cols = (-(-side // region) for side in image_shape)
    scaled = (f"scaled to {region}x{region} for the {image_shape[0]}x{image_shape[1]} input"
              if region != SAMEK_REGION else f"on the {image_shape[0]}x{image_shape[1]} input")
    return (f"{settings.protocol}: {SAMEK_REGION}x{SAMEK_REGION} regions (at {SAMEK_SIDE}x{SAMEK_SIDE}) {scaled}, "
            f"{rows * cols} regions; the first {min(SAMEK_STEPS, rows * cols)} perturbed, one a step, "
            f"{settings.perturbation}")


@dataclass
class Curve:
    """One pixel-flipping curve: per step the fraction of units perturbed, the target's pre-softmax score, its
    softmax probability and the predicted class; and its AOPC."""

    fractions: np.ndarray
    scores: np.ndarray
    probabilities: np.ndarray
    predicted: np.ndarray
    #: the curve over all units, scored beside a prefix curve (None when the curve covers them all)
    full_range: "Curve | None" = None
    aopc: float = field(init=False)

    def __post_init__(self):
        self.aopc = aopc(self.scores)


def aopc(scores: np.ndarray) -> float:
    """Returns the area over the perturbation curve: the mean over steps k = 0..N of f(x_0) - f(x_k)."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(np.mean(scores[0] - scores))


def unit_relevance(pixel_map: np.ndarray, patch: int) -> np.ndarray:
    """Returns the [ceil(H/P), ceil(W/P)] map of relevance summed over each P x P patch (edge patches smaller)."""
    height, width = pixel_map.shape
    rows, cols = -(-height // patch), -(-width // patch)
    padded = np.zeros((rows * patch, cols * patch), dtype=np.float64)
    padded[:height, :width] = pixel_map
    return padded.reshape(rows, patch, cols, patch).sum(axis=(1, 3))


def unit_order(units: np.ndarray, order: str) -> np.ndarray:
    """Returns the flat unit indices in perturbation order; ties keep the lower flat index first."""
    return np.argsort(ORDER_KEYS[order](units.ravel()), kind="stable")


def flip_counts(units: int, steps: int) -> np.ndarray:
    """Returns how many units are perturbed at steps k = 0..N: floor(k * units / N), from 0 to all of them."""
    return np.arange(steps + 1) * units // steps


def pixel_ranks(order: np.ndarray, unit_shape: tuple[int, int], patch: int,
                image_shape: tuple[int, int]) -> np.ndarray:
    """Returns the [H, W] position in the perturbation order of the unit each pixel belongs to."""
    ranks = np.empty(order.size, dtype=np.int64)
    ranks[order] = np.arange(order.size)
    grid = ranks.reshape(unit_shape)
    return np.repeat(np.repeat(grid, patch, axis=0), patch, axis=1)[:image_shape[0], :image_shape[1]]


def fill_values(subject: Subject, settings: FlipSettings) -> np.ndarray:
    """Returns the [1, C, H, W] values a perturbed pixel takes: flipped in its channel's range (lo + hi - x),
    the mean, seeded uniform noise in [lo, hi], or the Gaussian-blurred input; for road, the seeded noise field
    added to the imputed pixels (ROAD's standard deviation, `road.noise_std`)."""
    x = subject.x.astype(np.float64)
    low, high = subject.low[:, None, None], subject.high[:, None, None]
    if settings.perturbation == "flip":
        return low + high - x
    if settings.perturbation == "mean":
        return np.broadcast_to(subject.mean[:, None, None], x.shape).copy()
    if settings.perturbation == "uniform":
        return np.random.default_rng(settings.seed).uniform(low, high, size=x.shape)
    if settings.perturbation == "road":
        from lrp_cli.road import noise_std
        return np.random.default_rng(settings.seed).standard_normal(x.shape) * \
            noise_std(subject.low, subject.high)[:, None, None]
    from scipy.ndimage import gaussian_filter
    return gaussian_filter(x, sigma=(0, 0) + (blur_sigma(settings, x.shape[2:]),) * 2, mode="nearest")


def blur_sigma(settings: FlipSettings, image_shape: tuple[int, int]) -> float:
    """Returns the Gaussian blur's standard deviation in pixels: --blur-sigma, else max(H, W) / 32."""
    return settings.blur_sigma if settings.blur_sigma is not None else max(image_shape) / 32


def perturbed_inputs(x: np.ndarray, fill: np.ndarray, ranks: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Returns the [N+1, C, H, W] stack whose k-th input has the pixels of rank < counts[k] taken from `fill`."""
    masks = ranks[None, None] < counts[:, None, None, None]
    return np.where(masks, fill, x)


def softmax(scores: np.ndarray) -> np.ndarray:
    """Returns the softmax over the last axis."""
    shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class StepPlan:
    """The unit counts one order perturbs: the curve's N+1 (over the prefix), the full-range curve's N+1 (None
    without a prefix), and the sorted distinct counts scored for both, each once."""

    total: int
    prefix: int
    counts: np.ndarray
    full: np.ndarray | None
    scored: np.ndarray


def step_plan(total: int, settings: FlipSettings) -> StepPlan:
    """Returns the StepPlan of an input with `total` units."""
    prefix = settings.prefix(total)
    counts = flip_counts(prefix, settings.steps)
    full = flip_counts(total, settings.steps) if prefix < total and settings.full_range else None
    return StepPlan(total, prefix, counts, full, np.unique(counts if full is None else np.concatenate([counts, full])))


def unit_ranks(subject: Subject, pixel_map: np.ndarray, order: str, settings: FlipSettings) -> tuple[np.ndarray, int]:
    """Returns ([H, W] rank of each pixel's unit in the perturbation order, number of units)."""
    if pixel_map.shape != subject.x.shape[2:]:
        raise InputError(f"relevance map {list(pixel_map.shape)} does not match the input "
                         f"{list(subject.x.shape[2:])}")
    if not np.isfinite(pixel_map).all():
        raise InputError("the relevance map is not finite")
    units = unit_relevance(pixel_map, settings.patch)
    return pixel_ranks(unit_order(units, order), units.shape, settings.patch, pixel_map.shape), units.size


def ranked_stack(subject: Subject, ranks: np.ndarray, counts: np.ndarray, settings: FlipSettings,
                 fill: np.ndarray) -> np.ndarray:
    """Returns one input per count with the pixels of rank < count perturbed: road imputes them (fill: its noise
    field), the other perturbations take them from `fill`."""
    if settings.perturbation == "road":
        from lrp_cli.road import imputed_stack
        return imputed_stack(subject.x, ranks, counts, fill, subject.mean).astype(subject.x.dtype)
    return perturbed_inputs(subject.x, fill, ranks, counts)


def _curve(columns: tuple, scored: np.ndarray, counts: np.ndarray, fractions: np.ndarray) -> Curve:
    index = np.searchsorted(scored, counts)
    return Curve(fractions, *(column[index] for column in columns))


def plan_curve(scores: np.ndarray, target: int, plan: StepPlan, steps: int) -> Curve:
    """Returns one order's curve (with its full-range curve beside a prefix) from the [len(plan.scored), K]
    scores of the inputs with plan.scored units perturbed."""
    columns = (scores[:, target], softmax(scores)[:, target], scores.argmax(axis=1))
    fractions = np.arange(steps + 1) / steps
    curve = _curve(columns, plan.scored, plan.counts, fractions * plan.prefix / plan.total)
    if plan.full is not None:
        curve.full_range = _curve(columns, plan.scored, plan.full, fractions)
    return curve


def flip_curves(scorer: Scorer, subject: Subject, pixel_map: np.ndarray, target: int,
                settings: FlipSettings) -> dict[str, tuple[Curve, np.ndarray]]:
    """Returns order -> (curve, its perturbed stack) for one relevance map: one batched scoring run per order,
    each distinct perturbed input scored once (a prefix curve and its full-range curve share their counts)."""
    settings = settings.for_image(subject.x.shape[2:])
    fill = fill_values(subject, settings).astype(subject.x.dtype)
    result = {}
    for order in settings.orders:
        ranks, total = unit_ranks(subject, pixel_map, order, settings)
        plan = step_plan(total, settings)
        batch = ranked_stack(subject, ranks, plan.scored, settings, fill)
        scores = np.asarray(scorer(subject.to_model(batch)), dtype=np.float64).reshape(len(batch), -1)
        result[order] = (plan_curve(scores, target, plan, settings.steps),
                         batch[np.searchsorted(plan.scored, plan.counts)])
    return result


def deletion_curves(unit: UnitInput, relevance: np.ndarray, settings: FlipSettings) -> dict[str, Curve]:
    """Returns order -> curve for one input whose units are deleted (a text's words): the keep masks of every
    order's distinct counts scored in one batched call of unit.score."""
    n = len(unit.names)
    relevance = np.asarray(relevance, dtype=np.float64)
    if relevance.shape != (n,):
        raise InputError(f"relevance over {relevance.size} units does not match the input's {n}")
    if not np.isfinite(relevance).all():
        raise InputError("the relevance is not finite")
    plan = step_plan(n, settings)
    ranks = np.empty((len(settings.orders), n), dtype=np.int64)
    for row, order in enumerate(settings.orders):
        ranks[row, unit_order(relevance, order)] = np.arange(n)
    keep = ranks[:, None, :] >= plan.scored[None, :, None]  # [orders, counts, n]: rank < count is perturbed
    scores = np.asarray(unit.score(keep.reshape(-1, n)), dtype=np.float64).reshape(len(settings.orders),
                                                                                   len(plan.scored), -1)
    return {order: plan_curve(scores[row], unit.target, plan, settings.steps)
            for row, order in enumerate(settings.orders)}


def mean_sem(values) -> dict:
    """Returns {n, mean, sem} of values (sem = sample std / sqrt(n); None for a single value)."""
    values = np.asarray(values, np.float64)
    sem = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else None
    return {"n": int(values.size), "mean": float(values.mean()), "sem": sem}


def summarize(runs: list[dict]) -> list[dict]:
    """Returns per (method, order), in first-seen order: the number of curves, their mean AOPC and its standard
    error (sample std / sqrt(n); None for a single curve); beside a prefix the full-range AOPC (aopc_full_range_*);
    for MoRF and LeRF the method's MoRF-LeRF area over its inputs (morf_lerf_area: {n, mean, sem}); over the
    inputs with a true class, the accuracy per step (accuracy: {n, curve})."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["method"], run["order"]), []).append(run)
    summary = []
    for (method, order), group in groups.items():
        aopc = mean_sem([run["aopc"] for run in group])
        entry = {"method": method, "order": order, "n": aopc["n"], "aopc_mean": aopc["mean"], "aopc_sem": aopc["sem"]}
        if all("aopc_full_range" in run for run in group):
            full = mean_sem([run["aopc_full_range"] for run in group])
            entry |= {"aopc_full_range_mean": full["mean"], "aopc_full_range_sem": full["sem"]}
        areas = [run["morf_lerf_area"] for run in group if "morf_lerf_area" in run]
        if areas:
            entry["morf_lerf_area"] = mean_sem(areas)
        correct = [run["correct"] for run in group if "correct" in run]
        if correct:
            entry["accuracy"] = {"n": len(correct), "curve": np.mean(correct, axis=0).tolist()}
        summary.append(entry)
    return summary


@dataclass
class MethodVariant:
    """An explanation method under the name its curves carry (e.g. lrp with one rule set, or gradient)."""

    name: str
    settings: object  # api.Settings


@dataclass
class InputEvaluation:
    """The curves of one input (as run documents) and its per-input files (strips, relevance maps)."""

    runs: list[dict]
    files: dict = field(default_factory=dict)


def strip_steps(steps: int, columns: int = 11) -> list[int]:
    """Returns the steps a strip shows: about `columns` evenly spaced from 0 to N."""
    return sorted({int(round(k)) for k in np.linspace(0, steps, min(columns, steps + 1))})


def run_document(input_path, method: str, order: str, target: int, curve: Curve, label: int | None = None) -> dict:
    """Returns one run of evaluation.json: the input, method, order, target and the curve's values (beside a
    prefix curve, the full-range curve's fractions, scores and AOPC; with the input's true class, whether each
    step's prediction is it)."""
    document = {"input": str(input_path), "method": method, "order": order, "target": int(target),
                "fractions": curve.fractions.tolist(), "scores": curve.scores.tolist(),
                "probabilities": curve.probabilities.tolist(), "predicted": curve.predicted.astype(int).tolist(),
                "aopc": curve.aopc}
    if curve.full_range is not None:
        document["aopc_full_range"] = curve.full_range.aopc
        document["full_range"] = {"fractions": curve.full_range.fractions.tolist(),
                                  "scores": curve.full_range.scores.tolist()}
    if label is not None:
        document["label"] = int(label)
        document["correct"] = (curve.predicted == label).astype(int).tolist()
    return document


def evaluate_units(model, item, variants: list[MethodVariant], flip: FlipSettings, out_dir,
                   save_maps: bool = False) -> InputEvaluation:
    """Returns the deletion curves of every method and order for one input whose units are deleted (a text's
    words: Model.unit_input), with its relevance files when asked."""
    from lrp_cli import outputs
    unit = model.unit_input(item, variants[0].settings, flip.perturbation)
    if not unit.names:
        raise InputError(f"{item.path}: no {model.unit_name} to perturb")
    result = InputEvaluation([])
    for variant in variants:
        try:
            relevance = variant_relevance(model, unit, variant, flip.seed)
            curves = deletion_curves(unit, relevance, flip)
        except InputError as exc:
            raise InputError(f"{item.path}: method {variant.name}: {exc}") from None
        result.runs += [run_document(item.path, variant.name, order, unit.target, curve, unit.label)
                        for order, curve in curves.items()]
        if save_maps:
            result.files[out_dir / f"{item.stem}.{variant.name}.relevance.npy"] = outputs.npy_bytes(
                np.asarray(relevance, dtype=np.float32))
    return result


def variant_relevance(model, unit: UnitInput, variant: MethodVariant, seed: int) -> np.ndarray:
    """Returns one method's relevance per unit: occlusion, lime and random from the unit scorer (methods.units),
    the kind's own methods (lrp) from its explanation of the target."""
    from lrp_cli.methods import units
    if variant.name in units.UNIT_METHODS:
        return units.unit_relevance(variant.name, unit.score, len(unit.names), unit.target,
                                    variant.settings.method_options.get("seed", seed))
    explanation = model.explain(unit.prepared, replace(variant.settings, target=str(unit.target)))[0]
    found = model.units(explanation)
    if found.names != unit.names:
        raise InputError(f"the explanation's {len(found.names)} units differ from the input's {len(unit.names)}")
    return found.relevance


def evaluate_input(model, item, variants: list[MethodVariant], flip: FlipSettings, scorer: Scorer, out_dir,
                   strip: bool = False, save_maps: bool = False) -> InputEvaluation:
    """Returns the curves of every method, target and order for one input, with its strips and maps (as bytes,
    keyed by path) when asked."""
    from lrp_cli import outputs
    from lrp_cli.evaluation_files import strip_png
    if model.unit_perturbations:
        return evaluate_units(model, item, variants, flip, out_dir, save_maps)
    flipped = model.flip_input(item, variants[0].settings)
    subject, display = flipped.subject, flipped.display
    result = InputEvaluation([])
    for variant in variants:
        explanations = model.explain(flipped.prepared, variant.settings)
        for expl in explanations:
            target = expl.target["index"]
            stem = item.stem if len(explanations) == 1 else f"{item.stem}.class{target}"
            try:
                curves = flip_curves(scorer, subject, model.pixels(expl.relevance), target, flip)
            except InputError as exc:
                raise InputError(f"{item.path}: method {variant.name}: {exc}") from None
            result.runs += [run_document(item.path, variant.name, order, target, curve)
                            for order, (curve, _) in curves.items()]
            if save_maps:
                result.files[out_dir / f"{stem}.{variant.name}.relevance.npy"] = outputs.npy_bytes(
                    np.asarray(expl.relevance, dtype=np.float32))
            if strip:
                title = f"{item.path.name}: {variant.name}, target {_label(model, target)}, {flip.perturbation}"
                result.files[out_dir / f"{stem}.{variant.name}.strip.png"] = strip_png(
                    title, _strip_rows(model, curves, display, flip.steps))
    return result


def _label(model, index: int) -> str:
    from lrp_cli.explanation import label_of
    label = label_of(model, int(index))
    return f"{index} ({label})" if label and label != str(index) else str(index)


def _strip_rows(model, curves: dict, display, steps: int) -> list[tuple[str, list]]:
    """Returns per order the strip's frames: (fraction, picture, caption with predicted label, y_p and y)."""
    rows = []
    for order, (curve, batch) in curves.items():
        frames = [(curve.fractions[k], display(batch[k:k + 1]),
                   f"{_label(model, curve.predicted[k])}\nyp={curve.scores[k]:.3g} y={curve.probabilities[k]:.2f}")
                  for k in strip_steps(steps)]
        rows.append((order, frames))
    return rows


@dataclass
class EvaluateTask:
    """Evaluates one input: a picklable callable, so threads and Dask workers run it; each process loads the model
    once from its spec (batch.ModelSpec) and scores with batched onnxruntime runs (BoW: decision values)."""

    spec: object
    variants: list
    flip: FlipSettings
    out_dir: object
    strip: bool = False
    save_maps: bool = False

    def __call__(self, item):
        """Returns the batch.InputResult of one input: one row with its runs and files, or its error."""
        from lrp_cli import batch
        from lrp_cli.errors import LrpError
        settings = self.variants[0].settings
        try:
            model = batch.cached_model(self.spec)
            evaluation = evaluate_input(model, item, self.variants, self.flip,
                                        lambda inputs: model.score_batch(inputs, settings), self.out_dir,
                                        self.strip, self.save_maps)
        except LrpError as exc:
            if exc.exit_code != 1:
                return batch.InputResult([], fatal=exc)
            return batch.InputResult([{"input": str(item.path), "error": str(exc)}], [(f"error: {exc}", True)])
        return batch.InputResult([{"input": str(item.path), "runs": evaluation.runs, "files": evaluation.files}])


def evaluate_inputs(task: EvaluateTask, items: list, jobs: int = 1, scheduler: str | None = None,
                    echo=None) -> tuple[list, dict, list]:
    """Returns (runs, per-input files, errors) over a batch, run here, in `jobs` threads or on the Dask cluster at
    `scheduler`: an input that fails with an InputError is printed and listed in errors, the rest goes on; other
    errors (usage, model) are raised."""
    from lrp_cli import batch
    runs, files, errors = [], {}, []
    for rows in batch.run_inputs(task, items, jobs, scheduler, echo=echo or batch.click.echo):
        for row in rows:
            if row.get("error") is not None:
                errors.append({"input": row["input"], "error": row["error"]})
                continue
            runs += row["runs"]
            files.update(row["files"])
    return runs, files, errors


def settings_document(model, variants: list[MethodVariant], flip: FlipSettings, units: str) -> dict:
    """Returns the `settings` of evaluation.json: model, methods (with their rules), flipping settings."""
    first = variants[0].settings
    return {
        "model": {"path": str(model.path), "sha256": model.sha256, "kind": model.kind},
        "methods": [{"name": v.name, "method": v.settings.method, "composite": v.settings.composite,
                     "rule": v.settings.rule, "layer_rules": list(v.settings.layer_rules),
                     "options": v.settings.method_options} for v in variants],
        "orders": list(flip.orders), "perturbation": flip.perturbation, "patch": flip.patch, "units": units,
        "steps": flip.steps, "seed": flip.seed, "blur_sigma": flip.blur_sigma, "prefix_units": flip.units,
        "max_fraction": flip.max_fraction, "protocol": flip.protocol, "target": first.target,
        "precision": first.precision, "preprocess": {k: v for k, v in first.preprocess.items() if v is not None},
        "score": "the target's pre-softmax score f(x); AOPC = mean over steps k = 0..N of f(x_0) - f(x_k), over "
                 "the prefix when one is set (aopc_full_range: over all units); morf_lerf_area = mean over steps of "
                 "f(x_LeRF,k) - f(x_MoRF,k)",
    }


def method_variants(model, base, names: list[str], options: dict | None = None) -> list[MethodVariant]:
    """Returns one MethodVariant per method name (duplicates dropped), each given those of `options` (e.g. seed)
    that it takes and checked against the model; an unknown name is an OptionError naming it."""
    from dataclasses import replace

    from lrp_cli.explanation import METHOD_NAMES
    from lrp_cli.methods import METHODS
    names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    unknown = [n for n in names if n not in METHOD_NAMES]
    if unknown or not names:
        raise OptionError(f"--methods: unknown method '{(unknown or [''])[0]}'; methods: "
                          f"{', '.join(METHOD_NAMES)}")
    variants = [MethodVariant(name, replace(base, method=name, method_options={
        k: v for k, v in (options or {}).items() if k in METHODS[name].defaults})) for name in names]
    for variant in variants:
        if not _from_unit_scores(model, variant.name):
            model.check_settings(variant.settings)
    return variants


def default_methods(model, base: Settings) -> list[str]:
    """Returns the methods evaluated when none are named: every method the model's kind explains with (all for
    ONNX models, lrp for BoW pipelines) that fits this model, and for a kind with deletable units the unit methods
    beside its own. A method that does not fit (Grad-CAM on a model without a Conv layer) is left out: it is an
    error only when --methods names it. Settings that fit no method (a bad --rule) are the error of the first."""
    names = list(model.methods) + [m for m in UNIT_METHODS if model.unit_perturbations and m not in model.methods]
    model.check_settings(replace(base, method=names[0]))
    return [names[0]] + [name for name in names[1:] if _fits(model, replace(base, method=name))]


def _from_unit_scores(model, method: str) -> bool:
    """Returns True for a method evaluate computes from a unit kind's scores alone (it needs no model check)."""
    return bool(model.unit_perturbations) and method in UNIT_METHODS


def _fits(model, settings: Settings) -> bool:
    if _from_unit_scores(model, settings.method):
        return True
    try:
        model.check_settings(settings)
    except OptionError:
        return False
    return True


def default_perturbation(model) -> str | None:
    """Returns the perturbation used when none is named: the first of a unit kind's own (delete for texts), else
    None (flip_settings picks the pixel default)."""
    return model.unit_perturbations[0] if model.unit_perturbations else None


def check_perturbation(model, flip: FlipSettings, strip: bool) -> None:
    """Raises OptionError when the perturbation, protocol or options do not fit the model's inputs: a kind with
    deletable units takes its own perturbations (no protocol, patch or strip), a picture kind the pixel ones."""
    if not model.unit_perturbations:
        if flip.perturbation not in PERTURBATIONS:
            raise OptionError(f"--perturbation {flip.perturbation}: {model.path} is a {model.kind} model, whose "
                              f"pixels take {', '.join(PERTURBATIONS)}")
        return
    if flip.perturbation not in model.unit_perturbations:
        raise OptionError(f"--perturbation {flip.perturbation}: a {model.kind} model's {model.unit_name}s take "
                          f"{', '.join(model.unit_perturbations)}")
    given = [name for name, value in (("--protocol", flip.protocol), ("--patch", flip.patch != 1),
                                      ("--strip", strip)) if value]
    if given:
        raise OptionError(f"{', '.join(given)}: apply to pictures; a {model.kind} model's inputs are "
                          f"{model.unit_name}s")


def run_evaluation(model, items: list, variants: list[MethodVariant], flip: FlipSettings, out_dir,
                   strip: bool = False, save_maps: bool = False, jobs: int = 1, scheduler: str | None = None,
                   spec=None, echo=None):
    """Returns (evaluation.json document, per-input files) for a batch (`spec`: the batch.ModelSpec that loads the
    model again on Dask workers; by default the model's own file)."""
    from lrp_cli import batch
    from lrp_cli.evaluation_files import evaluation_document
    from lrp_cli.ranking import add_morf_lerf_areas, rankings
    model.check_evaluable()
    check_perturbation(model, flip, strip)
    task = EvaluateTask(spec or batch.model_spec(model), variants, flip, out_dir, strip, save_maps)
    runs, files, errors = evaluate_inputs(task, items, jobs, scheduler, echo)
    image_shape = image_size(model, variants[0].settings)
    resolved = flip.for_image(image_shape) if image_shape else flip
    units = "pixel" if resolved.patch == 1 else f"{resolved.patch}x{resolved.patch} patch"
    if model.unit_perturbations:
        units = model.unit_name
    settings = settings_document(model, variants, flip, units) | {"protocol_note": protocol_note(flip, image_shape)}
    if image_shape and flip.protocol:
        settings |= {"patch": resolved.patch, "prefix_units": resolved.units, "steps": resolved.steps}
    add_morf_lerf_areas(runs)
    return evaluation_document(settings, runs, summarize(runs), errors, rankings(runs, flip.seed)), files


def image_size(model, settings) -> tuple[int, int] | None:
    """Returns the model input's (H, W), or None for a kind without a fixed pixel grid (a BoW pipeline's images
    keep their own size)."""
    try:
        return tuple(model.image_geometry(settings)[1])
    except Unsupported:
        return None
