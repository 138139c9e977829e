"""`mcc calibrate`: real TVM-compiled micro-benchmarks, a profile in the user cache, applied by --target host."""

import json

import pytest

from mcc.hwmodels import load_target


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MCC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_calibrate_writes_a_profile_that_host_then_uses(cache, run_mcc):
    before = load_target("host")
    result = run_mcc("calibrate", "--target", "host", "--repeat", "3", env={"MCC_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr
    assert "calibrating" in result.stderr  # the progress bar
    (path,) = (cache / "calibration").glob("host-*.json")
    profile = json.loads(path.read_text())
    assert set(profile["measured_ms"]) >= {"tiny-relu", "add-16MiB", "conv3x3-32x28", "matmul-64x256x256"}
    assert set(profile["efficiency_curves"]) == {"conv", "pointwise_conv", "depthwise_conv", "matmul"}
    assert all(value > 0 for value in profile["measured_ms"].values())
    assert 0 < profile["efficiency"]["conv"] <= 1 and profile["kernel_us"] > 0
    after = load_target("host")
    assert after.efficiency["conv"] == pytest.approx(profile["efficiency"]["conv"])
    assert after.kernel_overhead_us == pytest.approx(profile["kernel_us"])
    assert after.efficiency_curves["conv"] == tuple(map(tuple, profile["efficiency_curves"]["conv"]))
    assert "calibrated on host" in after.sources["efficiency"]
    assert before.sources["efficiency"] != after.sources["efficiency"]
    # the cache rate: measured, at least the DRAM rate, applied, with its source, and printed
    assert profile["cache_bandwidth_gb_s"] >= profile["dram_bandwidth_gb_s"] * profile["bandwidth_efficiency"] > 0
    assert after.cache_bandwidth_gb_s == pytest.approx(profile["cache_bandwidth_gb_s"])
    assert "calibrated on host" in after.sources["memory.cache_bandwidth_gb_s"]
    assert "GB/s from cache" in result.stdout


def test_corrupt_profile_is_ignored(cache):
    from mcc.hwmodels.host import calibration_path

    path = calibration_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert "calibrated on host" not in load_target("host").sources["efficiency"]


def test_a_profile_measured_with_other_schedules_or_method_is_ignored(cache):
    """A profile from an older mcc measured other kernels, or measured them otherwise: the target
    file's figures apply until `mcc calibrate` runs again."""
    from mcc.backends.tvm.schedules import SCHEDULES_VERSION
    from mcc.hwmodels.host import CALIBRATION_VERSION, calibration_path

    path = calibration_path()
    path.parent.mkdir(parents=True)
    current = {"calibration_version": CALIBRATION_VERSION}
    for version, method, applied in ((SCHEDULES_VERSION - 1, current, False), (None, current, False),
                                     (SCHEDULES_VERSION, {}, False),  # before the method had a version
                                     (SCHEDULES_VERSION, {"calibration_version": CALIBRATION_VERSION - 1}, False),
                                     (SCHEDULES_VERSION, current, True)):
        profile = {"efficiency": {"conv": 0.123}, **method}
        if version is not None:
            profile["schedules_version"] = version
        path.write_text(json.dumps(profile))
        target = load_target("host")
        assert (target.efficiency["conv"] == pytest.approx(0.123)) is applied, version
        assert ("calibrated on host" in target.sources["efficiency"]) is applied


def test_a_profiles_effective_clock_sets_the_hosts_peak(cache):
    """The profile's effective clock gives the peak, whatever /proc/cpuinfo's clock reads later;
    `without_profile` gives the host as detected (what `mcc calibrate` fits against, so that
    calibrating again does not measure against the last profile's peak)."""
    from mcc.backends.tvm.schedules import SCHEDULES_VERSION
    from mcc.hwmodels.host import CALIBRATION_VERSION, calibration_path, without_profile

    detected = load_target("host")
    path = calibration_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"efficiency": {"conv": 0.5}, "effective_clock_ghz": 1.5 * detected.clock_ghz,
                                "schedules_version": SCHEDULES_VERSION, "calibration_version": CALIBRATION_VERSION}))
    target = load_target("host")
    assert target.peak_gops == pytest.approx({k: 1.5 * v for k, v in detected.peak_gops.items()})
    assert "measured by `mcc calibrate`" in target.sources["compute.peak_gops"]
    with without_profile():
        again = load_target("host")
    assert again.peak_gops == detected.peak_gops and again.efficiency["conv"] == detected.efficiency["conv"]


def test_only_the_host_calibrates_itself(run_mcc, cache):
    result = run_mcc("calibrate", "--target", "raspberry-pi-4", env={"MCC_CACHE_DIR": str(cache)})
    assert result.returncode == 2 and "is not the host" in result.stderr


def test_fit_recovers_known_efficiencies():
    """Feed the fit latencies the model itself predicts at known efficiencies: it must recover them."""
    import dataclasses

    from mcc.hwmodels.calibrate import BENCHMARKS, fit_profile
    from mcc.hwmodels.costmodel import estimate

    spec = load_target("host")
    truth = dataclasses.replace(spec, kernel_overhead_us=3.0, bandwidth_efficiency=1.0,
                                efficiency={**spec.efficiency, "conv": 0.02, "matmul": 0.04, "reduction": 0.01})
    measured = {}
    for benchmark in BENCHMARKS:
        if benchmark.op_class == "overhead":
            measured[benchmark.name] = 3.0e-3
        else:
            measured[benchmark.name] = estimate(benchmark.build(), truth).latency_ms
    profile = fit_profile(spec, measured)
    assert profile["kernel_us"] == pytest.approx(3.0)
    for op_class, value in (("conv", 0.02), ("matmul", 0.04), ("reduction", 0.01)):
        assert profile["efficiency"][op_class] == pytest.approx(value, rel=1e-3)


def test_kernels_faster_than_the_nominal_peak_scale_the_peak():
    """A CPU that boosts above the clock /proc/cpuinfo reports runs compute-bound kernels faster
    than the nominal peak: the fit scales the peak by the fastest of them (instead of clamping
    efficiencies at 1), and the calibrated host target predicts those latencies again."""
    import dataclasses

    from mcc.hwmodels.calibrate import BENCHMARKS, fit_profile
    from mcc.hwmodels.costmodel import estimate

    spec = dataclasses.replace(load_target("host"), efficiency_curves={})
    boosted = dataclasses.replace(spec, kernel_overhead_us=1.0, bandwidth_efficiency=1.0,
                                  peak_gops={k: 1.5 * v for k, v in spec.peak_gops.items()},
                                  efficiency={**spec.efficiency, "conv": 0.9, "pointwise_conv": 1.0, "matmul": 0.5})
    measured = {b.name: 1.0e-3 if b.op_class == "overhead" else estimate(b.build(), boosted).latency_ms
                for b in BENCHMARKS}
    profile = fit_profile(spec, measured)
    assert profile["peak_scale"] == pytest.approx(1.5, rel=1e-3)
    assert profile["effective_clock_ghz"] == pytest.approx(1.5 * spec.clock_ghz, rel=1e-3)
    assert profile["efficiency"]["pointwise_conv"] == pytest.approx(1.0, rel=1e-3)
    assert profile["efficiency"]["conv"] == pytest.approx(0.9, rel=1e-3)
    assert profile["efficiency"]["matmul"] == pytest.approx(0.5, rel=1e-3)


def test_efficiency_curve_fit_and_interpolation():
    import dataclasses
    import math

    from mcc.hwmodels.calibrate import fit_curve

    curve = fit_curve([(288, 0.01), (9, 0.1), (9, 0.4), (4608, 0.001)])
    assert [length for length, _ in curve] == [9, 288, 4608]  # sorted, repeated lengths merged
    assert curve[0][1] == pytest.approx(0.2)  # geometric mean of 0.1 and 0.4
    spec = dataclasses.replace(load_target("host"), efficiency_curves={"conv": tuple(map(tuple, curve))})
    assert spec.node_efficiency("conv", 9) == pytest.approx(0.2)
    assert spec.node_efficiency("conv", 3) == pytest.approx(0.2)  # held before the first point
    assert spec.node_efficiency("conv", 10_000) == pytest.approx(0.001)  # and after the last
    # halfway in log(length) between 288 and 4608 is 1152: halfway in log(efficiency) is sqrt(0.01 x 0.001)
    assert spec.node_efficiency("conv", 1152) == pytest.approx(math.sqrt(0.01 * 0.001))
    assert spec.node_efficiency("matmul", 288) == spec.efficiency["matmul"]  # no curve for that class
    assert fit_curve([]) == []


@pytest.mark.parametrize("curves", [
    {"conv": [[9, 0.2], [3, 0.1]]},  # not sorted
    {"conv": [[9, 1.5]]},  # efficiency above 1
    {"softmax": [[9, 0.1]]},  # not a curve class
])
def test_profile_with_a_bad_curve_is_ignored(cache, curves):
    from mcc.hwmodels.host import calibration_path

    path = calibration_path()
    path.parent.mkdir(parents=True)
    from mcc.backends.tvm.schedules import SCHEDULES_VERSION

    from mcc.hwmodels.host import CALIBRATION_VERSION

    path.write_text(json.dumps({"efficiency": {"conv": 0.5}, "efficiency_curves": curves,
                                "schedules_version": SCHEDULES_VERSION, "calibration_version": CALIBRATION_VERSION}))
    target = load_target("host")
    assert "calibrated on host" not in target.sources["efficiency"] and not target.efficiency_curves


def test_a_convolution_micro_benchmark_runs_its_kernel_alone(tmp_path):
    """A one-convolution model runs channels-last: in NCHW, TVM's library transposes its input and
    output, which a real model pays once. With NHWC at its boundaries (`channels_last_io`) those
    transposes cancel, and the library runs the convolution kernel alone, computing the same."""
    import numpy as np

    from mcc.backends import get_backend
    from mcc.hwmodels.calibrate import BENCHMARKS, channels_last_io, measure_ms
    from tests.conftest import ort_run

    spec = load_target("host")
    backend = get_backend(spec.backend)
    model = {b.name: b for b in BENCHMARKS}["conv1x1-64x28"].build()

    def called(candidate, shape):
        library = tmp_path / f"{len(list(tmp_path.iterdir()))}.so"
        backend.compile(candidate, spec.tvm(), {candidate.graph.input[0].name: shape}, library,
                        exec_mode="bytecode")  # the VM's instrument hook sees interpreted calls only
        runner = backend.load(library, candidate)
        feed = {candidate.graph.input[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        np.testing.assert_allclose(runner.run(feed)[0], ort_run(candidate, feed)[0], rtol=1e-4, atol=1e-5)
        return [name for name in runner.kernel_ms(feed, repeat=2) if not name.startswith("vm.builtin")]

    nchw = called(model, (1, 64, 28, 28))
    assert len(nchw) == 3 and sum("transpose" in name for name in nchw) == 2, nchw  # in, conv, out
    (kernel,) = called(channels_last_io(model), (1, 28, 28, 64))
    assert "conv2d" in kernel
    assert measure_ms(model, spec, tmp_path, repeat=3) > 0
