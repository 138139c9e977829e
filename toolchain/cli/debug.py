"""`mcc debug bisect` and `mcc debug compare`: find the pass, and the tensor, where a result goes wrong."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mcc.toolchain.cli.options import input_shape_option


def _format_sqnr(value) -> str:
    return "inf" if value is None else f"{value:.1f}"


def _metrics(output: dict, reason: bool = True) -> str:
    text = (f"max_abs {output['max_abs']:.3g}, max_rel {output['max_rel']:.3g}, cosine {output['cosine']:.6f}, "
            f"SQNR {_format_sqnr(output['sqnr_db'])} dB")
    return text + (f"  [{output['reason']}]" if reason and output["reason"] else "")


def _print_json(data: dict) -> None:
    from mcc.toolchain.driver import _json_safe

    click.echo(json.dumps(_json_safe(data), indent=2, sort_keys=True))


def _print_layerwise(layerwise: dict) -> None:
    first = layerwise["first_diverging_tensor"]
    if first is not None:
        node = f"node '{first['node']}' ({first['op_type']})"
        if (first["reference_node"], first["reference_op_type"]) != (first["node"], first["op_type"]):
            node += f"; in the reference: '{first['reference_node']}' ({first['reference_op_type']})"
        click.echo(f"  first diverging tensor: '{first['tensor']}' from {node}")
        click.echo(f"    {_metrics(first['metrics'])}")
        if first["uncompared_inputs"]:
            click.echo(f"    inputs not compared (the divergence may start there): {', '.join(first['uncompared_inputs'])}")
    else:
        click.echo("  first diverging tensor: none among the shared tensors")
    click.echo(f"    {layerwise['compared']} shared tensors compared ({layerwise['skipped']} of the candidate not "
               f"shared or untyped): {layerwise['reference']} vs {layerwise['candidate']}")
    if layerwise["note"]:
        click.echo(f"  note: {layerwise['note']}")


def print_bisect_summary(report: dict) -> None:
    click.echo(f"mcc debug bisect {report['model']} -> {report['target']} ({report['backend']}), "
               f"{report['inputs']} inputs")
    for step in report["steps"]:
        label = step["pipeline_text"] + (" (inserted by mcc)" if step["kind"] == "inserted" else "")
        if not step["checked"]:
            verdict = "unchanged"
        elif step["passed"]:
            worst = max((o["max_abs"] for o in step["outputs"]), default=0.0)
            verdict = f"ok (max_abs {worst:.3g})"
        else:
            failing = [o for o in step["outputs"] if not o["passed"]]
            verdict = "DIVERGES" + (f"  {failing[0]['name']}: {_metrics(failing[0], reason=False)}" if failing
                                    else f"  {step['reason']}")
        click.echo(f"  {step['index']:>4}  {label[:44]:<44} {verdict}")
    for note in report["notes"]:
        click.echo(f"  note: {note}")
    bad = report["first_bad_step"]
    if bad is None:
        click.echo(f"  no divergence: every pass and the {report['backend']} artifact match onnxruntime on the "
                   "original model")
        return
    if bad["kind"] == "backend":
        click.echo(f"  first bad step: backend compile ({bad['pipeline_text']}); every pass matches onnxruntime")
    elif bad["kind"] == "load":
        click.echo("  first bad step: fixing the input shapes (before any pass)")
    else:
        click.echo(f"  first bad pass: {bad['pipeline_text']} (step {bad['index']}; later steps were not run)")
    for output in bad["outputs"]:
        if not output["passed"]:
            click.echo(f"    {output['name']}: {output['reason']}")
    if report["layerwise"] is not None:
        _print_layerwise(report["layerwise"])


def _divergence_message(where: str, layerwise: dict | None) -> str:
    message = f"outputs diverge {where}"
    first = layerwise and layerwise["first_diverging_tensor"]
    if first:
        message += f"; first diverging tensor '{first['tensor']}' (node '{first['node']}', {first['op_type']})"
    return message


@click.group("debug")
def debug_command():
    """Find where a wrong result comes from (the pass, the backend, the tensor)."""


@debug_command.command("bisect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "-t", default="host", show_default=True, help="Target name (see `mcc targets`) or a .toml file.")
@click.option("--passes", "passes", default=None, help='Pipeline text [default: the "default" pipeline].')
@input_shape_option
@click.option("--inputs", "inputs_path", type=click.Path(path_type=Path), help="Inputs as .npz (one array per input name).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of the summary.")
def bisect_command(model, target, passes, input_shapes, inputs_path, seed, as_json):
    """Find the first pass (or the backend) after which MODEL's outputs diverge from onnxruntime."""
    from mcc.toolchain.cli.main import _CURRENT_REQUEST
    from mcc.toolchain.debug import bisect
    from mcc.toolchain.driver import CompileRequest
    from mcc.toolchain.errors import ValidationFailed

    _CURRENT_REQUEST.append(CompileRequest(model_path=model, target=target, passes=passes,
                                           input_shapes=dict(input_shapes), inputs_path=inputs_path, seed=seed))
    result = bisect(model, target, passes, input_shapes=dict(input_shapes), inputs_path=inputs_path, seed=seed)
    report = result.as_dict()
    if as_json:
        _print_json(report)
    else:
        print_bisect_summary(report)
    bad = result.first_bad
    if bad is not None:
        where = {"backend": f"in the backend ({bad.text})", "load": "when the input shapes are fixed"}.get(
            bad.kind, f"after pass '{bad.text}' (step {bad.index})")
        raise ValidationFailed(_divergence_message(where, report["layerwise"]))


@debug_command.command("compare")
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@input_shape_option
@click.option("--inputs", "inputs_path", type=click.Path(path_type=Path), help="Inputs as .npz (one array per input name).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of the summary.")
def compare_command(reference, candidate, input_shapes, inputs_path, seed, as_json):
    """Run REFERENCE and CANDIDATE under onnxruntime and report the first shared tensor that differs."""
    from mcc.toolchain.debug import compare_files
    from mcc.toolchain.errors import ValidationFailed

    result, inputs_label = compare_files(reference, candidate, input_shapes=dict(input_shapes),
                                         inputs_path=inputs_path, seed=seed)
    report = result.as_dict()
    if as_json:
        _print_json({**report, "inputs": inputs_label})
    else:
        click.echo(f"mcc debug compare {reference} {candidate} ({inputs_label} inputs)")
        for output in report["outputs"]:
            click.echo(f"    {'ok  ' if output['passed'] else 'FAIL'} {output['name']}: {_metrics(output)}")
        if result.diverged:
            _print_layerwise(report)
        else:
            click.echo(f"  no divergence: all {report['compared']} shared tensors and the outputs match")
    if result.diverged:
        raise ValidationFailed(_divergence_message("between the models", report))
