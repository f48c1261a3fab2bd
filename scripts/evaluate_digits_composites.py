"""Which LRP composite models/digits-mlp.onnx's sidecar should name: `lrp evaluate`'s default measure (ROAD's fill,
10 steps, MoRF and LeRF, the MoRF-LeRF area with paired bootstrap verdicts) for each candidate composite.

    .venv/bin/python scripts/evaluate_digits_composites.py            # the 10 digits in sample_images/digits
    .venv/bin/python scripts/evaluate_digits_composites.py --test 450  # + the first N held-out digits (sklearn)

The held-out digits are the test split of scripts/build_digits_mlp.py (load_digits, seed 0, 25 %), written as the
PNGs that script writes. One run with every composite as its own method, so the verdicts pair them on the same
digits (the same numbers as one `lrp evaluate --composite C` run per composite). Prints the table and verdicts.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from lrp_cli import api, batch, evaluate, evaluation_files

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "digits-mlp.onnx"
COMPOSITES = ("paper-epsilon", "epsilon-plus-flat", "epsilon-gamma-box")
BASELINES = ("gradient-x-input", "random")


def test_digits(folder: Path, count: int) -> list[Path]:
    """Returns the first `count` held-out digits of build_digits_mlp's split, saved as 8x8 PNGs in `folder`."""
    spec = importlib.util.spec_from_file_location("build_digits_mlp", REPO / "scripts" / "build_digits_mlp.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    images, _, _, test_idx = build.load_split()
    paths = []
    for i in test_idx[:count]:
        paths.append(folder / f"test{i:04d}.png")
        Image.fromarray(np.rint(images[i] * 255.0 / build.DIGITS_MAX).astype(np.uint8)).save(paths[-1])
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", type=int, default=0, help="Also evaluate the first N held-out digits")
    args = parser.parse_args()
    model = api.load_model(MODEL)
    base = api.Settings()
    chosen = [evaluate.MethodVariant(f"lrp-{c}", replace(base, composite=c)) for c in COMPOSITES]
    chosen += [evaluate.MethodVariant(name, replace(base, method=name)) for name in BASELINES]
    flip = evaluate.flip_settings("morf,lerf", None, None, None, None, None, None)  # the command's defaults
    sets = {"sample_images/digits": batch.expand_inputs([str(REPO / "sample_images" / "digits")])}
    with tempfile.TemporaryDirectory() as folder:
        if args.test:
            sets[f"{args.test} held-out digits"] = batch.expand_inputs(
                [str(p) for p in test_digits(Path(folder), args.test)])
        for name, items in sets.items():
            document, _ = evaluate.run_evaluation(model, items, chosen, flip, Path(folder) / "out")
            print(f"## {name}: {len(items)} digits, {flip.perturbation}, {flip.steps} steps")
            print(evaluation_files.summary_table(document["summary"], document["settings"]))
            print(evaluation_files.ranking_text(document["rankings"]))


if __name__ == "__main__":
    main()
