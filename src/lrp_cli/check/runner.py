"""Running behaviour specs: load each model, bring masks to its input grid, explain every (input, target) once
through the pipeline and measure each case's assertions on the explanation."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from lrp_cli import batch, outputs, pipeline, render
from lrp_cli.explanation import Explanation, Settings, class_index
from lrp_cli.kinds.base import InputItem, OutputOptions, Unsupported
from lrp_cli.check import metrics
from lrp_cli.check.spec import Case, Spec, SpecError, explain_settings, load_spec, text_region
from lrp_cli.errors import InputError, LrpError, OptionError
from lrp_cli.preprocess import fit_geometry, open_image
from lrp_cli.propagate import conservation_error, output_scores

OUTLINE_RGB = (255, 0, 255)  # magenta: not a colour of any of the heatmap colormaps


@dataclass
class Measure:
    """One assertion on one explanation: what was measured, against which limit, and the verdict."""

    name: str
    value: object
    limit: str
    passed: bool

    def text(self) -> str:
        """Returns e.g. `share[tag]=0.412 <= 0.2`."""
        value = f"{self.value:.3g}" if isinstance(self.value, float) else self.value
        return f"{self.name}={value} {self.limit}"


@dataclass
class Outcome:
    """The verdict of one (case, input): its measures, or the error that kept it from being measured."""

    spec: Path
    case: str
    input: Path
    measures: list[Measure] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    evidence: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Returns whether the input was explained and every assertion held."""
        return self.error is None and all(m.passed for m in self.measures)

    def detail(self, failed_only: bool = False) -> str:
        """Returns the measured values against their limits (or the error), failed ones marked, for one line."""
        if self.error:
            return f"error: {self.error}"
        shown = [m for m in self.measures if not (failed_only and m.passed)]
        return ", ".join(m.text() + ("" if m.passed or failed_only else " FAILED") for m in shown)


@dataclass
class Job:
    """One (case, input) to measure, with its resolved target class and its region masks on the input grid (None
    for a region of words, which its explanation's words resolve)."""

    case: Case
    item: InputItem
    target: str
    expect: int | None
    masks: list[np.ndarray | None]


@dataclass
class Prepared:
    """A spec with its model loaded and its jobs resolved, ready to run."""

    spec: Spec
    model: object
    settings: Settings
    jobs: list[Job]
    cmap: str
    model_spec: batch.ModelSpec  # what finds the model again in a worker process


@dataclass(frozen=True)
class SpecContext:
    """What a worker needs of a spec to explain and measure its jobs: the model's spec (loaded once per process),
    the explain settings, the spec file (for the outcomes) and the colormap of the evidence."""

    model_spec: batch.ModelSpec
    settings: Settings
    spec_path: Path
    cmap: str

    @property
    def model(self):
        """Returns this process's copy of the spec's model (batch.cached_model)."""
        return batch.cached_model(self.model_spec)


@dataclass
class Group:
    """The jobs that share one (input, target): explained once, measured for every case; `indices` are the jobs'
    places in the spec's list. `path` names the input in the error row of a group whose Dask workers died."""

    context: SpecContext
    path: Path
    target: str
    jobs: list[Job]
    indices: list[int]


def prepare(path: Path, keyword: str | None = None) -> Prepared:
    """Returns the loaded, validated spec with one job per (case, input) of the cases whose name has `keyword`."""
    spec = load_spec(path)
    settings, load_options = explain_settings(spec)
    try:
        model, model_spec = batch.load_model(spec.model, **load_options)
    except OptionError as exc:  # the labels file; a model that cannot be loaded is a ModelLoadError (exit 3)
        raise spec.error("labels", str(exc)) from None
    size_error, config, grid = None, None, None
    try:
        config, grid = model.image_geometry(settings)
    except Unsupported:
        if not model.unit_perturbations:  # neither a pixel grid nor words to measure regions on
            raise SpecError(f"{path}: model: {spec.model} is a {model.kind} pipeline; lrp check takes ONNX models "
                            "and text pipelines") from None
    except OptionError as exc:  # reported after the rule keys, as the settings are checked first
        size_error = exc
    _check_settings(spec, model, settings)
    if size_error is not None:
        raise spec.error("size", str(size_error)) from None
    cases = [c for c in spec.cases if keyword is None or keyword in c.name]
    jobs = [job for case in cases for job in _case_jobs(case, model, settings, config, grid)]
    return Prepared(spec, model, settings, jobs, spec.settings.get("cmap", "jet"), model_spec)


def _check_settings(spec: Spec, model, settings: Settings) -> None:
    """Raises the SpecError naming the rule key the model cannot take (a rule the layers cannot use)."""
    try:
        model.check_settings(settings)
    except OptionError as exc:
        for key, alone in (("layer_rule", {"layer_rules": ()}), ("rule", {"rule": None})):
            try:
                model.check_settings(Settings(**{**vars(settings), **alone}))
            except OptionError:
                continue
            raise spec.error(key, str(exc)) from None
        raise spec.error("composite" if settings.composite else "rule", str(exc)) from None


def _class_index(case: Case, key: str, value: str, labels) -> int:
    if value.startswith("top:"):
        raise case.source.error(f"{case.where}.{key}", f"'{value}': a case explains one class (use expect_top)")
    try:
        return class_index(value, len(labels) if labels else None, labels)
    except OptionError:
        known = "the model has no labels" if not labels else f"the model has {len(labels)} classes"
        raise case.source.error(f"{case.where}.{key}", f"'{value}' is not a class index or label ({known})") \
            from None


def _case_jobs(case: Case, model, settings: Settings, config, grid) -> list[Job]:
    _check_region_kinds(case, model, grid)
    expect = _class_index(case, "expect", case.expect, model.labels) if case.expect is not None else None
    target = case.target or ("expect" if case.expect is not None else "pred")
    if target == "expect":
        target = str(expect)
    elif target != "pred":
        target = str(_class_index(case, "target", target, model.labels))
    if grid is None:  # the model's own items: a text kind reads the files as it explains them
        items = [one for item in case.inputs for one in model.expand([str(item.path)], settings)]
        return [Job(case, item, target, expect, [None] * len(case.regions)) for item in items]
    return [Job(case, item, target, expect, [_region_mask(case, k, item, config, grid)
                                             for k in range(len(case.regions))]) for item in case.inputs]


def _check_region_kinds(case: Case, model, grid) -> None:
    """Raises the SpecError naming a case key the model's inputs cannot take: picture regions (and baselines,
    scores, top-k, conservation) on a model whose inputs are words, word regions on a picture model."""
    for k, region in enumerate(case.regions):
        if text_region(region) != (grid is None):
            key = next(name for name in ("mask", "box", "words", "regex") if getattr(region, name) is not None)
            takes = "words or regex" if grid is None else "mask or box"
            raise case.source.error(f"{case.where}.region[{k}].{key}", f"a {model.kind} model's regions take {takes}")
    if grid is None:
        for key in ("baseline", "min_score", "expect_top", "max_conservation_error"):
            if getattr(case, key) is not None:
                raise case.source.error(f"{case.where}.{key}", f"applies to picture models, not to a {model.kind} "
                                                                "model")


def _region_mask(case: Case, index: int, item: InputItem, config, grid) -> np.ndarray:
    region, where = case.regions[index], f"{case.where}.region[{index}]"
    if region.box is not None:
        height, width = grid
        if region.units == "px" and (region.box[2] > width or region.box[3] > height):
            raise case.source.error(f"{where}.box", f"{list(region.box)} lies outside the {width}x{height} px "
                                                    "model input")
        mask = metrics.box_mask(region.box, region.units, grid)
        if not mask.any():  # its shares would be 0 and its pointing game lost, whatever the model does
            raise case.source.error(f"{where}.box", f"{list(region.box)} holds no pixel centre of the "
                                                    f"{width}x{height} px model input")
        return mask
    path = Path(region.mask.replace("{stem}", item.stem))
    try:
        picture = open_image(path)
    except InputError as exc:
        raise case.source.error(f"{where}.mask", f"unreadable mask: {exc}") from None
    tensor = item.path.suffix.lower() == ".npy"
    expected = grid[::-1] if tensor else _image_size(item.path)
    if expected is None:  # an unreadable input: its explanation fails and says why
        return np.zeros(grid, dtype=bool)
    if picture.size != tuple(expected):
        raise case.source.error(f"{where}.mask", f"{path} is {picture.size[0]}x{picture.size[1]} px but its input "
                                                 f"{item.path} is {expected[0]}x{expected[1]}")
    inside = Image.fromarray((_nonzero(picture) * 255).astype(np.uint8))
    return np.asarray(inside if tensor else fit_geometry(inside, config, grid, Image.NEAREST)) > 0


def _image_size(path: Path) -> tuple[int, int] | None:
    """Returns an image's (width, height), or None when it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError):
        return None


def _nonzero(picture: Image.Image) -> np.ndarray:
    if picture.mode in ("1", "L", "I", "F", "I;16"):
        return np.asarray(picture) != 0
    return np.asarray(picture.convert("RGB")).any(axis=2)


def groups(prepared: Prepared) -> list[Group]:
    """Returns the spec's jobs grouped by (input, target), in order of their first job."""
    context = SpecContext(prepared.model_spec, prepared.settings, prepared.spec.path, prepared.cmap)
    found: dict[tuple[Path, str], Group] = {}
    for index, job in enumerate(prepared.jobs):
        group = found.setdefault((job.item.path, job.target), Group(context, job.item.path, job.target, [], []))
        group.jobs.append(job)
        group.indices.append(index)
    return list(found.values())


@dataclass
class CheckTask:
    """Explains one Group's input once and measures each of its jobs: a picklable callable, so threads and Dask
    workers run it (batch.run_inputs); its rows carry (job index, Outcome)."""

    update_baselines: bool = False
    evidence_dir: Path | None = None

    @property
    def out_dir(self) -> Path | None:
        """Returns the folder its files go under (the evidence; baselines live in each case's own folder)."""
        return self.evidence_dir

    def __call__(self, group: Group) -> batch.InputResult:
        """Returns the batch.InputResult of one group: a row per job, or the error that ends the run."""
        context = group.context
        settings = replace(context.settings, target=group.target)
        try:
            explanation = pipeline.explain_item(context.model, group.jobs[0].item, settings)[0]
        except InputError as exc:
            return _rows(group, [_outcome(context, job, error=str(exc)) for job in group.jobs])
        except LrpError as exc:
            return batch.InputResult([], fatal=exc)
        return _rows(group, [_measure(context, job, explanation, self.update_baselines, self.evidence_dir)
                             for job in group.jobs])


def _rows(group: Group, outcomes: list[Outcome]) -> batch.InputResult:
    return batch.InputResult([{"index": i, "outcome": o} for i, o in zip(group.indices, outcomes)])


def run_groups(every: list[list[Group]], jobs: int = 1, update_baselines: bool = False,
               evidence_dir: Path | None = None, scheduler: str | None = None) -> list[list[Outcome]]:
    """Returns the outcomes of each spec's groups (one list per spec, in job order), all groups run together here,
    in `jobs` threads or on the Dask cluster at `scheduler`; a group whose workers died is an error outcome."""
    flat = [group for spec_groups in every for group in spec_groups]
    results = batch.run_inputs(CheckTask(update_baselines, evidence_dir), flat, jobs, scheduler)
    by_group = iter(results)
    outcomes = []
    for spec_groups in every:
        found: dict[int, Outcome] = {}
        for group, rows in zip(spec_groups, by_group):
            for row in rows:
                if "outcome" in row:
                    found[row["index"]] = row["outcome"]
                else:  # distributed's row of a chunk that kept killing its workers
                    found.update((i, _outcome(group.context, job, error=row["error"]))
                                 for i, job in zip(group.indices, group.jobs))
        outcomes.append([found[i] for i in sorted(found)])
    return outcomes


def _outcome(context: SpecContext, job: Job, **kwargs) -> Outcome:
    return Outcome(context.spec_path, job.case.name, job.item.path, **kwargs)


def _measure(context: SpecContext, job: Job, expl: Explanation, update_baselines: bool,
             evidence_dir: Path | None) -> Outcome:
    heat, masks = _heat_and_masks(context.model, job, expl)
    measures = _prediction_measures(job, expl) + _region_measures(job, heat, masks)
    if job.case.baseline is not None:
        measures.append(_baseline_measure(context, job, expl, heat, update_baselines))
    outcome = _outcome(context, job, measures=measures, seconds=sum(expl.timing.values()) - expl.timing.get("load", 0))
    if evidence_dir is not None and not outcome.passed:
        outcome.evidence = _write_evidence(context, job, expl, heat, evidence_dir)
    return outcome


def _heat_and_masks(model, job: Job, expl: Explanation) -> tuple[np.ndarray, list[np.ndarray]]:
    """Returns (the relevance the regions measure, each region's mask over it): the [H, W] pixel map with the
    job's masks, or, for a model whose explanations are words, the word relevance with each region's words."""
    try:
        found = model.units(expl)
    except Unsupported:
        return model.pixels(expl.relevance).astype(np.float64), job.masks
    return found.relevance, [metrics.text_region_mask(found.names, found.text, found.spans, r.words, r.regex)
                             for r in job.case.regions]


def _prediction_measures(job: Job, expl: Explanation) -> list[Measure]:
    case, prediction = job.case, expl.prediction
    measures = []
    if job.expect is not None:
        ranking = np.argsort(-output_scores(expl.model_output), kind="stable")
        within = ranking[:case.expect_top] if case.expect_top else [prediction["index"]]
        shown = prediction["label"] or prediction["index"]
        limit = f"in top {case.expect_top} for {case.expect}" if case.expect_top else f"== {case.expect}"
        measures.append(Measure("predicted", shown, limit, job.expect in within))
    if case.min_score is not None:
        measures.append(Measure("score", prediction["score"], f">= {case.min_score}",
                                prediction["score"] >= case.min_score))
    if case.max_conservation_error is not None:
        error = conservation_error(float(expl.relevance.astype(np.float64).sum()), expl.propagation.f_x)
        measures.append(Measure("conservation_error", error, f"<= {case.max_conservation_error}",
                                error <= case.max_conservation_error))
    return measures


def _region_measures(job: Job, heat: np.ndarray, masks: list[np.ndarray]) -> list[Measure]:
    measures = []
    for region, mask in zip(job.case.regions, masks):
        share = metrics.positive_share(heat, mask)
        if region.min_positive_share is not None:
            measures.append(Measure(f"share[{region.name}]", share, f">= {region.min_positive_share}",
                                    share >= region.min_positive_share))
        if region.max_positive_share is not None:
            measures.append(Measure(f"share[{region.name}]", share, f"<= {region.max_positive_share}",
                                    share <= region.max_positive_share))
        if region.pointing_game:
            hit = metrics.pointing_game(heat, mask)
            measures.append(Measure(f"pointing[{region.name}]", "inside" if hit else "outside", "== inside", hit))
    return measures


def baseline_path(case: Case, item: InputItem) -> Path:
    """Returns where the stored relevance of one input lives: DIR/STEM.relevance.npy (as --save-raw writes it)."""
    return case.baseline.dir / f"{item.stem}.relevance.npy"


def _baseline_measure(context: SpecContext, job: Job, expl, heat: np.ndarray, update: bool) -> Measure:
    baseline, path = job.case.baseline, baseline_path(job.case, job.item)
    name, limit = f"{baseline.metric}[baseline]", f">= {baseline.min_similarity}"
    if update:
        outputs.write_all({path: outputs.npy_bytes(expl.relevance.astype(np.float32))})
        return Measure(name, "written", f"to {path}", True)
    try:
        stored = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        return Measure(name, "missing", f"({path}: {reason}; run --update-baselines)", False)
    if stored.shape != expl.relevance.shape:
        return Measure(name, f"shape {list(stored.shape)}", f"!= {list(expl.relevance.shape)} in {path}", False)
    stored_heat = context.model.pixels(stored).astype(np.float64)
    similarity = metrics.SIMILARITIES[baseline.metric](heat, stored_heat)
    return Measure(name, similarity, limit, similarity >= baseline.min_similarity)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_") or "case"


def _write_evidence(context: SpecContext, job: Job, expl, heat: np.ndarray, evidence_dir: Path) -> dict[str, str]:
    """Writes the heatmap and overlay of a failed (case, input) with every region outlined (a text: the kind's own
    files, its words coloured); returns their paths."""
    folder = evidence_dir / _slug(context.spec_path.stem) / _slug(job.case.name)
    if expl.picture is None:
        document = context.model.save(expl, folder, _slug(job.item.stem), OutputOptions(context.cmap))
        return {kind: str(path) for kind, path in document.get("outputs", {}).items()}
    images = render.heatmap_images(heat, expl.picture, context.cmap)
    border = np.zeros(heat.shape, dtype=bool)
    for mask in job.masks:
        border |= metrics.outline(mask)
    paths = {}
    for kind, rgb in images.items():
        rgb[border] = OUTLINE_RGB
        paths[kind] = folder / f"{_slug(job.item.stem)}.{kind}.png"
    outputs.write_all({paths[kind]: outputs.png_bytes(rgb) for kind, rgb in images.items()})
    return {kind: str(path) for kind, path in paths.items()}


def run_specs(paths: list[Path], jobs: int = 1, keyword: str | None = None, update_baselines: bool = False,
              evidence_dir: Path | None = None, scheduler: str | None = None) -> list[tuple[Prepared, list[Outcome]]]:
    """Returns (prepared spec, outcomes) per spec; every spec is validated before the first one runs, then the
    groups of all specs run together (here, in `jobs` threads, or on the Dask cluster at `scheduler`)."""
    prepared = [prepare(Path(p), keyword) for p in paths]
    if not any(p.jobs for p in prepared):
        raise SpecError(f"-k {keyword}: no case name contains it" if keyword else "no case to run")
    outcomes = run_groups([groups(p) for p in prepared], jobs, update_baselines, evidence_dir, scheduler)
    return list(zip(prepared, outcomes))
