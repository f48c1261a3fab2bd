"""Profile the compiled relevance graph of one model with onnxruntime's per-node profiler (dev-only).

`python benchmarks/profile_compiled.py MODEL.onnx [--runs N]` (or `resnet50` / `vgg16` for the random-weight
bench models): prints the time of one onnxruntime forward, of one compiled run, the multiply-adds of the
compiled graph's convolutions and matrix products (forward and relevance nodes: the compute floor of the ratio),
and the compiled run's node time by op type, split into the model's forward nodes and the appended relevance
nodes (`lrp/` prefix).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lrp_cli import api  # noqa: E402
from lrp_cli.engines import onnx_engine  # noqa: E402

BUILT = {"resnet50": "resnet50_onnx", "vgg16": "vgg16_onnx"}


def model_path(name: str, folder: Path) -> Path:
    """Returns the path of the model to profile, building a random-weight bench model by its short name."""
    if name not in BUILT:
        return Path(name)
    path = folder / f"{name}.onnx"
    onnx.save(__import__(BUILT[name]).build(), str(path))
    return path


def node_times(profile: Path, runs: int) -> dict[tuple[str, str], float]:
    """Returns (phase, op type) -> mean milliseconds per run, from an onnxruntime profile file."""
    totals: dict[tuple[str, str], float] = collections.defaultdict(float)
    for event in json.loads(profile.read_text()):
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        name = event["name"][: -len("_kernel_time")]
        phase = "relevance" if name.startswith("lrp/") else "forward"
        totals[(phase, event["args"].get("op_name", "?"))] += event["dur"] / 1e3 / runs
    return totals


def multiply_adds(model: onnx.ModelProto) -> dict[str, float]:
    """Returns phase -> multiply-adds of the Conv, ConvTranspose, Gemm and MatMul nodes of a (shape-inferred)
    model."""
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    shapes |= {t.name: list(t.dims) for t in model.graph.initializer}
    totals = {"forward": 0.0, "relevance": 0.0}
    for node in model.graph.node:
        phase = "relevance" if node.name.startswith("lrp/") else "forward"
        ins = [shapes.get(name, []) for name in node.input]
        out = shapes.get(node.output[0], [])
        if node.op_type == "Conv" and out and len(ins[1]) == 4:
            totals[phase] += np.prod(out, dtype=float) * np.prod(ins[1][1:], dtype=float)
        elif node.op_type == "ConvTranspose" and ins[0] and len(ins[1]) == 4:
            totals[phase] += np.prod(ins[0], dtype=float) * np.prod(ins[1][1:], dtype=float)
        elif node.op_type in ("Gemm", "MatMul") and out and ins[1]:
            totals[phase] += np.prod(out, dtype=float) * min(ins[1])
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = model_path(args.model, Path(folder))
        model = api.load_model(path)
        settings = api.Settings(engine="numpy")
        rules = api.rules_for(model, settings, api.preprocess_config(model, settings))
        compiled = onnx_engine.compile_model(path, model.graph, "lrp", rules,
                                             model.session.get_outputs()[0].name)
        compiled_path = Path(folder) / "compiled.onnx"
        onnx.save(compiled.model, str(compiled_path))
        x = np.random.default_rng(0).uniform(0, 1, model.graph.input_shape).astype(np.float32)
        feeds = {compiled.input_name: x, "target": np.array([-1], np.int64)}
        plain = onnx_engine._open(compiled_path, onnx_engine.DEFAULT_PROVIDERS)
        ratios = []
        for _ in range(args.runs + 1):
            start = time.perf_counter()
            model.run_onnxruntime(x)
            middle = time.perf_counter()
            plain.run(None, feeds)
            ratios.append((middle - start, time.perf_counter() - middle))
        ratios = ratios[1:]
        forward = statistics.median(r[0] for r in ratios)
        full = statistics.median(r[1] for r in ratios)
        ratio = statistics.median(r[1] / r[0] for r in ratios)
        print(f"{path.name}: forward {forward * 1e3:.1f} ms, compiled {full * 1e3:.1f} ms, ratio {ratio:.2f}x "
              f"(median of {args.runs} interleaved runs)")
        macs = multiply_adds(onnx.shape_inference.infer_shapes(compiled.model))
        print(f"multiply-adds: forward {macs['forward'] / 1e9:.2f} G, relevance {macs['relevance'] / 1e9:.2f} G, "
              f"compiled / forward {1 + macs['relevance'] / macs['forward']:.2f}x")
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        options.log_severity_level = 3
        profiled = ort.InferenceSession(str(compiled_path), options, providers=["CPUExecutionProvider"])
        profiled.run(None, feeds)
        for _ in range(args.runs):
            profiled.run(None, feeds)
        times = node_times(Path(profiled.end_profiling()), args.runs + 1)
    total = sum(times.values())
    print(f"node time per run {total:.1f} ms")
    for (phase, op), ms in sorted(times.items(), key=lambda kv: -kv[1]):
        if ms >= 0.005 * total:
            print(f"  {phase:9s} {op:18s} {ms:8.1f} ms  {ms / total:6.1%}")


if __name__ == "__main__":
    main()
