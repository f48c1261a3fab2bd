#!/usr/bin/env python3
"""Export a full-size torchvision ViT-B/16, Swin-T, Swin-V2-T or ConvNeXt-Tiny (random weights) to ONNX for
`make bench` and the CLI (dev-only).

Needs torch 2.14.1 and torchvision 0.29.1 (plus onnx, onnxruntime, onnxscript) in a private venv:

    python3 -m venv /work/venv-torch-NAME-tv
    /work/venv-torch-NAME-tv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy onnx onnxruntime onnxscript
    /work/venv-torch-NAME-tv/bin/python scripts/export_torchvision_vit.py [--model swin_t] [--dest models]

Writes `MODEL.onnx` (legacy exporter, opset 17) and `MODEL_dynamo.onnx` (dynamo exporter, opset 18), both
git-ignored, for MODEL `vit_b_16` (default), `swin_t`, `swin_v2_t` or `convnext_tiny`; weights are seeded random
(no download; ViT's zero-initialised head gets N(0, 0.02)), so the prediction is meaningless but the graph is the
real one.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchvision

MODELS = ("vit_b_16", "swin_t", "swin_v2_t", "convnext_tiny")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="vit_b_16")
    parser.add_argument("--dest", type=Path, default=Path("models"))
    args = parser.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).eval()
    if hasattr(model, "heads"):
        with torch.no_grad():  # torchvision zeroes the ViT head, which would make every logit 0
            torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    x = torch.zeros(1, 3, 224, 224)
    torch.onnx.export(model, (x,), str(args.dest / f"{args.model}.onnx"), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"])
    program = torch.onnx.export(model, (x,), dynamo=True, opset_version=18)
    program.save(str(args.dest / f"{args.model}_dynamo.onnx"))


if __name__ == "__main__":
    main()
