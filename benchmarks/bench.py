"""`make bench`: time onnxruntime's forward against lrp-cli's relevance pass for each bundled model, and the
throughput of a 50-image EfficientNet-Lite0 batch at --jobs 1 and 2 (threads and processes), and images/s at
--batch-size 1, 4 and 8 (`--batch-only`).

Prints Markdown tables (median of N runs, batch 1) and, with --write, records them in benchmarks/RESULTS.md
with the machine and the date.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import io
import os
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx

import bilstm_onnx
import resnet50_onnx
import vgg16_onnx
from tables import markdown
from lrp_cli import api, batch, batched
from lrp_cli.engines import onnx_engine
from lrp_cli.preprocess import load_input
from lrp_cli.propagate import propagate

REPO = Path(__file__).resolve().parents[1]
MODELS = ["digits-mlp.onnx", "shapes-cnn.onnx", "efficientnet-lite0.onnx"]
SHARED = REPO.parent / "shared" / "models"
SHARED_MODELS = ["mobilenet_v2_1.0_224.onnx"]
#: Full-size models built with random weights (no torch): (table name, builder module).
BUILT_MODELS = [("ResNet-50 (random weights)", resnet50_onnx), ("VGG-16 (random weights)", vgg16_onnx)]
IMAGE = REPO / "sample_images" / "chelsea.png"
# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec, so a child of the (large) bench process would
# report the bench's own resident size.
PEAK_RSS = """
import re, sys
from lrp_cli.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    assert not exit.code, exit.code
print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
"""


def peak_rss_mb(model: Path, out_dir: Path, engine: str = "numpy", cache: Path | None = None) -> float:
    """Returns the peak resident memory (MB) of one `lrp explain` run of the photo, in a fresh process (compiled
    graphs cached in `cache` when given, else where this process keeps them)."""
    args = ["explain", str(IMAGE), "--model", str(model), "--out", str(out_dir), "--no-progress", "--engine", engine]
    env = os.environ | ({onnx_engine.CACHE_ENV: str(cache)} if cache else {})
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, *args], capture_output=True, text=True, check=True,
                            env=env)
    return int(result.stdout.strip().splitlines()[-1]) / 1024


def compiled_rss_mb(model: Path) -> tuple[float, float]:
    """Returns the peak RSS (MB) of one `lrp explain --engine onnxruntime` on an empty cache, then on the warm one."""
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out_dir:
        return tuple(peak_rss_mb(model, Path(out_dir), "onnxruntime", Path(cache)) for _ in ("cold", "warm"))


def median_seconds(fn, runs: int) -> float:
    """Returns the median wall time of fn over runs calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_ratio(reference, fn, runs: int) -> tuple[float, float, float]:
    """Returns (median reference seconds, median fn seconds, median of per-run fn / reference): both timed in
    turn in this process, so that other jobs on the machine slow both alike."""
    reference(), fn()
    pairs = []
    for _ in range(runs):
        start = time.perf_counter()
        reference()
        middle = time.perf_counter()
        fn()
        pairs.append((middle - start, time.perf_counter() - middle))
    return (statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs),
            statistics.median(p[1] / p[0] for p in pairs))


def bench_compiled(path: Path, model, x: np.ndarray, rules: dict, runs: int) -> dict:
    """Returns the compiled engine's figures: compile time (cold cache), forward + relevance time against one
    onnxruntime forward (interleaved), and the peak memory of one warm `lrp explain --engine onnxruntime`."""
    with tempfile.TemporaryDirectory() as cache, cache_folder(cache):
        onnx_engine._SESSIONS.clear()
        start = time.perf_counter()
        compiled = onnx_engine.session_for(model, "lrp", rules)
        session_seconds = time.perf_counter() - start
        ort, fast, ratio = interleaved_ratio(lambda: model.run_onnxruntime(x), lambda: compiled.run(x, -1), runs)
        onnx_engine._SESSIONS.clear()
    cold, warm = compiled_rss_mb(path)
    return {"compile_s": compiled.compile_seconds, "session_s": session_seconds - compiled.compile_seconds,
            "ort_interleaved": ort, "compiled": fast, "ratio": ratio, "compiled_rss_mb": warm,
            "compiled_cold_rss_mb": cold}


def bench_model(path: Path, runs: int, precision: str, name: str | None = None) -> dict:
    """Returns the timings of one model: onnxruntime forward, IR forward, backward pass, full explanation,
    and the peak memory of one command-line explanation (NumPy engine), then the compiled engine's."""
    model = api.load_model(path)
    x = np.random.default_rng(0).uniform(0, 1, model.graph.input_shape).astype(np.float32)
    settings = api.Settings(precision=precision, engine="numpy")
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
    } | bench_compiled(path, model, x, rules, runs)


CHECK_SPEC = """model = "{model}"

[[case]]
name = "evidence on the object, not on the tag"
inputs = ["images"]
target = "pred"
max_conservation_error = 1.0
region = [{{name = "object", mask = "masks/{{stem}}.png", min_positive_share = 0.2, pointing_game = true}},
          {{name = "tag", box = [52, 55, 62, 62], units = "px", max_positive_share = 0.2}}]
"""


def bench_check(runs: int, count: int = 100) -> dict:
    """Returns the median wall and CPU times of `lrp check` (one case, two regions) and of `lrp explain` on the
    same `count` tagged-shapes images with models/tag-clean.onnx, both run in this process."""
    from PIL import Image

    from lrp_cli.cli import main as lrp
    from lrp_cli.synthetic import tags
    model = REPO / "models" / "tag-clean.onnx"
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        images, masks, _, _ = tags.make_dataset(count, 20, tag_fraction=1.0)
        for sub in ("images", "masks"):
            (root / sub).mkdir()
        for k, (image, mask) in enumerate(zip(images, masks)):
            Image.fromarray(image).save(root / "images" / f"{k:03d}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{k:03d}.png")
        (root / "spec.toml").write_text(CHECK_SPEC.format(model=model), encoding="utf-8")

        def command(args):
            try:
                lrp(args, standalone_mode=False)
            except SystemExit:  # lrp check exits 1 when a check fails: the time is what counts here
                pass
        check = ["check", str(root / "spec.toml"), "--json", str(root / "check.json")]
        explain = ["explain", str(root / "images"), "--model", str(model), "--out", str(root / "out"),
                   "--no-progress"]
        times = {"check": [], "explain": [], "check_cpu": [], "explain_cpu": []}
        with contextlib.redirect_stdout(io.StringIO()):
            command(check)  # warm-up
            for _ in range(runs):  # interleaved, so that load from other jobs falls on both alike
                for name, args in (("check", check), ("explain", explain)):
                    wall, cpu = time.perf_counter(), time.process_time()
                    command(args)
                    times[name].append(time.perf_counter() - wall)
                    times[f"{name}_cpu"].append(time.process_time() - cpu)
        return {"inputs": count} | {name: statistics.median(values) for name, values in times.items()}


def bench_evaluate(path: Path) -> dict:
    """Returns the wall time of one pixel-flipping evaluation of the photo: every method, MoRF and LeRF, 100 steps
    (model loaded; the batched scoring session is built inside, as in a command-line run), and one batch-1
    onnxruntime forward measured in the same run (the unit that survives a loaded machine)."""
    from lrp_cli import batch, evaluate
    model = api.load_model(path)
    x, _ = load_input(IMAGE, api.preprocess_config(model, api.Settings()), model.graph.input_shape, model.layout)
    forward = median_seconds(lambda: model.run_onnxruntime(x), 5)
    variants = evaluate.method_variants(model, api.Settings(), list(api.METHOD_NAMES))
    flip = evaluate.FlipSettings(("morf", "lerf"), "flip", 1, 100)
    with tempfile.TemporaryDirectory() as out_dir:
        start = time.perf_counter()
        document, _ = evaluate.run_evaluation(model, batch.expand_inputs([str(IMAGE)]), variants, flip, Path(out_dir))
        seconds = time.perf_counter() - start
    return {"model": path.name, "methods": ", ".join(api.METHOD_NAMES), "curves": len(document["runs"]),
            "seconds": seconds, "forward": forward, "load": os.getloadavg()[0]}


@contextlib.contextmanager
def timed_scoring():
    """Yields a dict that collects the inputs and seconds of every batched onnxruntime scoring call made inside."""
    from lrp_cli import scoring
    totals = {"inputs": 0, "seconds": 0.0, "calls": 0}
    original = scoring._Scorer.run

    def run(self, xs):
        start = time.perf_counter()
        try:
            return original(self, xs)
        finally:
            totals["seconds"] += time.perf_counter() - start
            totals["inputs"] += len(xs)
            totals["calls"] += 1
    scoring._Scorer.run = run
    try:
        yield totals
    finally:
        scoring._Scorer.run = original


def bench_samek(path: Path = REPO / "models" / "efficientnet-lite0.onnx", image: Path = IMAGE) -> dict:
    """Returns the time of `lrp evaluate --protocol samek2017` on one photo with every method (MoRF and LeRF, the
    first 100 of 625 9x9 regions and the full-range curve beside them), against the time of its forwards: the
    seconds inside the batched onnxruntime scoring calls (`ratio`, the claim is < 2), and the number of scored
    inputs times one batch-1 forward measured in the same run (`ratio_batch1`)."""
    from lrp_cli import evaluate
    model = api.load_model(path)
    x, _ = load_input(image, api.preprocess_config(model, api.Settings()), model.graph.input_shape, model.layout)
    forward = median_seconds(lambda: model.run_onnxruntime(x), 5)
    variants = evaluate.method_variants(model, api.Settings(), list(api.METHOD_NAMES))
    flip = evaluate.flip_settings("morf,lerf", "samek2017", None, None, None, None, None)
    with tempfile.TemporaryDirectory() as out_dir, timed_scoring() as scored:
        start = time.perf_counter()
        evaluate.run_evaluation(model, batch.expand_inputs([str(image)]), variants, flip, Path(out_dir))
        seconds = time.perf_counter() - start
    return {"model": path.name, "methods": len(variants), "seconds": seconds, "forward": forward,
            "scored": scored["inputs"], "scoring_seconds": scored["seconds"], "ratio": seconds / scored["seconds"],
            "ratio_batch1": seconds / (scored["inputs"] * forward), "load": os.getloadavg()[0]}


def samek_text() -> str:
    """Returns the line of `bench_samek` (empty when EfficientNet-Lite0 has not been built)."""
    if not (REPO / "models" / "efficientnet-lite0.onnx").exists():
        return ""
    e = bench_samek()
    return (f"\n`lrp evaluate --protocol samek2017` of {IMAGE.name} ({e['model']}, 224x224, {e['methods']} methods, "
            f"MoRF and LeRF): {e['seconds']:.1f} s for {e['scored']} scored inputs; {e['ratio']:.2f}x the "
            f"{e['scoring_seconds']:.1f} s inside the batched forwards, {e['ratio_batch1']:.2f}x as many batch-1 "
            f"forwards ({e['forward'] * 1e3:.1f} ms each in the same run); load average {e['load']:.1f} at the end.\n")


BATCH_PHOTOS = [REPO / "sample_images" / "chelsea.png", REPO / "sample_images" / "coffee.png"]
BATCH_SIZE = 50
# (--jobs, backend, BLAS threads per explanation); the last row is what --jobs 1 did before explanations were
# pinned to batch.BLAS_THREADS
#: (--jobs, backend, BLAS threads, onnxruntime threads per job: None is batch.map_local's cores // jobs, "all"
#: every core for each job, as before map_local shared them out)
JOBS_RUNS = [(1, "threading", 1, None), (2, "threading", 1, None), (2, "threading", 1, "all"), (2, "loky", 1, None),
             (1, "threading", os.cpu_count(), None)]


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
        cores = batch.CORES
        for jobs, backend, blas_threads, ort_threads in JOBS_RUNS:
            batch.JOBS_BACKEND, batch.BLAS_THREADS = backend, blas_threads
            batch.CORES = cores * jobs if ort_threads == "all" else cores
            task = batch.ExplainTask(spec, api.Settings(), out)
            start = time.perf_counter()
            batch.run_inputs(task, items, jobs, echo=lambda *args, **kwargs: None)
            seconds = time.perf_counter() - start
            contents = comparable_outputs(out)
            shutil.rmtree(out)
            reference = reference or contents
            rows.append({"jobs": jobs, "backend": backend, "blas": blas_threads, "images_per_s": len(items) / seconds,
                         "identical": contents == reference, "seconds": seconds,
                         "ort": batch.CORES // jobs if jobs > 1 else "default"})
        batch.CORES = cores
    return rows


def jobs_table(rows: list[dict]) -> str:
    """Returns the batch throughputs as a Markdown table."""
    base = rows[0]["images_per_s"]
    return markdown(
        ["--jobs", "backend", "BLAS threads per explanation", "onnxruntime threads per job", "wall time", "images/s",
         "speed-up over --jobs 1", "outputs equal --jobs 1's"],
        [[str(r["jobs"]), r["backend"], str(r["blas"]), str(r["ort"]), f"{r['seconds']:.1f} s",
          f"{r['images_per_s']:.2f}", f"{r['images_per_s'] / base:.2f}x", "yes" if r["identical"] else "NO"]
         for r in rows])


def bench_jobs_bound(model_path: Path, jobs1_per_image: float, runs: int = 20) -> dict:
    """Returns what bounds `--jobs 2` over `--jobs 1` here: the compiled run on every core (t2), on one thread
    alone (t1) and beside a second one-thread run (t1_shared), the rest of an input's time in the `--jobs 1` batch
    (rest), and the speed-up of two jobs that overlap perfectly, 2 (t2 + rest) / (t1_shared + rest)."""
    model = api.load_model(model_path)
    settings = api.Settings(engine="onnxruntime")
    x, _ = load_input(IMAGE, api.preprocess_config(model, settings), model.graph.input_shape, model.layout)
    rules = api.rules_for(model, settings, api.preprocess_config(model, settings))
    every_core = onnx_engine.session_for(model, "lrp", rules)
    with onnx_engine.intra_op_threads(1):
        one_thread = onnx_engine.session_for(model, "lrp", rules)
    t2 = median_seconds(lambda: every_core.run(x, -1), runs)
    t1 = median_seconds(lambda: one_thread.run(x, -1), runs)

    def loop():
        for _ in range(runs):
            one_thread.run(x, -1)
    pair = [threading.Thread(target=loop) for _ in range(2)]
    start = time.perf_counter()
    for thread in pair:
        thread.start()
    for thread in pair:
        thread.join()
    t1_shared = (time.perf_counter() - start) / runs
    rest = jobs1_per_image - t2
    return {"runs": runs, "t2": t2, "t1": t1, "t1_shared": t1_shared, "rest": rest,
            "bound": 2 * (t2 + rest) / (t1_shared + rest)}


def jobs_bound_text(b: dict) -> str:
    """Returns the paragraph on what bounds `--jobs 2`."""
    return (f"What bounds `--jobs 2` here (compiled run of one photo, median of {b['runs']}): "
            f"{b['t2'] * 1e3:.1f} ms on every core, {b['t1'] * 1e3:.1f} ms on one thread alone "
            f"({b['t1'] / b['t2']:.2f}x), "
            f"{b['t1_shared'] * 1e3:.1f} ms on one thread while a second such run goes on (per run, "
            f"{b['t1_shared'] / b['t1']:.2f}x alone); the rest of an input in the `--jobs 1` batch (decode, PNGs, "
            f"JSON) {b['rest'] * 1e3:.1f} ms. Two jobs overlapping perfectly would give 2 (t2 + rest) / "
            f"(t1 shared + rest) = {b['bound']:.2f}x `--jobs 1`.\n")


BATCH_SIZES = (1, 4, 8)


def bench_batch_sizes(path: Path, runs: int, sizes=BATCH_SIZES) -> list[dict]:
    """Returns, per --batch-size, images/s of the compiled engine on the photo repeated N times: one onnxruntime
    forward of the batch, one compiled forward + relevance run, and `batched.explain_arrays` (the run plus the
    per-item explanations, no files written)."""
    model = api.load_model(path)
    x, _ = load_input(IMAGE, api.preprocess_config(model, api.Settings()), model.graph.input_shape, model.layout)
    settings = api.Settings(engine="onnxruntime")
    rows = []
    for size in sizes:
        bound = model if size == 1 else batched.batch_model(model, size)
        rules = api.rules_for(bound, settings, api.preprocess_config(bound, settings))
        compiled = onnx_engine.session_for(bound, "lrp", rules)
        xs = np.concatenate([x] * size)
        names, pictures = [IMAGE] * size, [None] * size
        forward = median_seconds(lambda: bound.run_onnxruntime(xs), runs)
        run = median_seconds(lambda: compiled.run_items(xs, [-1] * size), runs)
        explain = median_seconds(lambda: batched.explain_arrays(model, [x] * size, settings, names, pictures), runs)
        rows.append({"size": size, "forward": forward / size, "run": run / size, "explain": explain / size})
    return rows


def batch_sizes_table(rows: list[dict]) -> str:
    """Returns the --batch-size throughputs as a Markdown table (per-image times, images/s, gain over batch 1)."""
    base = rows[0]["explain"]
    return markdown(
        ["--batch-size", "onnxruntime forward / image", "compiled run / image", "explain_arrays / image", "images/s",
         "over batch 1"],
        [[str(r["size"]), f"{r['forward'] * 1e3:.1f} ms", f"{r['run'] * 1e3:.1f} ms", f"{r['explain'] * 1e3:.1f} ms",
          f"{1 / r['explain']:.1f}", f"{base / r['explain']:.2f}x"] for r in rows])


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


def compiled_table(rows: list[dict]) -> str:
    """Returns the compiled engine's timings as a Markdown table."""
    lines = ["| model | onnxruntime forward | compiled forward + relevance | ratio (median of per-run ratios) | "
             "compile (cold cache) | session start | peak RSS, compiled cold / warm / NumPy engine |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['ort_interleaved'] * 1e3:.2f} ms | {r['compiled'] * 1e3:.2f} ms | "
                     f"{r['ratio']:.2f}x | {r['compile_s']:.2f} s | {r['session_s']:.2f} s | "
                     f"{r['compiled_cold_rss_mb']:.0f} / {r['compiled_rss_mb']:.0f} / {r['peak_rss_mb']:.0f} MB |")
    return "\n".join(lines)


@contextlib.contextmanager
def built_models():
    """Returns the context of the torch-free BUILT_MODELS written into a temporary folder: [(name, path)]."""
    with tempfile.TemporaryDirectory() as folder:
        paths = [(name, Path(folder) / f"{builder.__name__}.onnx") for name, builder in BUILT_MODELS]
        for (_, path), (_, builder) in zip(paths, BUILT_MODELS):
            onnx.save(builder.build(), str(path))
        yield paths


@contextlib.contextmanager
def memory_models():
    """Returns the context of the four models of the memory table: [(name, path)], the built ones in a temporary
    folder."""
    paths = [("efficientnet-lite0.onnx", REPO / "models" / "efficientnet-lite0.onnx"),
             ("mobilenet_v2_1.0_224.onnx", SHARED / "mobilenet_v2_1.0_224.onnx")]
    with built_models() as built:
        yield [(name, path) for name, path in paths if path.exists()] + built


@contextlib.contextmanager
def cache_folder(folder: str):
    """Returns the context in which this process caches compiled graphs in folder (the previous setting after)."""
    previous = os.environ.get(onnx_engine.CACHE_ENV)
    os.environ[onnx_engine.CACHE_ENV] = folder
    try:
        yield
    finally:
        if previous is None:
            del os.environ[onnx_engine.CACHE_ENV]
        else:
            os.environ[onnx_engine.CACHE_ENV] = previous


def bench_memory(path: Path, runs: int) -> dict:
    """Returns the peak RSS of one `lrp explain` on each engine (compiled: cold and warm cache) and the run time of
    the cached optimized session against one that optimizes the compiled graph again (the way before), in turn."""
    with tempfile.TemporaryDirectory() as out_dir:
        numpy_rss = peak_rss_mb(path, Path(out_dir))
    cold, warm = compiled_rss_mb(path)
    model = api.load_model(path)
    x = np.random.default_rng(0).uniform(0, 1, model.graph.input_shape).astype(np.float32)
    settings = api.Settings(engine="onnxruntime")
    with tempfile.TemporaryDirectory() as cache, cache_folder(cache):
        onnx_engine._SESSIONS.clear()
        compiled = onnx_engine.session_for(model, "lrp", api.rules_for(model, settings,
                                                                      api.preprocess_config(model, settings)))
        again = dataclasses.replace(compiled, session=onnx_engine._open(compiled.path, onnx_engine.DEFAULT_PROVIDERS))
        _, _, ratio = interleaved_ratio(lambda: again.run(x, -1), lambda: compiled.run(x, -1), runs)
        onnx_engine._SESSIONS.clear()
    return {"numpy": numpy_rss, "cold": cold, "warm": warm, "ratio": ratio}


def memory_text(runs: int) -> str:
    """Returns the peak-memory table of the four models (`--memory-only`)."""
    with memory_models() as models:
        rows = [(name, bench_memory(path, runs)) for name, path in models]
    table_text = markdown(
        ["model", "NumPy engine", "compiled, cold cache", "compiled, warm cache",
         "cached optimized session / re-optimized session (run time)"],
        [[name, f"{r['numpy']:.0f} MB", f"{r['cold']:.0f} MB", f"{r['warm']:.0f} MB", f"{r['ratio']:.2f}x"]
         for name, r in rows])
    return (f"\nPeak RSS (VmHWM) of one `lrp explain` of {IMAGE.name} in a fresh process, float32, default composite; "
            f"run times median of {runs} per-run ratios, timed in turn in one process; {load_note()}.\n\n"
            f"{table_text}\n")


def bench_methods(path: Path, runs: int) -> str:
    """Returns a Markdown table of the full explanation time (forward pass included) of every method on the photo."""
    model = api.load_model(path)
    x, _ = load_input(IMAGE, api.preprocess_config(model, api.Settings()), model.graph.input_shape, model.layout)
    forward = median_seconds(lambda: model.run_onnxruntime(x), 5)
    lines = [f"| method ({path.name}, {IMAGE.name}) | options | full explanation | / one onnxruntime forward "
             f"({forward * 1e3:.1f} ms) |", "|---|---|---|---|"]
    for name in api.METHOD_NAMES:
        settings = api.Settings(method=name)
        results = []
        seconds = median_seconds(lambda: results.append(api.explain_array(model, x, settings)[0]), runs)
        options = results[-1].extra.get("method_options", {})
        shown = ", ".join(f"{k} {v}" for k, v in options.items()) or "-"
        lines.append(f"| {name} | {shown} | {seconds * 1e3:.0f} ms | {seconds / forward:.0f}x |")
    return "\n".join(lines)


VIT = REPO / "models" / "vit_b_16.onnx"


def vit_text(runs: int, path: Path = VIT) -> str:
    """Returns the ViT-B/16 timing paragraph (load, onnxruntime forward, full explanation on NumPy and on the compiled
    engine, peak RSS of both), or a line saying it was skipped when the git-ignored model has not been exported."""
    if not path.exists():
        return (f"\nViT-B/16: skipped, {path.relative_to(REPO)} is absent (make it with "
                "scripts/export_torchvision_vit.py in a torch venv).\n")
    start = time.perf_counter()
    model = api.load_model(path)
    load = time.perf_counter() - start
    settings = api.Settings(engine="numpy", preprocess={"preset": "imagenet"})
    x, _ = load_input(IMAGE, api.preprocess_config(model, settings), model.graph.input_shape, model.layout)
    results = []
    ort, explain, ratio = interleaved_ratio(lambda: model.run_onnxruntime(x),
                                            lambda: results.append(api.explain_array(model, x, settings)[0]), runs)
    with tempfile.TemporaryDirectory() as out_dir:
        rss = peak_rss_mb(path, Path(out_dir))
    composite = results[-1].composite
    fast = bench_compiled(path, model, x, api.rules_for(model, settings, api.preprocess_config(model, settings)), runs)
    return (f"\n{path.name} ({IMAGE.name}, {'x'.join(map(str, model.graph.input_shape))}, {composite}, NumPy "
            f"engine), median of {runs} runs timed in turn with the onnxruntime forward: onnxruntime forward "
            f"{ort:.2f} s, full explanation {explain:.2f} s ({ratio:.0f}x, median of per-run ratios); loading the "
            f"model {load:.1f} s; peak RSS of one `lrp explain` {rss:.0f} MB; {load_note()}.\n"
            f"Compiled engine (`--engine onnxruntime`), timed in turn with the onnxruntime forward: forward + "
            f"relevance {fast['compiled']:.2f} s against {fast['ort_interleaved']:.2f} s ({fast['ratio']:.2f}x, "
            f"median of per-run ratios); compile {fast['compile_s']:.1f} s (cold cache), session start "
            f"{fast['session_s']:.1f} s; peak RSS of one warm `lrp explain --engine onnxruntime` "
            f"{fast['compiled_rss_mb']:.0f} MB.\n")


def bench_text(runs: int = 40, words: int = 1000, features: int = 100_000) -> dict:
    """Returns {decision_ms, explain_ms, ratio, features}: `lrp_cli.text.explain_text` of one `words`-word document
    against the pipeline's own decision_function([text]) (vectorising included in both), timed in turn, for a
    TfidfVectorizer(max_features=`features`) + LinearSVC pipeline fitted on a generated Zipf-distributed corpus."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    from lrp_cli.text.explain import explain_text
    from lrp_cli.text.pipeline import load_text_model

    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    types = ["".join(rng.choice(letters, rng.integers(3, 9))) for _ in range(int(features * 1.5))]
    p = 1.0 / np.arange(1, len(types) + 1) ** 0.8
    p /= p.sum()
    docs = [" ".join(types[i] for i in row) for row in rng.choice(len(types), size=(4000, 150), p=p)]
    pipe = make_pipeline(TfidfVectorizer(max_features=features), LinearSVC()).fit(docs, rng.integers(0, 2, 4000))
    doc = " ".join(types[i] for i in rng.choice(len(types), words, p=p))
    with tempfile.TemporaryDirectory() as folder:
        import joblib

        joblib.dump(pipe, Path(folder) / "text.joblib")
        model = load_text_model(Path(folder) / "text.joblib")
    decision, explain, ratio = interleaved_ratio(lambda: pipe.decision_function([doc]),
                                                 lambda: explain_text(model, doc), runs)
    short = [" ".join(types[i] for i in row) for row in rng.choice(len(types), size=(300, 30), p=p)]
    return {"decision_ms": decision * 1e3, "explain_ms": explain * 1e3, "ratio": ratio,
            "features": len(pipe[0].vocabulary_), "words": words, **short_documents_per_s(pipe, model, short)}


def short_documents_per_s(pipe, model, docs: list) -> dict:
    """Returns documents per second, one process, of a decision_function loop, of explain_text writing STEM.json,
    and writing STEM.json, .html and .png."""
    from lrp_cli import outputs
    from lrp_cli.text import render
    from lrp_cli.text.explain import explain_text

    def rate(fn) -> float:
        start = time.perf_counter()
        for k, doc in enumerate(docs):
            fn(k, doc)
        return len(docs) / (time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as out, outputs.batch_writes(Path(out)):  # as a batch writes
        return {"decision_per_s": rate(lambda k, d: pipe.decision_function([d])),
                "json_per_s": rate(lambda k, d: render.write_outputs(explain_text(model, d), out, f"j{k}",
                                                                     formats=())),
                "all_per_s": rate(lambda k, d: render.write_outputs(explain_text(model, d), out, f"a{k}"))}


TEXT_MODEL = REPO / "models" / "text-sentiment.joblib"
TEXT_BATCH_RUNS = (("--jobs 1", []), ("--jobs 2", ["--jobs", "2"]), ("--scheduler local:2", ["--scheduler", "local:2"]))


def write_reviews(folder: Path, count: int) -> list[Path]:
    """Returns `count` short generated reviews (scripts/build_text_models.py's generator, seed 0) written as
    folder/rNNNNN.txt."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("build_text_models", REPO / "scripts" / "build_text_models.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"r{i:05d}.txt" for i in range(count)]
    for path in paths:
        path.write_text(builder.review(rng)[0], encoding="utf-8")
    return paths


def bench_text_batch(count: int = 10_000, model: Path = TEXT_MODEL, runs=TEXT_BATCH_RUNS,
                     formats=("json,html,png", "json")) -> dict:
    """Returns documents per second of a folder of `count` short reviews: a plain decision_function loop over the
    files (read included, one process) and `lrp explain FOLDER` as a command (start-up and the summary included)
    for each of `runs` (name, extra arguments) and --text-formats in `formats`; with the load average at the end
    (the bound, issue 19: at least half the loop's rate)."""
    import joblib
    pipe = joblib.load(model)
    with tempfile.TemporaryDirectory() as root:
        files = write_reviews(Path(root) / "docs", count)
        start = time.perf_counter()
        for path in files:
            pipe.decision_function([path.read_text(encoding="utf-8")])
        rates = {"decision_loop": count / (time.perf_counter() - start)}
        for fmt in formats:
            for name, extra in runs:
                out = Path(root) / "out"
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "lrp_cli", "explain", str(Path(root) / "docs"), "--model",
                                str(model), "--out", str(out), "--no-progress", "--text-formats", fmt, *extra],
                               check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONWARNINGS": "ignore"})
                rates[f"{name}, {fmt}"] = count / (time.perf_counter() - start)
                shutil.rmtree(out)
    return {"count": count, "docs_per_s": rates, "load": os.getloadavg()[0]}


def text_batch_text(count: int) -> str:
    """Returns the Markdown table of bench_text_batch."""
    b = bench_text_batch(count)
    loop = b["docs_per_s"]["decision_loop"]
    rows = [[name, f"{rate:.0f}", f"{rate / loop:.2f}"] for name, rate in b["docs_per_s"].items()]
    return (f"\n{b['count']} short generated reviews in a folder, {TEXT_MODEL.name}: a decision_function loop over the "
            f"files against `lrp explain FOLDER` (a command: start-up included), load average {b['load']:.1f} at "
            f"the end (target: at least 0.5 of the loop).\n\n{markdown(['run', 'docs/s', 'of the loop'], rows)}\n")


def text_text(runs: int) -> str:
    """Returns the Markdown paragraph of bench_text."""
    b = bench_text(max(runs, 20))
    return (f"\nText (scikit-learn pipeline): one {b['words']}-word document, TF-IDF with {b['features']} features + "
            f"LinearSVC, median of {max(runs, 20)} runs in turn: decision_function {b['decision_ms']:.2f} ms, "
            f"explain_text {b['explain_ms']:.2f} ms, ratio {b['ratio']:.2f}x (target: at most 3x). 300 documents of "
            f"30 words, one process: decision_function loop {b['decision_per_s']:.0f} docs/s, explained with STEM.json "
            f"{b['json_per_s']:.0f} docs/s, with .json, .html and .png {b['all_per_s']:.0f} docs/s.\n")


def bench_bilstm_text(runs: int = 20, tokens: int = 50) -> dict:
    """Returns {forward_ms, explain_ms, ratio, ids_ms, ids_ratio}: explaining a `tokens`-word sentence with the
    2-layer bidirectional LSTM of hidden size 256 (bilstm_onnx, random weights) through the ONNX text kind (text
    -> ids -> LRP -> words; engine auto, which runs LSTMs on NumPy), and the id tensor alone through the ONNX kind,
    each timed in turn with the model's onnxruntime forward on the same ids (issue 20: at most 5x)."""
    import onnxruntime as ort
    from threadpoolctl import threadpool_limits

    from lrp_cli.explanation import Settings
    from lrp_cli.kinds import load_model

    words = [f"w{k}" for k in range(bilstm_onnx.VOCAB)]
    sentence = " ".join(np.random.default_rng(1).choice(words, tokens))
    settings = Settings(kind_options={"text": sentence})
    with tempfile.TemporaryDirectory() as folder:  # the session is built from the file on first use
        path = Path(folder) / "bilstm.onnx"
        onnx.save(bilstm_onnx.build(tokens), str(path))
        (Path(folder) / "words.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
        path.with_name("bilstm.lrp.toml").write_text('[text]\nvocabulary = "words.txt"\n', encoding="utf-8")
        model = load_model(path)
        item = model.expand([], settings)[0]
        ids = model.prepare(item, settings)[3].ids
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one thread each: the NumPy pass runs with one BLAS thread below
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def forward():
            return session.run(None, {"ids": ids})

        with threadpool_limits(1):
            forward_s, explain_s, ratio = interleaved_ratio(
                forward, lambda: model.explain(model.prepare(item, settings), settings), runs)
            _, ids_s, ids_ratio = interleaved_ratio(
                forward, lambda: model.onnx.explain((model.onnx, ids, None, path), settings), runs)
    return {"forward_ms": forward_s * 1e3, "explain_ms": explain_s * 1e3, "ratio": ratio, "ids_ms": ids_s * 1e3,
            "ids_ratio": ids_ratio, "tokens": tokens}


def bilstm_text(runs: int) -> str:
    """Returns the Markdown paragraph of bench_bilstm_text (at least 20 runs: one run takes tens of ms)."""
    runs = max(runs, 20)
    b = bench_bilstm_text(runs)
    setup = (f"a {b['tokens']}-token sentence, 2-layer bidirectional LSTM (hidden 256, embeddings 128, random "
             "weights), LRP (sequence-epsilon, NumPy engine), float32, one thread each")
    return (f"\nText through an ONNX LSTM: {setup}, median of {runs} runs in turn with the onnxruntime forward "
            f"({b['forward_ms']:.1f} ms): explaining the text (tokenise, forward, LRP, words) {b['explain_ms']:.1f} "
            f"ms, ratio {b['ratio']:.2f}x; the id tensor alone {b['ids_ms']:.1f} ms, {b['ids_ratio']:.2f}x (target: "
            "at most 5x).\n")


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


def batch_text(runs: int) -> str:
    """Returns the --batch-size table of EfficientNet-Lite0 (empty when it has not been built)."""
    effnet = REPO / "models" / "efficientnet-lite0.onnx"
    if not effnet.exists():
        return ""
    note = load_note()
    rows = bench_batch_sizes(effnet, runs)
    return (f"`--batch-size` on efficientnet-lite0.onnx, compiled engine, {IMAGE.name} repeated N times, median of "
            f"{runs} runs, onnxruntime's default threads, {note}.\n\n{batch_sizes_table(rows)}\n")


def evaluate_text() -> str:
    """Returns the pixel-flipping timing line (empty when EfficientNet-Lite0 has not been built)."""
    effnet = REPO / "models" / "efficientnet-lite0.onnx"
    if not effnet.exists():
        return ""
    e = bench_evaluate(effnet)
    return (f"\n`lrp evaluate` of {IMAGE.name} ({e['model']}, 224x224): {e['curves']} curves (methods "
            f"{e['methods']}; MoRF and LeRF; 100 steps, 101 scored inputs each) in {e['seconds']:.1f} s, one run; "
            f"{e['seconds'] / e['forward']:.0f} times one batch-1 onnxruntime forward ({e['forward'] * 1e3:.1f} ms "
            f"in the same run); load average {e['load']:.1f} at the end.\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--precision", default="float32", choices=list(api.PRECISIONS))
    parser.add_argument("--write", action="store_true", help="Append the table to benchmarks/RESULTS.md")
    parser.add_argument("--methods-only", action="store_true", help="Only the per-method table (EfficientNet)")
    parser.add_argument("--evaluate-only", action="store_true", help="Only time the pixel-flipping evaluation")
    parser.add_argument("--samek-only", action="store_true", help="Only time `lrp evaluate --protocol samek2017`")
    parser.add_argument("--jobs-only", action="store_true", help="Only the --jobs throughput of a 50-photo batch")
    parser.add_argument("--batch-only", action="store_true",
                        help="Only images/s at --batch-size 1, 4, 8 (compiled engine, EfficientNet-Lite0)")
    parser.add_argument("--vit-only", action="store_true", help="Only the ViT-B/16 explanation (models/vit_b_16.onnx)")
    parser.add_argument("--memory-only", action="store_true",
                        help="Only the peak RSS of both engines (compiled: cold and warm cache) on four models")
    parser.add_argument("--text-only", action="store_true",
                        help="Only the text pipeline's explanation against its decision_function")
    parser.add_argument("--lstm-only", action="store_true",
                        help="Only a 50-token sentence through a 2-layer bidirectional LSTM against its forward")
    parser.add_argument("--text-batch", type=int, metavar="N",
                        help="Only the documents/s of a folder of N short reviews (10000 in the issue)")
    args = parser.parse_args()
    if args.lstm_only:
        return _emit(f"## {datetime.date.today().isoformat()}: {machine()}\n{bilstm_text(args.runs)}", args.write)
    if args.text_batch:
        return _emit(f"## {datetime.date.today().isoformat()}: {machine()}\n{text_batch_text(args.text_batch)}",
                     args.write)
    if args.text_only:
        return _emit(f"## {datetime.date.today().isoformat()}: {machine()}\n{text_text(args.runs)}", args.write)
    if args.memory_only:
        return _emit(f"## {datetime.date.today().isoformat()}: {machine()}\n{memory_text(args.runs)}", args.write)
    if args.batch_only:
        return _emit(f"## {datetime.date.today().isoformat()}: {machine()}\n\n{batch_text(args.runs)}", args.write)
    if args.evaluate_only:
        return _emit(f"## {datetime.date.today().isoformat()}: {machine()}\n{evaluate_text()}", args.write)
    if args.samek_only:
        return _emit(f"## {datetime.date.today().isoformat()}: {machine()}\n{samek_text()}", args.write)
    effnet = REPO / "models" / "efficientnet-lite0.onnx"
    methods = bench_methods(effnet, max(1, args.runs // 2)) if effnet.exists() else ""
    if args.methods_only:
        return _emit(f"## {datetime.date.today().isoformat()}: {machine()}\n\nMedian of {max(1, args.runs // 2)} "
                     f"runs, one photo, float32, each method's defaults; load average "
                     f"{os.getloadavg()[0]:.1f} at the end.\n\n{methods}\n", args.write)
    jobs_text = ""
    if effnet.exists():
        note = load_note()
        jobs_rows = bench_jobs(effnet)
        jobs_text = (f"\n{BATCH_SIZE} photos (crops and mirrors of the two sample photos) explained by "
                     f"efficientnet-lite0.onnx in one process, float32, {note}.\n\n{jobs_table(jobs_rows)}\n\n"
                     f"{jobs_bound_text(bench_jobs_bound(effnet, 1 / jobs_rows[0]['images_per_s']))}")
    if args.jobs_only:
        return _emit(f"## {datetime.date.today().isoformat()}: {machine()}\n{jobs_text}", args.write)
    vit = vit_text(max(1, args.runs // 2))
    if args.vit_only:
        return _emit(f"## {datetime.date.today().isoformat()}: {machine()}\n{vit}", args.write)
    rows = [bench_model(REPO / "models" / name, args.runs, args.precision)
            for name in MODELS if (REPO / "models" / name).exists()]
    rows += [bench_model(SHARED / name, args.runs, args.precision) for name in SHARED_MODELS
             if (SHARED / name).exists()]
    with built_models() as built:
        rows += [bench_model(path, args.runs, args.precision, name) for name, path in built]
    checked = bench_check(max(1, args.runs // 2))
    text = (f"## {datetime.date.today().isoformat()}: {machine()}\n\nMedian of {args.runs} runs, batch 1, "
            f"{args.precision}, each model's default composite (its sidecar's, else epsilon-plus-flat).\n\n"
            f"NumPy engine:\n\n{table(rows)}\n\nCompiled engine (`--engine onnxruntime`), timed in turn with "
            f"the onnxruntime forward in one process:\n\n{compiled_table(rows)}\n\n"
            f"`lrp check` (one case: object mask, tag box, pointing game, conservation) against "
            f"`lrp explain` of the same {checked['inputs']} tag-clean images, median of {max(1, args.runs // 2)}: "
            f"check {checked['check']:.2f} s, explain {checked['explain']:.2f} s wall "
            f"({checked['check'] / checked['explain'] - 1:+.0%}); CPU {checked['check_cpu']:.2f} s against "
            f"{checked['explain_cpu']:.2f} s ({checked['check_cpu'] / checked['explain_cpu'] - 1:+.0%}).\n"
            + (f"\nEvery method, median of {max(1, args.runs // 2)} runs, each method's "
               f"defaults:\n\n{methods}\n" if methods else "") + evaluate_text() + jobs_text + vit
            + text_text(args.runs) + bilstm_text(args.runs) + ("\n" + batch_text(args.runs) if effnet.exists() else ""))
    _emit(text, args.write)


def _emit(text: str, write: bool) -> None:
    """Prints the results and, with --write, appends them to benchmarks/RESULTS.md."""
    print(text)
    if write:
        with open(REPO / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    main()
