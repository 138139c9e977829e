"""Options shared by several subcommands."""

from __future__ import annotations

import click

from mcc.toolchain.errors import UsageError


def _parse_input_shapes(ctx, param, values):
    from mcc.toolchain.ir import parse_input_shape

    shapes = []
    seen = set()
    for text in values:
        try:
            name, dims = parse_input_shape(text)
        except UsageError as exc:
            raise click.BadParameter(str(exc)) from None
        if name in seen:
            raise click.BadParameter(f"input '{name}' is given twice")
        seen.add(name)
        shapes.append((name, dims))
    return shapes


input_shape_option = click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    callback=_parse_input_shapes,
    metavar="NAME=DIMS",
    help="Fix an input's shape, e.g. data=1x3x224x224 (repeatable).",
)


def _parse_const_inputs(ctx, param, values):
    from mcc.toolchain.ir import parse_const_input

    parsed = {}
    for text in values:
        try:
            name, numbers = parse_const_input(text)
        except UsageError as exc:
            raise click.BadParameter(str(exc)) from None
        if name in parsed:
            raise click.BadParameter(f"input '{name}' is given twice")
        parsed[name] = numbers
    return parsed


const_input_option = click.option(
    "--const-input",
    "const_inputs",
    multiple=True,
    callback=_parse_const_inputs,
    metavar="NAME=VALUE",
    help="Specialise an input to a constant, e.g. sr=16000, so conditions on it fold (repeatable).",
)


def precision_options(function):
    """--precision and what it needs (calibration, evaluation data, accuracy budget), as `mcc compile` and `mcc tune` take them."""
    for decorator in reversed(_PRECISION_OPTIONS):
        function = decorator(function)
    return function


_PRECISION_OPTIONS = [
    click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "fp16", "int8", "mixed"]),
                 help="Compute precision (fp16: convert-float16; int8: quantize-int8 in QDQ form, needs --calib-data; "
                      "mixed: int8 with the most sensitive layers kept float32 until the accuracy budget holds on "
                      "--eval-data); I/O stay float32, validated with that precision's tolerances."),
    click.option("--calib-data", default=None, metavar="FILE.npz|FOLDER|PLUGIN.py|random",
                 help="int8 calibration samples: an .npz (one array per input, first axis = samples), a folder of "
                      "images with a preprocess.toml, or a Python file defining calibration_batches(inputs)."),
    click.option("--calib-method", default="percentile", show_default=True,
                 type=click.Choice(["minmax", "percentile", "entropy"]), help="int8 activation range calibration."),
    click.option("--eval-data", default=None, metavar="FILE.npz",
                 help="--precision int8 or mixed: evaluation samples (one array per input, first axis = samples) and "
                      "'labels' (class per sample) for top-1; int8 reports the metric, mixed searches with it."),
    click.option("--max-accuracy-drop", type=float, default=None, metavar="POINTS",
                 help="Top-1 points the quantized model may lose on --eval-data: int8 fails when it loses more, mixed "
                      "keeps sensitive layers in float32 until it holds (or budget output fidelity with --min-sqnr-db)."),
    click.option("--fallback-precision", default="fp32", show_default=True, type=click.Choice(["fp32", "fp16"]),
                 help="--precision mixed: the precision of the layers kept out of int8 (fp16 where the budget still "
                      "holds; for targets whose fp16 is fast)."),
    click.option("--min-sqnr-db", type=float, default=None, metavar="DB",
                 help="Accuracy budget: outputs must keep this SQNR vs onnxruntime; lets approximations replace ops the "
                      "target lacks (listed in the report); with --precision mixed and no labels, the search's budget."),
]
