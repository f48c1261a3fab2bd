"""Batches: input expansion (files, folders, globs), running the inputs (progress, jobs), the summary files."""

from __future__ import annotations

import csv
import glob
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from lrp_cli import outputs, pipeline, render
from lrp_cli.errors import LrpError, ModelLoadError, OptionError
from lrp_cli.explanation import IR_DIFF_WARNING, Settings
from lrp_cli.kinds.base import InputItem, expand_files
from lrp_cli.preprocess import IMAGE_INPUT_SUFFIXES
from lrp_cli.tasks import BLAS_THREADS as BLAS_THREADS  # the batch's public names, whose home is tasks.py
from lrp_cli.tasks import CORES, SUMMARY_FIELDS, InputResult, in_worker_process, limit_threads, summary_row, task_folder
from lrp_cli.tasks import failed_result as failed_result

def expand_inputs(specs: list[str], model=None, settings: Settings | None = None) -> list[InputItem]:
    """Returns the input items named by the INPUT arguments, as the model's kind expands them (without a model:
    image and `.npy` files, folders recursed with their layout kept, glob patterns), in order.

    A name that matches nothing is kept as is, so that the explain step reports it as a missing file.
    """
    if model is None:
        return expand_files(specs, IMAGE_INPUT_SUFFIXES)
    return model.expand(specs, settings or Settings())


def write_summary(out_dir: Path, rows: list[dict]) -> None:
    """Writes summary.json and summary.csv for a batch, all-or-nothing."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=SUMMARY_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    counts = {status: sum(row["status"] == status for row in rows) for status in ("ok", "skipped", "error")}
    document = {"schema": "lrp-cli/summary/1", "inputs": len({row["input"] for row in rows}), "ok": counts["ok"],
                "skipped": counts["skipped"], "failed": counts["error"], "results": rows}
    outputs.write_all({out_dir / "summary.json": outputs.json_bytes(document),
                       out_dir / "summary.csv": text.getvalue().encode("utf-8")})


@dataclass(frozen=True)
class ModelSpec:
    """The arguments that load a model again in another process (a worker), and the sha256 its file must have."""

    path: Path
    output: str | None = None
    labels: Path | None = None
    layout: str | None = None
    sha256: str = ""
    extra: tuple = ()  # LoadOptions.extra: the load options of one kind, (name, value) pairs


_MODELS: dict[ModelSpec, object] = {}  # the models this process has loaded, kept for its later tasks


def load_model(path: Path, output: str | None = None, labels: Path | None = None,
               layout: str | None = None, extra: tuple = ()) -> tuple[object, ModelSpec]:
    """Returns (the loaded model, the spec that finds it again): the model is kept for this process's tasks."""
    model = pipeline.load_model(path, output, labels, layout, extra)
    spec = ModelSpec(Path(path), output, None if labels is None else Path(labels), layout, model.sha256, extra)
    _MODELS[spec] = model
    return model, spec


def model_spec(model) -> ModelSpec:
    """Returns a spec for a model loaded elsewhere, kept for this process's tasks (a worker that loads it again
    gets the file's own sidecar: pass batch.load_model's spec where --output, --labels or --layout were given)."""
    spec = ModelSpec(Path(model.path), sha256=model.sha256)
    _MODELS.setdefault(spec, model)
    return spec


def cached_model(spec: ModelSpec):
    """Returns the model of a spec, loaded on this process's first call and kept (keyed by the file's sha256)."""
    if spec not in _MODELS:
        model = pipeline.load_model(spec.path, spec.output, spec.labels, spec.layout, spec.extra)
        if spec.sha256 and model.sha256 != spec.sha256:
            raise ModelLoadError(f"{spec.path}: this worker's file differs from the client's (sha256 "
                                 f"{model.sha256[:12]}, expected {spec.sha256[:12]})")
        _MODELS[spec] = model
    return _MODELS[spec]


@dataclass
class ExplainTask:
    """Explains one input and writes its files: a picklable callable, so threads, processes and Dask workers run
    it; the model is loaded once per process from its spec."""

    spec: ModelSpec
    settings: Settings
    out_dir: Path
    cmap: str | None = None  # None: the model kind's default colormap
    save_raw: bool = False
    json_lines: bool = False
    batch_size: int = 1  # inputs explained in one pass (Model.explain_many); jobs, workers and --scheduler take batches
    thumbnails: bool = False  # --html: also STEM.input.png, the input as the model saw it
    scale: render.Scale = render.Scale()  # --scale: what each heatmap is divided by (BatchRunner shares it globally)

    def __call__(self, item: InputItem) -> InputResult:
        """Returns the InputResult of explaining one input and writing its files."""
        return self.save(item, *self.compute(item))

    def compute(self, item: InputItem) -> tuple[list | None, LrpError | None]:
        """Returns (the explanations of one input, None) or (None, its error)."""
        try:
            return pipeline.explain_item(cached_model(self.spec), item, self.settings), None
        except LrpError as exc:
            return None, exc

    def compute_batch(self, items: list[InputItem]) -> list[tuple[list | None, LrpError | None]]:
        """Returns compute(item) for each item, the prepared ones explained together (the model's kind runs those
        of one model-input shape in one pass; a decode error stays the error of its own input)."""
        try:
            model = cached_model(self.spec)
        except LrpError as exc:  # a worker whose model file differs: every input's error, as compute gives it
            return [(None, exc)] * len(items)
        if self.batch_size == 1:
            return [self.compute(item) for item in items]
        results: list = [None] * len(items)
        prepared = []
        for index, item in enumerate(items):
            try:
                prepared.append((index, model.prepare(item, self.settings)))
            except LrpError as exc:
                results[index] = (None, exc)
        explained = model.explain_many([one for _, one in prepared], self.settings, self.batch_size)
        for (index, _), outcome in zip(prepared, explained):
            results[index] = (None, outcome) if isinstance(outcome, LrpError) else (outcome, None)
        return results

    def run_batch(self, items: list[InputItem]) -> InputResult:
        """Returns the InputResult of a batch of inputs: its rows are one list per input (the lines and rows of
        inputs after one whose error ends the run are dropped)."""
        result = InputResult([])
        for item, computed in zip(items, self.compute_batch(items)):
            saved = self.save(item, *computed)
            result.lines.extend(saved.lines)
            if saved.fatal is not None:
                result.fatal = saved.fatal
                break
            result.rows.append(saved.rows)
        return result

    def save(self, item: InputItem, explanations, error, scale: render.Scale | None = None) -> InputResult:
        """Returns the InputResult of writing computed explanations (or of reporting their error), scaled by
        `scale` (a batch's shared one) or else by the task's."""
        if error is not None:
            if error.exit_code != 1:
                return InputResult([], fatal=error)
            return InputResult([summary_row(item, error=str(error))], [(f"error: {error}", True)])
        model = cached_model(self.spec)
        result = InputResult([])
        for expl in explanations:
            stem = item.stem if len(explanations) == 1 else f"{item.stem}.class{expl.target['index']}"
            try:
                options = pipeline.output_options(model, self.cmap, self.save_raw, scale or self.scale,
                                                  self.settings.kind_options)
                document = model.save(expl, self.out_dir, stem, options)
                row = summary_row(item, model.summary_fields(document))
                if self.thumbnails:
                    from lrp_cli import report
                    report.save_thumbnail(expl.picture, row["heatmap"])
            except OSError as exc:
                result.lines.append((f"error: {item.path}: cannot write outputs to {self.out_dir} ({exc})", True))
                result.rows.append(summary_row(item, error=str(exc)))
                continue
            result.lines.extend(self._report(model, item, expl, document, row))
            result.lines.extend((text, False) for text in model.printed(expl, options))
            result.rows.append(row)
        return result

    def _report(self, model, item, expl, document, row) -> list[tuple[str, bool]]:
        warnings = [(f"warning: {item.path}: {warning}", True) for warning in document.get("warnings", [])]
        if self.json_lines:
            return warnings + [(json.dumps(outputs.finite(document)), False)]
        target = expl.target
        label = f" ({target['label']})" if target["label"] else ""
        pred = expl.prediction
        score = "n/a" if pred["score"] is None else f"{pred['score']:.4g}"
        lines = [(f"{item.path}: target {target['index']}{label}, predicted {pred['index']} score "
                  f"{score}, {model.conservation_account(document)} -> {row['heatmap']}", False)]
        if expl.ir_diff_relative is not None and expl.ir_diff_relative > IR_DIFF_WARNING:
            lines.append((f"warning: {item.path}: IR output differs from onnxruntime by "
                          f"{expl.ir_max_abs_diff:.3g} (relative {expl.ir_diff_relative:.2e})", True))
        return warnings + lines

    def earlier_rows(self, item: InputItem) -> list[dict] | None:
        """Returns the "skipped" rows of an input whose JSON files an earlier run wrote (all of its targets),
        or None when it has to be explained."""
        documents = []
        for path in self._earlier_jsons(item):
            try:
                documents.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                return None
        model = cached_model(self.spec)
        return [summary_row(item, model.summary_fields(d), status="skipped") for d in documents] or None

    def _earlier_jsons(self, item: InputItem) -> list[Path]:
        single = self.out_dir / f"{item.stem}.json"
        count = int(self.settings.target[4:]) if re.fullmatch(r"top:\d+", self.settings.target) else 1
        if count == 1:
            return [single] if single.is_file() else []
        folder, name = single.parent, Path(item.stem).name
        found = sorted(p for p in folder.glob(f"{glob.escape(name)}.class*.json")
                       if re.fullmatch(rf"{re.escape(name)}\.class\d+\.json", p.name))
        return found if len(found) >= count else []


def run_inputs(task, items: list[InputItem], jobs: int = 1, scheduler: str | None = None,
               show_progress: bool = False, echo=click.echo, backend: str | None = None) -> list[list[dict]]:
    """Returns, for each item in input order, the summary rows of `task(item)` (a picklable callable returning an
    InputResult), run in this process, `jobs` at a time (map_local's `backend`), or on the Dask cluster at
    `scheduler`.

    Each input's lines are printed with `echo(text, err=...)` as it completes; a run-level error is raised."""
    if scheduler:
        from lrp_cli import distributed
        completed = distributed.map_inputs(task, items, scheduler)
    else:
        completed = map_local(task, items, jobs, backend)
    with limit_threads(), outputs.batch_writes(task_folder(task)):
        return _collect(completed, len(items), show_progress, echo)


def _collect(completed, count: int, show_progress: bool, echo) -> list[list[dict]]:
    """Returns the rows of (index, InputResult) pairs by index, printing their lines as they come."""
    rows: list[list[dict]] = [[] for _ in range(count)]
    with _progress_bar(count, show_progress) as bar:
        for index, result in completed:
            for text, err in result.lines:
                echo(text, err=err)
            if result.fatal is not None:
                raise result.fatal
            rows[index] = result.rows
            bar.update(1)
    return rows


def _progress_bar(count: int, show: bool):
    """Returns the progress bar (on stderr) of a batch of `count` inputs."""
    return click.progressbar(length=count, label="explaining", file=sys.stderr, hidden=not show)


#: How `--jobs N` runs N inputs at once for every kind, when set: joblib's "threading" (one model shared by N
#: threads) or "loky" (N worker processes, each loading the model once); None: the model kind's own jobs_backend.
#: benchmarks/RESULTS.md compares them.
JOBS_BACKEND: str | None = None
#: Chunks of inputs per worker process: one call (and one worker preamble) per chunk, not per input, and still
#: enough chunks to keep every worker busy to the end.
CHUNKS_PER_JOB = 8


def map_local(task, items, jobs, backend: str | None = None):
    """Yields (index, task(item)) for every item in input order, computed `jobs` at a time on the joblib backend
    given (else JOBS_BACKEND, else threads); worker processes take the items in chunks."""
    if jobs == 1:
        yield from ((index, task(item)) for index, item in enumerate(items))
        return
    from joblib import Parallel, delayed

    from lrp_cli.engines import onnx_engine
    backend = backend or JOBS_BACKEND or "threading"
    threads = max(1, CORES // jobs)
    with onnx_engine.intra_op_threads(threads):
        if backend == "threading":
            yield from enumerate(Parallel(n_jobs=jobs, backend=backend, return_as="generator")(
                delayed(task)(item) for item in items))
            return
        chunks = in_batches(items, max(1, -(-len(items) // (jobs * CHUNKS_PER_JOB))))
        results = Parallel(n_jobs=jobs, backend=backend, return_as="generator")(
            delayed(_InWorkerProcess(task, threads))(chunk) for chunk in chunks)
        yield from enumerate(result for chunk_results in results for result in chunk_results)


@dataclass
class _InWorkerProcess:
    """The tasks of a chunk of inputs run in a worker process (loky), whose BLAS pools are set to BLAS_THREADS for
    good, and whose compiled sessions get `threads` onnxruntime threads."""

    task: object
    threads: int = 0

    def __call__(self, chunk: list) -> list:
        with in_worker_process(self.task, self.threads):
            return [self.task(item) for item in chunk]


def in_batches(items: list, size: int) -> list[list]:
    """Returns the items in consecutive batches of `size` (the last one shorter)."""
    return [items[start:start + size] for start in range(0, len(items), size)]


class BatchRunner:
    """Explains a list of inputs with an ExplainTask: skips what an earlier run wrote, applies a global scale,
    and returns the summary rows of every input."""

    def __init__(self, task: ExplainTask, global_scale: bool = False, echo=click.echo):
        self.task, self.global_scale, self.echo = task, global_scale, echo

    def run(self, items, jobs=1, skip_existing=False, show_progress=False, scheduler=None) -> list[dict]:
        """Returns the summary rows of all items in input order (those of inputs skipped with skip_existing read
        back from their JSON files); an input's error is a row, an error of the whole run is raised."""
        earlier = [self.task.earlier_rows(item) if skip_existing else None for item in items]
        pending = [index for index, rows in enumerate(earlier) if rows is None]
        todo = [items[index] for index in pending]
        batches = in_batches(todo, self.task.batch_size)
        if self.global_scale:
            if scheduler:
                raise OptionError("--normalize global keeps every explanation in one process: not with --scheduler")
            new_rows = self._run_global(todo, batches, jobs, show_progress)
        else:
            backend = JOBS_BACKEND or cached_model(self.task.spec).jobs_backend
            new_rows = [rows for batch_rows in run_inputs(self.task.run_batch, batches, jobs, scheduler,
                                                          show_progress, self.echo, backend) for rows in batch_rows]
        for index, rows in zip(pending, new_rows):
            earlier[index] = rows
        return [row for rows in earlier for row in rows]

    def _run_global(self, items, batches, jobs, show_progress) -> list[list[dict]]:
        """Only a shared scale needs every explanation in memory before the first write."""
        with limit_threads(), _progress_bar(len(items), show_progress) as bar:
            computed = []
            for _, results in map_local(self.task.compute_batch, batches, jobs, "threading"):
                computed.extend(results)
                bar.update(len(results))
        scale = pipeline.global_scale(cached_model(self.task.spec), [e for ex, _ in computed if ex for e in ex],
                                      self.task.scale)
        saved = ((index, self.task.save(items[index], *result, scale)) for index, result in enumerate(computed))
        with outputs.batch_writes(self.task.out_dir):
            return _collect(saved, len(items), False, self.echo)
