#!/usr/bin/env python3
"""Golden fixtures for the transformer rules: a tiny ViT exported both ways, with reference relevances (dev-only).

Needs torch 2.13.0 (CPU), onnx, onnxruntime, onnxscript and numpy in a private venv, never the project's:

    python3 -m venv /work/venv-torch-NAME
    /work/venv-torch-NAME/bin/pip install torch==2.13.0 numpy onnx onnxruntime onnxscript
    /work/venv-torch-NAME/bin/python scripts/make_transformer_fixtures.py [--out DIR] [--only STEM...]

The Swin fixtures (swin_*, swinv2_*) use torchvision's own SwinTransformer, so they need torchvision too (made with
torch 2.14.1 + torchvision 0.29.1): `--only swin_legacy17 swin_dynamo18 swinv2_legacy17 swinv2_dynamo18` remakes them
alone and keeps the other entries of summary.json.

The model is plain torch (no torchvision): a patch-embedding convolution, a class token, a position embedding,
pre-LN blocks of multi-head attention and a GELU MLP, a final LayerNorm and a linear head on the class token.
It is exported with the legacy exporter (opset 17: LayerNormalization, Erf-form GELU), with the legacy exporter
at opset 14 (LayerNorm decomposed into ReduceMean/Sub/Pow/Sqrt/Div), with a tanh-approximated GELU, and with
the dynamo exporter (opset 18). The same ViT with RMSNorm in place of every LayerNorm (torch's nn.RMSNorm) is
exported by dynamo at opset 23 (RMSNormalization) and 18 (written out: Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul,
Mul), and, written out by hand as x * rsqrt(mean(x^2) + eps) * weight (the legacy exporter has no aten::rms_norm),
by the legacy exporter at opset 17. `--only` remakes only some files (summary.json keeps the others' entries).

The references are written here in PyTorch float64, independently of lrp-cli's NumPy code, as gradient x input
of the network with the rule's constants detached (Ali et al. 2022 define CP-LRP this way):
- every linear map (Linear, Conv, LayerNorm with its standard deviation detached, the residual and position
  embedding sums) scales the gradient passing down by z / stab(z), which makes gradient x input the epsilon (or z)
  rule exactly; element-wise activations pass relevance unchanged (their slope y / x is a detached gate);
- RMSNorm with its root mean square detached: under cp-lrp scaled by z / stab(z) like a linear map, under attnlrp
  not at all (the identity rule: relevance passes the element-wise scaling unchanged);
- cp-lrp: the Softmax output is detached, so relevance reaches the attention only through the values;
- attnlrp: the Softmax is differentiated as is (x * (R - s * sum R) is gradient x input through it, the
  paper's Proposition 3.1), the products QK^T and AV scale by z / (2 stab(z)) (the uniform rule: half to each
  operand), and the patch-embedding convolution takes the gamma rule, computed explicitly from its output
  relevance.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

EPSILON = 1e-6  # lrp-cli's epsilon rule default (linear layers, LayerNorm, attention products)
NORM_STABILIZER = 1e-6  # lrp-cli's stabilizer of the parameter-free z-rule of Add
GAMMA = 0.25
LXT_EPSILON = 1e-6  # lxt's own default for its linear rule
IMAGE = 32
PATCH = 8
WIDTH = 32
HEADS = 2
MLP = 64
DEPTH = 2
CLASSES = 10


def stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Returns z moved away from zero by eps in the direction of its sign (sign(0) = +1), as lrp-cli and zennit."""
    return z + torch.where(z >= 0, eps, -eps)


class Modes:
    """How the forward pass is modified for a reference (None: the plain model that is exported)."""

    def __init__(self, kind: str | None, norm: str = "layer"):
        self.kind = kind
        self.norm = norm  # "layer", "rms" (nn.RMSNorm) or "rms-written" (RMSNorm spelt out for the legacy exporter)

    def linear(self, z: torch.Tensor, eps: float = EPSILON, share: float = 1.0) -> torch.Tensor:
        """Returns z whose gradient is scaled by share * z / stab(z): the epsilon rule as gradient x input."""
        if self.kind is None:
            return z
        k = (share * z / stab(z, eps)).detach()
        return z * k + (z - z * k).detach()

    def conv(self, layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """Returns layer(x): epsilon as `linear`, or under attnlrp zennit's gamma rule as a modified gradient.

        Gamma splits by the output's sign: where y > 0 the relevance R = y * g goes down through
        x+ (W + G W+) + x- (W + G W-) + (b + G b+), where y < 0 through the mirrored weights, each scaled by
        R / stab(z) of its own z; x+ and x- are clamps, so the gradient picks each input's weight set.
        """
        y = layer(x)
        if self.kind != "attnlrp":
            return self.linear(y)
        w, b, g = layer.weight, layer.bias, GAMMA
        up, down = (w + g * w.clamp(min=0), b + g * b.clamp(min=0)), (w + g * w.clamp(max=0), b + g * b.clamp(max=0))
        out = y.detach()
        for mask, (wa, ba), wb in ((y > 0, up, down[0]), (y < 0, down, up[0])):
            z = (F.conv2d(x.clamp(min=0), wa, ba, layer.stride, layer.padding, groups=layer.groups)
                 + F.conv2d(x.clamp(max=0), wb, None, layer.stride, layer.padding, groups=layer.groups))
            k = (mask * y / stab(z, 1e-6)).detach()
            out = out + z * k - (z * k).detach()
        return out

    def gate(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Returns y = f(x) whose gradient is y / x: relevance passes an element-wise activation unchanged."""
        if self.kind is None:
            return y
        slope = torch.where(x == 0, torch.zeros_like(x), y / torch.where(x == 0, torch.ones_like(x), x))
        return x * slope.detach()


class Attention(nn.Module):
    def __init__(self, modes: Modes):
        super().__init__()
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.proj = nn.Linear(WIDTH, WIDTH)
        self.modes = modes

    def forward(self, x):
        m = self.modes
        n, t, d = x.shape
        qkv = m.linear(self.qkv(x)).reshape(n, t, 3, HEADS, d // HEADS).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        share = 0.5 if m.kind == "attnlrp" else 1.0
        scores = m.linear(q @ k.transpose(-2, -1), share=share) * (1.0 / math.sqrt(d // HEADS))
        weights = scores.softmax(dim=-1)
        if m.kind == "cp-lrp":
            weights = weights.detach()
        out = m.linear(weights @ v, share=share).transpose(1, 2).reshape(n, t, d)
        return m.linear(self.proj(out))


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm whose reference forms detach the standard deviation (both rules treat it as a constant)."""

    def __init__(self, modes: Modes, width: int = WIDTH):
        super().__init__(width)
        self.modes = modes

    def forward(self, x):
        if self.modes.kind is None:
            return super().forward(x)
        centred = x - x.mean(-1, keepdim=True)
        std = torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + self.eps).detach()
        return self.modes.linear(centred / std * self.weight + self.bias)


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm whose reference forms detach the root mean square (cp-lrp: epsilon on the map, attnlrp: identity)."""

    def __init__(self, modes: Modes, width: int = WIDTH):
        super().__init__(width, eps=1e-6)
        self.modes = modes

    def forward(self, x):
        if self.modes.kind is None and self.modes.norm == "rms":
            return super().forward(x)
        if self.modes.kind is None:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        rms = torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps).detach()
        y = x / rms * self.weight
        return self.modes.linear(y) if self.modes.kind == "cp-lrp" else y


def make_norm(modes: Modes) -> nn.Module:
    """Returns the normalization the model's modes ask for."""
    return LayerNorm(modes) if modes.norm == "layer" else RMSNorm(modes)


class Block(nn.Module):
    def __init__(self, modes: Modes, gelu: str):
        super().__init__()
        self.norm1, self.norm2 = make_norm(modes), make_norm(modes)
        self.attn = Attention(modes)
        self.fc1, self.fc2 = nn.Linear(WIDTH, MLP), nn.Linear(MLP, WIDTH)
        self.gelu = gelu
        self.modes = modes

    def forward(self, x):
        m = self.modes
        x = m.linear(x + self.attn(self.norm1(x)), NORM_STABILIZER)
        h = m.linear(self.fc1(self.norm2(x)))
        h = m.gate(h, F.gelu(h, approximate=self.gelu))
        return m.linear(x + m.linear(self.fc2(h)), NORM_STABILIZER)


class TinyViT(nn.Module):
    def __init__(self, kind: str | None = None, gelu: str = "none", norm: str = "layer"):
        super().__init__()
        self.modes = Modes(kind, norm)
        self.patch = nn.Conv2d(3, WIDTH, PATCH, stride=PATCH)
        self.cls = nn.Parameter(torch.zeros(1, 1, WIDTH))
        self.pos = nn.Parameter(torch.zeros(1, (IMAGE // PATCH) ** 2 + 1, WIDTH))
        self.blocks = nn.ModuleList(Block(self.modes, gelu) for _ in range(DEPTH))
        self.norm = make_norm(self.modes)
        self.head = nn.Linear(WIDTH, CLASSES)

    def embed(self, x):
        """Returns the token sequence before the blocks, from the patch-embedding output."""
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        return self.modes.linear(x + self.pos, NORM_STABILIZER)

    def forward(self, image, patches=None):
        x = self.embed(self.modes.conv(self.patch, image) if patches is None else patches)
        for block in self.blocks:
            x = block(x)
        return self.modes.linear(self.head(self.norm(x)[:, 0]))


def make_model(seed: int = 0, gelu: str = "none", norm: str = "layer") -> TinyViT:
    """Returns the tiny ViT with deterministic random weights (LayerNorm affine parameters randomised too)."""
    torch.manual_seed(seed)
    model = TinyViT(gelu=gelu, norm=norm)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name in ("cls", "pos") or name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


class ChannelsFirstNorm(nn.Module):
    """torchvision's LayerNorm2d: a LayerNorm over channels of an NCHW tensor, between two permutes."""

    def __init__(self, modes: Modes, channels: int):
        super().__init__()
        self.norm = LayerNorm(modes, channels)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, channels-last LayerNorm, Linear 4x, GELU, Linear, layer scale, residual."""

    def __init__(self, modes: Modes, channels: int):
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = LayerNorm(modes, channels)
        self.fc1, self.fc2 = nn.Linear(channels, 4 * channels), nn.Linear(4 * channels, channels)
        self.scale = nn.Parameter(torch.ones(channels))
        self.modes = modes

    def forward(self, x):
        m = self.modes
        h = self.norm(m.conv(self.dwconv, x).permute(0, 2, 3, 1))
        h = m.linear(self.fc1(h))
        h = m.gate(h, F.gelu(h))
        h = m.linear(self.fc2(h) * self.scale).permute(0, 3, 1, 2)
        return m.linear(x + h, NORM_STABILIZER)


class TinyConvNeXt(nn.Module):
    """Patchify stem (4x4 conv, LayerNorm2d), two ConvNeXt blocks, global average pool, LayerNorm, head."""

    def __init__(self, channels: int = 16):
        super().__init__()
        self.modes = Modes(None)
        self.stem = nn.Conv2d(3, channels, 4, stride=4)
        self.stem_norm = ChannelsFirstNorm(self.modes, channels)
        self.blocks = nn.ModuleList(ConvNeXtBlock(self.modes, channels) for _ in range(DEPTH))
        self.norm = LayerNorm(self.modes, channels)
        self.head = nn.Linear(channels, CLASSES)

    def forward(self, image):
        x = self.stem_norm(self.modes.conv(self.stem, image))
        for block in self.blocks:
            x = block(x)
        pooled = self.modes.linear(x.mean(dim=(2, 3)), NORM_STABILIZER)
        return self.modes.linear(self.head(self.norm(pooled)))


def make_convnext(seed: int = 0) -> TinyConvNeXt:
    """Returns the tiny ConvNeXt with deterministic random weights (norms, layer scales and biases randomised)."""
    torch.manual_seed(seed)
    model = TinyConvNeXt()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("scale"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


SWIN_PATCH = 4
SWIN_WIDTH = 16
SWIN_WINDOW = 4
SWIN_DEPTHS = (2, 2)
SWIN_HEADS = (2, 4)


class TinySwin(nn.Module):
    """torchvision's SwinTransformer at toy size (the exported graph is torchvision's own), with a functional
    re-implementation of it that the reference forms modify.

    32x32 input, 4x4 patches (8x8 tokens), width 16, window 4: stage 1 has a plain and a shifted block (shift 2,
    so the attention mask is used), patch merging, stage 2 (4x4 tokens: one window, torchvision drops the shift).
    `v2`: Swin V2's blocks (post-norm, cosine attention with a learnt logit scale, position bias from an MLP of
    log-spaced coordinates, narrowed to 64 hidden units) and patch merging (Linear, then LayerNorm).
    """

    def __init__(self, v2: bool = False):
        super().__init__()
        from torchvision.models import swin_transformer as tv
        kinds = dict(block=tv.SwinTransformerBlockV2, downsample_layer=tv.PatchMergingV2) if v2 else {}
        self.net = tv.SwinTransformer([SWIN_PATCH] * 2, SWIN_WIDTH, list(SWIN_DEPTHS), list(SWIN_HEADS),
                                      [SWIN_WINDOW] * 2, num_classes=CLASSES, **kinds)
        self.v2 = v2
        self.modes = Modes(None)
        for stage in self.net.features[1::2] if v2 else ():  # torchvision's 512-wide position-bias MLP, narrowed
            for block in stage:  # to 64 so that the folded table the dynamo exporter stores stays small
                block.attn.cpb_mlp = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, block.attn.num_heads,
                                                                                          bias=False))

    def forward(self, image):
        return self.net(image) if self.modes.kind is None else self.functional(image)

    def functional(self, image):
        """Returns the logits computed step by step from self.net's parameters, with self.modes applied."""
        m, features = self.modes, self.net.features
        stem_conv, stem_norm = features[0][0], features[0][2]
        x = self._norm(stem_norm, m.conv(stem_conv, image).permute(0, 2, 3, 1))
        for stage in features[1:]:
            if hasattr(stage, "reduction"):  # PatchMerging
                x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :],
                               x[..., 1::2, 1::2, :]], -1)
                if self.v2:
                    x = self._norm(stage.norm, m.linear(F.linear(x, stage.reduction.weight)))
                else:
                    x = m.linear(F.linear(self._norm(stage.norm, x), stage.reduction.weight))
                continue
            for block in stage:
                fc1, fc2 = block.mlp[0], block.mlp[3]
                if self.v2:  # post-norm: the LayerNorms sit on the branches
                    x = m.linear(x + self._norm(block.norm1, self._attention(block.attn, x)), NORM_STABILIZER)
                    h = m.linear(fc1(x))
                    h = m.gate(h, F.gelu(h))
                    x = m.linear(x + self._norm(block.norm2, m.linear(fc2(h))), NORM_STABILIZER)
                    continue
                x = m.linear(x + self._attention(block.attn, self._norm(block.norm1, x)), NORM_STABILIZER)
                h = m.linear(fc1(self._norm(block.norm2, x)))
                h = m.gate(h, F.gelu(h))
                x = m.linear(x + m.linear(fc2(h)), NORM_STABILIZER)
        x = self._norm(self.net.norm, x).permute(0, 3, 1, 2)
        pooled = m.linear(x.mean(dim=(2, 3)), NORM_STABILIZER)
        return m.linear(self.net.head(pooled))

    def _norm(self, norm: nn.LayerNorm, x):
        if self.modes.kind is None:
            return norm(x)
        centred = x - x.mean(-1, keepdim=True)
        std = torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + norm.eps).detach()
        return self.modes.linear(centred / std * norm.weight + norm.bias)

    def _attention(self, attn, x):
        """Returns torchvision's shifted_window_attention (no padding: the sizes divide) with the modes applied."""
        m = self.modes
        n, height, width, c = x.shape
        w = attn.window_size[0]
        shift = attn.shift_size[0] if w < height else 0
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = (height // w) * (width // w)
        x = x.view(n, height // w, w, width // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(n * windows, w * w, c)
        heads = attn.num_heads
        bias = attn.qkv.bias
        if self.v2:  # torchvision zeroes the key bias of cosine attention
            bias = torch.cat([bias[:c], torch.zeros_like(bias[c:2 * c]), bias[2 * c:]])
        qkv = m.linear(F.linear(x, attn.qkv.weight, bias))
        qkv = qkv.reshape(x.size(0), x.size(1), 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        share = 0.5 if m.kind == "attnlrp" else 1.0
        if self.v2:
            q, k, v = self._unit(qkv[0]), self._unit(qkv[1]), qkv[2]
            scale = torch.clamp(attn.logit_scale, max=math.log(100.0)).exp()
            logits = m.linear(q @ k.transpose(-2, -1), share=share) * scale
        else:
            q, k, v = qkv[0] * (c // heads) ** -0.5, qkv[1], qkv[2]
            logits = m.linear(q @ k.transpose(-2, -1), share=share)
        logits = m.linear(logits + attn.get_relative_position_bias(), NORM_STABILIZER)
        if shift:
            mask = swin_mask(height, width, w, shift).to(logits.dtype)
            logits = logits.view(n, windows, heads, w * w, w * w)
            logits = m.linear(logits + mask.unsqueeze(1).unsqueeze(0), NORM_STABILIZER).view(-1, heads, w * w, w * w)
        weights = logits.softmax(dim=-1)
        if m.kind == "cp-lrp":
            weights = weights.detach()
        x = m.linear(weights @ v, share=share).transpose(1, 2).reshape(x.size(0), x.size(1), c)
        x = m.linear(attn.proj(x))
        x = x.view(n, height // w, width // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(n, height, width, c)
        return torch.roll(x, shifts=(shift, shift), dims=(1, 2)) if shift else x


    def _unit(self, x):
        """Returns F.normalize(x) (last axis); the reference forms detach the norm and take the epsilon rule."""
        if self.modes.kind is None:
            return F.normalize(x, dim=-1)
        return self.modes.linear(x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12).detach())


def swin_mask(height: int, width: int, w: int, shift: int) -> torch.Tensor:
    """Returns Swin's shifted-window attention mask [windows, w*w, w*w]: -100 between tokens of different regions."""
    region = torch.zeros(height, width)
    bounds = ((0, -w), (-w, -shift), (-shift, None))
    for k, (hs, ws) in enumerate((hs, ws) for hs in bounds for ws in bounds):
        region[hs[0]:hs[1], ws[0]:ws[1]] = k
    region = region.view(height // w, w, width // w, w).permute(0, 2, 1, 3).reshape(-1, w * w)
    diff = region.unsqueeze(1) - region.unsqueeze(2)
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


def make_swin(seed: int = 0, v2: bool = False) -> TinySwin:
    """Returns the tiny Swin with deterministic random weights (norms, biases, position-bias tables randomised)."""
    torch.manual_seed(seed)
    model = TinySwin(v2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias") or name.endswith("relative_position_bias_table"):
                p.copy_(0.1 * torch.randn_like(p))
    model.eval()
    x = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():  # the functional form must be torchvision's model, or the references mean nothing
        gap = (model.net(x) - model.functional(x)).abs().max().item()
    assert gap < 1e-5, f"the functional Swin differs from torchvision's by {gap}"
    return model


def export(model: nn.Module, path: Path, dynamo: bool, opset: int) -> None:
    """Writes the model as ONNX with one exporter."""
    x = torch.zeros(1, 3, IMAGE, IMAGE)
    if dynamo:
        program = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset)
        program.save(str(path))
    else:
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset,
                          input_names=["image"], output_names=["logits"])
    onnx.checker.check_model(onnx.load(str(path)))


def gamma_relevance(conv: nn.Conv2d, x: torch.Tensor, r: torch.Tensor, gamma: float) -> torch.Tensor:
    """Returns the input relevance of a convolution under zennit's generalized gamma rule, written out."""
    w, b = conv.weight, conv.bias
    y = conv(x)

    def terms(wa, wb, ba, rr):
        xp, xn = x.clamp(min=0).requires_grad_(), x.clamp(max=0).requires_grad_()
        z = F.conv2d(xp, wa, ba, conv.stride, conv.padding) + F.conv2d(xn, wb, None, conv.stride, conv.padding)
        c = (rr / stab(z, 1e-6)).detach()
        gp, gn = torch.autograd.grad((z * c).sum(), (xp, xn))
        return xp.detach() * gp + xn.detach() * gn
    up_w, down_w = w + gamma * w.clamp(min=0), w + gamma * w.clamp(max=0)
    up_b, down_b = b + gamma * b.clamp(min=0), b + gamma * b.clamp(max=0)
    with torch.no_grad():
        rising_r, falling_r = r * (y > 0), r * (y < 0)
    return terms(up_w, down_w, up_b, rising_r) + terms(down_w, up_w, down_b, falling_r)


def reference(plain: nn.Module, kind: str, image: np.ndarray, target: int, dtype) -> dict:
    """Returns the reference relevance of one rule set (input relevance, f(x), logits) in dtype."""
    model = copy.deepcopy(plain).to(dtype).eval()
    model.modes.kind = kind  # one Modes object is shared by every submodule
    x = torch.tensor(image, dtype=dtype).requires_grad_()
    logits = model(x)
    (grad,) = torch.autograd.grad(logits[0, target], x)
    relevance = x.detach() * grad
    return {"relevance": relevance.detach().numpy(), "f_x": float(logits[0, target]),
            "logits": logits.detach().numpy()}


class _Identity(torch.autograd.Function):
    """An element-wise activation whose backward passes relevance unchanged (the identity rule)."""

    @staticmethod
    def forward(ctx, x, fn):
        return fn(x)

    @staticmethod
    def backward(ctx, r):
        return r, None


def lxt_attnlrp(plain: TinyViT, image: np.ndarray, target: int, eps: float) -> np.ndarray:
    """Returns AttnLRP relevance from LXT's own functional rules (lxt.explicit.functional, relevance as gradient).

    LXT stabilizes by + eps (not by the sign), so it runs with one small eps everywhere; the patch convolution
    takes zennit's gamma rule (LXT leaves convolutions to zennit), computed as in `reference`.
    """
    import lxt.explicit.functional as lf
    m = TinyViT(None, plain.blocks[0].gelu)
    m.load_state_dict(plain.state_dict())
    m = m.double().eval()
    x = torch.tensor(image, dtype=torch.float64)
    patches = m.patch(x).detach().requires_grad_()
    t = patches.flatten(2).transpose(1, 2)
    t = torch.cat([m.cls.detach().expand(1, -1, -1), t], dim=1)
    t = lf.add2(t, m.pos.detach().requires_grad_(), epsilon=eps)

    def linear(layer, h):
        return lf.linear_epsilon(h, layer.weight, layer.bias, eps)

    def norm(layer, h):
        return lf.layer_norm(h, layer.weight, layer.bias, layer.eps)
    for blk in m.blocks:
        n, tokens, d = t.shape
        qkv = linear(blk.attn.qkv, norm(blk.norm1, t)).reshape(n, tokens, 3, HEADS, d // HEADS).permute(2, 0, 3, 1, 4)
        scores = lf.mul2(lf.matmul(qkv[0], qkv[1].transpose(-2, -1), epsilon=eps), 1.0 / math.sqrt(d // HEADS))
        attn = lf.matmul(lf.softmax(scores, -1), qkv[2], epsilon=eps).transpose(1, 2).reshape(n, tokens, d)
        t = lf.add2(t, linear(blk.attn.proj, attn), epsilon=eps)
        h = _Identity.apply(linear(blk.fc1, norm(blk.norm2, t)), lambda v: F.gelu(v, approximate=blk.gelu))
        t = lf.add2(t, linear(blk.fc2, h), epsilon=eps)
    logits = linear(m.head, norm(m.norm, t)[:, 0])
    start = torch.zeros_like(logits)
    start[0, target] = logits[0, target].detach()
    (r_patches,) = torch.autograd.grad(logits, patches, start)
    return gamma_relevance(m.patch, x, r_patches, GAMMA).detach().numpy()


def lxt_cross_check(model: nn.Module, image: np.ndarray, target: int, info: dict) -> None:
    """Adds to info how far LXT's AttnLRP of a ViT is from the reference (says so when lxt is absent)."""
    if not isinstance(model, TinyViT) or model.modes.norm != "layer":
        return
    try:
        lxt = lxt_attnlrp(model, image, target, LXT_EPSILON)
    except ImportError:
        print("lxt is not installed; no LXT cross-check")
        return
    ours = reference(model, "attnlrp", image, target, torch.float64)["relevance"]
    info["lxt_vs_attnlrp_reference_rel_l2"] = float(np.linalg.norm(lxt - ours) / np.linalg.norm(ours))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/transformers"))
    parser.add_argument("--only", nargs="*", help="file stems to (re)make, e.g. swin_legacy17 (default: all)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, IMAGE, IMAGE)).astype(np.float32)
    variants = {  # file stem -> (model maker, dynamo?, opset)
        "vit_legacy17": (make_model, False, 17),
        "vit_legacy14": (make_model, False, 14),
        "vit_tanh17": (lambda: make_model(gelu="tanh"), False, 17),
        "vit_dynamo18": (make_model, True, 18),
        "convnext_legacy17": (make_convnext, False, 17),
        "convnext_dynamo18": (make_convnext, True, 18),
        "swin_legacy17": (make_swin, False, 17),
        "swin_dynamo18": (make_swin, True, 18),
        "swinv2_legacy17": (lambda: make_swin(v2=True), False, 17),
        "swinv2_dynamo18": (lambda: make_swin(v2=True), True, 18),
        "vit_rms_dynamo23": (lambda: make_model(norm="rms"), True, 23),
        "vit_rms_dynamo18": (lambda: make_model(norm="rms"), True, 18),
        "vit_rms_legacy17": (lambda: make_model(norm="rms-written"), False, 17),
    }
    summary_path = args.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if args.only and summary_path.exists() else {}
    for stem, (make, dynamo, opset) in variants.items():
        if args.only and stem not in args.only:
            continue
        model = make()
        try:
            export(model, args.out / f"{stem}.onnx", dynamo, opset)
        except Exception as exc:  # the dynamo exporter may be unavailable; the others still make fixtures
            print(f"{stem}: export failed: {type(exc).__name__}: {exc}".splitlines()[0])
            continue
        session = ort.InferenceSession(str(args.out / f"{stem}.onnx"))
        ort_logits = session.run(None, {session.get_inputs()[0].name: image})[0]
        with torch.no_grad():
            torch_logits = model(torch.tensor(image)).numpy()
        target = int(torch_logits.argmax())
        arrays = {"input": image, "target": np.array(target), "logits": torch_logits}
        info = {"onnx_vs_torch_max_abs": float(np.abs(ort_logits - torch_logits).max()), "target": target}
        for kind in ("cp-lrp", "attnlrp"):
            for dtype, tag in ((torch.float64, "float64"), (torch.float32, "float32")):
                ref = reference(model, kind, image, target, dtype)
                arrays[f"{kind}_{tag}"] = ref["relevance"].astype(np.float64 if tag == "float64" else np.float32)
                arrays[f"{kind}_{tag}_f_x"] = np.array(ref["f_x"])
            r64, r32 = arrays[f"{kind}_float64"], arrays[f"{kind}_float32"].astype(np.float64)
            info[kind] = {"sum": float(r64.sum()), "f_x": float(arrays[f"{kind}_float64_f_x"]),
                          "float32_vs_float64_rel_l2": float(np.linalg.norm(r32 - r64) / np.linalg.norm(r64))}
        lxt_cross_check(model, image, target, info)
        np.savez_compressed(args.out / f"{stem}.npz", **arrays)
        summary[stem] = info
        print(stem, json.dumps(info))
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
