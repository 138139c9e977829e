"""Running compiled artifacts on a device over TVM RPC: a tracker hands out the device's server by key.

    python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190                 # anywhere reachable
    python -m tvm.exec.rpc_server --tracker TRACKER:9190 --key rpi4           # on the device
    mcc compile model.onnx --rpc TRACKER:9190 --rpc-key rpi4

`mcc compile --rpc` uploads the exported library, loads it into a Relax VM on the device, and
validates and times the outputs there; `mcc tune --rpc` measures every candidate there
(MetaSchedule's RPCRunner). Everything goes through TVM's RPC; mcc adds only the checks that turn
an unreachable tracker or a missing device into one line naming it.
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import numpy as np
import onnx

from mcc.toolchain import ir
from mcc.toolchain.errors import UsageError

CONNECT_TIMEOUT_S = 5.0
#: how long the device's server keeps one validation session (upload, load, run, time)
SESSION_TIMEOUT_S = 600
#: MetaSchedule's RPCRunner: one session per candidate
TUNING_SESSION_TIMEOUT_S = 60


def parse_address(text: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port); a UsageError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"'{text}' is not HOST:PORT of a TVM RPC tracker (e.g. 127.0.0.1:9190)")
    return host.strip("[]"), int(port)


def check_tracker(host: str, port: int, key: str) -> None:
    """Fail fast, in one line, when nothing answers at host:port as a TVM RPC tracker or the
    tracker has no server registered under `key` (a request would wait for one forever)."""
    from tvm import rpc
    from tvm.rpc import base

    where = f"{host}:{port}"
    try:
        probe = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
    except OSError as exc:
        raise UsageError(f"cannot reach the RPC tracker at {where} ({exc.strerror or exc})") from None
    with probe:
        try:  # the tracker's handshake, with a timeout TVM's client does not set
            probe.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            reply = probe.recv(4)
        except OSError as exc:
            reply = b""
            why = "no reply" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        else:
            why = "wrong handshake"
    if len(reply) != 4 or struct.unpack("<i", reply)[0] != base.RPC_TRACKER_MAGIC:
        raise UsageError(f"{where} does not answer as a TVM RPC tracker ({why})")
    try:
        summary = rpc.connect_tracker(host, port).summary()
    except (OSError, RuntimeError) as exc:
        raise UsageError(f"the RPC tracker at {where} failed to answer ({_first_line(exc)})") from None
    keys = sorted({item["key"].split(":", 1)[-1] for item in summary.get("server_info", [])})
    if key not in keys:
        known = ", ".join(keys) if keys else "none"
        raise UsageError(f"the RPC tracker at {where} has no server with key '{key}' (keys: {known})")


def connect(host: str, port: int, key: str, session_timeout_s: float = SESSION_TIMEOUT_S):
    """An RPC session on a device the tracker hands out for `key` (waits while all are busy)."""
    from tvm import rpc

    try:
        return rpc.connect_tracker(host, port).request(key, priority=1, session_timeout=session_timeout_s)
    except (OSError, RuntimeError) as exc:
        raise UsageError(f"the RPC tracker at {host}:{port} gave no '{key}' device ({_first_line(exc)})") from None


class RemoteRunner:
    """A compiled library uploaded to an RPC device and run through the Relax VM there
    (the interface of `common.RelaxVMRunner`)."""

    def __init__(self, session, library_path: Path, model: onnx.ModelProto, device: str = "cpu"):
        from tvm import relax

        self.session = session
        remote_name = f"mcc-{os.getpid()}-{Path(library_path).name}"
        session.upload(str(library_path), target=remote_name)
        self.module = session.load_module(remote_name)
        self.device = session.device(device, 0)
        self.vm = relax.VirtualMachine(self.module, self.device)
        self.input_names = [value.name for value in ir.graph_inputs(model)]

    def _arguments(self, inputs: dict[str, np.ndarray]):
        import tvm

        return [tvm.runtime.tensor(np.require(inputs[name], requirements="C"), self.device) for name in self.input_names]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        from mcc.backends.tvm.common import _flatten

        return _flatten(self.vm["main"](*self._arguments(inputs)))

    def time_ms(self, inputs: dict[str, np.ndarray], repeat: int = 10, number: int = 1) -> list[float]:
        """Per-run latencies in ms, measured on the device by TVM's time_evaluator (after a warm-up)."""
        arguments = self._arguments(inputs)
        self.vm["main"](*arguments)
        evaluator = self.vm.time_evaluator("main", self.device, number=number, repeat=repeat)
        return [seconds * 1000.0 for seconds in evaluator(*arguments).results]


def tuning_runner(host: str, port: int, key: str):
    """MetaSchedule's RPCRunner measuring candidates on the tracker's `key` devices."""
    from tvm.s_tir.meta_schedule.runner import RPCConfig, RPCRunner

    config = RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                       session_timeout_sec=TUNING_SESSION_TIMEOUT_S)
    return RPCRunner(rpc_config=config, max_workers=1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
