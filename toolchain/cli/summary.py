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
    click.echo(
        f"  time       total {timings['total']:.2f} s (passes {timings.get('passes', 0):.2f}, "
        f"compile {timings.get('compile', 0):.2f}, validate {timings.get('validate', 0):.2f})"
    )
    estimate = report.get("estimate")
    if estimate:
        click.echo(
            f"  estimate   {estimate['latency_ms']:.3f} ms, peak memory {estimate['peak_memory_mb']:.2f} MB, "
            f"energy {estimate['energy_mj']:.3f} mJ on {estimate['target']} (cost model; {estimate['verdict']})"
        )
    verdict = "PASSED" if validation["passed"] else "FAILED"
    click.echo(f"  validation {verdict} vs onnxruntime ({validation['inputs']} inputs)")
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
