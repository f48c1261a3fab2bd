"""Build the bundled models (digits-mlp, shapes-cnn, the tag-shortcut/tag-clean pair) and check each ONNX file
against its source model.

Dev-only, run with the torch venv's python (`make models`). Each build re-runs its training from fixed
seeds, exports the ONNX file, runs it with onnxruntime on the build's test set and compares the
probabilities with those of the scikit-learn / PyTorch model it came from. Exits 1 when a model misses
its accuracy target or its ONNX file disagrees with the source model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

MIN_ACCURACY = 0.95
# onnxruntime and torch/numpy sum in different orders; a float32 rounding gap, not a wrong graph.
MAX_ABS_DIFF = 1e-4
NAMES = ("digits-mlp", "shapes-cnn", "tag-models")


def run(names: list[str], out_dir: Path) -> list[dict]:
    """Return one summary dict per built model, each with an `ok` verdict."""
    summaries = []
    for name in names:
        print(f"building {name} ...", flush=True)
        built = _builder(name)(out_dir)
        for summary in built if isinstance(built, list) else [built]:
            summary["problems"] = _problems(summary) + summary.get("problems", [])
            summary["ok"] = not summary["problems"]
            summaries.append(summary)
    return summaries


def _builder(name: str):
    # Imported lazily: the digits build must not pay for importing torch.
    if name == "digits-mlp":
        import build_digits_mlp

        return build_digits_mlp.build
    if name == "tag-models":
        import build_tag_models

        return build_tag_models.build
    import build_shapes_cnn

    return build_shapes_cnn.build


def _problems(summary: dict) -> list[str]:
    problems = []
    minimum = summary.get("min_accuracy", MIN_ACCURACY)
    if summary["test_accuracy"] < minimum:
        problems.append(f"test accuracy {summary['test_accuracy']:.4f} < {minimum}")
    if not summary["onnx_predictions_agree"]:
        problems.append("onnxruntime predicts a different class than the source model")
    if summary["onnx_max_abs_diff"] > MAX_ABS_DIFF:
        problems.append(f"onnxruntime output differs by {summary['onnx_max_abs_diff']:.2e} > {MAX_ABS_DIFF}")
    if summary["onnx_bytes"] >= 1_000_000:
        problems.append(f"ONNX file is {summary['onnx_bytes']} bytes, over the 1 MB budget")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=NAMES, action="append")
    parser.add_argument("--out-dir", type=Path, default=SCRIPTS.parent, help="root for models/ and sample_images/")
    args = parser.parse_args()
    summaries = run(args.only or list(NAMES), args.out_dir)
    print(json.dumps(summaries, indent=2))
    for s in summaries:
        status = "ok" if s["ok"] else "FAILED: " + "; ".join(s["problems"])
        print(
            f"{s['model']}: accuracy {s['test_accuracy']:.4f} on {s['test_images']} test images, "
            f"{s['onnx_bytes']} bytes, onnxruntime max abs diff {s['onnx_max_abs_diff']:.2e}, "
            f"{s['seconds']['total']} s: {status}"
        )
    return 0 if all(s["ok"] for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
