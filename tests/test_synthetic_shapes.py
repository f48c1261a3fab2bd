"""The synthetic shapes generator and the two bundled models (models/*.onnx), checked with onnxruntime."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from lrp_cli.synthetic import shapes


REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
SAMPLES = REPO / "sample_images"


@pytest.fixture(scope="module")
def test_set():
    return shapes.make_dataset(200, 1)


def _session(name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(MODELS / f"{name}.onnx"), providers=["CPUExecutionProvider"])


def _sidecar(name: str) -> dict:
    return tomllib.loads((MODELS / f"{name}.lrp.toml").read_text(encoding="utf-8"))


def _unit(pixels: np.ndarray) -> np.ndarray:
    # The `unit` preset: uint8 pixels to float32 x/255, channels first.
    x = pixels.astype(np.float32) / 255.0
    return x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)


# --- generator -----------------------------------------------------------------------------------


def test_dataset_types_and_shapes(test_set):
    images, masks, labels = test_set
    assert images.shape == (200, 64, 64, 3) and images.dtype == np.uint8
    assert masks.shape == (200, 64, 64) and masks.dtype == bool
    assert labels.shape == (200,) and np.issubdtype(labels.dtype, np.integer)
    assert labels.min() >= 0 and labels.max() < len(shapes.CLASSES)
    assert len(shapes.CLASSES) >= 4 and len(set(shapes.CLASSES)) == len(shapes.CLASSES)


def test_same_seed_same_bytes_other_seed_other_images():
    a, b, c = shapes.make_dataset(12, 7), shapes.make_dataset(12, 7), shapes.make_dataset(12, 8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_make_sample_is_deterministic_for_a_generator_state():
    one = shapes.make_sample(np.random.default_rng(3))
    two = shapes.make_sample(np.random.default_rng(3))
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    assert one[2] == two[2] and isinstance(one[2], int)
    assert one[0].shape == (64, 64, 3) and one[1].shape == (64, 64)


def test_classes_are_balanced(test_set):
    counts = np.bincount(test_set[2], minlength=len(shapes.CLASSES))
    assert counts.max() - counts.min() <= 1


def test_masks_are_non_empty_and_clear_of_the_border(test_set):
    masks = test_set[1]
    assert masks.sum(axis=(1, 2)).min() >= 80  # even the smallest shape is a real object, not a speck
    border = masks[:, 0, :] | masks[:, -1, :] | masks[:, :, 0] | masks[:, :, -1]
    assert not border.any()


def test_mask_area_fraction(test_set):
    fraction = test_set[1].mean(axis=(1, 2))
    print(f"mask area fraction: mean {fraction.mean():.4f}, min {fraction.min():.4f}, max {fraction.max():.4f}")
    assert 0.05 < fraction.mean() < 0.2
    assert fraction.max() < 0.4  # the object never fills the frame: there is always clutter to ignore


def test_shape_stands_out_from_its_surroundings(test_set):
    images, masks, _ = test_set
    for image, mask in zip(images[:50], masks[:50]):
        ring = _dilate(mask, 3) & ~mask
        gap = np.linalg.norm(image[mask].mean(axis=0) - image[ring].mean(axis=0))
        assert gap > 20


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    padded = np.pad(mask, r)
    out = np.zeros_like(mask)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
    return out


def test_every_class_draws_a_distinct_outline():
    masks = [shapes.shape_mask(k, 32.0, 32.0, 15.0, 0.3) for k in range(len(shapes.CLASSES))]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert (masks[i] ^ masks[j]).sum() > 50


# --- shapes-cnn ----------------------------------------------------------------------------------


def test_shapes_cnn_interface_and_size():
    path = MODELS / "shapes-cnn.onnx"
    assert path.stat().st_size < 1_000_000
    session = _session("shapes-cnn")
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "input" and inp.shape[1:] == [3, 64, 64] and not isinstance(inp.shape[0], int)
    assert out.name == "probabilities" and out.shape[1:] == [len(shapes.CLASSES)]
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("BatchNormalization") == 3 and ops[-1] == "Softmax"


def test_shapes_cnn_sidecar():
    sidecar = _sidecar("shapes-cnn")
    assert sidecar["preset"] == "unit" and sidecar["size"] == [64, 64]
    assert sidecar["labels"] == list(shapes.CLASSES)
    assert sidecar["composite"] == "epsilon-plus-flat"
    assert sidecar["training"]["test_accuracy"] >= 0.95


def test_shapes_cnn_accuracy_on_fresh_test_set(test_set):
    images, _, labels = test_set
    probs = _session("shapes-cnn").run(["probabilities"], {"input": _unit(images)})[0]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    accuracy = (probs.argmax(axis=1) == labels).mean()
    print(f"shapes-cnn accuracy on 200 fresh images: {accuracy:.3f}")
    assert accuracy >= 0.93


def test_shapes_samples_are_classified_as_named_and_masks_are_binary():
    folder = SAMPLES / "shapes"
    pngs = sorted(p for p in folder.glob("*.png") if not p.name.endswith(".mask.png"))
    assert len(pngs) == 8
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pngs])
    probs = _session("shapes-cnn").run(["probabilities"], {"input": _unit(images)})[0]
    for path, pred in zip(pngs, probs.argmax(axis=1)):
        assert shapes.CLASSES[pred] == path.stem.rsplit("_", 1)[0]
        mask = np.asarray(Image.open(path.with_name(path.stem + ".mask.png")))
        assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}


# --- digits-mlp ----------------------------------------------------------------------------------


def _digits_test_split(training: dict) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx = np.arange(len(digits.target))
    _, test_idx = train_test_split(idx, test_size=training["test_fraction"], random_state=training["seed"])
    pixels = np.round(digits.images[test_idx] * 255.0 / 16.0).astype(np.uint8)
    return pixels, digits.target[test_idx]


def test_digits_mlp_interface_and_graph():
    path = MODELS / "digits-mlp.onnx"
    assert path.stat().st_size < 1_000_000
    session = _session("digits-mlp")
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "input" and inp.shape[1:] == [1, 8, 8]
    assert out.name == "probabilities" and out.shape[1:] == [10]
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops == ["Flatten", "Gemm", "Tanh", "Gemm", "Tanh", "Gemm", "Softmax"]


def test_digits_mlp_sidecar():
    sidecar = _sidecar("digits-mlp")
    assert sidecar["preset"] == "unit" and sidecar["size"] == [8, 8]
    assert sidecar["labels"] == [str(d) for d in range(10)]
    assert sidecar["composite"] == "paper-epsilon"
    assert sidecar["training"]["test_accuracy"] >= 0.95


def test_digits_mlp_accuracy_on_held_out_split():
    pixels, labels = _digits_test_split(_sidecar("digits-mlp")["training"])
    probs = _session("digits-mlp").run(["probabilities"], {"input": _unit(pixels)})[0]
    accuracy = (probs.argmax(axis=1) == labels).mean()
    print(f"digits-mlp accuracy on {len(labels)} held-out digits: {accuracy:.3f}")
    assert accuracy >= 0.93


def test_digit_samples_are_classified_as_named():
    pngs = [SAMPLES / "digits" / f"digit_{d}.png" for d in range(10)]
    pixels = np.stack([np.asarray(Image.open(p)) for p in pngs])
    assert pixels.shape == (10, 8, 8) and pixels.dtype == np.uint8
    probs = _session("digits-mlp").run(["probabilities"], {"input": _unit(pixels)})[0]
    assert list(probs.argmax(axis=1)) == list(range(10))
