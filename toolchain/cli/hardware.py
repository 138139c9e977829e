"""`mcc estimate`, `mcc targets` and `mcc calibrate`: the cost model and target data on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mcc.toolchain.cli.options import input_shape_option


def _format_bytes(count: float) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} B"


def _format_count(count: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return f"{count:.0f}"


def print_estimate(estimate, spec, top: int) -> None:
    click.echo(f"target {spec.name}: {spec.description} (precision {estimate.precision})")
    header = f"  {'kernel':<34} {'ops':<26} {'output':<16} {'MACs':>8} {'bytes':>9} {'ms':>9}  bound"
    click.echo(header)
    for kernel in estimate.kernels:
        shape = "x".join(map(str, kernel.output_shape)) if kernel.output_shape else "?"
        ops = "+".join(kernel.ops)
        click.echo(
            f"  {kernel.name[:34]:<34} {ops[:26]:<26} {shape[:16]:<16} {_format_count(kernel.macs):>8} "
            f"{_format_bytes(kernel.bytes):>9} {kernel.latency_ms:>9.4f}  {kernel.bound}"
        )
    price = f", ${estimate.usd_per_million:.4f} per million" if estimate.usd_per_million is not None else ""
    click.echo(
        f"  total: latency {estimate.latency_ms:.3f} ms, peak memory {estimate.peak_memory_mb:.2f} MB "
        f"(weights {estimate.weights_mb:.2f} + activations {estimate.arena_mb:.2f}), size {estimate.size_mb:.2f} MB, "
        f"energy {estimate.energy_mj:.3f} mJ{price}"
    )
    total = estimate.latency_ms or 1.0
    hot = ", ".join(f"{k.name} {100 * k.latency_ms / total:.0f}% ({k.bound})" for k in estimate.hotspots(top))
    click.echo(f"  hotspots: {hot}")
    for note in estimate.notes:
        click.echo(f"  note: {note}")
    click.echo(f"  verdict: {estimate.verdict}")


@click.command("estimate")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "-t", "targets", multiple=True, default=("host",), show_default=True,
              help="Target name or .toml file (repeatable).")
@click.option("--precision", default="native", show_default=True, type=click.Choice(["native", "fp32", "fp16", "int8"]),
              help="What-if precision for every layer (native: the dtypes the model has).")
@input_shape_option
@click.option("--passes", default=None, help="Pipeline to run before estimating [default: the default pipeline].")
@click.option("--top", default=5, show_default=True, type=click.IntRange(1, 50), help="Hotspots to list.")
@click.option("--json", "as_json", is_flag=True, help="Print the estimates as JSON.")
def estimate_command(model, targets, precision, input_shapes, passes, top, as_json):
    """Predict latency, memory, size and energy of MODEL on each TARGET (nothing is compiled)."""
    from mcc.hwmodels import load_target
    from mcc.hwmodels.costmodel import estimate
    from mcc.toolchain import ir
    from mcc.toolchain.driver import resolve_pipeline
    from mcc.toolchain.passmanager import PassManager

    specs = [load_target(name) for name in targets]
    pipeline = resolve_pipeline(passes)
    loaded = ir.load_model(model)
    static, fixed = ir.fix_input_shapes(loaded, dict(input_shapes))
    optimized, _ = PassManager(pipeline).run(static)
    results = [(spec, estimate(optimized, spec, precision)) for spec in specs]
    if as_json:
        from mcc.toolchain.driver import _json_safe

        payload = {"model": str(model), "input_shapes": {k: list(v) for k, v in fixed.shapes.items()},
                   "estimates": [e.as_dict() for _, e in results]}
        click.echo(json.dumps(_json_safe(payload), indent=2, sort_keys=True))
        return
    click.echo(f"mcc estimate {model} ({len(optimized.graph.node)} nodes after passes)")
    for spec, result in results:
        print_estimate(result, spec, top)
    if len(results) > 1:
        click.echo(f"\n  {'target':<18} {'latency ms':>11} {'peak MB':>9} {'energy mJ':>10}  fits")
        for spec, result in results:
            click.echo(f"  {spec.name:<18} {result.latency_ms:>11.3f} {result.peak_memory_mb:>9.2f} "
                       f"{result.energy_mj:>10.3f}  {'yes' if result.fits else 'NO'}")


@click.group("targets", invoke_without_command=True)
@click.pass_context
def targets_command(ctx):
    """List the built-in targets (`mcc targets show NAME` prints one)."""
    if ctx.invoked_subcommand is not None:
        return
    from mcc.hwmodels import list_targets, load_target

    click.echo(f"{'name':<18} {'class':<5} {'backend':<9} {'fp32 GOP/s':>10} {'DRAM GB/s':>9}  description")
    for name in list_targets():
        spec = load_target(name)
        click.echo(f"{name:<18} {spec.device_class:<5} {spec.backend:<9} {spec.peak_gops['fp32']:>10.1f} "
                   f"{spec.dram_bandwidth_gb_s:>9.1f}  {spec.description}")


@targets_command.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def targets_show(name, as_json):
    """Print one target (a name or a .toml file) with the source of every figure."""
    from mcc.hwmodels import load_target

    spec = load_target(name)
    data = spec.as_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    sources = data.pop("sources")
    for key, value in data.items():
        click.echo(f"{key:<22} {value}")
    click.echo("sources:")
    for key, value in sources.items():
        click.echo(f"  {key:<28} {value}")


@click.command("calibrate")
@click.option("--target", "-t", default="host", show_default=True, help="Only the host can calibrate itself (for now).")
@click.option("--repeat", default=10, show_default=True, type=click.IntRange(3, 1000), help="Timed runs per benchmark.")
def calibrate_command(target, repeat):
    """Fit the host's efficiency factors and overheads from TVM-compiled micro-benchmarks."""
    from mcc.hwmodels import load_target
    from mcc.hwmodels.calibrate import BENCHMARKS, calibrate
    from mcc.toolchain.errors import UsageError

    spec = load_target(target)
    if not spec.detect_host:
        raise UsageError(f"calibration measures the machine mcc runs on; '{target}' is not the host "
                         "(remote calibration over TVM RPC comes later)")
    with click.progressbar(length=len(BENCHMARKS), label="calibrating", file=click.get_text_stream("stderr"),
                           item_show_func=lambda name: name) as bar:
        def advance(name: str) -> None:
            bar.update(1, name)

        profile, path = calibrate(spec, repeat=repeat, progress=advance)
    click.echo(f"calibrated {spec.name}: kernel {profile['kernel_us']:.1f} us, "
               f"bandwidth {profile['dram_bandwidth_gb_s'] * profile['bandwidth_efficiency']:.1f} GB/s effective, "
               f"{profile['cache_bandwidth_gb_s']:.1f} GB/s from cache")
    for op_class, value in sorted(profile["efficiency"].items()):
        click.echo(f"  efficiency {op_class:<15} {value:.4f}")
    click.echo(f"profile: {path}")
