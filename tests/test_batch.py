"""Batches: summaries that stay complete with --skip-existing, resuming after a SIGKILL, --jobs giving the same
bytes."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lrp_cli import batch
from lrp_cli.cli import main

RUN = CliRunner()
TIMING_FIELDS = ("timing_s",)  # the only part of an explanation's JSON that differs between identical runs


def explain(*args):
    return RUN.invoke(main, ["explain", *map(str, args)])


def make_folder(folder, count, broken=()):
    """Writes `count` distinct 20x24 RGB PNGs (and broken PNGs by name) into folder; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for k in range(count):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"im{k:03d}.png")
    for name in broken:
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return folder


def output_contents(folder):
    """Returns relative path -> content of every file: JSON documents without their timings, other files' bytes;
    summary rows without their status (ok in one run is skipped in a resumed one)."""
    contents = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name == "summary.json":
            contents[name] = [{k: v for k, v in row.items() if k != "status"}
                              for row in json.loads(path.read_text())["results"]]
        elif name == "summary.csv":
            contents[name] = [line.split(",", 2)[::2] for line in path.read_text().splitlines()]
        elif name.endswith(".json"):
            contents[name] = {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMING_FIELDS}
        else:
            contents[name] = path.read_bytes()
    return contents


def summary(folder):
    return json.loads((folder / "summary.json").read_text())


def test_skip_existing_summary_covers_every_input_with_earlier_results(tiny_cnn_path, tmp_path):
    data = make_folder(tmp_path / "data", 4, broken=["bad.png"])
    out = tmp_path / "out"
    assert explain(data, "--model", tiny_cnn_path, "--out", out).exit_code == 1
    first = summary(out)
    assert (first["inputs"], first["ok"], first["skipped"], first["failed"]) == (5, 4, 0, 1)
    before = output_contents(out)
    for name in ["im001.json", "im001.heatmap.png", "im001.overlay.png"]:
        (out / name).unlink()
    result = explain(data, "--model", tiny_cnn_path, "--out", out, "--skip-existing")
    assert result.exit_code == 1 and "bad.png" in result.output
    assert result.output.count("-> ") == 1  # only im001 was explained again
    second = summary(out)
    assert (second["inputs"], second["ok"], second["skipped"], second["failed"]) == (5, 1, 3, 1)
    assert {row["input"]: row["status"] for row in second["results"]} == {
            str(data / "bad.png"): "error", str(data / "im000.png"): "skipped", str(data / "im001.png"): "ok",
            str(data / "im002.png"): "skipped", str(data / "im003.png"): "skipped"}
    assert output_contents(out) == before
    csv_lines = (out / "summary.csv").read_text().splitlines()
    assert len(csv_lines) == 6 and sum(",skipped," in line for line in csv_lines) == 3

    again = explain(data, "--model", tiny_cnn_path, "--out", out, "--skip-existing")
    third = summary(out)
    assert (third["ok"], third["skipped"], third["failed"]) == (0, 4, 1) and again.output.count("-> ") == 0
    assert output_contents(out) == before


def test_skip_existing_with_top_k_needs_every_class_file(tiny_cnn_path, tmp_path):
    data = make_folder(tmp_path / "data", 2)
    out = tmp_path / "out"
    assert explain(data, "--model", tiny_cnn_path, "--out", out, "--target", "top:2").exit_code == 0
    before = output_contents(out)
    removed = sorted(out.glob("im000.class*.json"))[0]
    removed.unlink()
    result = explain(data, "--model", tiny_cnn_path, "--out", out, "--target", "top:2", "--skip-existing")
    assert result.exit_code == 0 and result.output.count("-> ") == 2  # im000's two classes again, im001 skipped
    assert [row["status"] for row in summary(out)["results"]] == ["ok", "ok", "skipped", "skipped"]
    assert output_contents(out) == before


@pytest.mark.slow
def test_sigkill_mid_batch_then_resume_gives_the_files_of_an_uninterrupted_run(tiny_cnn_path, tmp_path):
    count = 30
    data = make_folder(tmp_path / "data", count)
    whole, resumed = tmp_path / "whole", tmp_path / "out"  # outputs name their paths: same --out for both runs
    assert explain(data, "--model", tiny_cnn_path, "--out", resumed).exit_code == 0
    resumed.rename(whole)
    command = [sys.executable, "-m", "lrp_cli", "explain", str(data), "--model", str(tiny_cnn_path), "--out",
               str(resumed), "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(resumed.glob("im0[0-9]*.json")) and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = len(list(resumed.glob("*.json")))
    assert 0 < done < count and not (resumed / "summary.json").exists()
    stale = resumed / f".im{count - 1:03d}.json.abcd1234.tmp"  # what a kill inside write_all leaves behind
    stale.write_bytes(b"{")
    result = explain(data, "--model", tiny_cnn_path, "--out", resumed, "--skip-existing")
    assert result.exit_code == 0, result.output
    report = summary(resumed)
    assert (report["inputs"], report["ok"] + report["skipped"], report["failed"]) == (count, count, 0)
    assert report["skipped"] == done  # write_all renames an input's JSON last: a JSON means a complete set
    assert not [p for p in resumed.iterdir() if p.name.endswith(".tmp")]
    assert output_contents(resumed) == output_contents(whole)


@pytest.mark.parametrize("backend", ["threading", pytest.param("loky", marks=pytest.mark.slow)])
def test_jobs_two_writes_the_bytes_of_jobs_one(tiny_cnn_path, tmp_path, monkeypatch, backend):
    monkeypatch.setattr(batch, "JOBS_BACKEND", backend)
    data = make_folder(tmp_path / "data", 6, broken=["bad.png"])
    one, two = tmp_path / "one", tmp_path / "out"
    assert explain(data, "--model", tiny_cnn_path, "--out", two, "--save-raw").exit_code == 1
    two.rename(one)
    assert explain(data, "--model", tiny_cnn_path, "--out", two, "--save-raw", "--jobs", "2").exit_code == 1
    assert output_contents(one) == output_contents(two)
    assert summary(one)["results"] == summary(two)["results"]


def test_explanations_run_on_one_blas_thread_whatever_jobs():
    from threadpoolctl import threadpool_info
    seen = []

    def task(item):
        seen.append({pool["internal_api"]: pool["num_threads"] for pool in threadpool_info()
                     if pool["user_api"] == "blas"})
        return batch.InputResult([{"input": item}])

    items = [f"in{k}" for k in range(4)]
    before = {pool["internal_api"]: pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}
    for jobs in (1, 2):
        assert batch.run_inputs(task, items, jobs) == [[{"input": item}] for item in items]
    assert len(seen) == 8 and before and all(set(pools.values()) == {batch.BLAS_THREADS} for pools in seen)
    assert {pool["internal_api"]: pool["num_threads"] for pool in threadpool_info()
            if pool["user_api"] == "blas"} == before  # restored after the run


@pytest.mark.slow  # starts two worker processes
def test_worker_processes_take_chunks_and_give_every_result_in_input_order(monkeypatch):
    monkeypatch.setattr(batch, "CHUNKS_PER_JOB", 2)  # 4 chunks of 5, 5, 5 and 4 inputs
    items = [f"in{k}" for k in range(19)]
    assert list(batch.map_local(str.upper, items, 2, "loky")) == list(enumerate(item.upper() for item in items))

