"""Train the bundled shapes-cnn and write models/shapes-cnn.onnx, its sidecar and sample images.

Dev-only: needs PyTorch (see the Makefile's torch venv); nothing at run time imports torch.

    python scripts/build_shapes_cnn.py [--train-images N] [--epochs E]

The network sees the tool's `unit` preset input: RGB, x/255 in [0, 1], NCHW, no mean/std.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # the torch venv does not have lrp_cli installed

from lrp_cli.synthetic import shapes  # noqa: E402

TRAIN_SEED = 0
TEST_SEED = 1
TEST_IMAGES = 1000
SAMPLES_PER_CLASS = 2
# 48 rather than 64 hidden units: fc1 holds most weights, and 4096x64 floats alone pass the 1 MB budget.
HIDDEN = 48
# Fixed rather than taken from the machine: the same thread count gives the same bytes everywhere.
THREADS = 2


def build(out_dir: Path = REPO, train_images: int = 8000, epochs: int = 8) -> dict:
    """Return a summary dict after training, exporting and verifying shapes-cnn under ``out_dir``."""
    _make_deterministic()
    t0 = time.perf_counter()
    x_train, _, y_train = _tensors(*shapes.make_dataset(train_images, TRAIN_SEED))
    test_images, test_masks, test_labels = shapes.make_dataset(TEST_IMAGES, TEST_SEED)
    x_test, _, _ = _tensors(test_images, test_masks, test_labels)
    t_data = time.perf_counter() - t0
    model = _network(len(shapes.CLASSES))
    _train(model, x_train, y_train, epochs)
    t_train = time.perf_counter() - t0 - t_data
    probs = _predict(model, x_test)
    accuracy = float((probs.argmax(1) == test_labels).mean())
    onnx_path = out_dir / "models" / "shapes-cnn.onnx"
    _export(model, onnx_path)
    max_diff, agree = _verify(onnx_path, x_test.numpy(), probs)
    _write_sidecar(out_dir / "models" / "shapes-cnn.lrp.toml", accuracy, train_images)
    _write_samples(out_dir / "sample_images" / "shapes", test_images, test_masks, test_labels, probs)
    return _summary(out_dir, onnx_path, accuracy, train_images, (max_diff, agree), (t0, t_data, t_train))


def _summary(out_dir: Path, onnx_path: Path, accuracy: float, train_images: int, verified: tuple[float, bool],
             clock: tuple[float, float, float]) -> dict:
    """Return the build summary build_models.py checks: accuracy, size, onnxruntime agreement, seconds."""
    t0, t_data, t_train = clock
    return {
        "model": str(onnx_path.relative_to(out_dir)),
        "test_accuracy": accuracy,
        "train_images": train_images,
        "test_images": TEST_IMAGES,
        "onnx_bytes": onnx_path.stat().st_size,
        "onnx_max_abs_diff": verified[0],
        "onnx_predictions_agree": verified[1],
        "seconds": {
            "data": round(t_data, 1),
            "train": round(t_train, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
    }


def _make_deterministic() -> None:
    torch.manual_seed(TRAIN_SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(THREADS)


def _tensors(images: np.ndarray, masks: np.ndarray, labels: np.ndarray):
    x = torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()
    return x, masks, torch.from_numpy(labels)


def _network(num_classes: int) -> nn.Sequential:
    # Named layers, so the ONNX node and initializer names say which layer they are (--layer-rule).
    layers: list[tuple[str, nn.Module]] = []
    channels = [3, 16, 32, 64]
    for i in range(3):
        layers += [
            (f"conv{i + 1}", nn.Conv2d(channels[i], channels[i + 1], 3, padding=1)),
            (f"bn{i + 1}", nn.BatchNorm2d(channels[i + 1])),
            (f"relu{i + 1}", nn.ReLU()),
            (f"pool{i + 1}", nn.MaxPool2d(2)),
        ]
    layers += [
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(64 * 8 * 8, HIDDEN)),
        ("relu4", nn.ReLU()),
        ("fc2", nn.Linear(HIDDEN, num_classes)),
    ]
    return nn.Sequential(OrderedDict(layers))


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int = 64,
           name: str = "shapes-cnn") -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(TRAIN_SEED)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        print(f"  {name} epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}", flush=True)


def _predict(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.softmax(model(x), dim=1).numpy()


def _export(model: nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    exported = nn.Sequential(OrderedDict([("net", model), ("softmax", nn.Softmax(dim=1))])).eval()
    buffer = io.BytesIO()
    # PRESERVE with an eval() model keeps BatchNormalization as its own node (EVAL would fuse it into
    # the Conv); the tool folds it itself, and its folding is what the bundled model exercises.
    torch.onnx.export(
        exported,
        (torch.zeros(1, 3, shapes.SIZE, shapes.SIZE),),
        buffer,
        dynamo=False,
        opset_version=13,
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
        input_names=["input"],
        output_names=["probabilities"],
        dynamic_axes={"input": {0: "N"}, "probabilities": {0: "N"}},
    )
    proto = onnx.load_from_string(buffer.getvalue())
    _inline_identity_initializers(proto)
    _strip_module_prefix(proto)
    onnx.checker.check_model(proto, full_check=True)
    ops = [node.op_type for node in proto.graph.node]
    if "BatchNormalization" not in ops:
        raise RuntimeError(f"BatchNormalization was fused away on export: {ops}")
    path.write_bytes(proto.SerializeToString())


def _inline_identity_initializers(proto: onnx.ModelProto) -> None:
    # The exporter shares equal tensors through Identity nodes (e.g. a BN whose running stats equal its
    # affine params); a plain copy keeps the graph to the ops the network really has.
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    for node in [n for n in graph.node if n.op_type == "Identity" and n.input[0] in inits]:
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[node.input[0]])
        copy.name = node.output[0]
        graph.initializer.append(copy)
        graph.node.remove(node)


def _strip_module_prefix(proto: onnx.ModelProto) -> None:
    # The export wrapper prefixes every name with "net."/"/net/"; dropping it keeps names as in training.
    def clean(name: str) -> str:
        for prefix, keep in (("/net/", "/"), ("net.", "")):
            if name.startswith(prefix):
                return keep + name[len(prefix) :]
        return name

    graph = proto.graph
    for tensor in graph.initializer:
        tensor.name = clean(tensor.name)
    for node in graph.node:
        node.name = clean(node.name)
        node.input[:] = [clean(n) for n in node.input]
        node.output[:] = [clean(n) for n in node.output]


def _verify(path: Path, x: np.ndarray, reference: np.ndarray) -> tuple[float, bool]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"input": x})[0]
    return float(np.abs(got - reference).max()), bool((got.argmax(1) == reference.argmax(1)).all())


def _write_sidecar(path: Path, accuracy: float, train_images: int, script: str = "build_shapes_cnn.py",
                   composite: str = "epsilon-plus-flat") -> None:
    labels = json.dumps(list(shapes.CLASSES))  # a JSON list of plain strings is valid TOML
    path.write_text(
        f"# Written by scripts/{script}: preprocessing, labels and composite for lrp-cli.\n"
        'preset = "unit"\n'
        f"size = [{shapes.SIZE}, {shapes.SIZE}]\n"
        f"labels = {labels}\n"
        f'composite = "{composite}"\n'
        "\n[training]\n"
        f"test_accuracy = {accuracy:.4f}\n"
        f"train_images = {train_images}\n"
        f"test_images = {TEST_IMAGES}\n"
        f"seed = {TRAIN_SEED}\n"
        f"test_seed = {TEST_SEED}\n",
        encoding="utf-8",
    )


def _write_samples(folder: Path, images, masks, labels, probs) -> None:
    # Correctly classified test images only: a demo heatmap of a wrong prediction would confuse.
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    correct = probs.argmax(1) == labels
    for label, name in enumerate(shapes.CLASSES):
        picks = np.flatnonzero(correct & (labels == label))[:SAMPLES_PER_CLASS]
        for k, i in enumerate(picks):
            Image.fromarray(images[i]).save(folder / f"{name}_{k}.png")
            Image.fromarray(masks[i].astype(np.uint8) * 255).save(folder / f"{name}_{k}.mask.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out-dir", type=Path, default=REPO, help="root for models/ and sample_images/")
    args = parser.parse_args()
    summary = build(args.out_dir, train_images=args.train_images, epochs=args.epochs)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
