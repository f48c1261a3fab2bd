#!/usr/bin/env python3
"""Generate golden LRP reference fixtures with zennit (dev-only; never imported by the test suite).

Needs torch, torchvision, zennit 1.0.0, onnx, onnxruntime and numpy, e.g. in a private venv:

    python3 -m venv /work/venvs/zennit
    /work/venvs/zennit/bin/pip install torch==2.14.1 torchvision==0.29.1 onnx onnxruntime numpy
    /work/venvs/zennit/bin/pip install --no-deps --ignore-requires-python zennit==1.0.0
    /work/venvs/zennit/bin/python scripts/make_zennit_fixtures.py [--out tests/fixtures/zennit] [--only resnet18,...]

For each small model it writes ``<model>.onnx`` (float32, BatchNormalization nodes kept unfused) and
``<model>.npz`` (input, target, logits, zbox bounds and the relevance maps of zennit composites plus plain
gradient and gradient x input, each in float32 and float64).  It prints sanity checks (conservation,
float32/float64 noise floor, merged BatchNorm pairs, onnxruntime vs torch logits) and writes
``summary.json`` next to the fixtures.  See tests/fixtures/zennit/README.md for the conventions.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.fx
import torch.nn as nn
import torchvision
import zennit
from torchvision.models.alexnet import AlexNet
from torchvision.models.densenet import DenseNet
from torchvision.models.googlenet import BasicConv2d, GoogLeNet, Inception
from torchvision.models.mobilenetv2 import InvertedResidual, MobileNetV2
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.models.squeezenet import Fire, SqueezeNet
from torchvision.models.vgg import VGG, make_layers
from torchvision.ops.misc import Conv2dNormActivation
from zennit.canonizers import AttributeCanonizer, MergeBatchNorm, NamedMergeBatchNorm
from zennit.composites import (
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlusFlat,
    LayerMapComposite,
    layer_map_base,
)
from zennit.layer import Sum
from zennit.rules import Epsilon
from zennit.torchvision import ResNetCanonizer, VGGCanonizer
from zennit.types import Convolution

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float64)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float64)
ZBOX_LOW = (0.0 - IMAGENET_MEAN) / IMAGENET_STD  # float64, per channel
ZBOX_HIGH = (1.0 - IMAGENET_MEAN) / IMAGENET_STD

NUM_CLASSES = 10
SEED = 20240601
METHODS = [
    "epsilon-plus-flat",
    "epsilon-alpha2-beta1-flat",
    "epsilon-gamma-box",
    "paper-epsilon",
    "gradient",
    "gradient-x-input",
]
COMPOSITE_METHODS = METHODS[:4]
LINEAR_TYPES = (nn.Conv2d, nn.Linear)


# --------------------------------------------------------------------------------------------------
# Small models (torchvision classes, reduced widths)
# --------------------------------------------------------------------------------------------------
class SmallDenseNet(DenseNet):
    """torchvision DenseNet whose tail uses modules instead of F.relu / F.adaptive_avg_pool2d.

    The functional calls would be invisible to zennit (the pool would get the plain gradient instead of
    the Norm rule of layer_map_base); the exported ONNX ops are the same (Relu, GlobalAveragePool).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.relu_out = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x):
        features = self.features(x)
        out = self.relu_out(features)
        out = self.avgpool(out)
        out = torch.flatten(out, 1)
        return self.classifier(out)


class SmallMobileNetV2(MobileNetV2):
    """torchvision MobileNetV2 with the global pool as a module (same reason as SmallDenseNet)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def build_vgg(cfg, batch_norm):
    model = VGG(make_layers(cfg, batch_norm=batch_norm), num_classes=NUM_CLASSES, init_weights=False)
    width = [c for c in cfg if c != "M"][-1]
    model.avgpool = nn.AdaptiveAvgPool2d((1, 1))  # 2x2 feature map at 64 px -> GlobalAveragePool
    model.classifier = nn.Sequential(
        nn.Linear(width, 128), nn.ReLU(True), nn.Dropout(0.5),
        nn.Linear(128, 128), nn.ReLU(True), nn.Dropout(0.5),
        nn.Linear(128, NUM_CLASSES),
    )
    return model


def build_vgg11():
    return build_vgg([8, "M", 16, "M", 32, 32, "M", 64, 64, "M", 64, 64, "M"], batch_norm=False)


def build_vgg16_bn():
    return build_vgg([8, 8, "M", 16, 16, "M", 32, 32, 32, "M", 64, 64, 64, "M", 64, 64, 64, "M"], batch_norm=True)


def build_resnet(block, layers, widths=(8, 16, 32, 64)):
    model = ResNet(block, layers, num_classes=NUM_CLASSES)
    model.inplanes = widths[0]
    model.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(widths[0])
    model.layer1 = model._make_layer(block, widths[0], layers[0])
    model.layer2 = model._make_layer(block, widths[1], layers[1], stride=2)
    model.layer3 = model._make_layer(block, widths[2], layers[2], stride=2)
    model.layer4 = model._make_layer(block, widths[3], layers[3], stride=2)
    model.fc = nn.Linear(widths[3] * block.expansion, NUM_CLASSES)
    return model


def build_resnet18():
    return build_resnet(BasicBlock, [2, 2, 2, 2])


def build_resnet50():
    return build_resnet(Bottleneck, [3, 4, 6, 3])


def build_densenet121():
    # DenseNet-121 block structure (6, 12, 24, 16); growth 8, 16 initial features, bottleneck 2*growth
    return SmallDenseNet(growth_rate=8, block_config=(6, 12, 24, 16), num_init_features=16, bn_size=2,
                         num_classes=NUM_CLASSES)


def build_squeezenet1_1():
    model = SqueezeNet(version="1_1", num_classes=NUM_CLASSES)
    model.features = nn.Sequential(
        nn.Conv2d(3, 16, kernel_size=3, stride=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(16, 4, 16, 16),
        Fire(32, 4, 16, 16),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(32, 8, 32, 32),
        Fire(64, 8, 32, 32),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(64, 12, 48, 48),
        Fire(96, 12, 48, 48),
        Fire(96, 16, 64, 64),
        Fire(128, 16, 64, 64),
    )
    model.classifier = nn.Sequential(
        nn.Dropout(p=0.5), nn.Conv2d(128, NUM_CLASSES, kernel_size=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d((1, 1)),
    )
    return model


def build_mobilenet_v2():
    model = SmallMobileNetV2(num_classes=NUM_CLASSES, width_mult=0.25)
    last_in = model.features[-1][0].in_channels  # 80 at width 0.25
    model.features[-1] = Conv2dNormActivation(last_in, 160, kernel_size=1, norm_layer=nn.BatchNorm2d,
                                              activation_layer=nn.ReLU6)
    model.last_channel = 160
    model.classifier = nn.Sequential(nn.Dropout(p=0.2), nn.Linear(160, NUM_CLASSES))
    return model


def build_googlenet():
    model = GoogLeNet(num_classes=NUM_CLASSES, aux_logits=False, transform_input=False, init_weights=True)
    # all torchvision widths divided by 8
    model.conv1 = BasicConv2d(3, 8, kernel_size=7, stride=2, padding=3)
    model.conv2 = BasicConv2d(8, 8, kernel_size=1)
    model.conv3 = BasicConv2d(8, 24, kernel_size=3, padding=1)
    model.inception3a = Inception(24, 8, 12, 16, 2, 4, 4)
    model.inception3b = Inception(32, 16, 16, 24, 4, 12, 8)
    model.inception4a = Inception(60, 24, 12, 26, 2, 6, 8)
    model.inception4b = Inception(64, 20, 14, 28, 3, 8, 8)
    model.inception4c = Inception(64, 16, 16, 32, 3, 8, 8)
    model.inception4d = Inception(64, 14, 18, 36, 4, 8, 8)
    model.inception4e = Inception(66, 32, 20, 40, 4, 16, 16)
    model.inception5a = Inception(104, 32, 20, 40, 4, 16, 16)
    model.inception5b = Inception(104, 48, 24, 48, 6, 16, 16)
    model.fc = nn.Linear(128, NUM_CLASSES)
    return model


def build_alexnet():
    model = AlexNet(num_classes=NUM_CLASSES)
    model.features = nn.Sequential(
        nn.Conv2d(3, 8, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(8, 24, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(24, 48, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(48, 32, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(32, 32, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )
    model.avgpool = nn.AdaptiveAvgPool2d((1, 1))  # 2x2 feature map at 96 px -> GlobalAveragePool
    model.classifier = nn.Sequential(
        nn.Dropout(p=0.5), nn.Linear(32, 128), nn.ReLU(inplace=True),
        nn.Dropout(p=0.5), nn.Linear(128, 128), nn.ReLU(inplace=True),
        nn.Linear(128, NUM_CLASSES),
    )
    return model


# --------------------------------------------------------------------------------------------------
# Residual-add canonizer for MobileNetV2 (zennit has none); same pattern as zennit.torchvision's
# ResNetBasicBlockCanonizer: the add becomes torch.stack + zennit.layer.Sum, so it gets the Norm rule.
# --------------------------------------------------------------------------------------------------
class MobileNetV2ResidualCanonizer(AttributeCanonizer):
    def __init__(self):
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name, module):
        if isinstance(module, InvertedResidual) and module.use_res_connect:
            return {"forward": cls.forward.__get__(module), "canonizer_sum": Sum()}
        return None

    @staticmethod
    def forward(self, x):
        out = torch.stack([x, self.conv(x)], dim=-1)
        return self.canonizer_sum(out)

    def copy(self):
        return MobileNetV2ResidualCanonizer()


MODELS = {
    # name: (builder, input size, canonizer family)
    "vgg11": (build_vgg11, 64, "vgg"),
    "vgg16_bn": (build_vgg16_bn, 64, "vgg"),
    "resnet18": (build_resnet18, 64, "resnet"),
    "resnet50": (build_resnet50, 64, "resnet"),
    "densenet121": (build_densenet121, 64, "named-bn"),
    "squeezenet1_1": (build_squeezenet1_1, 64, "named-bn"),
    "mobilenet_v2": (build_mobilenet_v2, 64, "mobilenet"),
    "googlenet": (build_googlenet, 64, "named-bn"),
    "alexnet": (build_alexnet, 96, "named-bn"),
}


# --------------------------------------------------------------------------------------------------
# Conv/Linear -> BatchNorm pairs (torch.fx) and in the exported ONNX
# --------------------------------------------------------------------------------------------------
def fx_bn_pairs(model):
    """[(linear_name, bn_name)] for every BatchNorm whose input is the output of a Conv/Linear module
    that nothing else consumes."""
    traced = torch.fx.symbolic_trace(model)
    modules = dict(model.named_modules())
    pairs = []
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            continue
        src = node.args[0]
        if (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and isinstance(modules[src.target], LINEAR_TYPES) and len(src.users) == 1):
            pairs.append((src.target, node.target))
    return pairs


def onnx_bn_pairs(onnx_model):
    """[(linear_weight_name, bn_weight_name)] for each BatchNormalization fed by a Conv/Gemm output with
    no other consumer; plus the number of BatchNormalization nodes."""
    graph = onnx_model.graph
    producer = {out: n for n in graph.node for out in n.output}
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for o in graph.output:
        consumers.setdefault(o.name, []).append(None)
    pairs = []
    n_bn = 0
    for n in graph.node:
        if n.op_type != "BatchNormalization":
            continue
        n_bn += 1
        src = producer.get(n.input[0])
        if src is not None and src.op_type in ("Conv", "Gemm", "MatMul") and len(consumers[n.input[0]]) == 1:
            pairs.append((src.input[1], n.input[1]))
    return pairs, n_bn


def merge_count(canonizer_factory, model):
    """Apply the canonizers on a throw-away copy; return the (linear, bn) names zennit merged."""
    probe = copy.deepcopy(model)
    names = {id(m): n for n, m in probe.named_modules()}
    instances = []
    for can in canonizer_factory():
        instances += can.apply(probe)
    merged = [(tuple(names[id(lin)] for lin in inst.linears), names[id(inst.batch_norm)])
              for inst in instances if isinstance(inst, MergeBatchNorm)]
    sums = sum(1 for inst in instances if isinstance(inst, AttributeCanonizer))
    for inst in instances:
        inst.remove()
    return merged, sums


def make_canonizer_factory(family, pairs):
    if family == "vgg":
        return lambda: [VGGCanonizer()]
    if family == "resnet":
        return lambda: [ResNetCanonizer()]
    name_map = [((lin,), bn) for lin, bn in pairs]
    if family == "mobilenet":
        return lambda: [NamedMergeBatchNorm(name_map), MobileNetV2ResidualCanonizer()]
    return lambda: [NamedMergeBatchNorm(name_map)]


def canonizer_description(family):
    return {
        "vgg": "zennit.torchvision.VGGCanonizer() (= SequentialMergeBatchNorm)",
        "resnet": "zennit.torchvision.ResNetCanonizer() (SequentialMergeBatchNorm + BasicBlock/Bottleneck "
                  "add -> torch.stack + zennit.layer.Sum)",
        "mobilenet": "zennit.canonizers.NamedMergeBatchNorm(<torch.fx Conv->BN pairs>) + "
                     "MobileNetV2ResidualCanonizer (this script: InvertedResidual x + conv(x) -> "
                     "torch.stack + zennit.layer.Sum, as zennit's ResNet block canonizers do)",
        "named-bn": "zennit.canonizers.NamedMergeBatchNorm(<torch.fx Conv->BN pairs>)",
    }[family]


# --------------------------------------------------------------------------------------------------
# Weight rescaling (data-dependent, on random smooth images) so activations stay O(1)
# --------------------------------------------------------------------------------------------------
def random_images(rng, n, size):
    """Smooth random images in [0, 1], ImageNet-normalized, float32 [n, 3, size, size]."""
    low = rng.uniform(0.0, 1.0, size=(n, 3, max(2, size // 8), max(2, size // 8)))
    up = torch.nn.functional.interpolate(torch.from_numpy(low), size=(size, size), mode="bilinear",
                                         align_corners=False).numpy()
    img = np.clip(up + 0.08 * rng.standard_normal(up.shape), 0.0, 1.0)
    norm = (img - IMAGENET_MEAN[None, :, None, None]) / IMAGENET_STD[None, :, None, None]
    return norm.astype(np.float32)


def forward_order(model, x):
    order = []
    seen = set()
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, LINEAR_TYPES + (nn.modules.batchnorm._BatchNorm,)):
            def hook(m, inp, out, name=name):
                if name not in seen:
                    seen.add(name)
                    order.append(name)
            handles.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return order


def capture(model, module, x, which):
    store = {}

    def hook(m, inp, out):
        store["v"] = (inp[0] if which == "input" else out).detach().clone()

    h = module.register_forward_hook(hook)
    with torch.no_grad():
        model(x)
    h.remove()
    return store["v"]


def channel_stats(t):
    dims = [0] + list(range(2, t.ndim))
    return t.mean(dim=dims), t.var(dim=dims)


@torch.no_grad()
def calibrate(model, x, gen, logit_std=3.0):
    model.eval()
    modules = dict(model.named_modules())
    order = forward_order(model, x)
    linear_names = [n for n in order if isinstance(modules[n], LINEAR_TYPES)]
    last_linear = linear_names[-1]
    followed_by_bn = {lin for lin, _ in fx_bn_pairs(model)}

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    for name in order:
        mod = modules[name]
        if isinstance(mod, LINEAR_TYPES):
            if mod.bias is not None:
                mod.bias.zero_()
            y = capture(model, mod, x, "output")
            mod.weight.mul_(1.0 / max(float(y.std()), 1e-8))
            if mod.bias is None:
                continue
            y = capture(model, mod, x, "output")
            mean, var = channel_stats(y)
            if name == last_linear:
                mod.weight.mul_(logit_std)
                mod.bias.copy_(0.5 * randn(mod.bias.shape))
            elif name in followed_by_bn:
                mod.bias.copy_(0.2 * randn(mod.bias.shape))
            else:
                # centre each channel (about half of the ReLUs active), plus a random offset
                mod.bias.copy_(-mean + 0.3 * var.sqrt() * randn(mod.bias.shape))
        else:
            xin = capture(model, mod, x, "input")
            mean, var = channel_stats(xin)
            var = var.clamp(min=1e-2 * float(var.mean()) + 1e-6)
            mod.running_mean.copy_(mean + 0.3 * var.sqrt() * randn(mean.shape))
            mod.running_var.copy_(var * torch.exp(0.3 * randn(var.shape)))
            mod.weight.copy_(0.6 + 0.8 * torch.rand(mod.weight.shape, generator=gen))
            mod.bias.copy_(0.2 * randn(mod.bias.shape))
    # the layers after the last Conv/Linear (ReLU, pooling, flatten) are positively homogeneous: one final
    # rescale of the last layer sets the calibration-batch logit std exactly
    last = modules[last_linear]
    scale = logit_std / float(model(x).std())
    last.weight.mul_(scale)
    if last.bias is not None:
        last.bias.mul_(scale)
    return model


@torch.no_grad()
def activation_stats(model, x):
    """max |output| over all leaf modules, and the std of the last leaf-module output before the pool."""
    stats = {"max_abs": 0.0, "min_layer_std": float("inf")}
    handles = []
    for name, mod in model.named_modules():
        if len(list(mod.children())) == 0 and not isinstance(mod, (nn.Dropout, nn.Identity)):
            def hook(m, inp, out, name=name):
                stats["max_abs"] = max(stats["max_abs"], float(out.abs().max()))
                if out.ndim == 4 and out.shape[-1] > 1:
                    stats["min_layer_std"] = min(stats["min_layer_std"], float(out.std()))
            handles.append(mod.register_forward_hook(hook))
    model(x)
    for h in handles:
        h.remove()
    return stats


# --------------------------------------------------------------------------------------------------
# Attribution
# --------------------------------------------------------------------------------------------------
def make_composite(method, canonizers, input_shape):
    if method == "epsilon-plus-flat":
        return EpsilonPlusFlat(canonizers=canonizers)
    if method == "epsilon-alpha2-beta1-flat":
        return EpsilonAlpha2Beta1Flat(canonizers=canonizers)
    if method == "epsilon-gamma-box":
        # float64 bounds; zennit's ZBox casts them to the input dtype (.to(input)) in each run
        low = torch.from_numpy(ZBOX_LOW).view(1, 3, 1, 1).expand(input_shape)
        high = torch.from_numpy(ZBOX_HIGH).view(1, 3, 1, 1).expand(input_shape)
        return EpsilonGammaBox(low=low, high=high, canonizers=canonizers)
    if method == "paper-epsilon":
        layer_map = layer_map_base() + [
            (Convolution, Epsilon(epsilon=0.01)),
            (nn.Linear, Epsilon(epsilon=0.01)),
        ]
        return LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    raise ValueError(method)


def lrp(model, x, target, composite):
    """Input relevance with grad_output = one-hot(target) * f_target(x) (f from the same forward)."""
    x = x.clone().requires_grad_(True)
    with composite.context(model) as modified:
        out = modified(x)
        grad_out = torch.zeros_like(out)
        grad_out[0, target] = out[0, target].detach()
        (rel,) = torch.autograd.grad(out, x, grad_out)
    return rel.detach(), out.detach()


def plain_gradient(model, x, target):
    x = x.clone().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out[0, target], x)
    return grad.detach(), out.detach()


def fold_bn_manually(model, pairs):
    """Reference check of the canonizer path: fold BN into the Conv/Linear weights by hand and replace
    the BN modules by Identity."""
    modules = dict(model.named_modules())
    for lin_name, bn_name in pairs:
        lin, bn = modules[lin_name], modules[bn_name]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = lin.bias if lin.bias is not None else torch.zeros_like(bn.running_mean)
        with torch.no_grad():
            w = lin.weight * scale.view(-1, *([1] * (lin.weight.ndim - 1)))
            b = (bias - bn.running_mean) * scale + bn.bias
        lin.weight = nn.Parameter(w)
        lin.bias = nn.Parameter(b)
        parent_name, _, child = bn_name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, child, nn.Identity())
    return model


def rel_l2(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


# --------------------------------------------------------------------------------------------------
# Main per-model routine
# --------------------------------------------------------------------------------------------------
def export_onnx(model, x, path):
    torch.onnx.export(
        model, (x,), str(path), dynamo=False, opset_version=13,
        input_names=["input"], output_names=["logits"],
        training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
    )
    return onnx.load(str(path))


def run_model(name, out_dir, log):
    builder, size, family = MODELS[name]
    seed = SEED + sum(map(ord, name))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    model = builder().eval()
    calib = torch.from_numpy(random_images(rng, 16, size))
    calibrate(model, calib, gen)
    model = model.float().eval()
    pristine = copy.deepcopy(model)  # every attribution below runs on a fresh deep copy of this

    # fixture input: the first random image whose prediction is clear (margin to the runner-up at least
    # 0.25 logit std, and a positive target logit), so the target is not a near-tie
    for attempt in range(50):
        x = torch.from_numpy(random_images(rng, 1, size))
        with torch.no_grad():
            logits = model(x)
        top = np.sort(logits[0].numpy())
        if top[-1] - top[-2] >= 0.25 * top.std() and top[-1] > 0.5:
            break
    else:
        raise RuntimeError(f"{name}: no input with a clear prediction")
    target = int(logits.argmax(1))
    lg = logits[0].numpy()
    log(f"\n=== {name}: input {tuple(x.shape)}, params {sum(p.numel() for p in model.parameters())}, "
        f"target {target}, f(x) {lg[target]:.4f}, logits min/max/std {lg.min():.3f}/{lg.max():.3f}/{lg.std():.3f}, "
        f"margin {np.sort(lg)[-1] - np.sort(lg)[-2]:.3f}")
    with torch.no_grad():
        calib_logits = model(calib)
    act = activation_stats(model, x)
    log(f"    calibration batch logit std {float(calib_logits.std()):.3f}, argmax classes "
        f"{sorted(set(calib_logits.argmax(1).tolist()))}; activations: max |a| {act['max_abs']:.2f}, "
        f"smallest per-layer std {act['min_layer_std']:.3f}")

    # ONNX export + checks
    onnx_path = out_dir / f"{name}.onnx"
    onnx_model = export_onnx(copy.deepcopy(pristine), x, onnx_path)
    onnx.checker.check_model(onnx_model)
    op_counts = {}
    for n in onnx_model.graph.node:
        op_counts[n.op_type] = op_counts.get(n.op_type, 0) + 1
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_logits = sess.run(["logits"], {"input": x.numpy()})[0]
    ort_diff = float(np.abs(ort_logits - lg[None]).max())
    with torch.no_grad():
        lg64 = copy.deepcopy(pristine).double()(x.double())[0].numpy()
    f64_diff = float(np.abs(lg64 - lg).max())
    log(f"    torch float32 vs float64 logits max abs diff {f64_diff:.3e}")
    log(f"    onnx ops {op_counts}")
    log(f"    onnxruntime vs torch logits max abs diff {ort_diff:.3e}")
    if "Identity" in op_counts:
        log("    WARNING: exporter emitted Identity nodes (deduplicated initializers)")

    # canonizers: BN pairs found by fx, merged by zennit, and Conv->BN edges in the ONNX
    pairs = fx_bn_pairs(pristine)
    factory = make_canonizer_factory(family, pairs)
    merged, n_sums = merge_count(factory, pristine)
    onnx_pairs, n_bn_onnx = onnx_bn_pairs(onnx_model)
    fx_set = {(lin, bn) for lin, bn in pairs}
    zen_set = {(lins[0], bn) for lins, bn in merged}
    onnx_set = {(w.rsplit(".", 1)[0], b.rsplit(".", 1)[0]) for w, b in onnx_pairs}
    n_bn_torch = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in pristine.modules())
    log(f"    BatchNorm: {n_bn_torch} modules / {n_bn_onnx} ONNX nodes; Conv->BN pairs fx {len(fx_set)}, "
        f"zennit merged {len(zen_set)}, ONNX edges {len(onnx_pairs)}; residual Sum modules {n_sums}")
    if not (fx_set == zen_set == onnx_set) or len(merged) != len(onnx_pairs):
        raise RuntimeError(f"{name}: BN pair mismatch fx={sorted(fx_set ^ zen_set)} onnx={sorted(zen_set ^ onnx_set)}")
    if n_bn_onnx != n_bn_torch:
        raise RuntimeError(f"{name}: exporter fused BatchNorm ({n_bn_onnx} of {n_bn_torch} left)")

    first_linear = next(n for n, m in pristine.named_modules() if isinstance(m, LINEAR_TYPES))

    arrays = {
        "input": x.numpy().astype(np.float32),
        "target": np.array(target, dtype=np.int64),
        "logits": lg.astype(np.float32),
        "logits_float64": lg64.astype(np.float64),  # extra: torch logits of model.double() on input.double()
        "zbox_low": ZBOX_LOW.copy(),
        "zbox_high": ZBOX_HIGH.copy(),
    }
    table = []
    fx_values = {}
    for method in METHODS:
        results = {}
        for dtype, tag in ((torch.float32, "float32"), (torch.float64, "float64")):
            m = copy.deepcopy(pristine).to(dtype).eval()
            xd = x.to(dtype)
            if method in COMPOSITE_METHODS:
                rel, out = lrp(m, xd, target, make_composite(method, factory(), tuple(x.shape)))
                fx_val = float(out[0, target])
                fx_values[tag] = fx_val
                # sanity: canonized forward reproduces the model's logits
                fwd_diff = float((out[0].double() - torch.from_numpy(lg).double()).abs().max())
                if fwd_diff > 1e-3 * max(1.0, float(np.abs(lg).max())):
                    raise RuntimeError(f"{name}/{method}/{tag}: canonized forward differs by {fwd_diff}")
            else:
                grad, out = plain_gradient(m, xd, target)
                rel = grad if method == "gradient" else grad * xd
                fx_val = float(out[0, target])
            results[tag] = rel.numpy()
            arrays[f"{method}/{tag}"] = rel.numpy().astype(np.float32 if tag == "float32" else np.float64)
        s32 = float(results["float32"].astype(np.float64).sum())
        s64 = float(results["float64"].sum())
        row = {
            "model": name, "method": method,
            "f_x": float(lg[target]),
            "sum_f32": s32, "sum_f64": s64,
            "conservation_f64": s64 / float(lg[target]),
            "noise_floor_rel_l2": rel_l2(results["float32"], results["float64"]),
        }
        table.append(row)
        log(f"    {method:26s} sum f32 {s32:+.5f}  sum f64 {s64:+.5f}  f(x) {lg[target]:+.5f}  "
            f"sum/f(x) {row['conservation_f64']:.4f}  relL2(f32,f64) {row['noise_floor_rel_l2']:.2e}")

    # Check of the canonizer mechanics: BN folded by hand (no merge canonizer) must give the same maps.
    fold_checks = {}
    def sum_only():
        return [c for c in factory() if not isinstance(c, MergeBatchNorm)]
    if pairs:
        for method in ("paper-epsilon", "epsilon-plus-flat"):
            m = fold_bn_manually(copy.deepcopy(pristine).double().eval(), pairs)
            rel, _ = lrp(m, x.double(), target, make_composite(method, sum_only(), tuple(x.shape)))
            fold_checks[method] = rel_l2(rel.numpy(), arrays[f"{method}/float64"])
        log("    hand-folded BN vs zennit merge canonizer (float64 rel L2): "
            + ", ".join(f"{k} {v:.1e}" for k, v in fold_checks.items()))
    # Check that zennit's Pass on ReLU equals plain ReLU gradient here (they must for ReLU networks; this
    # also validates hooks on ReLU modules that torchvision's ResNet blocks reuse several times)
    relu_check = None
    if family != "mobilenet":
        from zennit.rules import Pass, Norm
        from zennit.types import AvgPool, BatchNorm
        layer_map = [(Sum, Norm()), (AvgPool, Norm()), (BatchNorm, Pass()),
                     (Convolution, Epsilon(epsilon=0.01)), (nn.Linear, Epsilon(epsilon=0.01))]
        m = copy.deepcopy(pristine).double().eval()
        rel, _ = lrp(m, x.double(), target, LayerMapComposite(layer_map=layer_map, canonizers=factory()))
        relu_check = rel_l2(rel.numpy(), arrays["paper-epsilon/float64"])
        log(f"    paper-epsilon with ReLU gradient instead of Pass vs stored (float64 rel L2): {relu_check:.1e}")

    np.savez_compressed(out_dir / f"{name}.npz", **arrays)
    info = {
        "model": name,
        "input_shape": list(x.shape),
        "params": int(sum(p.numel() for p in pristine.parameters())),
        "target": target,
        "f_x": float(lg[target]),
        "logits": [float(v) for v in lg],
        "activation_max_abs": act["max_abs"],
        "onnx_ops": op_counts,
        "ort_max_abs_diff": ort_diff,
        "torch_f32_vs_f64_logits_max_abs_diff": f64_diff,
        "logits_float64": [float(v) for v in lg64],
        "batchnorm_modules": n_bn_torch,
        "merged_bn_pairs": len(merged),
        "onnx_conv_bn_edges": len(onnx_pairs),
        "merged_pairs": [[lin, bn] for lin, bn in sorted(fx_set)],
        "residual_sum_modules": n_sums,
        "canonizers": canonizer_description(family),
        "first_linear_layer": first_linear,
        "fold_check_rel_l2": fold_checks,
        "relu_pass_vs_gradient_rel_l2": relu_check,
        "table": table,
    }
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = Path(__file__).resolve().parent.parent
    parser.add_argument("--out", type=Path, default=here / "tests" / "fixtures" / "zennit")
    parser.add_argument("--only", default="", help="comma-separated model names")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    names = [n for n in MODELS if not args.only or n in args.only.split(",")]

    def log(msg):
        print(msg, flush=True)

    log(f"torch {torch.__version__}, torchvision {torchvision.__version__}, zennit "
        f"{getattr(zennit, '__version__', None) or _dist_version('zennit')}, onnx {onnx.__version__}, "
        f"onnxruntime {ort.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}")
    summary_path = args.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["versions"] = {
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "zennit": _dist_version("zennit"), "onnx": onnx.__version__, "onnxruntime": ort.__version__,
        "numpy": np.__version__, "python": sys.version.split()[0],
    }
    summary.setdefault("models", {})
    for name in names:
        summary["models"][name] = run_model(name, args.out, log)
    summary["models"] = {k: summary["models"][k] for k in MODELS if k in summary["models"]}
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    total = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    log(f"\nwrote {args.out} ({total / 1e6:.2f} MB)")


def _dist_version(dist):
    from importlib.metadata import version
    return version(dist)


if __name__ == "__main__":
    main()
