"""`--scheduler`: batches on a dask.distributed LocalCluster of worker processes give the local run's files, survive
a worker killed mid-run, report a bad input once, resume with --skip-existing; without Dask a one-line error."""

import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from lrp_cli import batch
from lrp_cli.api import Settings
from lrp_cli.cli import main
from test_batch import make_folder, output_contents, summary

RUN = CliRunner()


def explain(*args):
    return RUN.invoke(main, ["explain", *map(str, args)])


@pytest.fixture(scope="module")
def cluster():
    """Returns a LocalCluster of two worker processes, shared by this module's tests (starting one takes seconds)."""
    dd = pytest.importorskip("dask.distributed")
    with dd.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                         silence_logs=logging.ERROR) as local:
        yield local


@pytest.fixture
def local_two(cluster, monkeypatch):
    """Makes `--scheduler local:2` use the shared cluster (recording what lrp asked for) instead of a new one."""
    import dask.distributed as dd
    asked = {}

    class Shared:
        def __init__(self, **kwargs):
            asked.update(kwargs)
            self.scheduler_address = cluster.scheduler_address

        def close(self):
            pass

    monkeypatch.setattr(dd, "LocalCluster", Shared)
    return asked


@pytest.mark.slow
def test_cluster_run_writes_the_local_runs_bytes_and_reports_a_bad_input_once(tiny_cnn_path, tmp_path, local_two):
    data = make_folder(tmp_path / "data", 9, broken=["bad.png"])
    local, out = tmp_path / "local", tmp_path / "out"  # outputs name their paths: the same --out for both runs
    assert explain(data, "--model", tiny_cnn_path, "--out", out, "--save-raw").exit_code == 1
    out.rename(local)
    result = explain(data, "--model", tiny_cnn_path, "--out", out, "--save-raw", "--scheduler", "local:2")
    assert result.exit_code == 1, result.output
    assert local_two["n_workers"] == 2 and local_two["processes"] is True
    assert output_contents(out) == output_contents(local)
    assert result.output.count("bad.png") == 1 and result.output.count("-> ") == 9
    rows = summary(out)["results"]
    assert [row["input"] for row in rows].count(str(data / "bad.png")) == 1
    assert (summary(out)["ok"], summary(out)["failed"]) == (9, 1)

    for name in ["im004.json", "im004.heatmap.png"]:
        (out / name).unlink()
    result = explain(data, "--model", tiny_cnn_path, "--out", out, "--save-raw", "--scheduler", "local:2",
                     "--skip-existing")
    assert result.exit_code == 1 and result.output.count("-> ") == 1
    assert (summary(out)["ok"], summary(out)["skipped"], summary(out)["failed"]) == (1, 8, 1)
    assert output_contents(out) == output_contents(local)


@dataclass
class DiesOnce:
    """A task that SIGKILLs its worker process the first time it meets `victim`, inside a half-done write."""

    task: batch.ExplainTask
    victim: str
    marker: Path

    def __call__(self, item):
        if item.stem == self.victim and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            (self.task.out_dir / f".{item.stem}.json.abcd1234.tmp").write_bytes(b"{")
            os.kill(os.getpid(), signal.SIGKILL)
        return self.task(item)


@pytest.mark.slow
def test_a_worker_killed_mid_run_has_its_inputs_redone_elsewhere(tiny_cnn_path, tmp_path, cluster):
    data = make_folder(tmp_path / "data", 16)
    items = batch.expand_inputs([str(data)])
    local, out = tmp_path / "local", tmp_path / "out"
    assert explain(data, "--model", tiny_cnn_path, "--out", out).exit_code == 0
    out.rename(local)
    (local / "summary.json").unlink()
    (local / "summary.csv").unlink()
    _, spec = batch.load_model(tiny_cnn_path)
    task = DiesOnce(batch.ExplainTask(spec, Settings(), out), "im006", tmp_path / "killed")
    lines = []
    rows = batch.run_inputs(task, items, scheduler=cluster.scheduler_address,
                            echo=lambda text, err=False: lines.append(text))
    killed = int((tmp_path / "killed").read_text())
    assert killed != os.getpid() and killed not in batch_worker_pids(cluster)  # that process is gone
    assert [row["status"] for rows_of_input in rows for row in rows_of_input] == ["ok"] * 16
    assert sum("-> " in line for line in lines) == 16
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert output_contents(out) == output_contents(local)


class OnnxruntimeThreads:
    """A task that returns the intra-op thread count its compiled sessions would get."""

    def __call__(self, item):
        from lrp_cli.engines import onnx_engine
        return onnx_engine._INTRA_OP_THREADS[0]


@pytest.mark.slow
def test_each_worker_gives_onnxruntime_its_share_of_the_hosts_cores(cluster):
    import dask.distributed as dd

    from lrp_cli.distributed import host_threads, run_chunk
    with dd.Client(cluster.scheduler_address) as client:
        client.wait_for_workers(2, timeout=60)  # the killed-worker tests leave one restarting
        per_host = host_threads(client.scheduler_info(n_workers=-1)["workers"])
        assert per_host == {"127.0.0.1": 2}
        assert client.submit(run_chunk, OnnxruntimeThreads(), [0], per_host, pure=False).result() == [
            max(1, batch.CORES // 2)]
        # a worker the client did not see counts its own thread only
        assert client.submit(run_chunk, OnnxruntimeThreads(), [0], {}, pure=False).result() == [batch.CORES]


def test_onnxruntime_threads_are_the_hosts_cores_over_its_task_slots():
    from lrp_cli.distributed import core_share, host_threads
    workers = {"tcp://a:1": {"host": "a", "nthreads": 1}, "tcp://a:2": {"host": "a", "nthreads": 3},
               "tcp://b:1": {"host": "b", "nthreads": 2}}
    assert host_threads(workers) == {"a": 4, "b": 2}
    assert [core_share(16, 4), core_share(2, 2), core_share(2, 4), core_share(8, 0)] == [4, 1, 1, 8]


@pytest.mark.parametrize("address, nthreads, totals, expected", [
    ("tcp://10.0.0.5:4000", 1, {"10.0.0.5": 4, "10.0.0.6": 1}, 2),  # 8 cores over the host's 4 task slots
    ("tcp://[::1]:4000", 1, {"::1": 2}, 4),  # an IPv6 worker: the scheduler's host is '::1', not '[::1]'
    ("tcp://10.0.0.7:4000", 2, {"10.0.0.5": 4}, 4),  # a host the client did not see: its own 2 threads
    ("tcp://10.0.0.5:4000", 1, {"10.0.0.5": 16}, 1),  # never below one thread
])
def test_a_chunk_gives_onnxruntime_its_hosts_share_without_a_cluster(monkeypatch, address, nthreads, totals,
                                                                      expected):
    # run_chunk as a Dask worker runs it, the worker faked: its address and thread count decide the share.
    dd = pytest.importorskip("dask.distributed")
    from lrp_cli import distributed
    worker = SimpleNamespace(address=address, state=SimpleNamespace(nthreads=nthreads))
    monkeypatch.setattr(dd, "get_worker", lambda: worker)
    from lrp_cli import tasks
    monkeypatch.setattr(tasks, "CORES", 8)
    monkeypatch.setattr(tasks, "limit_threads", lambda: None)  # the test process keeps its BLAS pools
    assert distributed.run_chunk(OnnxruntimeThreads(), [0, 1], totals) == [expected, expected]


def batch_worker_pids(cluster):
    import dask.distributed as dd
    with dd.Client(cluster.scheduler_address) as client:
        return set(client.run(os.getpid).values())


def test_without_dask_scheduler_is_a_one_line_error_naming_the_extra(tiny_cnn_path, rgb_image, tmp_path,
                                                                      monkeypatch):
    for name in ["dask", "dask.distributed", "distributed"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import dask.distributed` now raises ImportError
    result = explain(rgb_image, "--model", tiny_cnn_path, "--out", tmp_path / "o", "--scheduler", "local:2")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: --scheduler needs Dask, which is not installed: "
                                                  "pip install 'lrp-cli[dask]'"]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("address", ["local:0", "local:two"])
def test_bad_local_scheduler_is_a_usage_error(tiny_cnn_path, rgb_image, tmp_path, address):
    pytest.importorskip("dask.distributed")
    result = explain(rgb_image, "--model", tiny_cnn_path, "--out", tmp_path / "o", "--scheduler", address)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith(f"error: --scheduler {address}: expected local:N")


def test_chunks_keep_every_worker_busy():
    from lrp_cli.distributed import chunk_size
    assert [chunk_size(n, 2) for n in (1, 8, 9, 100, 1000)] == [1, 1, 2, 13, 125]


def test_global_normalization_is_refused_on_a_cluster(tiny_cnn_path, rgb_image, tmp_path):
    pytest.importorskip("dask.distributed")
    result = explain(rgb_image, "--model", tiny_cnn_path, "--out", tmp_path / "o", "--scheduler", "local:2",
                     "--normalize", "global")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: --normalize global keeps every explanation in one process: "
                                                  "not with --scheduler"]


@pytest.mark.slow
def test_evaluate_on_the_cluster_gives_the_local_document(tiny_cnn_path, tmp_path, local_two):
    import json
    data = make_folder(tmp_path / "data", 4, broken=["bad.png"])
    documents = {}
    for name, extra in (("local", []), ("cluster", ["--scheduler", "local:2"])):
        out = tmp_path / name
        result = RUN.invoke(main, ["evaluate", str(data), "--model", str(tiny_cnn_path), "--methods",
                                   "lrp,gradient", "--steps", "4", "--out", str(out), "--save-maps", *extra])
        assert result.exit_code == 1, result.output  # the broken input fails, the others are evaluated
        assert result.output.count("bad.png") == 1, result.output
        documents[name] = json.loads((out / "evaluation.json").read_text())
        documents[name]["maps"] = sorted(p.name for p in out.glob("*.relevance.npy"))
    assert documents["cluster"]["runs"] == documents["local"]["runs"] and documents["cluster"]["runs"]
    assert documents["cluster"]["errors"] == documents["local"]["errors"] and len(documents["local"]["errors"]) == 1
    assert documents["cluster"]["maps"] == documents["local"]["maps"]


def _without_timing(report: Path) -> str:
    """Returns a JUnit or JSON check report with its timings (which differ from run to run) blanked."""
    import re
    return re.sub(r'(time="|"seconds": )[0-9.e-]+', r"\1T", report.read_text())


@pytest.mark.slow
def test_check_on_the_cluster_gives_the_local_reports(tmp_path, local_two):
    from test_check import OBJECT_CASES, SHAPES, _spec
    (tmp_path / "broken.png").write_bytes(b"not a png")
    second = f'[[case]]\nname = "circles"\ninputs = ["{SHAPES}/circle_[0-9].png", "{tmp_path}/broken.png"]\n' \
             'expect = "circle"\n'
    specs = [_spec(tmp_path, OBJECT_CASES, "objects.toml"), _spec(tmp_path, second, "circles.toml")]
    runs, out = {}, tmp_path / "out"  # the JSON names the evidence paths: the same --evidence for both runs
    for name, extra in (("local", []), ("cluster", ["--scheduler", "local:2"])):
        result = RUN.invoke(main, ["check", *map(str, specs), "--junit", str(out / "j.xml"), "--json",
                                   str(out / "r.json"), "--evidence", str(out / "ev"), *extra])
        assert result.exit_code == 1, result.output  # the corner case and the broken input fail
        evidence = {p.relative_to(out / "ev"): p.read_bytes() for p in (out / "ev").rglob("*.png")}
        runs[name] = (result.output, _without_timing(out / "j.xml"), _without_timing(out / "r.json"), evidence)
        out.rename(tmp_path / name)
    assert local_two["n_workers"] == 2 and local_two["processes"] is True
    assert runs["cluster"] == runs["local"]
    output = runs["local"][0]
    assert output.splitlines()[-1] == "4 passed, 2 failed"
    assert sum("broken.png" in line for line in output.splitlines()) == 1  # one FAIL line, no worker's echo
    assert len(runs["local"][3]) == 2  # the corner case's heatmap and overlay


@dataclass
class AlwaysDies(batch.ExplainTask):
    """An explain task that SIGKILLs its worker process every time it meets `victim`."""

    victim: str = ""

    def compute(self, item):
        if item.stem == self.victim:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().compute(item)


@pytest.fixture
def one_retry(cluster):
    """Makes the shared cluster's scheduler give up on a task after its second worker death (default: 4th)."""
    import dask.distributed as dd

    def allow(dask_scheduler, failures):
        previous, dask_scheduler.allowed_failures = dask_scheduler.allowed_failures, failures
        return previous

    with dd.Client(cluster.scheduler_address) as client:  # closed before lrp opens its own
        previous = client.run_on_scheduler(allow, failures=1)
    yield
    with dd.Client(cluster.scheduler_address) as client:
        client.run_on_scheduler(allow, failures=previous)


@pytest.mark.slow
def test_an_input_that_always_kills_its_worker_is_one_error_row(tiny_cnn_path, tmp_path, cluster, one_retry):
    data = make_folder(tmp_path / "data", 8)
    items = batch.expand_inputs([str(data)])
    out = tmp_path / "out"
    _, spec = batch.load_model(tiny_cnn_path)
    lines = []
    runner = batch.BatchRunner(AlwaysDies(spec, Settings(), out, victim="im003"),
                               echo=lambda text, err=False: lines.append(text))
    rows = runner.run(items, scheduler=cluster.scheduler_address)  # 8 inputs, 2 workers: chunks of one
    assert [row["status"] for row in rows] == ["ok"] * 3 + ["error"] + ["ok"] * 4
    assert rows[3]["input"] == str(data / "im003.png") and "Dask workers running it died" in rows[3]["error"]
    assert [line for line in lines if line.startswith("error:")] == [f"error: {rows[3]['error']}"]
    assert {p.name.split(".")[0] for p in out.iterdir()} == {item.stem for item in items} - {"im003"}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_a_chunk_that_kills_its_workers_is_rerun_an_input_at_a_time(tiny_cnn_path, tmp_path, cluster, one_retry):
    data = make_folder(tmp_path / "data", 20)  # 2 workers, 4 chunks each: 3 inputs a chunk
    items = batch.expand_inputs([str(data)])
    _, spec = batch.load_model(tiny_cnn_path)
    task = AlwaysDies(spec, Settings(), tmp_path / "out", victim="im007")
    rows = batch.run_inputs(task, items, scheduler=cluster.scheduler_address, echo=lambda text, err=False: None)
    statuses = [row["status"] for rows_of_input in rows for row in rows_of_input]
    assert statuses == ["ok"] * 7 + ["error"] + ["ok"] * 12  # its chunk's other inputs are written


def test_check_cases_of_an_input_whose_workers_died_fail_with_that_error(tmp_path, monkeypatch):
    dd = pytest.importorskip("dask.distributed")
    from lrp_cli import distributed
    from test_check import OBJECT_CASES, _spec

    class Dead:
        def result(self):
            raise dd.KilledWorker("run_chunk-1", SimpleNamespace(address="tcp://10.0.0.1:1234"), 3)

    def dying_cluster(task, items, scheduler):  # what map_inputs yields when every chunk kills its workers
        for index, item in enumerate(items):
            yield index, distributed._chunk_results(dd, Dead(), [item])[0]

    monkeypatch.setattr(distributed, "map_inputs", dying_cluster)
    report = tmp_path / "r.json"
    result = RUN.invoke(main, ["check", str(_spec(tmp_path, OBJECT_CASES)), "--scheduler", "tcp://10.0.0.1:8786",
                               "--json", str(report)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    outcomes = json.loads(report.read_text())["specs"][0]["results"]
    assert [(o["case"], o["passed"]) for o in outcomes] == [("crosses", False), ("crosses", False),
                                                           ("corner is unused", False)]
    assert all("the Dask workers running it died" in o["error"] for o in outcomes)
    assert result.output.splitlines()[-1] == "0 passed, 3 failed"
