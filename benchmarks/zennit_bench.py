"""zennit side by side (dev-only, needs torch, torchvision and zennit 1.0.0; never a test or run-time dependency).

Times, on torchvision's VGG-16, ResNet-50 and MobileNetV2 (seeded random weights, eval mode, batch 1, 224x224,
float32, torch's default CPU threads): one no-grad torch forward, a plain gradient (forward + backward), and
zennit's EpsilonPlusFlat attribution (its canonizers merge BatchNorm; ResNet's own canonizer for the residual
Adds), each interleaved with the forward so that other jobs slow both alike; prints a Markdown table of the
medians and of the median per-run ratios to the forward.

    PYTHONPATH=<dir holding zennit> /work/venv-torch-htransformers-tv/bin/python benchmarks/zennit_bench.py
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
import torchvision
from zennit.attribution import Gradient
from zennit.composites import EpsilonPlusFlat
from zennit.torchvision import ResNetCanonizer, VGGCanonizer
from zennit.canonizers import SequentialMergeBatchNorm

from tables import markdown

NETWORKS = {  # name -> (torchvision constructor, zennit canonizer)
    "VGG-16": (torchvision.models.vgg16, VGGCanonizer),
    "ResNet-50": (torchvision.models.resnet50, ResNetCanonizer),
    "MobileNetV2": (torchvision.models.mobilenet_v2, SequentialMergeBatchNorm),
}


def timed(fn) -> float:
    """Returns the wall time of one call of fn."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_network(name: str, runs: int) -> dict:
    """Returns the median times of forward, gradient and zennit EpsilonPlusFlat, and the median per-run ratios of the
    latter two to the forward."""
    build, canonizer = NETWORKS[name]
    torch.manual_seed(0)
    model = build(weights=None).eval()
    x = torch.rand(1, 3, 224, 224)
    target = int(model(x).argmax())
    hot = torch.eye(1000)[[target]]
    plain = copy.deepcopy(model)  # zennit's hooks go on model only

    def forward():
        with torch.no_grad():
            model(x)

    def gradient():
        leaf = x.clone().requires_grad_(True)
        (plain(leaf) * hot).sum().backward()

    samples = {"forward": [], "gradient": [], "zennit": []}
    with Gradient(model=model, composite=EpsilonPlusFlat(canonizers=[canonizer()])) as attributor:
        def zennit():
            attributor(x, hot)
        forward(), gradient(), zennit()
        for _ in range(runs):
            for key, fn in (("forward", forward), ("gradient", gradient), ("zennit", zennit)):
                samples[key].append(timed(fn))
    ratio = {key: statistics.median(t / f for f, t in zip(samples["forward"], samples[key]))
             for key in ("gradient", "zennit")}
    return {"name": name, **{k: statistics.median(v) for k, v in samples.items()},
            "gradient_ratio": ratio["gradient"], "zennit_ratio": ratio["zennit"]}


def table(rows: list[dict]) -> str:
    """Returns the timings as a Markdown table."""
    header = ["network", "torch forward", "torch gradient", "zennit EpsilonPlusFlat", "gradient / forward",
              "zennit / forward"]
    return markdown(header, [[r["name"], f"{r['forward'] * 1e3:.1f} ms", f"{r['gradient'] * 1e3:.1f} ms",
                              f"{r['zennit'] * 1e3:.1f} ms", f"{r['gradient_ratio']:.2f}x",
                              f"{r['zennit_ratio']:.2f}x"] for r in rows])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--only", help="comma-separated network names (default: all)")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(NETWORKS)
    rows = [bench_network(name, args.runs) for name in names]
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f} at the end; median of {args.runs} runs (ratios: median of "
          f"per-run ratios)\n")
    print(table(rows))


if __name__ == "__main__":
    main()
