"""The short human summary `mcc compile` prints (the full data is report.json)."""

from __future__ import annotations

import click


def _format_sqnr(value) -> str:
    return "inf" if value is None else f"{value:.1f}"


def print_compile_summary(report: dict, model_path) -> None:
    target = report["target"]
    stats_before, stats_after = report["model"]["stats_before"], report["model"]["stats_after"]
    passes = report["passes"]
    modified = [p["name"] for p in passes if p["modified"]]
    timings = report["timings_s"]
    validation = report["validation"]
    click.echo(f"mcc compile {model_path} -> {target['name']} ({target['tvm_target']})")
    for name, dims in report["model"]["assumed_dims"].items():
        click.echo(f"  note: input '{name}': assumed {', '.join(dims)} (set with --input-shape)")
    click.echo(
        f"  passes     {len(passes)} run, {len(modified)} changed the model"
        + (f" ({', '.join(dict.fromkeys(modified))})" if modified else "")
    )
    click.echo(
        f"  model      nodes {stats_before['nodes']} -> {stats_after['nodes']}, "
        f"params {stats_before['params']:,} -> {stats_after['params']:,}, "
        f"MACs {stats_before['macs']:,} -> {stats_after['macs']:,}"
    )
    tune_time = f"tune {timings['tune']:.2f}, " if "tune" in timings else ""
    click.echo(
        f"  time       total {timings['total']:.2f} s (passes {timings.get('passes', 0):.2f}, {tune_time}"
        f"compile {timings.get('compile', 0):.2f}, validate {timings.get('validate', 0):.2f})"
    )
    tuning = report.get("tuning")
    if tuning:
        click.echo(f"  tuning     {_tuning_counts(tuning)}")
    kernels = report.get("kernels") or {}
    if "tuned_flops_fraction" in kernels:
        tuned = kernels.get("tuned_kernels", [])
        fraction = kernels["tuned_flops_fraction"]
        share = "n/a" if fraction is None else f"{100 * fraction:.0f}%"
        click.echo(f"  kernels    {len(tuned)} with tuned schedules ({share} of estimated FLOPs), "
                   f"{len(kernels.get('default_schedules', {}))} with default schedules")
    search = report.get("precision_search")
    if search:
        fallback = search['fp32_layers'] + search.get('fp16_layers', 0)
        click.echo(f"  precision  {search['int8_layers']} layer(s) int8, {fallback} "
                   f"{search.get('fallback_precision', 'fp32')}; "
                   f"{search['metric']} {search['chosen']} (float32 {search['fp32']}, all int8 {search['all_int8']}) "
                   f"on {search['evaluation_samples']} samples; budget {search['budget']}: "
                   f"{'met' if search['budget_met'] else 'NOT met'}")
    accuracy = report.get("accuracy")
    if accuracy:
        budget = f"; budget {accuracy['budget']}: met" if "budget" in accuracy else ""
        click.echo(f"  accuracy   {accuracy['metric']} {accuracy['int8']} at int8 (float32 {accuracy['fp32']}) on "
                   f"{accuracy['evaluation_samples']} samples{budget}")
    if kernels.get("integer_kernels"):
        click.echo(f"  integer    {kernels['integer_kernels']} quantized convolution(s)/matmul(s) run as "
                   "uint8 x int8 -> int32 kernels (VNNI)")
    estimate = report.get("estimate")
    if estimate:
        click.echo(
            f"  estimate   {estimate['latency_ms']:.3f} ms, peak memory {estimate['peak_memory_mb']:.2f} MB, "
            f"energy {estimate['energy_mj']:.3f} mJ on {estimate['target']} (cost model; {estimate['verdict']})"
        )
    verdict = "PASSED" if validation["passed"] else "FAILED"
    remote = report.get("remote")
    where = f", run on RPC device '{remote['key']}' via {remote['tracker']}" if remote else ""
    click.echo(f"  validation {verdict} vs onnxruntime ({validation['inputs']} inputs{where})")
    if remote:
        latency = remote["latency_ms"]
        click.echo(f"  latency    {latency['median']:.3f} ms median, {latency['min']:.3f} ms min over "
                   f"{latency['runs']} runs on the RPC device")
    for output in validation["outputs"]:
        mark = "ok  " if output["passed"] else "FAIL"
        click.echo(
            f"    {mark} {output['name']}: max_abs {output['max_abs']:.3g}, max_rel {output['max_rel']:.3g}, "
            f"cosine {output['cosine']:.6f}, SQNR {_format_sqnr(output['sqnr_db'])} dB"
            + (f"  [{output['reason']}]" if output["reason"] else "")
        )
    for note in report.get("notes", []):
        click.echo(f"  note: {note}")
    for line in report.get("explanations", []):
        click.echo(f"  explain: {line}")
    for line in report.get("lossy_rewrites", []):
        click.echo(f"  lossy: {line} (its error is part of the validation above)")
    artifacts = report["artifacts"]
    click.echo(f"  artifacts  {artifacts['library']}, {artifacts['model']}, {artifacts['report']}")


def _tuning_counts(tuning: dict) -> str:
    skipped = len(tuning["skipped"])
    text = (f"{tuning['tasks_total']} kernels: {len(tuning['tuned'])} tuned now, "
            f"{len(tuning['already_in_database'])} already in the database"
            + (f", {skipped} skipped" if skipped else "")
            + (f"; {tuning['default_schedules_measured']} default schedules measured as baselines"
               if tuning.get("default_schedules_measured") else "")
            + f"; {tuning['trials']} trials ({tuning['failed_trials']} failed), {tuning['records_written']} records "
            f"written in {tuning['wall_s']:.1f} s of a {tuning['budget_s']:.0f} s budget")
    if tuning.get("interrupted"):
        return text + " (interrupted)"
    return text + (" (the budget ran out)" if tuning["stopped_early"] else "")


def print_tune_summary(outcome, model_path) -> None:
    """What `mcc tune` did: the database, the kernels tuned, found or skipped (and why), the trials."""
    tuning = outcome.summary.as_dict()
    click.echo(f"mcc tune {model_path} -> {tuning['target']}")
    click.echo(f"  database   {tuning['database']}")
    click.echo(f"  tuning     {_tuning_counts(tuning)}")
    for name, why in tuning["skipped"].items():
        click.echo(f"    skipped  {name}: {why}")
    if tuning["log"]:
        click.echo(f"  log        {tuning['log']}")
    for note in [*outcome.notes, *tuning["notes"]]:
        click.echo(f"  note: {note}")
