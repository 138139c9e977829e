"""fuse-gemm (MatMul + Add -> Gemm, Gemm + BatchNormalization) and the rewrite-rule engine under it."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.passes.fusion.gemm import FuseGemm
from mcc.toolchain.passmanager import PassContext
from tests.conftest import assert_same_function, op_types, run_pass
from tests.passes.golden import assert_golden


def matmul_add_model(rank: int = 2, bias_shape=(5,), add_first: bool = False, extra_reader: bool = False):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "B"),
             numpy_helper.from_array(rng.normal(size=bias_shape).astype(np.float32), "c")]
    shape = [3, 4] if rank == 2 else [2, 3, 4]
    out = shape[:-1] + [5]
    add_inputs = ["c", "m"] if add_first else ["m", "c"]
    nodes = [helper.make_node("MatMul", ["x", "B"], ["m"], name="matmul"),
             helper.make_node("Add", add_inputs, ["y"], name="add")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["m"], ["z"], name="reader"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, out))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], outputs,
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("add_first", [False, True], ids=["matmul+c", "c+matmul"])
@pytest.mark.parametrize("bias_shape", [(5,), (1, 5), ()], ids=["N", "1xN", "scalar"])
def test_matmul_add_becomes_gemm(add_first, bias_shape):
    model = matmul_add_model(bias_shape=bias_shape, add_first=add_first)
    result = run_pass(FuseGemm(), model)
    assert result.modified and op_types(result.model) == ["Gemm"]
    assert result.model.graph.node[0].output[0] == "y"
    assert_same_function(model, result.model)
    assert not run_pass(FuseGemm(), result.model).modified


def test_golden():
    result = run_pass(FuseGemm(), matmul_add_model())
    assert_golden("fuse_gemm", result.model)


@pytest.mark.parametrize("model, reason", [
    (matmul_add_model(rank=3), "the MatMul input has rank 3, Gemm needs 2"),
    (matmul_add_model(bias_shape=(3, 5)), "the added constant has shape [3, 5], not [N] = [5] or a scalar"),
    (matmul_add_model(extra_reader=True), "the output of MatMul 'matmul' is also read outside the pattern"),
], ids=["rank-3", "full-bias", "shared-matmul"])
def test_must_not_fire_and_explain_says_why(model, reason):
    ctx = PassContext().with_config(explain="matmul-add-to-gemm")
    result = FuseGemm().run(model, ctx)
    assert not result.modified
    assert ctx.explanations == [f"fuse-gemm: matmul-add-to-gemm at 'add': {reason}"]


def test_explain_reports_a_producer_mismatch_and_a_fired_rule():
    model = matmul_add_model()
    model.graph.node[0].op_type = "Mul"  # Mul(x[3,4], B[4,5]) would not broadcast: only the pattern is looked at
    model.graph.node[0].ClearField("input")
    model.graph.node[0].input.extend(["x", "x"])
    model.graph.node[1].ClearField("input")
    model.graph.node[1].input.extend(["m", "x"])
    ctx = PassContext().with_config(explain="matmul-add-to-gemm")
    FuseGemm().run(model, ctx)
    assert ctx.explanations == ["fuse-gemm: matmul-add-to-gemm at 'add': input 0 of Add 'add' is produced by "
                                "Mul 'matmul', not MatMul"]
    ctx = PassContext().with_config(explain="matmul-add-to-gemm")
    FuseGemm().run(matmul_add_model(), ctx)
    assert ctx.explanations == ["fuse-gemm: matmul-add-to-gemm at 'add': fired"]


def gemm_bn_model(trans_b: int, with_c: bool, alpha: float = 1.0, beta: float = 1.0):
    rng = np.random.default_rng(trans_b * 2 + with_c)
    weight = rng.normal(size=(6, 4) if trans_b else (4, 6)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "B")]
    gemm_inputs = ["x", "B"]
    if with_c:
        inits.append(numpy_helper.from_array(rng.normal(size=6).astype(np.float32), "C"))
        gemm_inputs.append("C")
    for name, values in (("gamma", rng.uniform(0.5, 1.5, 6)), ("beta", rng.normal(size=6)),
                         ("mean", rng.normal(size=6)), ("var", rng.uniform(0.1, 2.0, 6))):
        inits.append(numpy_helper.from_array(values.astype(np.float32), name))
    nodes = [helper.make_node("Gemm", gemm_inputs, ["g"], name="gemm", transB=trans_b, alpha=alpha, beta=beta),
             helper.make_node("BatchNormalization", ["g", "gamma", "beta", "mean", "var"], ["y"], name="bn",
                              epsilon=1e-3)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 6])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("with_c", [False, True])
def test_batchnorm_folds_into_gemm(trans_b, with_c):
    model = gemm_bn_model(trans_b, with_c, alpha=0.5, beta=2.0)
    result = run_pass(FuseGemm(), model)
    assert op_types(result.model) == ["Gemm"]
    assert_same_function(model, result.model, atol=1e-4)
