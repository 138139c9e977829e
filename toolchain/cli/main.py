"""`mcc` entry point: subcommands, one-line errors, documented exit codes.

Exit codes (also in the README): 0 success, 2 usage error (also an unreachable RPC tracker), 3 bad
input model, 4 validation failed, 5 unsupported by the target's backend, 70 internal error (a
reproducer is written), 130 interrupted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mcc.toolchain.errors import EXIT_INTERNAL, EXIT_USAGE, MccError, PassError
from mcc.toolchain.cli.debug import debug_command
from mcc.toolchain.cli.hardware import calibrate_command, estimate_command, targets_command
from mcc.toolchain.cli.options import const_input_option, input_shape_option, precision_options
from mcc.toolchain.cli.tune import budget_option, progress_bars, rpc_options, tune_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mcc", prog_name="mcc")
def cli() -> None:
    """mcc: compile an ONNX model for a deployment target and prove the result correct."""


@cli.command("compile")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "-t", default="host", show_default=True, help="Target name (see `mcc targets`) or a .toml file.")
@click.option("--output", "-o", "output_dir", type=click.Path(path_type=Path), help="Output directory [default: ./<model>.<target>.mcc].")
@click.option("--passes", "passes", default=None, help='Pipeline text, e.g. "fold-constants,fuse-conv-bn" [default: the "default" pipeline].')
@input_shape_option
@const_input_option
@click.option("--inputs", "inputs_path", type=click.Path(path_type=Path), help="Validation inputs as .npz (one array per input name).")
@precision_options
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random validation inputs.")
@click.option("--verify-each", is_flag=True, help="Run onnx.checker and strict shape inference after every pass.")
@click.option("--dump-dir", type=click.Path(path_type=Path), help="Write the model after every pass that changed it.")
@click.option("--explain", "explain", multiple=True, metavar="RULE",
              help="Say where rewrite rule RULE fired and why it did not elsewhere (repeatable).")
@budget_option("Tune the kernels the tuning database lacks for this long first, e.g. 5m (see `mcc tune`).")
@rpc_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of the summary.")
def compile_command(model, target, output_dir, passes, input_shapes, const_inputs, inputs_path, precision, calib_data,
                    calib_method, eval_data, max_accuracy_drop, fallback_precision, seed,
                    verify_each, dump_dir, min_sqnr_db, explain, budget_s, rpc, rpc_key, as_json):
    """Optimize MODEL, compile it for TARGET, and validate the artifact against onnxruntime."""
    from mcc.toolchain.cli.summary import print_compile_summary
    from mcc.toolchain.driver import CompileRequest, compile_model
    from mcc.toolchain.errors import ValidationFailed

    request = CompileRequest(
        model_path=model, target=target, output_dir=output_dir, passes=passes,
        input_shapes=dict(input_shapes), const_inputs=dict(const_inputs), inputs_path=inputs_path, precision=precision, calib_data=calib_data, calib_method=calib_method,
        eval_data=eval_data, max_accuracy_drop=max_accuracy_drop, fallback_precision=fallback_precision, seed=seed,
        verify_each=verify_each, dump_dir=dump_dir, explain=tuple(explain), min_sqnr_db=min_sqnr_db,
        budget_s=budget_s, rpc=rpc, rpc_key=rpc_key,
    )
    request.progress = progress_bars()  # long steps: int8 calibration, tuning
    _CURRENT_REQUEST.append(request)
    outcome = compile_model(request)
    if as_json:
        import json

        from mcc.toolchain.driver import _json_safe

        click.echo(json.dumps(_json_safe(outcome.report), indent=2, sort_keys=True))
    else:
        print_compile_summary(outcome.report, model)
    if not outcome.passed:
        failing = [o["name"] for o in outcome.report["validation"]["outputs"] if not o["passed"]]
        raise ValidationFailed(f"output(s) {', '.join(failing)} differ from onnxruntime beyond tolerance "
                               f"(report: {outcome.report['artifacts']['report']})")


@cli.command("passes")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def passes_command(as_json):
    """List every pass with its options, rewrite rules and one-line doc, and the named pipelines."""
    import dataclasses
    import json

    from mcc.toolchain.passmanager import option_type
    from mcc.toolchain.pipeline import NAMED_PIPELINES
    from mcc.toolchain.registry import pass_entries, plugin_errors

    entries = pass_entries()
    listing = []
    for name in sorted(entries):
        cls = entries[name].cls
        options = [
            {"name": f.name.replace("_", "-"), "type": option_type(cls, f).__name__, "default": f.default}
            for f in dataclasses.fields(cls) if f.init
        ]
        rules = [{"name": rule.name, "summary": rule.summary(), "lossy": rule.lossy} for rule in getattr(cls, "rules", ())]
        listing.append({"name": name, "summary": cls.summary(), "options": options, "rules": rules,
                        "origin": entries[name].origin})
    if as_json:
        click.echo(json.dumps({"passes": listing, "pipelines": NAMED_PIPELINES,
                               "plugin_errors": [str(e) for e in plugin_errors()]}, indent=2))
        return
    for item in listing:
        origin = "" if item["origin"] == "builtin" else f"  [plugin: {item['origin']}]"
        click.echo(f"{item['name']:<28} {item['summary']}{origin}")
        for option in item["options"]:
            default = str(option["default"]).lower() if isinstance(option["default"], bool) else option["default"]
            click.echo(f"    {option['name']}={option['type']} (default {default})")
        for rule in item["rules"]:
            lossy = "  [lossy]" if rule["lossy"] else ""
            click.echo(f"    rule {rule['name']:<30} {rule['summary']}{lossy}")
    click.echo("\nNamed pipelines:")
    for name, text in NAMED_PIPELINES.items():
        click.echo(f"  {name:<10} {text or '(no passes)'}")
    for error in plugin_errors():
        click.echo(f"warning: {error}", err=True)


cli.add_command(tune_command)
cli.add_command(estimate_command)
cli.add_command(targets_command)
cli.add_command(calibrate_command)
cli.add_command(debug_command)


_CURRENT_REQUEST: list = []


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: one line per error, documented exit codes, no tracebacks."""
    from mcc.backends.tvm.common import use_every_core

    use_every_core()  # before any kernel runs: validation, calibration and tuning time all cores
    try:
        cli.main(args=argv, prog_name="mcc", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("mcc: aborted", err=True)
        return 130
    except click.UsageError as exc:
        hint = f" (see 'mcc {exc.ctx.command.name} --help')" if exc.ctx is not None and exc.ctx.command.name != "cli" else ""
        click.echo(f"mcc: usage error: {exc.format_message()}{hint}", err=True)
        return EXIT_USAGE
    except click.ClickException as exc:
        click.echo(f"mcc: error: {exc.format_message()}", err=True)
        return exc.exit_code
    except PassError as exc:
        path = _write_reproducer(exc)
        click.echo(f"mcc: internal error: {exc} (reproducer: {path})", err=True)
        return EXIT_INTERNAL
    except MccError as exc:
        click.echo(f"mcc: {exc.kind}: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("mcc: interrupted", err=True)
        return 130
    except Exception as exc:  # an mcc defect: say so, and leave a reproducer
        path = _write_reproducer(exc)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        click.echo(f"mcc: internal error: {type(exc).__name__}: {first} (reproducer: {path})", err=True)
        return EXIT_INTERNAL
    return 0


def _write_reproducer(exc: BaseException) -> str:
    from mcc.toolchain.reproducer import write_reproducer

    return write_reproducer(exc, _CURRENT_REQUEST[-1] if _CURRENT_REQUEST else None, sys.argv)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
