"""TVM RPC on loopback: a tracker and a device server started here, `mcc compile --rpc` validating
and timing on the device, tuning measured through MetaSchedule's RPCRunner, and one-line errors
for an unreachable tracker or an unknown device key."""

from __future__ import annotations

import json
import socket
import time

import pytest

from mcc.backends.tvm import remote, tuning
from mcc.hwmodels import load_target
from mcc.toolchain.errors import UsageError
from tests.backends.test_tuning import MODEL_A, lowered, save

KEY = "mcc-test-device"


@pytest.fixture(scope="module")
def rpc_device():
    """(host, port) of a tracker with one server registered under KEY; both stopped afterwards
    (a server left running keeps its popen worker alive)."""
    from tvm.rpc.server import Server
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host="127.0.0.1", port=19190, port_end=19290, silent=True)
    server = None
    try:
        server = Server(host="127.0.0.1", port=19300, port_end=19400, key=KEY,
                        tracker_addr=("127.0.0.1", tracker.port), silent=True)
        deadline = time.monotonic() + 30
        while True:  # the server registers with the tracker in the background
            try:
                remote.check_tracker("127.0.0.1", tracker.port, KEY)
                break
            except UsageError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield "127.0.0.1", tracker.port
    finally:
        if server is not None:
            server.terminate()
        tracker.terminate()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_compile_validates_and_times_on_the_rpc_device(rpc_device, run_mcc, tmp_path):
    host, port = rpc_device
    model = save(tmp_path, "a", MODEL_A)
    result = run_mcc("compile", model, "-o", tmp_path / "out", "--rpc", f"{host}:{port}", "--rpc-key", KEY,
                     env={"MCC_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    assert f"run on RPC device '{KEY}' via {host}:{port}" in result.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["validation"]["passed"] and report["validation"]["device"] == "remote"
    assert report["remote"]["tracker"] == f"{host}:{port}" and report["remote"]["key"] == KEY
    latency = report["remote"]["latency_ms"]
    assert latency["runs"] == 10 and 0 < latency["min"] <= latency["median"]


def test_unreachable_tracker_is_one_line_naming_it(run_mcc, tmp_path):
    port = free_port()
    result = run_mcc("compile", save(tmp_path, "a", MODEL_A), "-o", tmp_path / "out",
                     "--rpc", f"127.0.0.1:{port}", "--rpc-key", KEY)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"mcc: usage error: cannot reach the RPC tracker at 127.0.0.1:{port}")
    assert not (tmp_path / "out").exists()


def test_unknown_device_key_is_one_line_listing_the_keys(rpc_device, run_mcc, tmp_path):
    host, port = rpc_device
    result = run_mcc("tune", save(tmp_path, "a", MODEL_A), "--budget", "1m", "--rpc", f"{host}:{port}",
                     "--rpc-key", "no-such-device", env={"MCC_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 2
    assert result.stderr.strip() == (f"mcc: usage error: the RPC tracker at {host}:{port} has no server with key "
                                     f"'no-such-device' (keys: {KEY})")


def test_a_port_that_is_not_a_tracker_is_refused(monkeypatch):
    monkeypatch.setattr(remote, "CONNECT_TIMEOUT_S", 0.5)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(UsageError, match=f"127.0.0.1:{port} does not answer as a TVM RPC tracker \\(no reply\\)"):
            remote.check_tracker("127.0.0.1", port, KEY)


@pytest.mark.parametrize("text", ["localhost", "host:", ":9190", "host:99999", "host:port"])
def test_malformed_address(text):
    with pytest.raises(UsageError, match="is not HOST:PORT"):
        remote.parse_address(text)


def test_tuning_measures_on_the_rpc_device(rpc_device, tmp_path, monkeypatch):
    host, port = rpc_device
    monkeypatch.setenv("MCC_CACHE_DIR", str(tmp_path / "cache"))
    target = load_target("host").tvm()
    summary = tuning.tune(lowered(MODEL_A, target), target, 300, runner=remote.tuning_runner(host, port, KEY),
                          max_trials_per_task=1, search="random")
    assert summary.runner == "RPCRunner"
    assert summary.tasks_total == 2 and len(summary.tuned) == 2
    assert summary.trials == 2 and summary.failed_trials == 0 and summary.records_written == 2
    # the default schedules' baselines were measured on the device too, one record each
    assert summary.default_schedules_measured == 2
    baselines = tuning.database_dir(target) / tuning.DEFAULTS_DIR / tuning.RECORD_FILE
    assert len(baselines.read_text().splitlines()) == 2
