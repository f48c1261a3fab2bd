"""`lrp inspect` of an ONNX file: the op support status, then its IR with the rule each layer gets."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from lrp_cli.engines import onnx_engine
from lrp_cli.errors import ModelLoadError
from lrp_cli.explanation import Settings
from lrp_cli.importers.onnx_import import load_onnx, supported_ops
from lrp_cli.kinds.base import LoadOptions
from lrp_cli.kinds.onnx_explain import ir_difference


def op_census(model) -> list[dict]:
    """Returns every op type of the ONNX model with its node count and whether lrp-cli converts it (other ops
    are accepted only where their inputs are constants, e.g. exporters' shape arithmetic)."""
    known = set(supported_ops())
    counts = Counter(node.op_type for node in model.graph.node)
    return [{"op": op, "count": n, "supported": op in known} for op, n in sorted(counts.items())]


def describe(kind, path: Path, settings: Settings, verify: bool = False) -> dict:
    """Returns the inspection report of the file at path, loaded by `kind`: op census, and when every op is
    supported the IR table (+ verification)."""
    proto = load_onnx(path)  # read once for the census and the compile check; the import reads its own copy
    report = {"model": str(path), "ops": op_census(proto), "error": None}
    try:
        model = kind.load(path, LoadOptions())
    except ModelLoadError as exc:
        report["error"] = str(exc)
        return report
    if model.unbound is not None:  # the IR exists only for a concrete input shape
        report["error"] = str(model.unbound)
        return report
    rules = model.rules_for(settings)
    graph = model.graph
    compile_errors = compiled_engine_errors(proto, model, rules)
    report.update({
        "engine": "numpy" if compile_errors or onnx_engine.numpy_preferred(graph) else "onnxruntime",
        "engine_note": onnx_engine.numpy_preferred(graph),
        "input": {"name": graph.input_name, "shape": list(graph.input_shape)},
        "output": {"name": graph.output_name, "shape": list(graph.shapes[graph.output_name])},
        "composite": model.composite_name(settings),
        "notes": graph.notes,
        "nodes": [{
            "name": node.name, "op": node.op, "layer": node.layer.op, "details": node.layer.describe(),
            "inputs": [list(graph.shapes[t]) for t in node.inputs], "output": list(graph.shapes[node.output]),
            "rule": rules[node.name].spec() if node.name in rules else None,
            "compiles": node.name not in compile_errors,
        } for node in graph.nodes],
        "compile_errors": compile_errors,
    })
    if verify:
        report["verify"] = verify_model(model)
    return report


def compiled_engine_errors(proto, model, rules: dict) -> dict[str, str]:
    """Returns node name -> why the LRP pass of the model (`proto`: its ONNX file, as read) cannot be compiled for
    onnxruntime (empty when it compiles)."""
    from lrp_cli.engines.onnx_compiler import node_errors
    return node_errors(proto, model.graph, "lrp", rules)


def verify_model(model, seed: int = 0) -> dict:
    """Returns the max abs difference between the IR forward and onnxruntime on a random input."""
    x = np.random.default_rng(seed).standard_normal(model.graph.input_shape).astype(np.float32)
    _, reference = model.run_onnxruntime(x)
    ir_out = model.graph_for("float32").forward(x)[model.graph.output_name]
    diff, relative = ir_difference(ir_out, reference)
    return {"max_abs_diff": diff, "relative": relative}


def format_report(report: dict) -> str:
    """Returns the report as a human-readable table."""
    lines = [f"model: {report['model']}", "ops:"]
    lines += [f"  {o['op']:<24} x{o['count']:<5} {'supported' if o['supported'] else 'on constants only'}"
              for o in report["ops"]]
    if report["error"]:
        lines.append(f"cannot explain: {report['error']}")
        return "\n".join(lines)
    lines.append(f"input {report['input']['name']} {report['input']['shape']} -> output "
                 f"{report['output']['name']} {report['output']['shape']}; composite {report['composite']}")
    lines += [f"note: {note}" for note in report["notes"]]
    lines.append(f"engine under --engine auto: {report['engine']}")
    lines += [f"not compiled: {why}" for why in report["compile_errors"].values()]
    lines += [f"numpy preferred: {report['engine_note']}"] if report.get("engine_note") else []
    header = f"{'node':<36} {'op':<20} {'input shapes':<26} {'output':<18} {'rule':<16} {'ort':<4} details"
    lines += [header, "-" * len(header)]
    for n in report["nodes"]:
        shapes = " ".join("x".join(map(str, s)) for s in n["inputs"])
        lines.append(f"{n['name'][:36]:<36} {n['op']:<20} {shapes[:26]:<26} {'x'.join(map(str, n['output'])):<18} "
                     f"{n['rule'] or '-':<16} {'yes' if n['compiles'] else 'no':<4} {n['details']}")
    if "verify" in report:
        v = report["verify"]
        lines.append(f"verify: IR vs onnxruntime max abs diff {v['max_abs_diff']:.3g} (relative {v['relative']:.2e})")
    return "\n".join(lines)
