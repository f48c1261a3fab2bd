#!/usr/bin/env python3
"""Real torch.onnx exports of hard-swish written out, for tests/test_hard_swish_gates.py (dev-only).

Needs torch 2.13.0 (CPU), onnx and numpy in a private venv, never the project's (e.g. /work/torchenv):

    /work/torchenv/bin/python scripts/make_hardswish_fixtures.py [--out tests/fixtures/hardswish]

One small network, Conv 3->4 (3x3) -> BatchNorm -> hard-swish -> mean over H, W -> Linear 4->5, the same weights
(seed 0) in every file, exported by the TorchScript exporter (torch folds the BatchNorm into the Conv):
- `reference.onnx`: F.hardswish at opset 14, the HardSwish op;
- `relu6_op13.onnx`: h * F.relu6(h + 3) / 6 at opset 13 (Clip bounds as inputs);
- `relu6_op9.onnx`: the same at opset 9 (Clip bounds as attributes);
- `hardtanh_op13.onnx`: h * F.hardtanh(h + 3, 0, 6) / 6;
- `gate_side_op13.onnx`: h * (F.relu6(h + 3) / 6);
- `hardsigmoid_op13.onnx`: F.hardswish at opset 13 (HardSigmoid(alpha=1/6) * h).
Each file is a few kB.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

FORMS = {
    "reference": ("hardswish", 14), "relu6_op13": ("relu6", 13), "relu6_op9": ("relu6", 9),
    "hardtanh_op13": ("hardtanh", 13), "gate_side_op13": ("gate_side", 13), "hardsigmoid_op13": ("hardswish", 13),
}


class Net(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 5)

    def forward(self, x):
        h = self.bn(self.conv(x))
        if self.kind == "hardswish":
            h = F.hardswish(h)
        elif self.kind == "relu6":
            h = h * F.relu6(h + 3) / 6
        elif self.kind == "hardtanh":
            h = h * F.hardtanh(h + 3, 0.0, 6.0) / 6
        else:
            h = h * (F.relu6(h + 3) / 6)
        return self.fc(h.mean((2, 3)))


def built(kind: str) -> Net:
    """Returns the network with seed-0 weights and BatchNorm statistics that spread h over both sides of +-3."""
    torch.manual_seed(0)
    net = Net(kind)
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.2, 0.5)
        net.bn.weight.uniform_(1.5, 3.0)
    return net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/fixtures/hardswish")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    for stem, (kind, opset) in FORMS.items():
        torch.onnx.export(built(kind), torch.zeros(1, 3, 8, 10), str(out / f"{stem}.onnx"), opset_version=opset,
                          input_names=["x"], output_names=["logits"], dynamo=False)
        print(out / f"{stem}.onnx", (out / f"{stem}.onnx").stat().st_size, "bytes")


if __name__ == "__main__":
    main()
