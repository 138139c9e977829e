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
