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
    assert all(value > 0 for value in profile["measured_ms"].values())
    assert 0 < profile["efficiency"]["conv"] <= 1 and profile["kernel_us"] > 0
    after = load_target("host")
    assert after.efficiency["conv"] == pytest.approx(profile["efficiency"]["conv"])
    assert after.kernel_overhead_us == pytest.approx(profile["kernel_us"])
    assert "calibrated on host" in after.sources["efficiency"]
    assert before.sources["efficiency"] != after.sources["efficiency"]


def test_corrupt_profile_is_ignored(cache):
    from mcc.hwmodels.host import calibration_path

    path = calibration_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert "calibrated on host" not in load_target("host").sources["efficiency"]


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


def test_reduction_buckets_fit_and_lookup():
    import dataclasses
    import math

    from mcc.hwmodels.calibrate import fit_reduction_buckets

    buckets = fit_reduction_buckets([(9, 0.1), (27, 0.4), (288, 0.01), (576, 0.0025), (5000, 0.002)])
    assert [limit for limit, _ in buckets][:3] == [32.0, 256.0, 1024.0]
    assert buckets[0][1] == pytest.approx(math.sqrt(0.1 * 0.4))  # geometric mean
    assert buckets[1][1] == pytest.approx(0.2)  # empty: nearest neighbour (the first bucket)
    assert buckets[2][1] == pytest.approx(math.sqrt(0.01 * 0.0025))
    assert buckets[3][1] == pytest.approx(0.002)
    spec = dataclasses.replace(load_target("host"), conv_reduction_buckets=tuple(map(tuple, buckets)))
    assert spec.node_efficiency("depthwise_conv", 9) == pytest.approx(0.2)
    assert spec.node_efficiency("conv", 576) == pytest.approx(0.005)
    assert spec.node_efficiency("matmul", 576) == spec.efficiency["matmul"]  # not a convolution
    assert fit_reduction_buckets([]) == []
