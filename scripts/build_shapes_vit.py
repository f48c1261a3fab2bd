"""Train a small vision transformer on the shapes images and write models/shapes-vit.onnx and its sidecar.

Dev-only: needs PyTorch (the Makefile's torch venv, `make models`); nothing at run time imports torch.

    python scripts/build_shapes_vit.py [--train-images N] [--epochs E]

A pre-LN ViT: 8x8 patches of the 64x64 `unit` input (x/255, NCHW) embedded by a strided convolution, a class
token, a learned position embedding, DEPTH blocks of HEADS-head self-attention (QK^T, Softmax, AV written out,
so the ONNX graph holds the MatMuls the rules see) and a GELU MLP, a final LayerNorm and a linear head on the
class token. Exported by the legacy exporter at opset 17 (LayerNormalization, Erf-form GELU) with an output
Softmax as the bundled shapes-cnn, for `lrp evaluate` (pixel flipping on a ViT, docs/transformers.md).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path

import onnx
import torch
from torch import nn

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path[:0] = [str(REPO / "src"), str(SCRIPTS)]  # the torch venv does not have lrp_cli installed

import build_shapes_cnn as cnn  # noqa: E402
from lrp_cli.synthetic import shapes  # noqa: E402

PATCH = 8
WIDTH = 48
HEADS = 4
DEPTH = 2
MLP = 96
TEST_IMAGES = cnn.TEST_IMAGES


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate query, key and value projections."""

    def __init__(self):
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(WIDTH, WIDTH) for _ in range(3))
        self.out = nn.Linear(WIDTH, WIDTH)

    def heads(self, t: torch.Tensor) -> torch.Tensor:
        """Returns tokens (N, T, WIDTH) split into (N, HEADS, T, WIDTH / HEADS)."""
        return t.reshape(t.shape[0], t.shape[1], HEADS, WIDTH // HEADS).transpose(1, 2)

    def forward(self, t):
        q, k, v = self.heads(self.query(t)), self.heads(self.key(t)), self.heads(self.value(t))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(WIDTH // HEADS), dim=-1)
        mixed = (weights @ v).transpose(1, 2)
        return self.out(mixed.reshape(t.shape[0], t.shape[1], WIDTH))


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: t + attention(LN t), then t + MLP(LN t)."""

    def __init__(self):
        super().__init__()
        self.ln_attention, self.ln_mlp = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.attention = SelfAttention()
        self.mlp = nn.Sequential(nn.Linear(WIDTH, MLP), nn.GELU(), nn.Linear(MLP, WIDTH))

    def forward(self, t):
        t = t + self.attention(self.ln_attention(t))
        return t + self.mlp(self.ln_mlp(t))


class ShapesViT(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        tokens = (shapes.SIZE // PATCH) ** 2
        self.patches = nn.Conv2d(3, WIDTH, PATCH, stride=PATCH)
        self.class_token = nn.Parameter(torch.zeros(1, 1, WIDTH))
        self.positions = nn.Parameter(0.02 * torch.randn(1, tokens + 1, WIDTH))
        self.blocks = nn.Sequential(*(EncoderBlock() for _ in range(DEPTH)))
        self.ln_final = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, classes)

    def forward(self, image):
        t = self.patches(image).flatten(2).transpose(1, 2)
        t = torch.cat([self.class_token.expand(t.shape[0], -1, -1), t], dim=1) + self.positions
        return self.head(self.ln_final(self.blocks(t))[:, 0])


def build(out_dir: Path = REPO, train_images: int = 8000, epochs: int = 60) -> dict:
    """Return a summary dict after training, exporting and verifying shapes-vit under ``out_dir``."""
    cnn._make_deterministic()
    t0 = time.perf_counter()
    x_train, _, y_train = cnn._tensors(*shapes.make_dataset(train_images, cnn.TRAIN_SEED))
    x_test, _, y_test = cnn._tensors(*shapes.make_dataset(TEST_IMAGES, cnn.TEST_SEED))
    t_data = time.perf_counter() - t0
    model = ShapesViT(len(shapes.CLASSES))
    cnn._train(model, x_train, y_train, epochs, name="shapes-vit")
    t_train = time.perf_counter() - t0 - t_data
    probs = cnn._predict(model, x_test)
    accuracy = float((probs.argmax(1) == y_test.numpy()).mean())
    onnx_path = out_dir / "models" / "shapes-vit.onnx"
    _export(model, onnx_path)
    max_diff, agree = cnn._verify(onnx_path, x_test.numpy(), probs)
    cnn._write_sidecar(out_dir / "models" / "shapes-vit.lrp.toml", accuracy, train_images, "build_shapes_vit.py",
                       "attnlrp")
    return cnn._summary(out_dir, onnx_path, accuracy, train_images, (max_diff, agree), (t0, t_data, t_train))


def _export(model: nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    exported = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    buffer = io.BytesIO()
    torch.onnx.export(exported, (torch.zeros(1, 3, shapes.SIZE, shapes.SIZE),), buffer, dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["probabilities"],
                      dynamic_axes={"input": {0: "N"}, "probabilities": {0: "N"}})
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto, full_check=True)
    path.write_bytes(proto.SerializeToString())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--out-dir", type=Path, default=REPO, help="root for models/")
    args = parser.parse_args()
    print(json.dumps(build(args.out_dir, args.train_images, args.epochs), indent=2))


if __name__ == "__main__":
    main()
