#!/usr/bin/env python3
"""Golden zennit relevance on a real photo with flat regions, where MaxPool windows tie (dev-only).

The fixtures of make_zennit_fixtures.py use smooth random inputs and never meet a tie at a non-zero maximum; a
photo with flat regions (scikit-learn's "china" sample: sky, water) gives exactly equal activations there. This
script builds a reduced-width VGG-like net (SqueezeNet's overlapping 3x3/2 ceil-mode first pool, then VGG's 2x2
pools) in plain torch with deterministic random weights, exports it to ONNX, runs zennit 1.0.0 on the photo at
224x224, counts the tied MaxPool windows at non-zero maxima and writes tests/fixtures/zennit-photo/.
Needs no torchvision:

    python3 -m venv /work/venv-torch && /work/venv-torch/bin/pip install torch==2.13.0 numpy onnx onnxruntime \
        scikit-learn pillow
    /work/venv-torch/bin/pip install --no-deps --ignore-requires-python zennit==1.0.0
    /work/venv-torch/bin/python scripts/make_photo_fixtures.py
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn


def _stub_torchvision() -> None:
    """zennit 1.0 imports torchvision only to name its ResNet blocks and FrozenBatchNorm2d in type checks; this
    net has none of them, so placeholder classes stand in (torchvision needs a newer torch than 2.13)."""
    import sys
    import types
    def placeholder(name):
        return type(name, (nn.Module,), {})
    names = {"torchvision": {}, "torchvision.ops": {"FrozenBatchNorm2d": placeholder("FrozenBatchNorm2d")},
             "torchvision.models": {}, "torchvision.models.resnet": {
                 "Bottleneck": placeholder("Bottleneck"), "BasicBlock": placeholder("BasicBlock")}}
    for name, attrs in names.items():
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__dict__.update(attrs)
    sys.modules["torchvision"].ops = sys.modules["torchvision.ops"]
    sys.modules["torchvision"].models = sys.modules["torchvision.models"]
    sys.modules["torchvision.models"].resnet = sys.modules["torchvision.models.resnet"]


try:
    import torchvision  # noqa: F401
except ImportError:
    _stub_torchvision()
import zennit  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.datasets import load_sample_image  # noqa: E402
from zennit.composites import (EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlusFlat,  # noqa: E402
                               LayerMapComposite, layer_map_base)
from zennit.rules import Epsilon  # noqa: E402
from zennit.types import Convolution  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SIZE = 224
SEED = 20261201
COMPOSITES = ["epsilon-plus-flat", "epsilon-alpha2-beta1-flat", "epsilon-gamma-box", "paper-epsilon"]


def photo() -> np.ndarray:
    """Returns the china sample resized to SIZE x SIZE (PIL bilinear), uint8 [H, W, 3]."""
    return np.asarray(Image.fromarray(load_sample_image("china.jpg")).resize((SIZE, SIZE), Image.BILINEAR))


def normalize(pixels: np.ndarray) -> np.ndarray:
    """Returns the ImageNet-normalized float32 [1, 3, H, W] input (the formula the test repeats)."""
    unit = pixels.astype(np.float32) / np.float32(255)
    return ((unit - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)


def build(x: torch.Tensor) -> nn.Sequential:
    """Returns the net with deterministic weights, each conv rescaled to unit pre-activation std on x."""
    torch.manual_seed(SEED)
    widths = [(3, 8), (8, 16), (16, 16), (16, 32), (32, 32)]
    layers = []
    for index, (cin, cout) in enumerate(widths):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
        layers.append(nn.MaxPool2d(3, 2, ceil_mode=True) if index == 0 else nn.MaxPool2d(2, 2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)]
    model = nn.Sequential(*layers).eval()
    with torch.no_grad():
        h = x
        for layer in model:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                layer.bias.copy_(0.1 * torch.randn(layer.bias.shape))
                layer.weight.mul_(1.0 / float((layer(h) - layer.bias.view(-1, *[1] * (h.ndim - 2))).std()))
            h = layer(h)
    return model


def tied_windows(model: nn.Sequential, x: torch.Tensor) -> list[int]:
    """Returns, per MaxPool, how many windows hold a tie at a non-zero maximum in the forward pass of x."""
    counts, h = [], x
    for layer in model:
        if isinstance(layer, nn.MaxPool2d):
            k, s = layer.kernel_size, layer.stride
            padded = nn.functional.pad(h, (0, k, 0, k), value=-float("inf"))
            y = layer(h)
            cols = padded.unfold(2, k, s).unfold(3, k, s)[:, :, :y.shape[2], :y.shape[3]]
            ties = (cols == y[..., None, None]).sum(dim=(-1, -2)) > 1
            counts.append(int((ties & (y != 0)).sum()))
        h = layer(h)
    return counts


def composite(name: str):
    """Returns the zennit composite lrp-cli's composite of that name matches."""
    if name == "epsilon-plus-flat":
        return EpsilonPlusFlat()
    if name == "epsilon-alpha2-beta1-flat":
        return EpsilonAlpha2Beta1Flat()
    if name == "epsilon-gamma-box":
        low = torch.from_numpy((0 - MEAN) / STD).double().view(1, 3, 1, 1).expand(1, 3, SIZE, SIZE)
        high = torch.from_numpy((1 - MEAN) / STD).double().view(1, 3, 1, 1).expand(1, 3, SIZE, SIZE)
        return EpsilonGammaBox(low=low, high=high)
    return LayerMapComposite(layer_map_base() + [(Convolution, Epsilon(0.01)), (nn.Linear, Epsilon(0.01))])


def relevance(model: nn.Module, x: torch.Tensor, target: int, name: str) -> np.ndarray:
    """Returns zennit's input relevance with grad_output one-hot(target) * f_target(x)."""
    x = x.clone().requires_grad_(True)
    with composite(name).context(model) as modified:
        out = modified(x)
        grad = torch.zeros_like(out)
        grad[0, target] = out[0, target].detach()
        (rel,) = torch.autograd.grad(out, x, grad)
    return rel.detach().numpy()


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "tests/fixtures/zennit-photo")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    pixels = photo()
    x32 = torch.from_numpy(normalize(pixels))
    model = build(x32)
    torch.onnx.export(model, (x32,), str(out / "vgg_photo.onnx"), dynamo=False, opset_version=13,
                      input_names=["input"], output_names=["logits"])
    onnx.checker.check_model(onnx.load(str(out / "vgg_photo.onnx")))
    ort_logits = ort.InferenceSession(str(out / "vgg_photo.onnx")).run(None, {"input": x32.numpy()})[0]
    model64 = build(x32).double()   # the same float32 weights, computed in float64
    with torch.no_grad():
        logits = model64(x32.double()).numpy()
    target = int(logits.argmax())
    ties64, ties32 = tied_windows(model64, x32.double()), tied_windows(model, x32)
    arrays = {"pixels": pixels, "target": np.int64(target), "logits": logits, "ties": np.array(ties64)}
    summary = {"torch": torch.__version__, "zennit": getattr(zennit, "__version__", "1.0.0"), "target": target,
               "tied_windows_float64": ties64, "tied_windows_float32": ties32,
               "onnxruntime_vs_torch_logits": float(np.abs(ort_logits - logits).max()), "maps": {}}
    for name in COMPOSITES:
        r64 = relevance(model64, x32.double(), target, name)
        r32 = relevance(model, x32, target, name)
        # float64 maps rounded to float32 to keep the fixture small: 6e-8 relative, far under the 1e-6 bar.
        arrays[f"{name}/float64"] = r64.astype(np.float32)
        arrays[f"{name}/floor"] = np.float64(rel_l2(r32, r64))
        summary["maps"][name] = {"sum_over_f": float(r64.sum() / logits[0, target]),
                                 "float32_vs_float64": rel_l2(r32, r64)}
    np.savez_compressed(out / "vgg_photo.npz", **arrays)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
