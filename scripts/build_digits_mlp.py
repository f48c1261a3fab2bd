"""Train the bundled digits-mlp and write models/digits-mlp.onnx, its sidecar and sample digits.

The paper's MNIST-I network (two tanh hidden layers, softmax output) scaled down to scikit-learn's
bundled 8x8 digits, so it builds offline in seconds with no PyTorch:

    python scripts/build_digits_mlp.py

The network sees the tool's `unit` preset input: a greyscale 8x8 image, x/255 in [0, 1].
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[1]
SEED = 0
TEST_FRACTION = 0.25
HIDDEN = (100, 100)
# load_digits pixels count ink in 0..16; PNGs and the `unit` preset speak 0..255.
DIGITS_MAX = 16.0


def build(out_dir: Path = REPO) -> dict:
    """Return a summary dict after training, exporting and verifying digits-mlp under ``out_dir``."""
    t0 = time.perf_counter()
    images, labels, train_idx, test_idx = load_split()
    x = images.reshape(len(images), -1) / DIGITS_MAX
    mlp = MLPClassifier(hidden_layer_sizes=HIDDEN, activation="tanh", max_iter=1000, random_state=SEED)
    # One BLAS thread: the matrices are tiny, and spinning BLAS threads made the fit 10x slower on a busy
    # 2-core machine; it also keeps the float sums in one fixed order.
    with threadpool_limits(limits=1):
        mlp.fit(x[train_idx], labels[train_idx])
    t_train = time.perf_counter() - t0
    probs = mlp.predict_proba(x[test_idx])
    accuracy = float((probs.argmax(1) == labels[test_idx]).mean())
    onnx_path = out_dir / "models" / "digits-mlp.onnx"
    _export(mlp, onnx_path)
    x_test = x[test_idx].astype(np.float32).reshape(-1, 1, 8, 8)
    max_diff, agree = _verify(onnx_path, x_test, probs)
    _write_sidecar(out_dir / "models" / "digits-mlp.lrp.toml", accuracy, len(train_idx), len(test_idx))
    _write_samples(out_dir / "sample_images" / "digits", images[test_idx], labels[test_idx], probs)
    return {
        "model": str(onnx_path.relative_to(out_dir)),
        "test_accuracy": accuracy,
        "train_images": len(train_idx),
        "test_images": len(test_idx),
        "iterations": mlp.n_iter_,
        "onnx_bytes": onnx_path.stat().st_size,
        "onnx_max_abs_diff": max_diff,
        "onnx_predictions_agree": agree,
        "seconds": {"train": round(t_train, 1), "total": round(time.perf_counter() - t0, 1)},
    }


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (images float [n,8,8] in 0..16, labels, train indices, test indices) of the fixed split."""
    digits = load_digits()
    idx = np.arange(len(digits.target))
    train_idx, test_idx = train_test_split(idx, test_size=TEST_FRACTION, random_state=SEED)
    return digits.images, digits.target, train_idx, test_idx


def _export(mlp: MLPClassifier, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], name="flatten", axis=1)]
    inits = []
    previous = "flat"
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_), start=1):
        # Stored [out, in] with transB=1, as PyTorch exports Linear, so both bundled models read alike.
        inits += [
            numpy_helper.from_array(np.ascontiguousarray(w.T, dtype=np.float32), f"fc{i}.weight"),
            numpy_helper.from_array(b.astype(np.float32), f"fc{i}.bias"),
        ]
        nodes.append(
            helper.make_node(
                "Gemm", [previous, f"fc{i}.weight", f"fc{i}.bias"], [f"fc{i}"], name=f"fc{i}", transB=1
            )
        )
        previous = f"fc{i}"
        if i < len(mlp.coefs_):
            nodes.append(helper.make_node("Tanh", [previous], [f"tanh{i}"], name=f"tanh{i}"))
            previous = f"tanh{i}"
    nodes.append(helper.make_node("Softmax", [previous], ["probabilities"], name="softmax", axis=1))
    graph = helper.make_graph(
        nodes,
        "digits-mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(mlp.classes_)])],
        inits,
    )
    # IR 8 / opset 13: loadable by every onnxruntime the project supports (>= 1.17).
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8, producer_name="lrp-cli build_digits_mlp"
    )
    onnx.checker.check_model(model, full_check=True)
    path.write_bytes(model.SerializeToString())


def _verify(path: Path, x: np.ndarray, reference: np.ndarray) -> tuple[float, bool]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"input": x})[0]
    return float(np.abs(got - reference).max()), bool((got.argmax(1) == reference.argmax(1)).all())


def _write_sidecar(path: Path, accuracy: float, n_train: int, n_test: int) -> None:
    labels = json.dumps([str(d) for d in range(10)])  # a JSON list of plain strings is valid TOML
    path.write_text(
        "# Written by scripts/build_digits_mlp.py: preprocessing, labels and composite for lrp-cli.\n"
        "# Greyscale 8x8; sklearn's load_digits value v (0..16) is the pixel round(v * 255 / 16).\n"
        'preset = "unit"\n'
        "size = [8, 8]\n"
        f"labels = {labels}\n"
        'composite = "paper-epsilon"\n'
        "\n[training]\n"
        f"test_accuracy = {accuracy:.4f}\n"
        f"train_images = {n_train}\n"
        f"test_images = {n_test}\n"
        f"seed = {SEED}\n"
        f"test_fraction = {TEST_FRACTION}\n",
        encoding="utf-8",
    )


def _write_samples(folder: Path, images: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> None:
    # The first correctly classified test digit of each class: a demo of a wrong prediction would confuse.
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    correct = probs.argmax(1) == labels
    for digit in range(10):
        i = np.flatnonzero(correct & (labels == digit))[0]
        pixels = np.rint(images[i] * 255.0 / DIGITS_MAX).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"digit_{digit}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=REPO, help="root for models/ and sample_images/")
    print(json.dumps(build(parser.parse_args().out_dir), indent=2))


if __name__ == "__main__":
    main()
