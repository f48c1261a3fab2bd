"""Records what the `lrp` commands write on the bundled models, and compares a later run with that record.

    python scripts/behaviour_snapshot.py record DIR    # run every command, keep its files and output in DIR
    python scripts/behaviour_snapshot.py compare DIR   # run them again in a temporary folder, diff against DIR

It guards a refactoring ("behaviour unchanged"): `lrp explain` on the bundled models with every method, both
engines where they apply, --save-raw, a --batch-size run; `lrp check examples/ci/*.toml` with its --json, --junit
and --markdown reports; `lrp evaluate` on three digits; `lrp compile`; `lrp inspect --json`. Each command runs as
a subprocess of this interpreter on the `lrp_cli` of this checkout (PYTHONPATH=src), from its own working folder,
with the inputs named by absolute paths into this checkout (written as <repo> in what is compared, so a record
made in a clean checkout of the old code elsewhere compares with this one) and outputs named relative to that
folder. models/efficientnet-lite0.onnx (a symlink to a
built file) is skipped when absent; compiled graphs go to a fresh cache folder.

Compared byte for byte: every PNG, .npy, .csv, .onnx and Markdown file, and each command's exit code and output
lines. Compared after removing what legitimately varies between runs:
- JSON: the values of the keys `timing_s` and `seconds` (wall-clock times), anywhere in a document (also in the
  JSON documents that --json-lines prints);
- JUnit XML: the `time` and `timestamp` attributes;
- output lines: `N.NNN s` durations and the `lrp compile` line's path (it names the temporary folder);
- in every text file and output line: the checkout's own path, as <repo>.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("lrp", "gradient", "gradient-x-input", "gradcam", "occlusion", "lime", "random")
COMPILED = ("lrp", "gradient", "gradient-x-input")  # the methods the onnxruntime engine runs
VARYING_KEYS = {"timing_s", "seconds"}
TEXT_SUFFIXES = {".json", ".jsonl", ".xml", ".md", ".csv", ".html"}
SHAPES = [f"sample_images/shapes/{name}.png" for name in ("circle_0", "cross_1", "square_0", "triangle_0")]
DIGITS = [f"sample_images/digits/digit_{k}.png" for k in range(10)]


def _explain_runs(model: str, inputs: list[str], name: str, engines=("numpy", "onnxruntime"),
                  extra: tuple = ()) -> list[tuple[str, list[str]]]:
    runs = []
    for method in METHODS:
        for engine in engines if method in COMPILED else ("numpy",):
            runs.append((f"explain-{name}-{method}-{engine}",
                         ["explain", *map(_abs, inputs), "--model", _abs(model), "--method", method, "--engine",
                          engine, "--save-raw", "--no-progress", "--out", f"explain-{name}-{method}-{engine}",
                          *extra]))
    return runs


def _abs(path: str) -> str:
    return str(ROOT / path)


def commands() -> list[tuple[str, list[str]]]:
    """Returns (name, lrp arguments) of every recorded command."""
    runs = _explain_runs("models/shapes-cnn.onnx", SHAPES, "shapes")
    runs += _explain_runs("models/digits-mlp.onnx", DIGITS, "digits")
    runs += [(f"explain-shapes-batch-{engine}",
              ["explain", *map(_abs, SHAPES), "--model", _abs("models/shapes-cnn.onnx"), "--batch-size", "3",
               "--target", "top:2", "--engine", engine, "--save-raw", "--no-progress", "--json-lines",
               "--out", f"explain-shapes-batch-{engine}"]) for engine in ("numpy", "onnxruntime")]
    runs.append(("explain-bow", ["explain", _abs("sample_images/polygons_scene.png"), "--model",
                                 _abs("models/polygons-bow-svm.joblib"), "--target", "positive", "--save-raw",
                                 "--no-progress", "--out", "explain-bow"]))
    if (ROOT / "models/efficientnet-lite0.onnx").exists():
        runs += _explain_runs("models/efficientnet-lite0.onnx", ["sample_images/chelsea.png"], "effnet")
    specs = sorted(str(p) for p in (ROOT / "examples/ci").glob("*.toml")
                   if "efficientnet" not in p.read_text() or (ROOT / "models/efficientnet-lite0.onnx").exists())
    runs.append(("check", ["check", *specs, "--json", "check/report.json", "--junit", "check/junit.xml",
                           "--markdown", "check/summary.md"]))
    runs.append(("evaluate-digits", ["evaluate", *map(_abs, DIGITS[:3]), "--model", _abs("models/digits-mlp.onnx"),
                                     "--methods", "lrp,gradient,gradient-x-input,occlusion,lime,random", "--steps",
                                     "10", "--save-maps", "--strip", "--out", "evaluate-digits"]))
    runs.append(("evaluate-shapes", ["evaluate", _abs(SHAPES[0]), "--model", _abs("models/shapes-cnn.onnx"),
                                     "--methods", "lrp,gradcam", "--steps", "5", "--out", "evaluate-shapes"]))
    runs.append(("evaluate-bow", ["evaluate", _abs("sample_images/polygons_scene.png"), "--model",
                                  _abs("models/polygons-bow-svm.joblib"), "--target", "positive", "--steps", "4",
                                  "--out", "evaluate-bow"]))
    runs.append(("compile", ["compile", _abs("models/shapes-cnn.onnx"), "-o", "compile/shapes.lrp.onnx"]))
    runs.append(("compile-batch", ["compile", _abs("models/digits-mlp.onnx"), "-o", "compile/digits.b4.lrp.onnx",
                                   "--batch-size", "4"]))
    for model in ("shapes-cnn.onnx", "digits-mlp.onnx", "polygons-bow-svm.joblib"):
        runs.append((f"inspect-{model}", ["inspect", _abs(f"models/{model}"), "--json"]))
    return runs


def run_all(dest: Path) -> None:
    """Runs every command with `dest` as its working folder; writes each one's exit code and output to
    dest/commands/NAME.json."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "check").mkdir(exist_ok=True)
    (dest / "compile").mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), LRP_CLI_CACHE_DIR=str(dest / ".cache"))
    for name, args in commands():
        done = subprocess.run([sys.executable, "-m", "lrp_cli", *args], cwd=dest, env=env, capture_output=True,
                              text=True)
        record = {"args": args, "exit": done.returncode, "stdout": _lines(done.stdout), "stderr": _lines(done.stderr)}
        (dest / "commands").mkdir(exist_ok=True)
        (dest / "commands" / f"{name}.json").write_text(json.dumps(record, indent=1))
        print(f"{name}: exit {done.returncode}", file=sys.stderr)
    shutil.rmtree(dest / ".cache", ignore_errors=True)
    for path in _files(dest).values():
        if path.suffix in TEXT_SUFFIXES:
            path.write_bytes(path.read_bytes().replace(str(ROOT).encode(), b"<repo>"))


def _lines(text: str) -> list[str]:
    text = text.replace(str(ROOT), "<repo>")
    text = re.sub(r"\d+\.\d+ s\b", "<seconds> s", text)
    return [re.sub(r"^\S+(compile/\S+\.lrp\.onnx:)", r"\1", line) for line in text.splitlines()]


def _without_varying(value):
    if isinstance(value, dict):
        return {k: "<varies>" if k in VARYING_KEYS else _without_varying(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_varying(v) for v in value]
    if isinstance(value, str) and value.startswith("{"):  # a --json-lines output line
        try:
            return _without_varying(json.loads(value))
        except ValueError:
            return value
    return value


def normalized(path: Path) -> bytes:
    """Returns the bytes of a file with what legitimately varies between runs taken out."""
    data = path.read_bytes()
    if path.suffix == ".json" or path.suffix == ".jsonl":
        return json.dumps(_without_varying(json.loads(data)), sort_keys=True).encode()
    if path.suffix == ".xml":
        return re.sub(rb' (time|timestamp)="[^"]*"', b"", data)
    return data


def _files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def compare(recorded: Path, fresh: Path) -> list[str]:
    """Returns one line per difference between two snapshot folders (empty when they match)."""
    old, new = _files(recorded), _files(fresh)
    problems = [f"only in the record: {name}" for name in sorted(old.keys() - new.keys())]
    problems += [f"only in this run: {name}" for name in sorted(new.keys() - old.keys())]
    for name in sorted(old.keys() & new.keys()):
        if normalized(old[name]) != normalized(new[name]):
            problems.append(f"differs: {name}")
    return problems


def main(argv: list[str]) -> int:
    """Runs `record DIR` or `compare DIR`; returns the exit code (1 when compare finds a difference)."""
    if len(argv) != 2 or argv[0] not in ("record", "compare"):
        print(__doc__, file=sys.stderr)
        return 2
    target = Path(argv[1]).absolute()
    if argv[0] == "record":
        if target.exists():
            shutil.rmtree(target)
        run_all(target)
        print(f"recorded {len(_files(target))} files in {target}")
        return 0
    with tempfile.TemporaryDirectory(prefix="lrp-snapshot-") as temp:
        run_all(Path(temp))
        problems = compare(target, Path(temp))
        print("\n".join(problems) or f"all {len(_files(target))} files match")
        return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
