"""Every kind of bad input: one line on stderr, its exit code, no traceback, no partial output."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import EXAMPLE


def _model(nodes, inputs=("x",), initializers=(), outputs=("y",)) -> bytes:
    graph = helper.make_graph(
        nodes, "bad", [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2]) for name in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2]) for name in outputs],
        initializer=list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def make_bad_input(kind: str, tmp: Path) -> tuple[list[str], int, str]:
    """Arguments for `mcc compile`, expected exit code, and a fragment of the error line."""
    out = ["-o", str(tmp / "out")]
    if kind == "not-a-file":
        (tmp / "a_directory.onnx").mkdir()
        return [str(tmp / "a_directory.onnx"), *out], 3, "not a file"
    if kind == "missing-file":
        return [str(tmp / "nope.onnx"), *out], 3, "no such file"
    if kind == "not-onnx":
        path = tmp / "text.onnx"
        path.write_text("this is not a model\n" * 20)
        return [str(path), *out], 3, "ONNX"
    if kind == "truncated":
        path = tmp / "truncated.onnx"
        data = EXAMPLE.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return [str(path), *out], 3, "not a valid ONNX protobuf"
    if kind == "cyclic":
        path = tmp / "cyclic.onnx"
        nodes = [helper.make_node("Add", ["x", "c"], ["a"], name="add"), helper.make_node("Relu", ["a"], ["c"], name="relu"),
                 helper.make_node("Exp", ["a"], ["y"], name="exp")]
        path.write_bytes(_model(nodes))
        return [str(path), *out], 3, "graph is cyclic: add -> relu -> add"
    if kind == "missing-initializer":
        path = tmp / "missing_init.onnx"
        path.write_bytes(_model([helper.make_node("Mul", ["x", "weights"], ["y"], name="scale")]))
        return [str(path), *out], 3, "node 'scale' (Mul) reads 'weights'"
    if kind == "dangling-input":
        path = tmp / "dangling.onnx"
        nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"), helper.make_node("Add", ["a", "b_out"], ["y"], name="add")]
        path.write_bytes(_model(nodes))
        return [str(path), *out], 3, "node 'add' (Add) reads 'b_out'"
    if kind == "external-data-outside":
        folder = tmp / "model_dir"
        folder.mkdir()
        (tmp / "secret.bin").write_bytes(np.zeros(2, np.float32).tobytes())
        weight = numpy_helper.from_array(np.zeros(2, np.float32), "w")
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        entry = weight.external_data.add()
        entry.key, entry.value = "location", "../secret.bin"
        path = folder / "model.onnx"
        path.write_bytes(_model([helper.make_node("Add", ["x", "w"], ["y"])], initializers=[weight]))
        return [str(path), *out], 3, "outside the model's folder"
    if kind == "unknown-pass":
        return [str(EXAMPLE), "--passes", "fold-constants,fuse-conv-bnn", *out], 2, "unknown pass 'fuse-conv-bnn'"
    if kind == "malformed-input-shape":
        return [str(EXAMPLE), "--input-shape", "image=1x1x8by8", *out], 2, "malformed --input-shape"
    if kind == "output-not-writable":
        blocker = tmp / "a_file"
        blocker.write_text("x")
        return [str(EXAMPLE), "-o", str(blocker / "out")], 2, "not writable"
    if kind == "unknown-target":
        return [str(EXAMPLE), "--target", "toaster", *out], 2, "unknown target 'toaster'"
    if kind == "inputs-npy":
        path = tmp / "x.npy"
        np.save(path, np.zeros((1, 1, 8, 8), np.float32))
        return [str(EXAMPLE), "--inputs", str(path), *out], 2, "not named arrays"
    if kind == "inputs-corrupt":
        path = tmp / "x.npz"
        path.write_bytes(b"PK\x03\x04 this is not a zip")
        return [str(EXAMPLE), "--inputs", str(path), *out], 2, "cannot read as .npz"
    if kind == "inputs-wrong-name":
        path = tmp / "x.npz"
        np.savez(path, picture=np.zeros((1, 1, 8, 8), np.float32))
        return [str(EXAMPLE), "--inputs", str(path), *out], 2, "no array for input 'image'"
    if kind == "inputs-wrong-shape":
        path = tmp / "x.npz"
        np.savez(path, image=np.zeros((1, 1, 7, 8), np.float32))
        return [str(EXAMPLE), "--inputs", str(path), *out], 2, "has shape 1x1x7x8"
    if kind == "dump-dir-not-writable":
        blocker = tmp / "a_file"
        blocker.write_text("x")
        return [str(EXAMPLE), "--dump-dir", str(blocker / "dumps"), *out], 2, "--dump-dir"
    if kind == "unknown-flag":
        return [str(EXAMPLE), "--frobnicate", *out], 2, "No such option"
    raise AssertionError(kind)


KINDS = ["not-a-file", "missing-file", "not-onnx", "truncated", "cyclic", "missing-initializer", "dangling-input",
         "external-data-outside", "unknown-pass", "malformed-input-shape", "output-not-writable", "unknown-target",
         "unknown-flag", "inputs-npy", "inputs-corrupt", "inputs-wrong-name", "inputs-wrong-shape",
         "dump-dir-not-writable"]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_gives_one_line_and_exit_code(kind, tmp_path, run_mcc):
    args, code, fragment = make_bad_input(kind, tmp_path)
    before = set(tmp_path.rglob("*"))
    result = run_mcc("compile", *args)
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0]
    assert lines[0].startswith("mcc: ")
    assert "Traceback" not in result.stderr + result.stdout
    after = set(tmp_path.rglob("*"))
    assert after == before, f"left behind: {sorted(map(str, after - before))}"


def test_existing_foreign_directory_is_not_replaced(tmp_path, run_mcc):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    result = run_mcc("compile", EXAMPLE, "-o", out)
    assert result.returncode == 2
    assert "refusing to replace" in result.stderr
    assert (out / "precious.txt").read_text() == "keep me"
