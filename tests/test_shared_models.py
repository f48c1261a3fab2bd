"""The three real pretrained models of ../shared/models explain correctly from the CLI, each with a sidecar.

Measured here (2 cores): SqueezeNet 1.1 (Caffe preprocessing, opset 7, output Softmax stripped) and MobileNetV2
(depthwise, ReLU6, residual Add; TF preprocessing) classify the photos as the models' README says (cats within
the tabby/tiger/Egyptian cat classes: our bilinear resize differs from the reference's), and LeNet-5 reads the
first ten MNIST test digits right, conserving relevance to ~3e-6 (it has no biases), with 0.61 of the positive
relevance (epsilon-plus) on the ink grown by one pixel, which covers 0.17 of the image.
"""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import shared_path
from lrp_cli.cli import main

CATS = {281, 282, 285}
SIDECARS = {
    "squeezenet1.1.onnx": 'preset = "caffe"\nresize = 256\nlabels = "{labels}"\n',
    "mobilenet_v2_1.0_224.onnx": 'preset = "tf"\ncrop = 0.875\nlabels = "{labels}"\n',
    "lenet5_mnist.onnx": 'preset = "tf"\nlabels = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]\n',
}


def with_sidecar(tmp_path, name):
    model = shared_path("models", name)
    link = tmp_path / name
    link.symlink_to(model)
    labels = shared_path("models", "imagenet_labels.txt")
    (tmp_path / name.replace(".onnx", ".lrp.toml")).write_text(SIDECARS[name].format(labels=labels))
    return link


def run(*args):
    result = CliRunner().invoke(main, ["explain", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["numpy", "onnxruntime"])
@pytest.mark.parametrize("name", ["squeezenet1.1.onnx", "mobilenet_v2_1.0_224.onnx"])
def test_imagenet_models_explain_photos(tmp_path, name, engine):
    model = with_sidecar(tmp_path, name)
    photos = [shared_path("images", "photos", p) for p in ("chelsea.png", "coffee.png", "parrot.jpg")]
    out = tmp_path / "out"
    run(*photos, "--model", model, "--out", out, "--engine", engine, "--save-raw")
    docs = {p.stem: json.loads((out / f"{p.stem}.json").read_text()) for p in photos}
    assert docs["chelsea"]["target"]["index"] in CATS
    assert docs["coffee"]["target"]["index"] == 967
    assert docs["parrot"]["target"]["index"] == 88
    for stem, doc in docs.items():
        assert doc["engine"] == engine
        if engine == "numpy":
            assert doc["ir_max_abs_diff"] < 1e-3 * abs(doc["f_x"])
        else:
            # compiled float32 vs NumPy float64: 5x the NumPy float32 floor, never below 5e-4 relative L2. NumPy's
            # float32 is unusually close to float64 here (floors 3e-7, 1.3e-5); onnxruntime's float32 kernels
            # sum in another order and measure 2.3e-5 (SqueezeNet) and 1.6e-4 (the 53-layer MobileNetV2, whose
            # relevance shrinks to 1e-10 per pixel), like zennit's float32 on the fixtures (up to ~1e-4).
            photo = shared_path("images", "photos", doc["input"]["path"].split("/")[-1])
            maps = {}
            for precision in ("float32", "float64"):
                run(photo, "--model", model, "--out", tmp_path / precision, "--engine", "numpy", "--precision",
                    precision, "--save-raw")
                maps[precision] = np.load(tmp_path / precision / f"{stem}.relevance.npy").astype(np.float64)
            ours = np.load(out / f"{stem}.relevance.npy").astype(np.float64)
            reference = maps["float64"]
            floor = np.linalg.norm(maps["float32"] - reference)
            assert np.linalg.norm(ours - reference) <= max(5 * floor, 5e-4 * np.linalg.norm(reference))
        assert np.isfinite(doc["relevance"]["conservation_error"]) and doc["relevance"]["abs_max"] > 0
        assert Image.open(doc["outputs"]["heatmap"]).size == (224, 224)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["numpy", "onnxruntime"])
def test_lenet_reads_mnist_digits_and_relevance_lies_on_the_ink(tmp_path, engine):
    model = with_sidecar(tmp_path, "lenet5_mnist.onnx")
    digits = np.load(shared_path("images", "mnist", "mnist_test_first100_uint8.npy"))[:10]
    labels = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    paths = []
    for k, digit in enumerate(digits):
        paths.append(tmp_path / f"d{k}.png")
        Image.fromarray(np.pad(digit, 2)).save(paths[-1])  # 28x28 padded by 2 with the background
    out = tmp_path / "out"
    run(*paths, "--model", model, "--out", out, "--composite", "epsilon-plus", "--save-raw", "--engine", engine)
    near_ink, area = [], []
    for k, path in enumerate(paths):
        doc = json.loads((out / f"d{k}.json").read_text())
        assert doc["target"]["index"] == labels[k] and doc["engine"] == engine
        assert doc["relevance"]["conservation_error"] < 1e-4
        positive = np.maximum(np.load(out / f"d{k}.relevance.npy")[0, 0], 0)
        ink = np.pad(digits[k], 2) > 64
        grown = ink.copy()
        for axis in (0, 1):
            for shift in (-1, 1):
                grown |= np.roll(ink, shift, axis=axis)
        near_ink.append(positive[grown].sum() / positive.sum())
        area.append(grown.mean())
    # Measured: 0.61 of the positive relevance on the ink (grown by one pixel), which covers 0.17 of the image.
    assert np.mean(near_ink) > 0.5 and np.mean(near_ink) > 2.5 * np.mean(area)
