"""mcc's tuning database: records shared across models, budget, resume after a kill, corruption
repair, and compiles that use the records (outputs still checked against onnxruntime).

Real MetaSchedule runs on tiny MLPs, one random-search trial per kernel, so the whole file takes
about a minute; every test points MCC_CACHE_DIR at its own folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.backends.tvm import tuning
from mcc.hwmodels import load_target
from mcc.toolchain.errors import UsageError

BATCH, FEATURES = 4, 16
QUICK = {"max_trials_per_task": 1, "search": "random"}


def mlp(widths: list[int], input_name: str = "x", last: str | None = None, seed: int = 0) -> onnx.ModelProto:
    """x[4, widths[0]] -> Gemm+Relu -> (MatMul+Relu)* -> MatMul (-> `last`): one fused kernel per layer."""
    rng = np.random.default_rng(seed)
    nodes, inits, previous = [], [], input_name
    layers = list(zip(widths[:-1], widths[1:]))
    for index, (fan_in, fan_out) in enumerate(layers):
        weight = f"w{index}"
        inits.append(numpy_helper.from_array((rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32), weight))
        output = f"h{index}" if index < len(layers) - 1 else "y"
        if index == 0:
            inits.append(numpy_helper.from_array(rng.normal(size=fan_out).astype(np.float32), "b0"))
            nodes.append(helper.make_node("Gemm", [previous, weight, "b0"], [f"{output}_pre"], name="fc0"))
        else:
            nodes.append(helper.make_node("MatMul", [previous, weight], [f"{output}_pre"], name=f"fc{index}"))
        if index < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [f"{output}_pre"], [output], name=f"relu{index}"))
        elif last is not None:
            nodes.append(helper.make_node(last, [f"{output}_pre"], [output], name="last"))
        else:
            nodes[-1].output[0] = output
        previous = output
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [BATCH, widths[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, widths[-1]])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


# A and B share their first layer's kernel (Gemm 16->32 + Relu: same shapes; the weights are
# kernel parameters, and the input names differ); their last layers differ.
MODEL_A = ([FEATURES, 32, 16], "x")
MODEL_B = ([FEATURES, 32, 8], "features")
# shares the first kernel too; compiled with --budget. Its Tanh is rewritten by the compile's
# lowering (fast math) before records are looked up: tuning must see the same kernel
MODEL_C = ([FEATURES, 32, 12], "x", "Tanh")
SHARED = "fused_matmul_add_relu1"


def save(tmp: Path, name: str, spec) -> Path:
    path = tmp / f"{name}.onnx"
    onnx.save(mlp(*spec), str(path))
    return path


def lowered(spec, target):
    return tuning.lowered_for_tuning(mlp(*spec), target, {spec[1]: (BATCH, FEATURES)})


@pytest.fixture(scope="module")
def target():
    return load_target("host").tvm()


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, target):
    """A cache where model A, then model B, were tuned (one trial per kernel)."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MCC_CACHE_DIR", str(cache))
        calls = []
        summary_a = tuning.tune(lowered(MODEL_A, target), target, 300, progress=lambda *call: calls.append(call), **QUICK)
        summary_b = tuning.tune(lowered(MODEL_B, target), target, 300, **QUICK)
        # One trial rarely beats mcc's default schedule, and a record that loses to it (or was
        # never compared with it) is not applied (test_a_record_is_applied_only_where_it_beats_
        # the_default_schedule): these tests are about the records, so their default baselines
        # are made slow.
        baselines = tuning.database_dir(target) / tuning.DEFAULTS_DIR
        defaults_measured = len(tuning._lines(baselines / tuning.RECORD_FILE))
        _slow_baselines(target)
        yield {"cache": cache, "a": summary_a, "b": summary_b, "progress": calls, "defaults_measured": defaults_measured}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv("MCC_CACHE_DIR", str(directory))
    return directory


def use_cache(monkeypatch, directory: Path) -> None:
    monkeypatch.setenv("MCC_CACHE_DIR", str(directory))


def test_tuning_measures_each_default_schedule_once(tuned):
    assert tuned["a"].default_schedules_measured == 2  # both kernels of model A
    assert tuned["b"].default_schedules_measured == 1  # B's own kernel; the shared one was measured
    assert tuned["defaults_measured"] == 3


def _slow_baselines(target, seconds: float | None = 100.0, ratio: float = 1.0) -> None:
    """The current cache's default baselines replaced: every record's kernel measured `seconds`, or
    `ratio` times its record."""
    from tvm.s_tir import meta_schedule as ms

    directory = tuning.database_dir(target)
    records = tuning._json_database(directory)
    shutil.rmtree(directory / tuning.DEFAULTS_DIR, ignore_errors=True)
    (directory / tuning.DEFAULTS_DIR).mkdir()
    defaults = tuning._json_database(directory / tuning.DEFAULTS_DIR)
    for record in records.get_all_tuning_records():
        workload = defaults.commit_workload(record.workload.mod)
        measured = seconds if seconds is not None else ratio * float(record.run_secs[0])
        defaults.commit_tuning_record(ms.database.TuningRecord(record.trace, workload, [measured], target,
                                                               record.args_info))


def _baselines(tuned, tmp_path, monkeypatch, target, seconds: float | None, ratio: float = 1.0) -> None:
    """A copy of the tuned cache whose default baselines all measured `seconds`, or `ratio` times
    their kernel's record."""
    copy = tmp_path / "cache"
    shutil.copytree(tuned["cache"], copy)
    use_cache(monkeypatch, copy)
    _slow_baselines(target, seconds, ratio)


def test_records_never_compared_with_the_default_are_not_applied(tuned, tmp_path, monkeypatch, target):
    """After the defaults database moves to a new version (or is lost), the records stay but have
    no default timing to beat: mcc keeps its default schedules and says why."""
    import logging

    copy = tmp_path / "cache"
    shutil.copytree(tuned["cache"], copy)
    use_cache(monkeypatch, copy)
    shutil.rmtree(tuning.database_dir(target) / tuning.DEFAULTS_DIR)
    notes = []
    handler = logging.Handler()
    handler.emit = lambda record: notes.append(record.getMessage())
    tuning.log.addHandler(handler)
    try:
        assert tuning.apply_records(lowered(MODEL_A, target), target)[1] == []
    finally:
        tuning.log.removeHandler(handler)
    # the database holds models A and B: three kernels, each with a default schedule
    assert any("3 tuned record(s) not used" in note and "mcc tune" in note for note in notes), notes
    # a compile that leaves untuned kernels as TVM's loops still takes the records
    assert tuning.apply_records(lowered(MODEL_A, target), target, default_schedules=False)[1] == sorted(
        [SHARED, "matmul11"])
    # and `mcc tune` on a model whose kernels all have records measures their defaults again
    summary = tuning.tune(lowered(MODEL_A, target), target, 300, **QUICK)
    assert sorted(summary.already_in_database) == sorted([SHARED, "matmul11"])
    assert summary.default_schedules_measured == 2


def test_a_record_is_applied_only_where_it_beats_the_default_schedule(tuned, tmp_path, monkeypatch, target):
    _baselines(tuned, tmp_path / "fast", monkeypatch, target, 1e-12)  # defaults faster than any record
    assert tuning.apply_records(lowered(MODEL_A, target), target)[1] == []
    _baselines(tuned, tmp_path / "slow", monkeypatch, target, 100.0)  # defaults slower
    assert tuning.apply_records(lowered(MODEL_A, target), target)[1] == sorted([SHARED, "matmul11"])


def test_a_record_must_beat_the_default_by_a_margin(tuned, tmp_path, monkeypatch, target):
    """The best of many noisy trials reads low: a record 5 % faster than the default is not
    trusted, one 20 % faster is."""
    _baselines(tuned, tmp_path / "close", monkeypatch, target, None, ratio=1.05)
    assert tuning.apply_records(lowered(MODEL_A, target), target)[1] == []
    _baselines(tuned, tmp_path / "clear", monkeypatch, target, None, ratio=1.2)
    assert tuning.apply_records(lowered(MODEL_A, target), target)[1] == sorted([SHARED, "matmul11"])


def test_database_lives_in_the_cache_keyed_by_the_whole_target(cache, target, monkeypatch):
    directory = tuning.database_dir(target)
    assert directory.parent == cache / "tuning"
    assert directory.name.startswith("llvm-") and f"-{int(target.attrs['num-cores'])}c-" in directory.name
    import tvm

    other = tvm.target.Target({"kind": "llvm", "mcpu": str(target.attrs["mcpu"]), "num-cores": 64})
    assert tuning.database_dir(other) != directory
    monkeypatch.delenv("MCC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache / "xdg"))
    assert tuning.database_dir(target).parent == cache / "xdg" / "mcc" / "tuning"


def test_first_model_tunes_every_kernel_and_commits_records(tuned, target):
    summary = tuned["a"]
    assert summary.tasks_total == 2 and sorted(summary.tuned) == sorted([SHARED, "matmul11"])
    assert summary.already_in_database == [] and summary.skipped == {}
    assert summary.trials == 2 and summary.failed_trials == 0 and summary.records_written == 2
    assert not summary.stopped_early
    # progress: (label, done, total) per batch, ending at the total
    assert tuned["progress"][0] == ("tuning", 0, 2) and tuned["progress"][-1] == ("tuning", 2, 2)
    directory = Path(summary.database)
    assert len((directory / tuning.WORKLOAD_FILE).read_text().splitlines()) == 3  # A's two, B's last layer
    assert "Trial #1" in (directory / tuning.LOG_FILE).read_text()


def test_second_model_reuses_the_shared_kernel(tuned):
    summary = tuned["b"]
    assert summary.already_in_database == [SHARED]
    assert summary.tuned == ["matmul11"] and summary.trials == 1


def test_apply_records_replaces_the_tuned_kernels(tuned, target, monkeypatch):
    use_cache(monkeypatch, tuned["cache"])
    mod = lowered(MODEL_B, target)
    applied, names = tuning.apply_records(mod, target)
    assert names == sorted([SHARED, "matmul11"])
    assert all(not applied[name].same_as(mod[name]) for name in names)


def test_apply_records_is_free_without_a_database(cache, target):
    mod = lowered(MODEL_A, target)
    start = time.perf_counter()
    applied, names = tuning.apply_records(mod, target)
    assert applied is mod and names == [] and time.perf_counter() - start < 0.5
    assert not cache.exists()  # looking creates nothing


def test_compile_reports_the_tuned_kernels_and_validates(tuned, tmp_path, monkeypatch):
    from mcc.toolchain.driver import CompileRequest, compile_model

    use_cache(monkeypatch, tuned["cache"])
    outcome = compile_model(CompileRequest(model_path=save(tmp_path, "b", MODEL_B), output_dir=tmp_path / "out"))
    report = outcome.report
    assert outcome.passed and report["validation"]["device"] == "local"
    kernels = report["kernels"]
    assert kernels["tuned_kernels"] == sorted([SHARED, "matmul11"])
    assert kernels["tuned_flops_fraction"] == 1.0
    assert kernels["tuning_database"] == tuned["a"].database
    assert "tuning" not in report  # no --budget: records only


def test_compile_with_budget_tunes_what_is_missing_then_compiles(tuned, tmp_path, monkeypatch):
    from mcc.toolchain.driver import CompileRequest, compile_model

    cache = tmp_path / "cache"
    shutil.copytree(tuned["cache"], cache)
    use_cache(monkeypatch, cache)
    request = CompileRequest(model_path=save(tmp_path, "c", MODEL_C), output_dir=tmp_path / "out", budget_s=120,
                             max_trials_per_task=1, search="random")
    outcome = compile_model(request)
    report = outcome.report
    (new_kernel,) = report["tuning"]["tuned"]
    assert "tanh" in new_kernel and report["tuning"]["already_in_database"] == [SHARED]
    assert report["tuning"]["default_schedules_measured"] == 1  # the new kernel's baseline
    kernels = report["kernels"]
    # the shared kernel's record has no baseline left (see `tuned`); the new kernel's one-trial
    # record is used only if it beat the default schedule measured beside it
    assert SHARED in kernels["tuned_kernels"]
    assert new_kernel in kernels["tuned_kernels"] or new_kernel in kernels["default_schedules"]
    assert 0 < kernels["tuned_flops_fraction"] <= 1.0
    assert outcome.passed  # the tuned artifact still matches onnxruntime
    assert "tune" in report["timings_s"]


def test_partial_coverage_is_the_share_of_estimated_flops(tuned, target):
    flops = tuning.kernel_flops(lowered(MODEL_A, target))
    assert flops == {SHARED: 2 * BATCH * FEATURES * 32 + 2 * BATCH * 32, "matmul11": 2 * BATCH * 32 * 16}
    assert tuning.tuned_flops_fraction(flops, [SHARED]) == pytest.approx(flops[SHARED] / sum(flops.values()))
    assert tuning.tuned_flops_fraction({}, []) is None


def test_a_default_schedule_tvm_cannot_measure_does_not_stop_the_tuning(cache, target):
    """37 outputs (prime): the default schedule pads the weights with a zero-filled copy, which
    MetaSchedule's argument analysis refuses as pre-processing (PP-OCRv5 rec's 18385-class
    classifier stopped `mcc tune` with an internal error); the kernel is tuned all the same."""
    summary = tuning.tune(lowered(([FEATURES, 37], "x"), target), target, 300, **QUICK)
    assert summary.tuned and not summary.skipped, summary


def test_a_spent_budget_stops_before_the_next_batch(cache, target):
    summary = tuning.tune(lowered(MODEL_A, target), target, 1e-3, **QUICK)
    assert summary.stopped_early and summary.trials == 0 and summary.tuned == []
    assert set(summary.skipped.values()) == {"the budget ran out before it was tuned"}


def test_dynamic_kernels_are_skipped_with_a_note(cache, target):
    import tvm
    from tvm import relax

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([tvm.tirx.Var("n", "int64"), 16], "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            output = builder.emit_output(relax.op.nn.relu(x))
        builder.emit_func_output(output)
    mod = relax.get_pipeline("zero")(builder.get())
    summary = tuning.tune(mod, target, 60, **QUICK)
    assert summary.tasks_total == 1 and summary.trials == 0
    assert list(summary.skipped.values()) == ["dynamic shape (MetaSchedule tunes static shapes only)"]
    assert any("dynamic shape" in note for note in summary.notes)


def test_a_second_tune_on_the_same_database_is_refused(cache, target):
    directory = tuning.database_dir(target)
    directory.mkdir(parents=True)
    with tuning._exclusive_lock(directory) as locked:
        assert locked
        with pytest.raises(UsageError, match="in use by another `mcc tune`"):
            tuning.tune(lowered(MODEL_A, target), target, 60, **QUICK)


# --------------------------------------------------------------------------------------------------
# Corrupt databases


def corrupt_copy(tuned, tmp_path, monkeypatch, target) -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(tuned["cache"], cache)
    use_cache(monkeypatch, cache)
    return tuning.database_dir(target)


def test_truncated_and_garbage_lines_are_dropped_and_the_rest_kept(tuned, tmp_path, monkeypatch, target):
    directory = corrupt_copy(tuned, tmp_path, monkeypatch, target)
    records = directory / tuning.RECORD_FILE
    good = records.read_text()
    assert len(good.splitlines()) == 3
    records.write_text(good + "garbage\n" + good.splitlines()[0][:-40])  # as a kill mid-line leaves it
    notes = tuning.check_database(target)
    assert len(notes) == 1 and "was corrupt" in notes[0] and "3 valid record(s), 2 line(s) dropped" in notes[0]
    assert records.read_text() == good
    (moved,) = directory.glob(f"{tuning.RECORD_FILE}.corrupt-*")
    assert "garbage" in moved.read_text()
    assert tuning.check_database(target) == []  # repaired once
    assert tuning.apply_records(lowered(MODEL_A, target), target)[1] == sorted([SHARED, "matmul11"])


def test_records_are_renumbered_when_an_earlier_workload_is_dropped(tuned, tmp_path, monkeypatch, target):
    from tvm.s_tir import meta_schedule as ms

    directory = corrupt_copy(tuned, tmp_path, monkeypatch, target)
    workloads = directory / tuning.WORKLOAD_FILE
    lines = workloads.read_text().splitlines()
    first = ms.database.Workload.from_json(json.loads(lines[0]))
    (shared_task,) = [t for t in ms.relax_integration.extract_tasks(lowered(MODEL_B, target), target)
                      if t.task_name == SHARED]
    import tvm

    tvm.ir.assert_structural_equal(first.mod, shared_task.dispatched[0])  # line 0 is the shared kernel
    workloads.write_text("\n".join(["[\"123\", \"not base64\"]", *lines[1:]]) + "\n")
    notes = tuning.check_database(target)
    assert "rebuilt from its 2 valid record(s), 2 line(s) dropped" in notes[0]
    # B's last layer (workload line 2 -> 1) still finds its record; the shared kernel has none now
    assert tuning.apply_records(lowered(MODEL_B, target), target)[1] == ["matmul11"]


def test_a_file_that_is_not_a_database_is_replaced_by_an_empty_one(tuned, tmp_path, monkeypatch, target):
    directory = corrupt_copy(tuned, tmp_path, monkeypatch, target)
    (directory / tuning.WORKLOAD_FILE).write_text('{"not": "a workload"}\n')
    notes = tuning.check_database(target)
    assert "rebuilt from its 0 valid record(s)" in notes[0]
    assert tuning.apply_records(lowered(MODEL_A, target), target)[1] == []


def test_compile_reports_the_repair_in_its_notes(tuned, tmp_path, monkeypatch, target):
    from mcc.toolchain.driver import CompileRequest, compile_model

    directory = corrupt_copy(tuned, tmp_path, monkeypatch, target)
    with open(directory / tuning.RECORD_FILE, "a") as stream:
        stream.write("[0, [\n")
    outcome = compile_model(CompileRequest(model_path=save(tmp_path, "a", MODEL_A), output_dir=tmp_path / "out"))
    assert outcome.passed
    assert any("was corrupt" in note for note in outcome.report["notes"])
    assert outcome.report["kernels"]["tuned_kernels"] == sorted([SHARED, "matmul11"])


# --------------------------------------------------------------------------------------------------
# The CLI, and resuming after a kill


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1h", 3600), ("1h30m", 5400), ("2.5m", 150),
                                           ("45", 45), (" 5M ", 300)])
def test_budget_parsing(text, seconds):
    from mcc.toolchain.cli.tune import parse_budget

    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10x", "-5m", "0", "m"])
def test_bad_budget_is_a_one_line_usage_error(text, run_mcc, tmp_path):
    result = run_mcc("tune", save(tmp_path, "a", MODEL_A), "--budget", text, env={"MCC_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("mcc: usage error: Invalid value for '--budget'")
    assert "is not a duration" in line or "longer than 0 s" in line
    assert not (tmp_path / "tuning").exists()


def test_tune_resumes_after_a_kill(mcc_exe, tmp_path):
    """A `mcc tune` killed (SIGKILL) after its first record keeps it; the re-run tunes only the rest."""
    model = tmp_path / "deep.onnx"
    onnx.save(mlp([FEATURES, 24, 20, 12, 8]), str(model))  # four kernels of different shapes
    env = {**os.environ, "MCC_CACHE_DIR": str(tmp_path / "cache")}
    command = [mcc_exe, "tune", str(model), "--budget", "5m", "--max-trials-per-task", "1", "--search", "random"]
    process = subprocess.Popen(command, env=env, cwd=tmp_path, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            found = list((tmp_path / "cache").glob(f"tuning/*/{tuning.RECORD_FILE}"))
            if found and found[0].read_text().count("\n") >= 1:
                records = found[0]
                break
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert records is not None, "the first record never arrived"
    before = records.read_text().splitlines()
    assert 1 <= len(before) < 4, "the run finished before it could be killed"

    rerun = subprocess.run([*command, "--json"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)["tuning"]
    assert len(summary["already_in_database"]) == len(before)
    assert len(summary["tuned"]) == 4 - len(before) and summary["trials"] == 4 - len(before)
    after = records.read_text().splitlines()
    assert after[:len(before)] == before and len(after) == 4

    # through the console script's human summary: nothing is left to tune, and nothing is run
    again = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "4 kernels: 0 tuned now, 4 already in the database; 0 trials" in again.stdout
    assert records.read_text().splitlines() == after


def test_the_local_runner_measures_with_mccs_evaluator():
    """MetaSchedule's LocalRunner measures in a worker process with mcc's evaluator (the calling
    thread off TVM's worker CPUs): registered there by its initializer, called with FFI arguments."""
    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    target = load_target("host").tvm()
    a = te.placeholder((4096,), name="a")
    func = te.create_prim_func([a, te.compute((4096,), lambda i: a[i] * 2.0, name="b")])
    built = ms.builder.LocalBuilder(f_build=tuning._build_candidate).build(
        [ms.builder.BuilderInput(tvm.IRModule({"main": func}), target)])[0]
    assert built.error_msg is None
    runner = tuning.local_runner()
    assert runner.f_run_evaluator == tuning.RUN_EVALUATOR
    for _ in range(2):  # the second candidate finds TVM's pool started
        result = runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu",
                                                   ms.arg_info.ArgInfo.from_prim_func(func))])[0].result()
        assert result.error_msg is None and len(result.run_secs) > 0
