"""`mcc compile` end to end through the installed console script, on the bundled example."""

import json

import numpy as np
import onnx
import pytest

from tests.conftest import EXAMPLE, EXAMPLE_INPUTS


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, mcc_exe):
    import subprocess

    out = tmp_path_factory.mktemp("compile") / "digits"
    result = subprocess.run([mcc_exe, "compile", str(EXAMPLE), "--target", "host", "-o", str(out),
                             "--inputs", str(EXAMPLE_INPUTS), "--verify-each"], capture_output=True, text=True)
    return out, result


def test_exit_code_and_summary(compiled):
    out, result = compiled
    assert result.returncode == 0, result.stderr
    assert "validation PASSED" in result.stdout
    assert "fuse-conv-bn" in result.stdout and "nodes 19 ->" in result.stdout
    assert result.stderr == ""


def test_report_schema(compiled):
    out, _ = compiled
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["passed"] is True
    (output,) = report["validation"]["outputs"]
    assert output["name"] == "logits"
    for key in ("max_abs", "max_rel", "cosine", "sqnr_db"):
        assert key in output
    assert output["max_abs"] < 1e-4 and output["cosine"] > 0.99999
    assert set(report["artifacts"]) >= {"model", "library"}
    for record in report["passes"]:
        assert set(record) >= {"name", "modified", "seconds", "nodes_before", "nodes_after"}
    # passes inside a fixed-point group run once per round: one fuse-conv-bn run folded the BatchNorms
    (folded,) = [r for r in report["passes"] if r["name"] == "fuse-conv-bn" and r["modified"]]
    assert folded["nodes_after"] < folded["nodes_before"]
    assert {"load", "passes", "compile", "validate", "total"} <= set(report["timings_s"])
    assert report["model"]["input_shapes"] == {"image": [1, 1, 8, 8]}
    assert report["validation"]["inputs"] == "file"


def test_artifacts_are_real(compiled):
    out, _ = compiled
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops and "Identity" not in ops and "Dropout" not in ops and "Shape" not in ops
    # The library is a loadable shared object that computes the digit the example holds.
    from mcc.backends.tvm.common import RelaxVMRunner

    runner = RelaxVMRunner(out / "model.so", model)
    image = np.load(EXAMPLE_INPUTS)["image"]
    (logits,) = runner.run({"image": image})
    assert int(np.argmax(logits)) == 2
    assert not any(p.name.startswith(".") for p in out.parent.iterdir()), "staging folder left behind"


def test_recompile_replaces_previous_output_and_model_bytes_are_deterministic(compiled, run_mcc):
    out, _ = compiled
    first = (out / "model.onnx").read_bytes()
    result = run_mcc("compile", EXAMPLE, "-o", out, "--passes", "default", "--inputs", EXAMPLE_INPUTS)
    assert result.returncode == 0, result.stderr
    assert (out / "model.onnx").read_bytes() == first


def test_passes_none_still_compiles_and_json_output(tmp_path, run_mcc):
    result = run_mcc("compile", EXAMPLE, "-o", tmp_path / "raw", "--passes", "none", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["pipeline"] == "" and report["validation"]["passed"]
    # No pass ran (the example is already at the backend's opset), yet the graph with its
    # computed Reshape shape compiles, because mcc fixed the input shape before import.
    assert report["passes"] == []
    assert report["model"]["stats_after"]["nodes"] == report["model"]["stats_before"]["nodes"] == 19


def test_mcc_passes_lists_passes_options_and_pipelines(run_mcc):
    result = run_mcc("passes")
    assert result.returncode == 0
    for name in ("fold-constants", "fuse-conv-bn", "eliminate-dead-nodes", "eliminate-identity",
                 "inline-initializer-inputs", "upgrade-opset"):
        assert name in result.stdout
    assert "max-size-mb=float (default 64.0)" in result.stdout
    assert "Named pipelines:" in result.stdout and "default" in result.stdout


def test_help_is_fast_and_does_not_import_tvm(run_mcc):
    result = run_mcc("--help")
    assert result.returncode == 0 and "compile" in result.stdout
    import subprocess
    import sys

    probe = subprocess.run([sys.executable, "-c", "import sys; from mcc.toolchain.cli.main import cli; "
                            "print('tvm' in sys.modules, 'onnxruntime' in sys.modules)"], capture_output=True, text=True)
    assert probe.stdout.strip() == "False False"


def test_scalar_input_and_bounded_integer_indices(tmp_path, run_mcc):
    """A rank-0 input, and an int64 index input into a 10-row table (random indices stay < 10)."""
    import onnx

    from tests.conftest import parse_model

    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float scale, int64[1, 6] ids) => (float[1, 6, 4] y) <float[10, 4] table = {
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
        20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39}> {
        rows = Gather<axis = 0>(table, ids)
        y = Mul(rows, scale)
    }
    """)
    path = tmp_path / "embed.onnx"
    onnx.save(model, str(path))
    result = run_mcc("compile", path, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "validation PASSED" in result.stdout
