"""`mcc tune`: fill the target's tuning database for a model within a time budget; the options
`mcc compile` shares with it (`--budget`, `--rpc`, `--rpc-key`) and its progress bars."""

from __future__ import annotations

import os
import re
from pathlib import Path

import click

from mcc.toolchain.cli.options import const_input_option, input_shape_option, precision_options
from mcc.toolchain.errors import UsageError

_DURATION = re.compile(
    r"(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s?)?"
)


def parse_budget(text: str) -> float:
    """A duration in seconds: "90s", "10m", "1h", "1h30m", "2.5m" or plain seconds ("600")."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or not any(match.groupdict().values()):
        raise UsageError(f"'{text}' is not a duration (use e.g. 90s, 10m, 1h30m or plain seconds)")
    seconds = sum(float(match[unit] or 0) * scale for unit, scale in (("h", 3600), ("m", 60), ("s", 1)))
    if seconds <= 0:
        raise UsageError(f"'{text}': the budget must be longer than 0 s")
    return seconds


def _parsed_by(parse):
    """A click callback running `parse` on a given value; its UsageError becomes a bad parameter."""

    def callback(ctx, param, value):
        if value is None:
            return None
        try:
            return parse(value)
        except UsageError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


def _parse_address(value: str):
    from mcc.backends.tvm.remote import parse_address

    return parse_address(value)


def budget_option(help_text: str, required: bool = False):
    return click.option("--budget", "budget_s", callback=_parsed_by(parse_budget), metavar="DURATION", required=required,
                        help=help_text)


def rpc_options(function):
    function = click.option("--rpc-key", default=None, metavar="KEY",
                            help="Device key the RPC tracker knows the device's server by (with --rpc).")(function)
    return click.option("--rpc", "rpc", callback=_parsed_by(_parse_address), default=None, metavar="HOST:PORT",
                        help="A TVM RPC tracker: run on its --rpc-key device instead of this machine.")(function)


def progress_bars():
    """A `progress(label, done, total)` that draws one bar per label on stderr.

    The bars write to a duplicate of file descriptor 2 taken now, so they stay on the terminal
    while the driver sends TVM's native output (descriptor 2) to a log file.
    """
    stream = os.fdopen(os.dup(2), "w", buffering=1)
    bars: dict[str, object] = {}

    def progress(label: str, done: int, total: int) -> None:
        if not stream.isatty():  # a log, not a terminal: one line per step, no redrawing
            if label not in bars:
                bars[label] = None
                stream.write(f"{label} ...\n")
            if done >= total:
                bars.pop(label)
            return
        if label not in bars:
            bars[label] = click.progressbar(length=total, label=label, file=stream)
            bars[label].__enter__()
        bar = bars[label]
        bar.update(max(0, done - bar.pos))
        if done >= total:
            bars.pop(label).__exit__(None, None, None)

    return progress


@click.command("tune")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "-t", default="host", show_default=True, help="Target name (see `mcc targets`) or a .toml file.")
@budget_option("Wall-clock time to tune for, e.g. 90s, 10m, 1h (plain numbers are seconds).", required=True)
@click.option("--passes", "passes", default=None, help="Pipeline text, as for `mcc compile` [default: the default pipeline].")
@input_shape_option
@const_input_option
@precision_options
@click.option("--max-trials-per-task", default=32, show_default=True, type=click.IntRange(1, 10000),
              help="Measured schedules per kernel at most.")
@click.option("--search", default="evolutionary", show_default=True, type=click.Choice(["evolutionary", "random"]),
              help="MetaSchedule search: evolutionary (cost-model guided) or random samples (less search time per trial).")
@rpc_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def tune_command(model, target, budget_s, passes, input_shapes, const_inputs, precision, calib_data, calib_method,
                 eval_data, max_accuracy_drop, fallback_precision, min_sqnr_db, max_trials_per_task, search, rpc,
                 rpc_key, as_json):
    """Tune MODEL's kernels for TARGET that the tuning database lacks; `mcc compile` then uses the records."""
    from mcc.toolchain.cli.main import _CURRENT_REQUEST
    from mcc.toolchain.cli.summary import print_tune_summary
    from mcc.toolchain.driver import CompileRequest, tune_model

    request = CompileRequest(
        model_path=model, target=target, passes=passes, input_shapes=dict(input_shapes),
        const_inputs=dict(const_inputs), precision=precision, calib_data=calib_data, calib_method=calib_method,
        eval_data=eval_data, max_accuracy_drop=max_accuracy_drop, fallback_precision=fallback_precision,
        min_sqnr_db=min_sqnr_db, budget_s=budget_s, max_trials_per_task=max_trials_per_task, search=search, rpc=rpc, rpc_key=rpc_key,
        progress=progress_bars(),
    )
    _CURRENT_REQUEST.append(request)
    outcome = tune_model(request)
    if as_json:
        import json

        from mcc.toolchain.driver import _json_safe

        payload = {"tuning": outcome.summary.as_dict(), "notes": outcome.notes, "pipeline": outcome.pipeline}
        click.echo(json.dumps(_json_safe(payload), indent=2, sort_keys=True))
    else:
        print_tune_summary(outcome, model)
    if outcome.summary.interrupted:
        raise KeyboardInterrupt  # after the summary: what was measured is in the database
