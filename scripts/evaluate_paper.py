"""Rerun the README's pixel-flipping measurements (paper section "Pixel flipping experiments", Fig 22).

    .venv/bin/python scripts/evaluate_paper.py mnist     # LeNet-5 from ../shared on the 100 MNIST test digits
    .venv/bin/python scripts/evaluate_paper.py photos    # EfficientNet-Lite0 on the demo photos, 8x8 patches
    .venv/bin/python scripts/evaluate_paper.py shapes-vit  # models/shapes-vit.onnx (build_shapes_vit.py), 50 images

mnist and photos evaluate every method lrp-cli knows (whatever `api.METHOD_NAMES` holds when it runs), LRP three
times: the paper's epsilon = 0.01 everywhere, z everywhere, and the default composite. shapes-vit evaluates LRP
with the attnlrp and the cp-lrp composite against gradient x input and random. Writes evaluation.json/.csv and
curves.png (and a strip for the first input) to --out, copies curves.png and the strip into docs/, and prints the
AOPC table as Markdown. Equivalent to one `lrp evaluate --perturbation flip --steps 100` run per LRP rule set
(the paper's settings, passed here explicitly: the command's own default is ROAD's fill in 10 steps); one run here
keeps every method in the same figure.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from lrp_cli import api, batch, evaluate, evaluation_files

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
LENET_SIDECAR = 'preset = "tf"\nlabels = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]\n'
LRP_VARIANTS = {"lrp-epsilon-0.01": {"rule": "epsilon:0.01"}, "lrp-z": {"rule": "z"}, "lrp": {}}
VIT_VARIANTS = {"lrp-attnlrp": {"composite": "attnlrp"}, "lrp-cp-lrp": {"composite": "cp-lrp"}}
VIT_BASELINES = ("gradient-x-input", "random")
VIT_IMAGES = 50


def variants(model, base: api.Settings, lrp_variants: dict = LRP_VARIANTS,
             others: tuple[str, ...] | None = None) -> list[evaluate.MethodVariant]:
    """Returns the LRP rule sets and the other methods (default: every one), in that order."""
    lrp = [evaluate.MethodVariant(name, replace(base, **changes)) for name, changes in lrp_variants.items()]
    names = [name for name in api.METHOD_NAMES if name != "lrp"] if others is None else others
    others = [evaluate.MethodVariant(name, replace(base, method=name)) for name in names]
    for variant in lrp + others:
        api.check_settings(model, variant.settings)
    return lrp + others


def mnist_inputs(folder: Path) -> tuple[Path, list]:
    """Returns (LeNet-5 with its sidecar, the 100 digits as 32x32 PNGs: 28x28 padded by 2 with the background)."""
    model = folder / "lenet5_mnist.onnx"
    model.symlink_to(SHARED / "models" / "lenet5_mnist.onnx")
    (folder / "lenet5_mnist.lrp.toml").write_text(LENET_SIDECAR)
    digits = np.load(SHARED / "images" / "mnist" / "mnist_test_first100_uint8.npy")
    for k, digit in enumerate(digits):
        Image.fromarray(np.pad(digit, 2)).save(folder / f"digit{k:03d}.png")
    return model, batch.expand_inputs([str(folder / "digit*.png")])


def photo_inputs(extra: list[str]) -> tuple[Path, list]:
    """Returns (EfficientNet-Lite0, the demo photos in sample_images/ and any further photo files or folders)."""
    model = REPO / "models" / "efficientnet-lite0.onnx"
    if not model.exists():
        sys.exit(f"error: {model} is missing; build it with `.venv/bin/lrp zoo get efficientnet-lite0 --dest models`")
    specs = [str(REPO / "sample_images" / "chelsea.png"), str(REPO / "sample_images" / "coffee.png"), *extra]
    return model, batch.expand_inputs(specs)


def shapes_inputs(folder: Path) -> tuple[Path, list]:
    """Returns (models/shapes-vit.onnx, VIT_IMAGES shapes images of the test seed, unseen in training, as PNGs)."""
    from lrp_cli.synthetic import shapes
    model = REPO / "models" / "shapes-vit.onnx"
    if not model.exists():
        sys.exit(f"error: {model} is missing; train it with scripts/build_shapes_vit.py (torch venv)")
    images, _, _ = shapes.make_dataset(VIT_IMAGES, seed=1)
    for k, image in enumerate(images):
        Image.fromarray(image).save(folder / f"shape{k:03d}.png")
    return model, batch.expand_inputs([str(folder / "shape*.png")])


def first_change(run: dict) -> float | None:
    """Returns the fraction perturbed at which the prediction first leaves the target (None: it never does)."""
    changed = [f for f, p in zip(run["fractions"], run["predicted"]) if p != run["target"]]
    return changed[0] if changed else None


def markdown(document: dict, orders: list[str]) -> str:
    """Returns a Markdown table: per method the AOPC mean +- sem per order, then per order the median fraction
    perturbed until the prediction changes (Fig 23's stopping point; a curve that never changes counts as 100 %)."""
    cells = {(s["method"], s["order"]): s for s in document["summary"]}
    methods = list(dict.fromkeys(s["method"] for s in document["summary"]))
    lines = ["| method | " + " | ".join(f"AOPC {o}" for o in orders) + " | " +
             " | ".join(f"{o}: median % until the prediction changes" for o in orders) + " |",
             "|---" * (2 * len(orders) + 1) + "|"]
    for m in methods:
        aopc = [f"{cells[(m, o)]['aopc_mean']:.3f} ± {cells[(m, o)]['aopc_sem']:.3f}" for o in orders]
        change = [np.median([c if c is not None else 1.0 for c in
                             (first_change(r) for r in document["runs"] if (r["method"], r["order"]) == (m, o))])
                  for o in orders]
        lines.append(f"| {m} | " + " | ".join(aopc) + " | " + " | ".join(f"{100 * c:.1f}" for c in change) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["mnist", "photos", "shapes-vit"])
    parser.add_argument("--out", type=Path, help="Output folder [default: eval-EXPERIMENT]")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--perturbation", default="flip", choices=list(evaluate.PERTURBATIONS))
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--photos", nargs="*", default=[], help="photos: more images or folders to evaluate")
    parser.add_argument("--no-docs", action="store_true", help="Do not copy the figures into docs/")
    args = parser.parse_args()
    out = args.out or Path(f"eval-{args.experiment}")
    with tempfile.TemporaryDirectory() as folder:
        if args.experiment == "mnist":
            model_path, items = mnist_inputs(Path(folder))
            flip = evaluate.FlipSettings(("morf", "lerf"), args.perturbation, 1, args.steps)
        elif args.experiment == "shapes-vit":
            model_path, items = shapes_inputs(Path(folder))
            flip = evaluate.FlipSettings(("morf", "lerf"), args.perturbation, 1, args.steps)
        else:
            model_path, items = photo_inputs(args.photos)
            flip = evaluate.FlipSettings(("morf", "lerf"), args.perturbation, 8, args.steps)
        model = api.load_model(model_path)
        chosen = (variants(model, api.Settings(), VIT_VARIANTS, VIT_BASELINES) if args.experiment == "shapes-vit"
                  else variants(model, api.Settings()))
        start = time.perf_counter()
        document, files = evaluate.run_evaluation(
            model, items, chosen, flip, out, strip=False, jobs=args.jobs)
        seconds = time.perf_counter() - start
        shown = chosen[:1] if args.experiment == "shapes-vit" else chosen[2:3]  # the default composite's LRP
        _, strip = evaluate.run_evaluation(model, items[:1], shown, flip, out, strip=True)
        evaluation_files.write_evaluation(out, document, {**files, **strip})
    runs = document["runs"]
    agree = sum(r["predicted"][0] == r["target"] for r in runs) / len(runs)
    print(f"{len(items)} inputs, {len(chosen)} methods, {len(flip.orders)} orders, {args.steps} steps, "
          f"{seconds:.0f} s; runs whose unperturbed prediction is the target: {agree:.0%}")
    print(markdown(document, list(flip.orders)))
    if not args.no_docs:
        shutil.copy(out / "curves.png", REPO / "docs" / f"evaluate-{args.experiment}-curves.png")
        shutil.copy(next(out.glob("*.lrp.strip.png")), REPO / "docs" / f"evaluate-{args.experiment}-strip.png")


if __name__ == "__main__":
    main()
