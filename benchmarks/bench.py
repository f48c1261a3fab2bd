"""`make bench`: time onnxruntime's forward against lrp-cli's relevance pass for each bundled model.

Prints a Markdown table (median of N runs, batch 1) and, with --write, records it in benchmarks/RESULTS.md
with the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from lrp_cli import api

REPO = Path(__file__).resolve().parents[1]
MODELS = ["digits-mlp.onnx", "shapes-cnn.onnx", "efficientnet-lite0.onnx"]


def median_seconds(fn, runs: int) -> float:
    """Returns the median wall time of fn over runs calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(path: Path, runs: int, precision: str) -> dict:
    """Returns the timings of one model: onnxruntime forward, IR forward, backward pass, full explanation."""
    model = api.load_model(path)
    x = np.random.default_rng(0).uniform(0, 1, model.graph.input_shape).astype(np.float32)
    settings = api.Settings(precision=precision)
    graph = model.graph_for(precision)
    rules = api.rules_for(model, settings, api.preprocess_config(model, settings))
    values = graph.forward(x.astype(api.PRECISIONS[precision]))
    target = int(np.argmax(values[graph.output_name]))
    from lrp_cli.propagate import propagate
    return {
        "model": path.name,
        "input": "x".join(map(str, model.graph.input_shape)),
        "ort": median_seconds(lambda: model.run_onnxruntime(x), runs),
        "ir_forward": median_seconds(lambda: graph.forward(x.astype(api.PRECISIONS[precision])), runs),
        "backward": median_seconds(lambda: propagate(graph, values, target, rules), runs),
        "explain": median_seconds(lambda: api.explain_array(model, x, settings), runs),
    }


def table(rows: list[dict]) -> str:
    """Returns the timings as a Markdown table (milliseconds)."""
    lines = ["| model | input | onnxruntime forward | IR forward | relevance backward | full explanation | "
             "explanation / ort forward |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['input']} | {r['ort'] * 1e3:.2f} ms | {r['ir_forward'] * 1e3:.2f} ms | "
                     f"{r['backward'] * 1e3:.2f} ms | {r['explain'] * 1e3:.2f} ms | {r['explain'] / r['ort']:.1f}x |")
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
    args = parser.parse_args()
    rows = [bench_model(REPO / "models" / name, args.runs, args.precision)
            for name in MODELS if (REPO / "models" / name).exists()]
    text = (f"## {datetime.date.today().isoformat()}: {machine()}\n\nMedian of {args.runs} runs, batch 1, "
            f"{args.precision}, default composite (epsilon-plus-flat).\n\n{table(rows)}\n")
    print(text)
    if args.write:
        with open(REPO / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    main()
