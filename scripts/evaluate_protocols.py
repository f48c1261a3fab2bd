"""Measure docs/evaluate-protocols.md: every method under `--protocol samek2017` (uniform noise) and the same
regions with `--perturbation road`, with the MoRF-LeRF area and the paired bootstrap verdicts.

    .venv/bin/python scripts/evaluate_protocols.py run mnist   # LeNet-5 (../shared) on the 100 MNIST test digits
    .venv/bin/python scripts/evaluate_protocols.py run photos  # EfficientNet-Lite0 on the real photos found here
    .venv/bin/python scripts/evaluate_protocols.py report mnist  # Markdown tables and figures from what is done

Each input's maps are computed once and scored under both protocols (the same as two `lrp evaluate` runs); the
runs of each finished input are appended to OUT/runs.jsonl, so a run can be stopped and resumed and `report` reads
what is done. Photos are read where the installed packages keep them (scikit-image's and matplotlib's sample data)
and from ../shared/images/photos; none is copied into the repository (licences: docs/evaluate-protocols.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate_paper import mnist_inputs  # noqa: E402

from lrp_cli import api, evaluate, evaluation_files, ranking  # noqa: E402
from lrp_cli.scoring import score_batch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
#: protocol name -> FlipSettings per experiment. samek2017: the paper's regions and uniform noise, L = 100 (on the
#: photos without the full-range curve beside it, to save 100 forwards a curve); road: ROAD as Rong et al. ran it,
#: single pixels imputed at 0, 10, ..., 100 % removed; samek2017-road (MNIST): Samek's prefix with ROAD's fill.
SAMEK = evaluate.FlipSettings(perturbation="uniform", protocol="samek2017")
ROAD = evaluate.FlipSettings(perturbation="road", steps=10)
PROTOCOLS = {"mnist": {"samek2017": SAMEK, "samek2017-road": replace(SAMEK, perturbation="road", full_range=False),
                       "road": ROAD},
             "photos": {"samek2017": replace(SAMEK, full_range=False), "road": ROAD}}
#: LRP rule sets compared (name -> Settings changes); "lrp" is the model's default composite.
LRP_MNIST = {"lrp": {}, "lrp-epsilon-plus": {"composite": "epsilon-plus"},
             "lrp-epsilon-gamma-box": {"composite": "epsilon-gamma-box"},
             "lrp-paper-epsilon": {"composite": "paper-epsilon"}}
LRP_PHOTOS = {"lrp": {}}
#: (package, file) of the real photographs the installed packages ship, beyond ../shared/images/photos.
PACKAGE_PHOTOS = [("skimage", "hubble_deep_field.jpg"), ("skimage", "motorcycle_left.png"),
                  ("matplotlib", "Minduka_Present_Blue_Pack.png"), ("skimage", "camera.png"),
                  ("skimage", "coins.png"), ("skimage", "ihc.png"), ("skimage", "retina.jpg"),
                  ("skimage", "moon.png"), ("skimage", "brick.png"),
                  ("skimage", "grass.png"), ("skimage", "gravel.png")]
MAX_PHOTOS = 40


def package_photo(package: str, name: str) -> Path:
    """Returns the path of a sample image inside an installed package."""
    if package == "skimage":
        import skimage
        return Path(skimage.__file__).parent / "data" / name
    import matplotlib
    return Path(matplotlib.get_data_path()) / "sample_data" / name


def photo_paths() -> list[Path]:
    """Returns up to MAX_PHOTOS photo files that exist here: ../shared/images/photos, then the packages' ones."""
    shared = sorted(p for p in (SHARED / "images" / "photos").glob("*") if p.suffix in (".png", ".jpg", ".bmp"))
    return [p for p in shared + [package_photo(*spec) for spec in PACKAGE_PHOTOS] if p.exists()][:MAX_PHOTOS]


def variants(model, lrp: dict) -> list[evaluate.MethodVariant]:
    """Returns the LRP rule sets, then every other method at its defaults."""
    base = api.Settings()
    chosen = [evaluate.MethodVariant(name, replace(base, **changes)) for name, changes in lrp.items()]
    chosen += [evaluate.MethodVariant(name, replace(base, method=name)) for name in api.METHOD_NAMES if name != "lrp"]
    for variant in chosen:
        api.check_settings(model, variant.settings)
    return chosen


def input_runs(model, path: Path, chosen: list, scorer, protocols: dict) -> dict[str, list[dict]]:
    """Returns protocol -> the runs of one input: each method's map computed once, scored under every protocol."""
    subject, _, x = evaluate._load_subject(model, path, chosen[0].settings)
    runs: dict[str, list[dict]] = {name: [] for name in protocols}
    for variant in chosen:
        for expl in api.explain_array(model, x, variant.settings, path):
            target = expl.target["index"]
            pixel_map = api.pixel_map(model, expl)
            for name, flip in protocols.items():
                curves = evaluate.flip_curves(scorer, subject, pixel_map, target, flip)
                runs[name] += [evaluate.run_document(path, variant.name, order, target, curve)
                               for order, (curve, _) in curves.items()]
    return runs


def run(experiment: str, out: Path, shard: tuple[int, int] = (0, 1)) -> None:
    """Evaluates the experiment's inputs not yet in OUT/runs.jsonl, appending each one's runs when it is done
    (shard (i, n): only every n-th input from the i-th, so n processes can share the work)."""
    out.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["input"] for line in (out / "runs.jsonl").open()} if (out / "runs.jsonl").exists() \
        else set()
    with tempfile.TemporaryDirectory() as folder:
        if experiment == "mnist":
            model_path, items = mnist_inputs(Path(folder))
            paths, lrp = [item.path for item in items], LRP_MNIST
        else:
            model_path, paths, lrp = REPO / "models" / "efficientnet-lite0.onnx", photo_paths(), LRP_PHOTOS
        model = api.load_model(model_path)
        chosen = variants(model, lrp)
        for path in paths[shard[0]::shard[1]]:
            if str(path.name) in done:
                continue
            start = time.perf_counter()
            runs = input_runs(model, path, chosen, lambda inputs: score_batch(model, inputs), PROTOCOLS[experiment])
            line = {"input": path.name, "seconds": time.perf_counter() - start, "load": os.getloadavg()[0],
                    "runs": runs}
            with (out / "runs.jsonl").open("a") as stream:
                stream.write(json.dumps(line) + "\n")
            print(f"{path.name}: {line['seconds']:.0f} s, load {line['load']:.1f}", flush=True)


def protocol_document(lines: list[dict], name: str, seed: int = 0) -> dict:
    """Returns {runs, summary, rankings} of one protocol over the finished inputs."""
    runs = [r for line in lines for r in line["runs"][name]]
    ranking.add_morf_lerf_areas(runs)
    return {"runs": runs, "summary": evaluate.summarize(runs), "rankings": ranking.rankings(runs, seed)}


def _cell(mean: float, sem: float | None) -> str:
    return f"{mean:.2f}" + ("" if sem is None else f" ± {sem:.2f}")


def summary_markdown(document: dict) -> str:
    """Returns the Markdown table: per method AOPC MoRF and LeRF over the prefix (and full range when scored), the
    MoRF-LeRF area, each mean ± sem over the inputs."""
    cells = {(s["method"], s["order"]): s for s in document["summary"]}
    methods = list(dict.fromkeys(s["method"] for s in document["summary"]))
    full = "aopc_full_range_mean" in document["summary"][0]
    covered = document["runs"][0]["fractions"][-1]
    span = f"0-{covered * 100:.3g} %"
    header = ["method", f"AOPC MoRF ({span})", f"AOPC LeRF ({span})"] + \
        (["full-range AOPC MoRF", "full-range AOPC LeRF"] if full else []) + ["MoRF-LeRF area"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for m in methods:
        morf, lerf = cells[m, "morf"], cells[m, "lerf"]
        row = [m, _cell(morf["aopc_mean"], morf["aopc_sem"]), _cell(lerf["aopc_mean"], lerf["aopc_sem"])]
        if full:
            row += [_cell(s["aopc_full_range_mean"], s["aopc_full_range_sem"]) for s in (morf, lerf)]
        row.append(_cell(morf["morf_lerf_area"]["mean"], morf["morf_lerf_area"]["sem"]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def verdicts_markdown(document: dict, method: str = "lrp") -> str:
    """Returns per measure the ranking and the verdicts of `method` against every other method."""
    lines = []
    for entry in document["rankings"]:
        order = " > ".join(m["method"] for m in entry["methods"])
        lines.append(f"- **{entry['measure']}** ({entry['better']} is better), by mean: {order}")
        for pair in entry["pairs"]:
            if method in (pair["first"], pair["second"]):
                lines.append(f"  - {ranking.verdict_line(pair)} (mean difference {pair['mean_difference']:+.2f})")
    return "\n".join(lines)


def report(experiment: str, out: Path, figures: bool) -> None:
    """Prints the Markdown tables and verdicts of every protocol and writes the mean-curve figures into docs/."""
    lines = [json.loads(line) for line in (out / "runs.jsonl").open()]
    seconds = [line["seconds"] for line in lines]
    print(f"{experiment}: {len(lines)} inputs, {np.median(seconds):.0f} s per input (median), load "
          f"{np.median([line['load'] for line in lines]):.1f}\n")
    for name in PROTOCOLS[experiment]:
        document = protocol_document(lines, name)
        agree = np.mean([r["predicted"][0] == r["target"] for r in document["runs"]])
        print(f"### {name}\n\n{summary_markdown(document)}\n\n{verdicts_markdown(document)}\n\n"
              f"(unperturbed prediction = target in {agree:.0%} of the runs)\n")
        if figures:
            png = evaluation_files.curves_png(document["runs"])
            (REPO / "docs" / f"evaluate-protocols-{experiment}-{name}.png").write_bytes(png)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["run", "report"])
    parser.add_argument("experiment", choices=["mnist", "photos"])
    parser.add_argument("--out", type=Path, help="Output folder [default: eval-protocols-EXPERIMENT]")
    parser.add_argument("--figures", action="store_true", help="report: write the mean curves into docs/")
    parser.add_argument("--shard", default="0/1", help="run: I/N evaluates every N-th input from the I-th")
    args = parser.parse_args()
    out = args.out or Path(f"eval-protocols-{args.experiment}")
    if args.action == "run":
        run(args.experiment, out, tuple(int(part) for part in args.shard.split("/")))
    else:
        report(args.experiment, out, args.figures)


if __name__ == "__main__":
    main()
