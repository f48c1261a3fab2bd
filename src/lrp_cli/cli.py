"""The `lrp` command: parses options and calls the API; it computes nothing itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from lrp_cli import __version__, api, batch, render, zoo
from lrp_cli.errors import LrpError, OptionError
from lrp_cli.importers.onnx_import import supported_ops
from lrp_cli.preprocess import PRESETS
from lrp_cli.rules import COMPOSITES


def _numbers(option: str, text: str | None, count: int | None = None, kind=float):
    if text is None:
        return None
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise OptionError(f"{option} {text}: expected comma-separated numbers") from None
    if count and len(values) != count:
        raise OptionError(f"{option} {text}: expected {count} values")
    return values


def _fail(exc: LrpError):
    click.echo(f"error: {exc}", err=True)
    sys.exit(exc.exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lrp")
def main():
    """Explain image classifiers with Layer-wise Relevance Propagation (Bach et al. 2015)."""


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path),
              help="ONNX model (a MODEL.lrp.toml sidecar beside it supplies defaults).")
@click.option("--out", "out_dir", default="lrp-out", type=click.Path(path_type=Path), show_default=True,
              help="Output folder.")
@click.option("--method", type=click.Choice(list(api.METHOD_NAMES)), default="lrp", show_default=True,
              help="lrp, or the plain gradient / gradient x input of the target score.")
@click.option("--composite", type=click.Choice(list(COMPOSITES)), help="Rule composite [default: sidecar's, "
              "else epsilon-plus-flat].")
@click.option("--rule", help="One rule for every Conv/Dense layer, e.g. epsilon:0.01, alphabeta:2,1, zbox:-1,1.")
@click.option("--layer-rule", "layer_rules", multiple=True, metavar="PATTERN=SPEC",
              help="Rule for the layers whose name matches a glob (repeatable).")
@click.option("--target", default="pred", show_default=True, help="pred, a class INDEX, a LABEL, or top:K.")
@click.option("--output", "output_name", help="Which graph output to explain (multi-output models).")
@click.option("--layout", type=click.Choice(["nchw", "nhwc"]), help="Channel axis of the model input "
              "[default: detected from the graph].")
@click.option("--preset", type=click.Choice(list(PRESETS)), help="Input normalization preset.")
@click.option("--size", help="Model input size H,W.")
@click.option("--resize", type=int, help="Resize the shorter side to N, then center-crop to the input size.")
@click.option("--mean", help="Per-channel mean a,b,c (model channel order).")
@click.option("--std", help="Per-channel std a,b,c.")
@click.option("--bgr/--rgb", default=None, help="Channel order of the model input.")
@click.option("--labels", type=click.Path(path_type=Path), help="Class labels file, one per line.")
@click.option("--cmap", type=click.Choice(render.COLORMAPS), default="jet", show_default=True)
@click.option("--normalize", type=click.Choice(["image", "global"]), default="image", show_default=True,
              help="Scale by each image's max |R| (Eq 35) or by the max over all inputs.")
@click.option("--save-raw", is_flag=True, help="Also write STEM.relevance.npy (float32, model-input shape).")
@click.option("--precision", type=click.Choice(list(api.PRECISIONS)), default="float32", show_default=True)
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Inputs explained at once.")
@click.option("--skip-existing", is_flag=True, help="Skip inputs whose JSON output already exists.")
@click.option("--scheduler", help="Run on a Dask cluster: tcp://HOST:8786, or local:N for N worker processes "
              "(needs lrp-cli[dask]).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json-lines", is_flag=True, help="Print one JSON document per explanation instead of a line.")
@click.option("--tile", type=click.IntRange(min=0), help="BoW models: explain tiles of N px and average them "
              "(Fig 6); 0 explains the whole image [default: the training image size].")
@click.option("--tile-stride", type=click.IntRange(min=1), help="BoW models: tile stride in px.")
@click.option("--pair", help="BoW one-vs-one models: the two classes A,B whose decision is explained.")
def explain(inputs, model_path, out_dir, method, composite, rule, layer_rules, target, output_name, layout, preset,
            size,
            resize, mean, std, bgr, labels, cmap, normalize, save_raw, precision, jobs, skip_existing,
            no_progress, json_lines, tile, tile_stride, pair, scheduler):
    """Explain the prediction for each INPUT (image, .npy tensor, folder or glob)."""
    try:
        settings = api.Settings(method, composite, rule, tuple(layer_rules), target, precision, {
            "preset": preset, "size": _numbers("--size", size, 2, int), "resize": resize,
            "mean": _numbers("--mean", mean), "std": _numbers("--std", std), "bgr": bgr},
            {k: v for k, v in {"tile": tile, "tile_stride": tile_stride,
                               "pair": tuple(pair.split(",")) if pair else None}.items() if v is not None})
        model, model_spec = batch.load_model(model_path, output_name, labels, layout)
        api.check_settings(model, settings)
    except LrpError as exc:
        _fail(exc)
    items = batch.expand_inputs(list(inputs))
    runner = batch.BatchRunner(batch.ExplainTask(model_spec, settings, out_dir, cmap, save_raw, json_lines),
                               normalize == "global")
    try:
        rows = runner.run(items, jobs, skip_existing, show_progress=not no_progress and sys.stderr.isatty(),
                          scheduler=scheduler)
    except LrpError as exc:
        _fail(exc)
    if len(items) > 1 or any(Path(spec).is_dir() for spec in inputs):
        batch.write_summary(out_dir, rows)
    failed = [row for row in rows if row["status"] == "error"]
    if failed:
        click.echo(f"{len(failed)} of {len(rows)} inputs failed", err=True)
        sys.exit(1)


@main.command()
@click.argument("model_path", type=click.Path(path_type=Path))
@click.option("--composite", type=click.Choice(list(COMPOSITES)), help="Show the rules of this composite.")
@click.option("--verify", is_flag=True, help="Run the IR and onnxruntime on one input and compare.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of a table.")
def inspect(model_path, composite, verify, as_json):
    """Show a model's ops (with support status) and its layer IR with the rule of each layer."""
    from lrp_cli import inspection
    try:
        report = inspection.inspect_model(model_path, composite, verify)
    except LrpError as exc:
        _fail(exc)
    click.echo(json.dumps(report, indent=2) if as_json else inspection.format_report(report))
    if report["error"]:
        sys.exit(3)


@main.group("zoo")
def zoo_group():
    """Models built from registry packages (no download at run time)."""


@zoo_group.command("list")
def zoo_list():
    """List the zoo models."""
    for name in zoo.available():
        click.echo(name)


@zoo_group.command("get")
@click.argument("name")
@click.option("--dest", default="models", type=click.Path(path_type=Path), show_default=True)
@click.option("--force", is_flag=True, help="Rebuild even if the files exist.")
def zoo_get(name, dest, force):
    """Build zoo model NAME as ONNX (+ sidecar) in --dest."""
    try:
        path = zoo.get(name, dest, force=force)
    except LrpError as exc:
        _fail(exc)
    click.echo(str(path))


@main.command("supported-ops")
def supported_ops_command():
    """List the ONNX op types lrp-cli converts."""
    click.echo("\n".join(supported_ops()))


def _train_option(name: str, kind: str, default, help_text: str):
    """Returns the Click option for one entry of lrp_cli.bow.options.TRAIN_OPTIONS."""
    flag = "--" + name.replace("_", "-")
    if kind == "bool":
        return click.option(f"{flag}/--no-{name.replace('_', '-')}", default=default, show_default=True,
                            help=help_text)
    if kind.startswith("choice:"):
        return click.option(flag, type=click.Choice(kind[7:].split(",")), default=default, show_default=True,
                            help=help_text)
    types = {"int": int, "float": float, "str": str, "floats": str}
    shown = ",".join(map(str, default)) if kind == "floats" and default else default
    return click.option(flag, type=types[kind], default=shown, show_default=True, help=help_text)


def _train_bow_command():
    from lrp_cli.bow.options import TRAIN_OPTIONS

    @click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.option("--out", "out_path", required=True, type=click.Path(path_type=Path),
                  help="Model file: .joblib (pickle: loading it runs code) or .skops (safe format).")
    def train_bow(data_dir, out_path, **options):
        """Train a bag-of-visual-words + kernel SVM pipeline on DATA_DIR/<class>/*.png (one folder per class)."""
        from lrp_cli.bow import train
        kinds = {name: kind for name, kind, _, _ in TRAIN_OPTIONS}
        try:
            parsed = {k: _numbers(f"--{k.replace('_', '-')}", v) if kinds[k] == "floats" else v
                      for k, v in options.items()}
            meta = train.train_bow(data_dir, out_path, progress=lambda m: click.echo(f"train-bow: {m}", err=True),
                                   **parsed)
        except LrpError as exc:
            _fail(exc)
        except ValueError as exc:
            _fail(OptionError(str(exc)))
        click.echo(f"{out_path}: {len(meta['classes'])} classes, cross-validated accuracy "
                   f"{meta['cv_accuracy']:.3f}, test accuracy {meta['test_accuracy']}, "
                   f"{meta['seconds_total']:.1f} s")

    for entry in reversed(TRAIN_OPTIONS):
        train_bow = _train_option(*entry)(train_bow)
    return main.command("train-bow")(train_bow)


_train_bow_command()
