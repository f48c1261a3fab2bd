"""`make bench`: time onnxruntime's forward against lrp-cli's relevance pass for each bundled model, and the
throughput of a 50-image EfficientNet-Lite0 batch at --jobs 1 and 2 (threads and processes).

Prints Markdown tables (median of N runs, batch 1) and, with --write, records them in benchmarks/RESULTS.md
with the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime
import os
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

import resnet50_onnx
from lrp_cli import api, batch
from lrp_cli.propagate import propagate

REPO = Path(__file__).resolve().parents[1]
MODELS = ["digits-mlp.onnx", "shapes-cnn.onnx", "efficientnet-lite0.onnx"]
IMAGE = REPO / "sample_images" / "chelsea.png"
PEAK_RSS = """
import resource, sys
from lrp_cli.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    assert not exit.code, exit.code
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(model: Path, out_dir: Path) -> float:
    """Returns the peak resident memory (MB) of one `lrp explain` run of the photo, in a fresh process."""
    args = ["explain", str(IMAGE), "--model", str(model), "--out", str(out_dir), "--no-progress"]
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, *args], capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1]) / 1024


def median_seconds(fn, runs: int) -> float:
    """Returns the median wall time of fn over runs calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(path: Path, runs: int, precision: str, name: str | None = None) -> dict:
    """Returns the timings of one model: onnxruntime forward, IR forward, backward pass, full explanation,
    and the peak memory of one command-line explanation."""
    model = api.load_model(path)
    x = np.random.default_rng(0).uniform(0, 1, model.graph.input_shape).astype(np.float32)
    settings = api.Settings(precision=precision)
    graph = model.graph_for(precision)
    rules = api.rules_for(model, settings, api.preprocess_config(model, settings))
    values = graph.forward(x.astype(api.PRECISIONS[precision]))
    target = int(np.argmax(values[graph.output_name]))
    with tempfile.TemporaryDirectory() as out_dir:
        rss = peak_rss_mb(path, Path(out_dir))
    return {
        "model": name or path.name,
        "peak_rss_mb": rss,
        "input": "x".join(map(str, model.graph.input_shape)),
        "ort": median_seconds(lambda: model.run_onnxruntime(x), runs),
        "ir_forward": median_seconds(lambda: graph.forward(x.astype(api.PRECISIONS[precision])), runs),
        "backward": median_seconds(lambda: propagate(graph, values, target, rules), runs),
        "explain": median_seconds(lambda: api.explain_array(model, x, settings), runs),
    }


BATCH_PHOTOS = [REPO / "sample_images" / "chelsea.png", REPO / "sample_images" / "coffee.png"]
BATCH_SIZE = 50
# (--jobs, backend, BLAS threads per explanation); the last row is what --jobs 1 did before explanations were
# pinned to batch.BLAS_THREADS
JOBS_RUNS = [(1, "threading", 1), (2, "threading", 1), (2, "loky", 1), (1, "threading", os.cpu_count())]


def batch_images(folder: Path, count: int = BATCH_SIZE) -> Path:
    """Writes `count` distinct photos (crops of 60-100 % of the sample photos at varying offsets, every other
    ten mirrored) into folder and returns it."""
    from PIL import Image, ImageOps
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        photo = Image.open(BATCH_PHOTOS[k % len(BATCH_PHOTOS)]).convert("RGB")
        scale = 0.6 + 0.1 * ((k // 2) % 5)
        width, height = int(photo.width * scale), int(photo.height * scale)
        left, top = (k * 37) % (photo.width - width + 1), (k * 53) % (photo.height - height + 1)
        crop = photo.crop((left, top, left + width, top + height))
        (ImageOps.mirror(crop) if (k // 10) % 2 else crop).save(folder / f"photo{k:02d}.png")
    return folder


def comparable_outputs(folder: Path) -> dict:
    """Returns file name -> bytes (JSON documents without their timings) of a batch's output folder."""
    contents = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".json":
            contents[path.name] = {k: v for k, v in json.loads(path.read_text()).items() if k != "timing_s"}
        else:
            contents[path.name] = path.read_bytes()
    return contents


def bench_jobs(model_path: Path) -> list[dict]:
    """Returns the images/s of explaining a 50-photo batch with each (--jobs, backend, BLAS threads) of JOBS_RUNS,
    and whether its outputs equal those of the first (JSON timings aside)."""
    model, spec = batch.load_model(model_path)
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as folder:
        items = batch.expand_inputs([str(batch_images(Path(folder) / "in"))])
        out = Path(folder) / "out"
        for jobs, backend, blas_threads in JOBS_RUNS:
            batch.JOBS_BACKEND, batch.BLAS_THREADS = backend, blas_threads
            task = batch.ExplainTask(spec, api.Settings(), out)
            start = time.perf_counter()
            batch.run_inputs(task, items, jobs, echo=lambda *args, **kwargs: None)
            seconds = time.perf_counter() - start
            contents = comparable_outputs(out)
            shutil.rmtree(out)
            reference = reference or contents
            rows.append({"jobs": jobs, "backend": backend, "blas": blas_threads, "images_per_s": len(items) / seconds,
                         "identical": contents == reference, "seconds": seconds})
    return rows


def jobs_table(rows: list[dict]) -> str:
    """Returns the batch throughputs as a Markdown table."""
    base = rows[0]["images_per_s"]
    lines = ["| --jobs | backend | BLAS threads per explanation | wall time | images/s | speed-up over --jobs 1 | "
             "outputs equal --jobs 1's |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['jobs']} | {r['backend']} | {r['blas']} | {r['seconds']:.1f} s | {r['images_per_s']:.2f} | "
                     f"{r['images_per_s'] / base:.2f}x | {'yes' if r['identical'] else 'NO'} |")
    return "\n".join(lines)


def load_note() -> str:
    """Returns the 1-minute load average, to show how busy the shared cores were."""
    return f"load average {os.getloadavg()[0]:.1f} at the start"


def table(rows: list[dict]) -> str:
    """Returns the timings as a Markdown table (milliseconds)."""
    lines = ["| model | input | onnxruntime forward | IR forward | relevance backward | full explanation | "
             "explanation / ort forward | peak RSS of `lrp explain` |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['input']} | {r['ort'] * 1e3:.2f} ms | {r['ir_forward'] * 1e3:.2f} ms | "
                     f"{r['backward'] * 1e3:.2f} ms | {r['explain'] * 1e3:.2f} ms | {r['explain'] / r['ort']:.1f}x | "
                     f"{r['peak_rss_mb']:.0f} MB |")
    return "\n".join(lines)


def machine() -> str:
    """Returns a one-line description of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--precision", default="float32", choices=list(api.PRECISIONS))
    parser.add_argument("--write", action="store_true", help="Append the table to benchmarks/RESULTS.md")
    parser.add_argument("--jobs-only", action="store_true", help="Only the --jobs throughput of a 50-photo batch")
    args = parser.parse_args()
    effnet = REPO / "models" / "efficientnet-lite0.onnx"
    jobs_text = ""
    if effnet.exists():
        note = load_note()
        jobs_text = (f"\n{BATCH_SIZE} photos (crops and mirrors of the two sample photos) explained by "
                     f"efficientnet-lite0.onnx in one process, float32, {note}.\n\n{jobs_table(bench_jobs(effnet))}\n")
    if args.jobs_only:
        record(f"## {datetime.date.today().isoformat()}: {machine()}\n{jobs_text}", args.write)
        return
    rows = [bench_model(REPO / "models" / name, args.runs, args.precision)
            for name in MODELS if (REPO / "models" / name).exists()]
    with tempfile.TemporaryDirectory() as folder:
        resnet = Path(folder) / "resnet50.onnx"
        onnx.save(resnet50_onnx.build(), str(resnet))
        rows.append(bench_model(resnet, args.runs, args.precision, "ResNet-50 (random weights)"))
    text = (f"## {datetime.date.today().isoformat()}: {machine()}\n\nMedian of {args.runs} runs, batch 1, "
            f"{args.precision}, each model's default composite (its sidecar's, else epsilon-plus-flat).\n\n"
            f"{table(rows)}\n{jobs_text}")
    record(text, args.write)


def record(text: str, write: bool) -> None:
    """Prints the results and, with --write, appends them to benchmarks/RESULTS.md."""
    print(text)
    if write:
        with open(REPO / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    main()
