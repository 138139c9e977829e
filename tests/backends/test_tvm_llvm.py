"""The TVM host backend: compile, export, load from disk, run; and refusals for unsupported ops."""

import json
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.backends import get_backend
from mcc.hwmodels import load_target
from mcc.toolchain.errors import UsageError
from tests.conftest import ort_run, parse_model

MULTI_OUTPUT = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[2, 8] x, int64[2, 8] i) => (float[2, 8] a, float[2, 1] b, int64[2, 8] c) <int64[1] ax = {1}> {
    a = Tanh(x)
    b = ReduceMax<keepdims = 1>(a, ax)
    c = Add(i, i)
}
"""


def test_compile_export_load_and_run_multi_output(tmp_path):
    model = parse_model(MULTI_OUTPUT)
    backend = get_backend("tvm-llvm")
    target = load_target("host").tvm()
    artifact = backend.compile(model, target, {"x": (2, 8), "i": (2, 8)}, tmp_path / "m.so")
    assert artifact.library.is_file() and artifact.library.stat().st_size > 0
    assert set(artifact.timings_s) == {"import", "schedule", "build", "export"}
    runner = backend.load(artifact.library, model)
    rng = np.random.default_rng(0)
    feed = {"x": rng.normal(size=(2, 8)).astype(np.float32), "i": rng.integers(0, 9, size=(2, 8))}
    got = runner.run(feed)
    want = ort_run(model, feed)
    assert len(got) == 3
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=1e-6)
    assert len(runner.time_ms(feed, repeat=3)) == 3


def test_host_target_is_detected():
    target = load_target("host").tvm()
    assert str(target.kind) == "llvm"
    assert int(target.attrs["num-cores"]) >= 1


def test_unknown_backend_is_a_usage_error():
    with pytest.raises(UsageError, match="candidates are: tvm-llvm"):
        get_backend("tensorrt")


def lstm_model(second_op: str = "Relu") -> bytes:
    """An LSTM with an activation substitute-recurrent cannot unroll (Softsign), then `second_op`."""
    hidden, inputs, seq = 4, 3, 5
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(1, 4 * hidden, inputs)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=(1, 4 * hidden, hidden)).astype(np.float32), "R")]
    nodes = [helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="encoder/lstm", hidden_size=hidden,
                              activations=["Sigmoid", "Softsign", "Tanh"]),
             helper.make_node(second_op, ["y"], ["out"], name="act")]
    graph = helper.make_graph(nodes, "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, 1, inputs])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [seq, 1, 1, hidden])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def test_unsupported_op_stops_with_one_line_naming_op_node_target(tmp_path, run_mcc):
    path = tmp_path / "lstm.onnx"
    path.write_bytes(lstm_model())
    result = run_mcc("compile", path, "-o", tmp_path / "out")
    assert result.returncode == 5
    assert result.stderr.strip().startswith(
        "mcc: unsupported: op 'LSTM' at node 'encoder/lstm' is not supported by backend tvm-llvm for target 'host'; "
        "no substitution applies (unroll-lstm: "
    )
    assert "Softsign" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_several_unsupported_nodes_are_all_named(tmp_path, run_mcc):
    path = tmp_path / "lstm_celu.onnx"
    path.write_bytes(lstm_model(second_op="Celu"))
    result = run_mcc("compile", path, "-o", tmp_path / "out")
    assert result.returncode == 5
    assert result.stderr.strip().startswith(
        "mcc: unsupported: op 'LSTM' at node 'encoder/lstm' is not supported by backend tvm-llvm for target 'host' "
        "(and 1 more node(s): 'Celu' at 'act'); no substitution applies (unroll-lstm: "
    )


def test_contrib_domain_op_is_not_silently_mis_mapped(tmp_path, run_mcc):
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>
    g (float[2, 8] x) => (float[2, 8] y) { y = com.microsoft.Gelu(x) }
    """)
    path = tmp_path / "gelu.onnx"
    path.write_bytes(model.SerializeToString())
    result = run_mcc("compile", path, "-o", tmp_path / "out")
    assert result.returncode == 5
    assert "op 'Gelu' in domain 'com.microsoft'" in result.stderr


def test_a_model_without_default_domain_ops_is_unsupported_not_an_internal_error(tmp_path, run_mcc):
    graph = helper.make_graph([helper.make_node("Binarizer", ["x"], ["y"], domain="ai.onnx.ml", name="bin")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    path = tmp_path / "ml.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx.ml", 1)], ir_version=8), path)
    result = run_mcc("compile", path, "-o", tmp_path / "out")
    assert result.returncode == 5
    assert result.stderr.strip() == ("mcc: unsupported: op 'Binarizer' in domain 'ai.onnx.ml' at node 'bin' is not "
                                     "supported by backend tvm-llvm for target 'host'")


def test_shape_and_empty_outputs_validate(tmp_path, run_mcc):
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x) => (int64[2] s, float[0, 3] e) <int64[1] zero = {0}, int64[1] two = {2}, int64[1] ax = {0}> {
        s = Shape(x)
        e = Slice(x, two, two, ax)
    }
    """)
    path = tmp_path / "shape.onnx"
    onnx.save(model, path)
    result = run_mcc("compile", path, "-o", tmp_path / "out", "--json")
    assert result.returncode == 0, result.stderr
    outputs = {o["name"]: o for o in json.loads(result.stdout)["validation"]["outputs"]}
    assert outputs["s"]["passed"] and outputs["s"]["dtype"] == "int64" and outputs["e"]["shape"] == [0, 3]


@pytest.mark.parametrize("preset", [None, "1"])
def test_tvm_runs_on_every_core_unless_told_otherwise(preset):
    """TVM's default thread count on x86 is half the hardware threads (one on a 2-vCPU VM); mcc's
    runner and CLI give its pool every core this process may use, and keep a TVM_NUM_THREADS the
    user set."""
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "TVM_NUM_THREADS"}
    if preset is not None:
        env["TVM_NUM_THREADS"] = preset
    code = ("import os\n"
            "from mcc.backends.tvm.common import use_every_core\n"
            "use_every_core()\n"
            "import tvm, tvm_ffi\n"
            "print(tvm_ffi.get_global_func('runtime.NumThreads')(), len(os.sched_getaffinity(0)))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    threads, cores = (int(value) for value in out.split())
    assert threads == (cores if preset is None else 1)


def test_cpu_lists_parse():
    from mcc.backends.tvm.common import _cpu_list

    assert _cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert _cpu_list("1") == {1}


@pytest.mark.skipif(len(__import__("os").sched_getaffinity(0)) < 2, reason="needs 2 CPUs for TVM worker threads")
def test_the_runner_keeps_the_calling_thread_off_the_tvm_workers_cpus(tmp_path, monkeypatch):
    """TVM pins its worker threads, one CPU each; the calling thread runs the first task itself and
    must not share a worker's CPU (it did on this 2-vCPU VM, halving every parallel kernel), and
    gets its own affinity back after each run."""
    import os
    from pathlib import Path

    from mcc.backends.tvm import common

    weights = numpy_helper.from_array(np.random.default_rng(0).normal(size=(32, 16, 3, 3)).astype(np.float32), "w")
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 64, 64])], initializer=[weights]),
        opset_imports=[helper.make_opsetid("", 17)])
    backend = get_backend("tvm-llvm")
    artifact = backend.compile(model, load_target("host").tvm(), {"x": (1, 16, 64, 64)}, tmp_path / "m.so")
    runner = backend.load(artifact.library, model)
    feed = {"x": np.ones((1, 16, 64, 64), np.float32)}
    before = os.sched_getaffinity(0)
    runner.run(feed)  # TVM's pool exists from here on
    workers = set()
    for task in os.listdir("/proc/self/task"):
        status = Path(f"/proc/self/task/{task}/status").read_text()
        cpus = common._cpu_list(next(line for line in status.splitlines()
                                     if line.startswith("Cpus_allowed_list")).split(":")[1])
        if len(cpus) == 1 and int(task) != __import__("threading").get_native_id():
            workers |= cpus
    if not workers or workers >= before:
        pytest.skip("TVM pinned no worker thread here, or one to every CPU (TVM_BIND_THREADS=0, "
                    "TVM_NUM_THREADS of 1 or more than the CPUs)")
    free = common.cpus_free_of_tvm_workers()
    assert free and not free & workers and free <= before
    with common.off_tvm_worker_cpus():
        assert os.sched_getaffinity(0) == free
    assert os.sched_getaffinity(0) == before
    # the runner's own calls run inside it
    seen = []
    real_vm = runner.vm

    class Recording:
        def __getitem__(self, name):
            def call(*args):
                seen.append(os.sched_getaffinity(0))
                return real_vm[name](*args)
            return call

        def time_evaluator(self, *args, **kwargs):
            return real_vm.time_evaluator(*args, **kwargs)

    monkeypatch.setattr(runner, "vm", Recording())
    runner.run(feed)
    assert seen == [free]
    assert len(runner.time_ms(feed, repeat=2)) == 2
    assert os.sched_getaffinity(0) == before


def test_the_vm_function_is_native_code_and_bytecode_builds_profile_per_kernel(tmp_path):
    """mcc's artifacts compile the VM's main function (exec_mode "compiled"): the VM then has no
    instructions to interpret, so its instrument hook sees no call and per-kernel timing says so
    instead of returning nothing; a "bytecode" build of the same model times each kernel, and both
    compute the same."""
    model = parse_model("""
<ir_version: 8, opset_import: ["" : 18]>
g (float[4, 16] x) => (float[4, 16] y) {
    a = Relu(x)
    s = ReduceSum<keepdims = 1>(a)
    y = Div(a, s)
}
""")
    backend = get_backend("tvm-llvm")
    target = load_target("host").tvm()
    feed = {"x": np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)}
    native = backend.load(backend.compile(model, target, {"x": (4, 16)}, tmp_path / "a.so").library, model)
    profiled = backend.load(backend.compile(model, target, {"x": (4, 16)}, tmp_path / "b.so",
                                            exec_mode="bytecode").library, model)
    np.testing.assert_array_equal(native.run(feed)[0], profiled.run(feed)[0])
    np.testing.assert_allclose(native.run(feed)[0], ort_run(model, feed)[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="exec_mode='bytecode'"):
        native.kernel_ms(feed, repeat=1)
    kernels = [name for name in profiled.kernel_ms(feed, repeat=1) if not name.startswith("vm.builtin")]
    assert kernels, "a bytecode build's kernels reach the instrument hook"
