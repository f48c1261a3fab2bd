"""The `lrp` command: parses options and calls the API; it computes nothing itself."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import click

from lrp_cli import __version__, api, batch, evaluate, interrupts, render, zoo
from lrp_cli.engines.onnx_engine import ENGINES
from lrp_cli.errors import InputError, LrpError, OptionError
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


#: The options `explain` and `evaluate` share: rules, target, model output and layout, preprocessing, labels,
#: precision, the BoW tiling and the engine.
MODEL_OPTIONS = [
    click.option("--composite", type=click.Choice(list(COMPOSITES)), help="Rule composite [default: sidecar's, "
                 "else epsilon-plus-flat]."),
    click.option("--rule", help="One rule for every Conv/Dense layer, e.g. epsilon:0.01, alphabeta:2,1, zbox:-1,1."),
    click.option("--layer-rule", "layer_rules", multiple=True, metavar="PATTERN=SPEC",
                 help="Rule for the layers whose name matches a glob (repeatable)."),
    click.option("--target", default="pred", show_default=True, help="pred, a class INDEX, a LABEL, or top:K."),
    click.option("--output", "output_name", help="Which graph output to explain (multi-output models)."),
    click.option("--layout", type=click.Choice(["nchw", "nhwc"]), help="Channel axis of the model input "
                 "[default: detected from the graph]."),
    click.option("--preset", type=click.Choice(list(PRESETS)), help="Input normalization preset."),
    click.option("--size", help="Model input size H,W."),
    click.option("--resize", type=int, help="Resize the shorter side to N, then center-crop to the input size."),
    click.option("--mean", help="Per-channel mean a,b,c (model channel order)."),
    click.option("--std", help="Per-channel std a,b,c."),
    click.option("--bgr/--rgb", default=None, help="Channel order of the model input."),
    click.option("--labels", type=click.Path(path_type=Path), help="Class labels file, one per line."),
    click.option("--precision", type=click.Choice(list(api.PRECISIONS)), default="float32", show_default=True),
    click.option("--tile", type=click.IntRange(min=0), help="BoW models: explain tiles of N px and average them "
                 "(Fig 6); 0 explains the whole image [default: the training image size]."),
    click.option("--tile-stride", type=click.IntRange(min=1), help="BoW models: tile stride in px."),
    click.option("--pair", help="One-vs-one SVMs (BoW, text): the two classes A,B whose decision is explained."),
    click.option("--engine", type=click.Choice(list(ENGINES)), default="auto", show_default=True,
                 help="auto: the compiled onnxruntime graph when the model compiles (float32), else NumPy."),
    click.option("--providers", help="onnxruntime execution providers of the compiled engine, comma-separated "
                 "[default: CPUExecutionProvider]."),
]


def _model_options(command):
    """Returns the command with the MODEL_OPTIONS added."""
    for option in reversed(MODEL_OPTIONS):
        command = option(command)
    return command


def _settings(method: str, shared: dict) -> api.Settings:
    """Returns the api.Settings of a method and the MODEL_OPTIONS values."""
    pair = shared["pair"]
    return api.Settings(method, shared["composite"], shared["rule"], tuple(shared["layer_rules"]), shared["target"],
                        shared["precision"], {
                            "preset": shared["preset"], "size": _numbers("--size", shared["size"], 2, int),
                            "resize": shared["resize"], "mean": _numbers("--mean", shared["mean"]),
                            "std": _numbers("--std", shared["std"]), "bgr": shared["bgr"]},
                        {k: v for k, v in {"tile": shared["tile"], "tile_stride": shared["tile_stride"],
                                           "pair": tuple(pair.split(",")) if pair else None}.items() if v is not None},
                        engine=shared["engine"],
                        providers=tuple(shared["providers"].split(",")) if shared["providers"] else ())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lrp")
def main():
    """Explain image classifiers with Layer-wise Relevance Propagation (Bach et al. 2015)."""


def _text_options(text, text_field, id_field, vectorizer, print_text, text_formats) -> dict:
    """Returns the kind options (Settings.kind_options) of the text options given; the vectorizer is loaded with
    the model, and listed here too so that a kind without it refuses it."""
    given = {"text": text, "text_field": text_field, "id_field": id_field, "vectorizer": vectorizer,
             "print": print_text or None, "text_formats": text_formats and tuple(text_formats.split(","))}
    return {name: value for name, value in given.items() if value is not None}


@main.command()
@click.argument("inputs", nargs=-1)
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path),
              help="ONNX model (a MODEL.lrp.toml sidecar beside it supplies defaults), BoW or text .joblib/.skops.")
@click.option("--out", "out_dir", default="lrp-out", type=click.Path(path_type=Path), show_default=True,
              help="Output folder.")
@click.option("--method", type=click.Choice(list(api.METHOD_NAMES)), default="lrp", show_default=True,
              help="lrp; gradient / gradient x input of the target score; gradcam, occlusion, lime, random.")
@_model_options
@click.option("--cmap", type=click.Choice(render.COLORMAPS), help="Colormap [default: jet; bwr for text].")
@click.option("--normalize", type=click.Choice(["image", "global"]), default="image", show_default=True,
              help="Scale each heatmap by its own --scale statistic, or by that statistic over all inputs' pixels.")
@click.option("--scale", "scale_spec", default="max", show_default=True, metavar="max|percentile:P",
              help="Divide relevance by max |R| (Eq 35), or by the P-th percentile of |R| with larger values "
              "clipped (e.g. percentile:99.5: one hot pixel no longer greys out the rest).")
@click.option("--save-raw", is_flag=True, help="Also write STEM.relevance.npy (float32, model-input shape).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Inputs explained at once.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Inputs of one shape explained in one pass, both engines (ONNX models, methods lrp, gradient, "
              "gradient-x-input; others one at a time); --jobs and --scheduler take whole batches.")
@click.option("--skip-existing", is_flag=True, help="Skip inputs whose JSON output already exists.")
@click.option("--scheduler", help="Run on a Dask cluster: tcp://HOST:8786, or local:N for N worker processes "
              "(needs lrp-cli[dask]).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json-lines", is_flag=True, help="Print one JSON document per explanation instead of a line.")
@click.option("--html", is_flag=True, help="Also write OUT/index.html: a sortable, filterable report of the batch.")
@click.option("--layer", "cam_layer", metavar="NAME", help="gradcam: the node whose feature maps are weighted "
              "[default: the last Conv with a spatial output].")
@click.option("--patch", type=click.IntRange(min=1), help="occlusion: patch side in px [default: ceil(min(H,W)/14)].")
@click.option("--stride", type=click.IntRange(min=1), help="occlusion: patch stride in px [default: half the patch].")
@click.option("--samples", type=click.IntRange(min=2), help="lime: perturbed samples [default: 1000].")
@click.option("--seed", type=int, help="lime, random: random seed [default: 0].")
@click.option("--text", "text", metavar="TEXT", help="Text models: explain this text (INPUT then optional).")
@click.option("--text-field", metavar="NAME", help="Text models: the field of .jsonl/.csv rows holding the text.")
@click.option("--id-field", metavar="NAME", help="Text models: the field naming each row's outputs "
              "[default: the row number].")
@click.option("--vectorizer", type=click.Path(path_type=Path), help="Text models: the vectorizer (or pipeline "
              "before the classifier) of a model file holding a bare classifier.")
@click.option("--print", "print_text", is_flag=True, help="Text models: also print the coloured words.")
@click.option("--text-formats", metavar="json,html,png", help="Text models: the files to write per text (STEM.json "
              "always) [default: json,html,png].")
@interrupts.exit_on_signal
def explain(inputs, model_path, out_dir, method, cmap, normalize, scale_spec, save_raw, jobs, batch_size,
            skip_existing, scheduler, no_progress, json_lines, html, cam_layer, patch, stride, samples, seed, text,
            text_field, id_field, vectorizer, print_text, text_formats, **shared):
    """Explain the prediction for each INPUT (image, .npy tensor, .txt, .jsonl/.csv rows, `-` for stdin,
    folder or glob)."""
    try:
        if not inputs and text is None:
            raise OptionError("give an INPUT (file, folder, glob, - for stdin) or --text")
        scale = render.parse_scale(scale_spec)
        settings = _settings(method, shared)
        settings.method_options = {k: v for k, v in {"layer": cam_layer, "patch": patch, "stride": stride,
                                                     "samples": samples, "seed": seed}.items() if v is not None}
        settings.kind_options = _text_options(text, text_field, id_field, vectorizer, print_text, text_formats)
        load_extra = (("vectorizer", vectorizer),) if vectorizer is not None else ()
        model, model_spec = batch.load_model(model_path, shared["output_name"], shared["labels"], shared["layout"],
                                             load_extra)
        api.check_settings(model, settings)
        items = batch.expand_inputs(list(inputs), model, settings)
    except LrpError as exc:
        _fail(exc)
    runner = batch.BatchRunner(batch.ExplainTask(model_spec, settings, out_dir, cmap, save_raw, json_lines,
                                                 batch_size, thumbnails=html, scale=scale),
                               normalize == "global")
    try:
        rows = runner.run(items, jobs, skip_existing, show_progress=not no_progress and sys.stderr.isatty(),
                          scheduler=scheduler)
    except LrpError as exc:
        _fail(exc)
    if len(items) > 1 or any(Path(spec).is_dir() for spec in inputs):
        try:
            batch.write_summary(out_dir, rows)
        except OSError as exc:
            _fail(InputError(f"{out_dir}: cannot write the summary ({exc})"))
    if html:
        _write_html(out_dir, rows, model, settings, cmap, scale, normalize == "global")
    failed = [row for row in rows if row["status"] == "error"]
    if failed:
        click.echo(f"{len(failed)} of {len(rows)} inputs failed", err=True)
        sys.exit(1)


def _write_html(out_dir, rows, model, settings, cmap, scale, global_scale):
    from lrp_cli import report
    try:
        path = report.write_explain_report(out_dir, rows, model, settings, cmap or model.default_cmap, global_scale,
                                           scale)
    except OSError as exc:
        _fail(InputError(f"{out_dir}: cannot write the HTML report ({exc})"))
    click.echo(f"report: {path}", err=True)


@main.command("evaluate")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path),
              help="ONNX model (a MODEL.lrp.toml sidecar beside it supplies defaults), BoW or text .joblib/.skops.")
@click.option("--methods", help="Comma-separated methods to compare [default: every method; lrp for BoW; lrp, "
              "occlusion, lime, random for text].")
@_model_options
@click.option("--order", "orders", default="morf,lerf", show_default=True,
              help="Comma-separated orders: morf (most relevant first), lerf (|R| closest to 0 first), negative.")
@click.option("--protocol", type=click.Choice(list(evaluate.PROTOCOLS)),
              help="samek2017: 9x9 regions (scaled for inputs under 224), uniform noise, AOPC over the first 100 "
              "regions, one a step (sets --patch, --steps and the prefix).")
@click.option("--perturbation", type=click.Choice(list(evaluate.PERTURBATIONS + evaluate.UNIT_PERTURBATIONS)),
              help="flip: lo + hi - x in the preset's range; mean: the preset's mean; uniform: seeded U(lo, hi); "
              "blur: Gaussian; road: noisy linear imputation (ROAD) [default: road; uniform with --protocol]. "
              "Text: delete the words, or unk: replace them by a word outside the vocabulary [default: delete].")
@click.option("--blur-sigma", type=float, help="Blur std in pixels [default: max(H, W) / 32].")
@click.option("--patch", type=click.IntRange(min=1),
              help="Perturb P x P patches (relevance summed over the patch) instead of single pixels [default: 1].")
@click.option("--steps", type=click.IntRange(min=1),
              help="N equal steps from none to all units (or to the prefix) [default: 10 with road, as ROAD; "
              "else 100].")
@click.option("--max-fraction", type=float,
              help="Curves and AOPC over the first F of the units only (0 < F <= 1); the full-range AOPC beside it.")
@click.option("--units", "prefix_units", type=click.IntRange(min=1),
              help="Curves and AOPC over the first N units only; the full-range AOPC beside it.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the uniform and road noise, of lime and random, and of the ranking's bootstrap.")
@click.option("--out", "out_dir", default="lrp-eval", type=click.Path(path_type=Path), show_default=True,
              help="Output folder.")
@click.option("--save-maps", is_flag=True, help="Also write STEM.METHOD.relevance.npy.")
@click.option("--strip", is_flag=True, help="Also write STEM.METHOD.strip.png (the image as units are perturbed).")
@click.option("--text-field", help="Text models: the .jsonl/.csv field holding the text.")
@click.option("--id-field", help="Text models: the .jsonl/.csv field naming each row [default: the row number].")
@click.option("--label-field", help="Text models: the .jsonl/.csv field holding the true class (accuracy curves).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Inputs evaluated at once.")
@click.option("--scheduler", help="Run on a Dask cluster: tcp://HOST:8786, or local:N for N worker processes "
              "(needs lrp-cli[dask]).")
@interrupts.exit_on_signal
def evaluate_command(inputs, model_path, methods, orders, protocol, perturbation, blur_sigma, patch, steps,
                     max_fraction, prefix_units, seed, out_dir, save_maps, strip, text_field, id_field, label_field,
                     jobs, scheduler, **shared):
    """Pixel flipping (paper Figs 18-24): perturb each INPUT in the order of each method's relevance and record
    the target score; writes evaluation.json/.csv, curves.png and prints per method the MoRF-LeRF area (the
    headline: by default ROAD's fill, 10 steps, MoRF and LeRF), AOPC per order and the ranking's verdicts."""
    from lrp_cli import evaluation_files
    try:
        base = _settings("lrp", shared)
        text = {"text_field": text_field, "id_field": id_field, "label_field": label_field}
        base = replace(base, kind_options=base.kind_options | {k: v for k, v in text.items() if v is not None})
        model, spec = batch.load_model(model_path, shared["output_name"], shared["labels"], shared["layout"])
        flip = evaluate.flip_settings(orders, protocol, perturbation or evaluate.default_perturbation(model),
                                      patch, steps, max_fraction, prefix_units, seed, blur_sigma)
        names = methods.split(",") if methods is not None else evaluate.default_methods(model, base)
        variants = evaluate.method_variants(model, base, names, {"seed": seed})
        items = batch.expand_inputs(list(inputs), model, base)
        document, files = evaluate.run_evaluation(model, items, variants, flip, out_dir, strip, save_maps, jobs,
                                                  scheduler, spec)
    except LrpError as exc:
        _fail(exc)
    if not document["runs"]:
        click.echo(f"error: none of the {len(items)} inputs could be evaluated; nothing written", err=True)
        sys.exit(1)
    try:
        paths = evaluation_files.write_evaluation(out_dir, document, files)
    except OSError as exc:
        click.echo(f"error: cannot write outputs to {out_dir} ({exc})", err=True)
        sys.exit(1)
    if document["settings"].get("protocol_note"):
        click.echo(document["settings"]["protocol_note"])
    click.echo(evaluation_files.summary_table(document["summary"], document["settings"]))
    if any("accuracy" in entry for entry in document["summary"]):
        click.echo(evaluation_files.accuracy_text(document["summary"]))
    if document["rankings"]:
        click.echo(evaluation_files.ranking_text(document["rankings"]))
    extra = f" and {len(files)} per-input files" if files else ""
    click.echo(f"wrote {', '.join(map(str, paths))}{extra} in {out_dir}")
    if document["errors"]:
        click.echo(f"{len(document['errors'])} of {len(items)} inputs failed", err=True)
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
        report, text = inspection.inspect_model(model_path, composite, verify)
    except LrpError as exc:
        _fail(exc)
    click.echo(json.dumps(report, indent=2) if as_json else text)
    if report["error"]:
        sys.exit(3)


@main.command("compile")
@click.argument("model_path", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_path", required=True, type=click.Path(path_type=Path),
              help="The compiled graph, e.g. MODEL.lrp.onnx.")
@click.option("--method", type=click.Choice(list(api.METHOD_NAMES)), default="lrp", show_default=True)
@click.option("--composite", type=click.Choice(list(COMPOSITES)), help="Rule composite [default: sidecar's, "
              "else epsilon-plus-flat].")
@click.option("--rule", help="One rule for every Conv/Dense layer.")
@click.option("--layer-rule", "layer_rules", multiple=True, metavar="PATTERN=SPEC", help="Per-layer rule (repeatable).")
@click.option("--output", "output_name", help="Which graph output to explain (multi-output models).")
@click.option("--preset", type=click.Choice(list(PRESETS)), help="Input preset (sets the default z^B box).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Inputs per run of the graph (its data input [N, ...], target [N]).")
def compile_command(model_path, out_path, method, composite, rule, layer_rules, output_name, preset, batch_size):
    """Write the relevance pass of MODEL as one ONNX graph that a plain onnxruntime session runs."""
    try:
        settings = api.Settings(method, composite, rule, tuple(layer_rules), preprocess={"preset": preset})
        model = api.load_model(model_path, output_name)
        api.check_settings(model, settings)
        summary = api.compile_explainer(model, settings, out_path, batch_size)
    except LrpError as exc:
        _fail(exc)
    io = summary["io"]
    click.echo(f"{summary['path']}: {summary['method']} ({summary['composite'] or 'no composite'}), "
               f"{summary['layers']} nodes; inputs {io['data_input']}, target; outputs "
               f"{', '.join(io['outputs'])}")


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


@main.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--junit", type=click.Path(path_type=Path), help="Write a JUnit XML report (a testsuite per spec).")
@click.option("--markdown", type=click.Path(path_type=Path), help="Write a Markdown summary table "
              "(e.g. $GITHUB_STEP_SUMMARY).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write every measured value as JSON.")
@click.option("--evidence", type=click.Path(path_type=Path), help="Write heatmap and overlay of every failing "
              "(case, input) here, regions outlined.")
@click.option("--update-baselines", is_flag=True, help="(Re)write the baselines the specs name; they pass.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Inputs explained at once.")
@click.option("-k", "keyword", metavar="SUBSTRING", help="Run only the cases whose name contains SUBSTRING.")
@click.option("--scheduler", help="Run on a Dask cluster: tcp://HOST:8786, or local:N for N worker processes "
              "(needs lrp-cli[dask]).")
@interrupts.exit_on_signal
def check(specs, junit, markdown, json_path, evidence, update_baselines, jobs, keyword, scheduler):
    """Check behaviour specs (TOML): where each model looks, as a CI gate. Exit 1 when any check fails."""
    from lrp_cli.check import reports, run_specs
    try:
        results = run_specs(list(specs), jobs, keyword, update_baselines, evidence, scheduler)
        for _, outcomes in results:
            for outcome in outcomes:
                click.echo(reports.line(outcome))
        click.echo(reports.summary_line(results))
        reports.write_reports(results, junit, markdown, json_path)
    except LrpError as exc:
        _fail(exc)
    except OSError as exc:
        _fail(OptionError(f"cannot write a report: {exc}"))
    if reports.totals(results)[1]:
        sys.exit(1)


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
