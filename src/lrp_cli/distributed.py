"""The same batch on a dask.distributed cluster (the optional extra `lrp-cli[dask]`).

Inputs go to the workers in chunks, one Dask task per chunk; a worker keeps the model it loaded for its later
tasks (batch.cached_model, keyed by the file's sha256) and writes its files into the output folder with
outputs.write_all, so a task run twice (Dask reschedules the tasks of a worker that died) writes the same files.
"""

from __future__ import annotations

import logging
import math
import re

from lrp_cli.errors import OptionError

EXTRA_HINT = "pip install 'lrp-cli[dask]'"
CHUNKS_PER_WORKER = 4  # several chunks per worker keep them all busy to the end and bound a lost worker's redo


def _dask():
    """Returns the dask.distributed module, or raises the one-line error naming the extra."""
    try:
        import dask.distributed
    except ImportError:
        raise OptionError(f"--scheduler needs Dask, which is not installed: {EXTRA_HINT}") from None
    return dask.distributed


def local_workers(scheduler: str) -> int | None:
    """Returns N for `local:N` (a LocalCluster of N worker processes), None for a scheduler address."""
    match = re.fullmatch(r"local:(\d+)", scheduler)
    if scheduler.startswith("local:") and not (match and int(match[1]) >= 1):
        raise OptionError(f"--scheduler {scheduler}: expected local:N with N >= 1, or an address like "
                          "tcp://HOST:8786")
    return int(match[1]) if match else None


def connect(scheduler: str):
    """Returns (a dask Client, the LocalCluster it owns or None) for `--scheduler ADDRESS` or `local:N`."""
    dd = _dask()
    workers = local_workers(scheduler)
    if workers is not None:
        cluster = dd.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=logging.ERROR)
        return dd.Client(cluster.scheduler_address), cluster
    try:
        return dd.Client(scheduler, timeout="20s"), None
    except (OSError, ValueError, TypeError) as exc:
        raise OptionError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({exc})") from None


def run_chunk(task, items: list, host_threads: dict[str, int] | None = None) -> list:
    """Returns [task(item) for item in items]: the Dask task of one chunk of inputs, on one BLAS thread per
    worker thread (batch.BLAS_THREADS: the bytes then match a local run's; start workers with --nthreads 1 and
    as many --nworkers as cores) and this worker's share of its host's cores for onnxruntime."""
    from lrp_cli.tasks import CORES, in_worker_process
    with in_worker_process(task, core_share(CORES, _this_worker_host_threads(host_threads or {}))):
        return [task(item) for item in items]


def core_share(cores: int, host_threads: int) -> int:
    """Returns the onnxruntime intra-op threads of one task when `host_threads` tasks run at once on a host of
    `cores` cores: every worker's sessions taking all the cores would make them fight over them."""
    return max(1, cores // max(host_threads, 1))


def host_threads(workers: dict) -> dict[str, int]:
    """Returns, per host, how many tasks its workers run at once (the sum of their nthreads), from
    Client.scheduler_info()["workers"]."""
    totals: dict[str, int] = {}
    for info in workers.values():
        totals[info.get("host", "")] = totals.get(info.get("host", ""), 0) + info.get("nthreads", 1)
    return totals


def _this_worker_host_threads(totals: dict[str, int]) -> int:
    """Returns the task slots of this worker's host; a worker that joined after the client looked (a restarted
    one) counts its own threads only."""
    from distributed.comm import get_address_host  # the scheduler's own "host" of a worker (IPv6 too)
    worker = _dask().get_worker()
    return totals.get(get_address_host(worker.address), worker.state.nthreads)


def chunk_size(count: int, workers: int) -> int:
    """Returns how many inputs go into one Dask task."""
    return max(1, math.ceil(count / (max(workers, 1) * CHUNKS_PER_WORKER)))


def map_inputs(task, items: list, scheduler: str):
    """Yields (index, task(item)) for every item as the cluster finishes its chunk (dask.distributed.as_completed).

    `task` is a picklable callable returning a batch.InputResult. The inputs of a task that keeps killing its
    workers are run again at the end, one at a time with nothing else on the cluster, so that only an input that
    kills its worker by itself comes back as an error result: Dask also fails the tasks that merely shared or
    queued on a dying worker."""
    dd = _dask()
    local_workers(scheduler)  # a bad --scheduler is an error even when every input was done before
    if not items:
        return
    client, cluster = connect(scheduler)
    try:
        per_host = host_threads(client.scheduler_info(n_workers=-1)["workers"])
        size = chunk_size(len(items), sum(per_host.values()))
        chunks = {client.submit(run_chunk, task, items[start:start + size], per_host, pure=False):
                  range(start, min(start + size, len(items))) for start in range(0, len(items), size)}
        suspects = []
        for future in dd.as_completed(chunks):
            indices = chunks.pop(future)
            if future.status == "error" and isinstance(future.exception(), dd.KilledWorker):
                suspects.extend(indices)
            else:
                yield from zip(indices, _chunk_results(dd, future, [items[i] for i in indices]))
        for index in sorted(suspects):
            alone = client.submit(run_chunk, task, [items[index]], per_host, pure=False)
            dd.wait(alone)
            yield index, _chunk_results(dd, alone, [items[index]])[0]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _chunk_results(dd, future, items: list) -> list:
    from lrp_cli.tasks import failed_result
    try:
        return future.result()
    except dd.KilledWorker as exc:
        message = f"the Dask workers running it died ({exc})".splitlines()[0]
        return [failed_result(item, message) for item in items]
