"""What a batch's tasks share wherever they run (this process, threads, loky or Dask workers): the result an
input's task hands back, and the preamble of a worker process."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lrp_cli import outputs
from lrp_cli.errors import LrpError

SUMMARY_FIELDS = ["input", "status", "target", "label", "score", "f_x", "relevance_sum", "conservation_error",
                  "heatmap", "error"]


def summary_row(item, fields: dict | None = None, error: str | None = None, status: str = "ok") -> dict:
    """Returns one summary row for an explained input (`fields`: its model's `summary_fields` of its JSON
    document; status "skipped" when an earlier run wrote it) or a failed one (its error)."""
    if fields is None:
        return {"input": str(item.path), "status": "error", "error": error}
    return {"input": str(item.path), "status": status, **fields, "error": None}


@dataclass
class InputResult:
    """What one input's task hands back: its summary rows, the lines to print (text, to stderr), and an error that
    ends the whole run (exit code other than 1), if any."""

    rows: list[dict]
    lines: list[tuple[str, bool]] = field(default_factory=list)
    fatal: LrpError | None = None


def failed_result(item, message: str) -> InputResult:
    """Returns the error result of an input whose run failed, or of each input of a batch (a list: its rows are
    then one list per input, as ExplainTask.run_batch gives them)."""
    if isinstance(item, list):
        results = [failed_result(one, message) for one in item]
        return InputResult([r.rows for r in results], [line for r in results for line in r.lines])
    return InputResult([summary_row(item, error=f"{item.path}: {message}")], [(f"error: {item.path}: {message}", True)])


#: Every explanation makes its BLAS calls on this many threads, whatever --jobs or the cluster: OpenBLAS's sums
#: depend on its thread count (by ~1e-13), so a fixed count keeps the bytes the same; inputs run in parallel
#: instead (and a busy machine's preempted BLAS threads made one explanation 4x slower, benchmarks/RESULTS.md).
BLAS_THREADS = 1

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def limit_threads(threads: int | None = None):
    """Returns the threadpoolctl limiter that has capped this process's BLAS pools at `threads` (default
    BLAS_THREADS); as a context it restores them on exit."""
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=threads or BLAS_THREADS, user_api="blas")


def task_folder(task) -> Path | None:
    """Returns the folder a task (or the task whose bound method it is) writes its files under (its out_dir), or
    None when it names none."""
    return getattr(getattr(task, "__self__", task), "out_dir", None)


@contextmanager
def in_worker_process(task, onnxruntime_threads: int):
    """Returns the context a worker process (loky or Dask) runs a batch's tasks in: its BLAS pools at BLAS_THREADS
    for good (the process is lrp's to configure), the task's folder known as swept (the client swept it before
    the first task), compiled sessions on `onnxruntime_threads` intra-op threads."""
    from lrp_cli.engines import onnx_engine
    limit_threads()
    if task_folder(task) is not None:
        outputs.swept_by_batch(task_folder(task))
    with onnx_engine.intra_op_threads(onnxruntime_threads):
        yield
