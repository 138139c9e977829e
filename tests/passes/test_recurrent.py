"""substitute-recurrent: LSTM, GRU and RNN unrolled over a static sequence, checked against onnxruntime."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcc.passes.substitute.recurrent import SubstituteRecurrent
from mcc.toolchain.passmanager import PassContext
from tests.conftest import assert_same_function, op_types, ort_run, random_feed, run_pass
from tests.passes.golden import assert_golden, without_weights

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
OUTPUTS = {"LSTM": ("Y", "Y_h", "Y_c"), "GRU": ("Y", "Y_h"), "RNN": ("Y", "Y_h")}
RECURRENT_INPUTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")
#: what the unrolled form may contain (and nothing recurrent)
EMITTED = {"MatMul", "Gemm", "Add", "Mul", "Sub", "Gather", "Split", "Concat", "Reshape", "Transpose", "Clip",
           "Sigmoid", "Tanh", "Relu", "Identity"}
DTYPES = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}


def recurrent_model(op: str, *, steps=3, batch=2, input_size=4, hidden=5, direction="forward", layout=0,
                    bias=True, initial=None, peepholes=False, sequence_lens=None, activations=None, clip=None,
                    input_forget=None, linear_before_reset=None, outputs=None, runtime_weights=False, opset=17,
                    dtype=np.float32, hidden_size_attr=True, zero_bias=False, symbolic_steps=None,
                    seed=0) -> onnx.ModelProto:
    """One recurrent node `op` named 'rnn'.

    `initial`: None, "input" (graph inputs) or "constant" (initializers) for initial_h (and
    initial_c); `sequence_lens`: None, "full", "partial" (constants) or "input"; `runtime_weights`
    makes W, R, B (and P) graph inputs instead of initializers.
    """
    rng = np.random.default_rng(seed)
    gates, directions = GATES[op], 2 if direction == "bidirectional" else 1
    elem = DTYPES[dtype]
    time_batch = [steps, batch] if layout == 0 else [batch, steps]
    if symbolic_steps:
        time_batch[0 if layout == 0 else 1] = symbolic_steps
    state_shape = [directions, batch, hidden] if layout == 0 else [batch, directions, hidden]
    inputs = [helper.make_tensor_value_info("X", elem, time_batch + [input_size])]
    inits = []

    def add(name, shape, scale=0.5, kind="param"):
        values = (rng.normal(size=shape) * scale).astype(dtype)
        if (kind == "param" and runtime_weights) or (kind == "state" and initial == "input"):
            inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        else:
            inits.append(numpy_helper.from_array(values, name))
        return name

    names = {"X": "X", "W": add("W", (directions, gates * hidden, input_size)),
             "R": add("R", (directions, gates * hidden, hidden))}
    if bias:
        if zero_bias:
            inits.append(numpy_helper.from_array(np.zeros((directions, 2 * gates * hidden), dtype), "B"))
            names["B"] = "B"
        else:
            names["B"] = add("B", (directions, 2 * gates * hidden))
    if sequence_lens == "input":
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [batch]))
        names["sequence_lens"] = "sequence_lens"
    elif sequence_lens is not None:
        lengths = np.full(batch, steps, np.int32)
        if sequence_lens == "partial":
            lengths[-1] = steps - 1
        inits.append(numpy_helper.from_array(lengths, "sequence_lens"))
        names["sequence_lens"] = "sequence_lens"
    if initial:
        names["initial_h"] = add("initial_h", state_shape, kind="state")
        if op == "LSTM":
            names["initial_c"] = add("initial_c", state_shape, kind="state")
    if peepholes:
        names["P"] = add("P", (directions, 3 * hidden))
    node_inputs = [names.get(name, "") for name in RECURRENT_INPUTS[:8 if op == "LSTM" else 6]]
    while node_inputs[-1] == "":
        node_inputs.pop()

    wanted = outputs or OUTPUTS[op]
    node_outputs = [name if name in wanted else "" for name in OUTPUTS[op]]
    while node_outputs[-1] == "":
        node_outputs.pop()
    y_shape = [steps, directions, batch, hidden] if layout == 0 else [batch, steps, directions, hidden]
    if symbolic_steps:
        y_shape[0 if layout == 0 else 1] = symbolic_steps
    graph_outputs = [helper.make_tensor_value_info(name, elem, y_shape if name == "Y" else state_shape)
                     for name in node_outputs if name]

    attrs = {"direction": direction} if direction != "forward" else {}
    if hidden_size_attr:
        attrs["hidden_size"] = hidden
    for key, value in (("layout", layout or None), ("activations", activations), ("clip", clip),
                       ("input_forget", input_forget), ("linear_before_reset", linear_before_reset)):
        if value is not None:
            attrs[key] = value
    node = helper.make_node(op, node_inputs, node_outputs, name="rnn", **attrs)
    graph = helper.make_graph([node], "g", inputs, graph_outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def layout0_reference(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same function with the node at layout 0 between Transposes (onnxruntime has no layout 1)."""
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    graph = reference.graph
    (node,) = graph.node
    for attr in node.attribute:
        if attr.name == "layout":
            attr.i = 0
    before, after = [], []
    for index in (0, 5, 6):  # X [B, S, I] -> [S, B, I]; initial_h/c [B, D, H] -> [D, B, H]
        if index < len(node.input) and node.input[index]:
            name = node.input[index]
            before.append(helper.make_node("Transpose", [name], [f"{name}.l0"], perm=[1, 0, 2]))
            node.input[index] = f"{name}.l0"
    for index, name in enumerate(list(node.output)):
        if name:
            perm = [2, 0, 1, 3] if index == 0 else [1, 0, 2]  # Y [S, D, B, H] -> [B, S, D, H]; states likewise
            node.output[index] = f"{name}.l0"
            after.append(helper.make_node("Transpose", [f"{name}.l0"], [name], perm=perm))
    nodes = before + [onnx.NodeProto.FromString(node.SerializeToString())] + after
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(reference)
    return reference


def assert_matches_reference(model: onnx.ModelProto, rewritten: onnx.ModelProto, atol=1e-5) -> None:
    """onnxruntime on the original (layout 1: wrapped to layout 0) and on the rewrite agree.

    onnxruntime's recurrent kernels are float32 only: float64 models are compared with onnx's
    reference implementation instead (which ignores clip and activations, so those stay float32).
    """
    if model.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE:
        from onnx.reference import ReferenceEvaluator

        onnx.checker.check_model(rewritten)
        for seed in (0, 1, 2):
            feed = random_feed(model, seed)
            for got, want in zip(ort_run(rewritten, feed), ReferenceEvaluator(model).run(None, feed), strict=True):
                np.testing.assert_allclose(got, want, atol=1e-12, rtol=1e-10)
        return
    reference = model if _layout(model) == 0 else layout0_reference(model)
    assert_same_function(reference, rewritten, atol=atol)


def _layout(model: onnx.ModelProto) -> int:
    return next((attr.i for attr in model.graph.node[0].attribute if attr.name == "layout"), 0)


def _lstm_case(name, **kwargs):
    return pytest.param("LSTM", kwargs, id=f"LSTM-{name}")


def _gru_case(name, **kwargs):
    return pytest.param("GRU", kwargs, id=f"GRU-{name}")


def _common(name, **kwargs):
    return [pytest.param(op, kwargs, id=f"{op}-{name}") for op in GATES]


CASES = [
    *_common("forward"),
    *_common("reverse", direction="reverse"),
    *_common("bidirectional", direction="bidirectional", initial="input"),
    *_common("no-bias", bias=False),
    *_common("zero-bias", zero_bias=True, direction="reverse"),
    *_common("initial-state-inputs", initial="input"),
    *_common("initial-state-constants", initial="constant", direction="bidirectional"),
    *_common("seq1-batch1-hidden3", steps=1, batch=1, hidden=3),
    # one step (a streaming model carrying its state): the single-step form, in the node's layout
    *_common("seq1-state-inputs", steps=1, initial="input"),
    *_common("seq1-state-constants-clip", steps=1, initial="constant", clip=0.3),
    *_common("seq1-layout1", steps=1, layout=1, initial="input"),
    *_common("seq1-runtime-weights", steps=1, runtime_weights=True, initial="input"),
    *_common("seq1-only-Y", steps=1, outputs=("Y",), initial="input"),
    *_common("seq1-no-bias", steps=1, bias=False, initial="input"),
    *_common("seq1-reverse", steps=1, direction="reverse", initial="constant"),
    _lstm_case("seq1-input-forget-layout1", steps=1, input_forget=1, layout=1, initial="input"),
    _lstm_case("seq1-activations", steps=1, activations=["Relu", "Sigmoid", "Tanh"], initial="input"),
    _lstm_case("seq1-Y_c-opset9", steps=1, outputs=("Y_c",), initial="input", opset=9),
    # one step, but the per-step form: two directions, or peepholes that read c
    *_common("seq1-bidirectional", steps=1, direction="bidirectional", initial="input"),
    _lstm_case("seq1-peepholes", steps=1, peepholes=True, initial="input"),
    *_common("seq5-hidden8", steps=5, hidden=8, initial="input"),
    *_common("seq2-batch1", steps=2, batch=1, direction="reverse", initial="input"),
    *_common("sequence-lens-full", sequence_lens="full", initial="input"),
    *_common("clip", clip=0.2, initial="input", direction="bidirectional"),
    *_common("layout1", layout=1, initial="input"),
    *_common("layout1-bidirectional", layout=1, direction="bidirectional", initial="constant", steps=4),
    *_common("runtime-weights", runtime_weights=True, direction="bidirectional", initial="input"),
    *_common("runtime-weights-no-bias", runtime_weights=True, bias=False),
    *_common("only-Y", outputs=("Y",)),
    *_common("only-Y_h", outputs=("Y_h",), direction="bidirectional"),
    *_common("no-hidden-size-attribute", hidden_size_attr=False),
    *_common("opset9-clip", opset=9, clip=0.3, direction="bidirectional", initial="input"),
    *_common("opset11-clip", opset=11, clip=0.3, initial="input"),
    *_common("opset18", opset=18, direction="bidirectional"),
    pytest.param("LSTM", {"activations": ["Relu", "Sigmoid", "Tanh", "Tanh", "Relu", "Sigmoid"],
                          "direction": "bidirectional", "initial": "input"}, id="LSTM-activations"),
    pytest.param("GRU", {"activations": ["Relu", "Sigmoid", "Tanh", "Relu"], "direction": "bidirectional",
                         "initial": "input"}, id="GRU-activations"),
    pytest.param("RNN", {"activations": ["Relu", "Sigmoid"], "direction": "bidirectional", "initial": "input"},
                 id="RNN-activations"),
    pytest.param("RNN", {"activations": ["Sigmoid"], "direction": "reverse"}, id="RNN-activation-sigmoid"),
    _lstm_case("float64", dtype=np.float64, initial="input"),
    _gru_case("float64", dtype=np.float64, initial="input", linear_before_reset=1),
    _lstm_case("peepholes", peepholes=True, initial="input"),
    _lstm_case("peepholes-zero-initial-state", peepholes=True),
    _lstm_case("peepholes-runtime-bidirectional", peepholes=True, runtime_weights=True, direction="bidirectional",
               initial="input"),
    _lstm_case("input-forget", input_forget=1, initial="input"),
    _lstm_case("input-forget-peepholes-clip", input_forget=1, peepholes=True, clip=0.3, direction="reverse",
               initial="input"),
    _lstm_case("only-Y_c", outputs=("Y_c",), initial="input"),
    _lstm_case("Y_h-and-Y_c", outputs=("Y_h", "Y_c"), direction="bidirectional"),
    _lstm_case("Y-and-Y_c", outputs=("Y", "Y_c"), layout=1),
    _lstm_case("everything", direction="bidirectional", layout=1, peepholes=True, initial="input", clip=0.4,
               activations=["Sigmoid", "Tanh", "Relu", "Relu", "Tanh", "Tanh"], sequence_lens="full",
               runtime_weights=True, opset=14, steps=4, hidden=6),
    _gru_case("linear-before-reset", linear_before_reset=1, initial="input"),
    _gru_case("linear-before-reset-zero-initial-state", linear_before_reset=1),
    _gru_case("linear-before-reset-no-bias", linear_before_reset=1, bias=False, initial="input"),
    _gru_case("linear-before-reset-runtime-bidirectional", linear_before_reset=1, runtime_weights=True,
              direction="bidirectional", initial="input"),
    _gru_case("linear-before-reset-layout1-clip", linear_before_reset=1, layout=1, clip=0.3, initial="constant",
              direction="reverse"),
    _gru_case("everything", direction="bidirectional", layout=1, linear_before_reset=1, initial="input",
              clip=0.4, activations=["Sigmoid", "Relu", "Tanh", "Tanh"], sequence_lens="full",
              runtime_weights=True, opset=22, steps=5, hidden=7),
]


@pytest.mark.parametrize("op, options", CASES)
def test_unrolled_matches_onnxruntime(op, options):
    model = recurrent_model(op, **options)
    result = run_pass(SubstituteRecurrent(), model)
    assert result.modified
    ops = set(op_types(result.model))
    assert not ops & set(GATES) and ops <= EMITTED, ops
    # onnxruntime needs the hidden_size attribute the spec makes optional: the reference keeps it
    reference = recurrent_model(op, **{**options, "hidden_size_attr": True})
    assert_matches_reference(reference, result.model)
    single_step = (options.get("steps") == 1 and options.get("direction", "forward") != "bidirectional"
                   and not options.get("peepholes") and op != "GRU")
    if single_step and not options.get("runtime_weights"):  # runtime weights are sliced by Gather
        assert "Gather" not in ops and "Gemm" not in ops, ops
    assert not run_pass(SubstituteRecurrent(), result.model).modified, "a second run must change nothing"


@pytest.mark.parametrize("steps, direction", [(3, "bidirectional"), (1, "forward")])
def test_symbolic_batch_is_fine_only_the_sequence_must_be_static(steps, direction):
    model = recurrent_model("LSTM", steps=steps, direction=direction, initial="input")
    for value in list(model.graph.input) + list(model.graph.output):  # the batch is dim 1, in Y dim 2
        value.type.tensor_type.shape.dim[2 if value.name == "Y" else 1].dim_param = "N"
    onnx.checker.check_model(model)
    result = run_pass(SubstituteRecurrent(), model)
    assert result.modified
    rng = np.random.default_rng(0)
    directions = 2 if direction == "bidirectional" else 1
    for batch in (1, 3):
        feed = {"X": rng.uniform(-1, 1, (steps, batch, 4)).astype(np.float32),
                "initial_h": rng.uniform(-1, 1, (directions, batch, 5)).astype(np.float32),
                "initial_c": rng.uniform(-1, 1, (directions, batch, 5)).astype(np.float32)}
        for got, want in zip(ort_run(result.model, feed), ort_run(model, feed), strict=True):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_layout1_reference_agrees_with_onnx_reference_implementation():
    """The layout-1 cases compare with a Transpose-wrapped layout-0 model; check that wrapper once."""
    from onnx.reference import ReferenceEvaluator

    model = recurrent_model("GRU", layout=1, direction="bidirectional", initial="input", linear_before_reset=1)
    feed = random_feed(model)
    want = ReferenceEvaluator(model).run(None, feed)
    for got, expected in zip(ort_run(layout0_reference(model), feed), want, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_clip_changes_the_result_so_the_cases_test_it():
    model = recurrent_model("LSTM", clip=0.2, initial="input", direction="bidirectional")
    unclipped = recurrent_model("LSTM", initial="input", direction="bidirectional")
    feed = random_feed(model)
    assert np.abs(ort_run(model, feed)[0] - ort_run(unclipped, feed)[0]).max() > 0.05


def test_zero_initial_state_and_zero_bias_drop_out():
    """No initial_h: the first step has no recurrent Gemm; an all-zero B adds nothing."""
    model = recurrent_model("LSTM", steps=3, zero_bias=True, direction="bidirectional")
    ops = op_types(run_pass(SubstituteRecurrent(), model).model)
    assert ops.count("Gemm") == 2 * (3 - 1)  # per direction, steps 2 and 3 only
    assert ops.count("MatMul") == 2  # the input projection of all steps, per direction
    with_state = op_types(run_pass(SubstituteRecurrent(), recurrent_model("LSTM", steps=3, initial="input")).model)
    assert with_state.count("Gemm") == 3


def test_constant_weights_are_folded_and_pre_transposed():
    model = recurrent_model("GRU", hidden=5, input_size=4, linear_before_reset=1)
    result = run_pass(SubstituteRecurrent(), model)
    shapes = {t.name: list(t.dims) for t in result.model.graph.initializer}
    assert shapes["rnn.W_t"] == [4, 15] and shapes["rnn.R_t_zr"] == [5, 10] and shapes["rnn.R_t_h"] == [5, 5]
    assert shapes["rnn.bias"] == [15] and shapes["rnn.R_bias_h"] == [5]
    assert "Transpose" not in op_types(result.model) and "W" not in shapes


def test_golden():
    model = recurrent_model("LSTM", steps=2, batch=1, input_size=2, hidden=2, initial="input")
    result = run_pass(SubstituteRecurrent(), model)
    assert_golden("substitute_recurrent_lstm", without_weights(result.model))
    assert_matches_reference(model, result.model)


def test_golden_single_step():
    """One step keeps the states' 3-D layout: Concat, one MatMul, one activation per gate kind, no Gather or
    Gemm; only Y is reshaped."""
    model = recurrent_model("LSTM", steps=1, batch=1, input_size=2, hidden=2, initial="input")
    result = run_pass(SubstituteRecurrent(), model)
    assert_golden("substitute_recurrent_lstm_single_step", without_weights(result.model))
    assert_matches_reference(model, result.model)
    ops = op_types(result.model)
    assert "Gather" not in ops and "Gemm" not in ops and ops.count("MatMul") == 1 and ops.count("Sigmoid") == 1
    assert ops.count("Reshape") == 1


ALL_BUT_RECURRENT = frozenset(EMITTED)


@pytest.mark.parametrize("model, ctx, rule, reason", [
    (recurrent_model("LSTM", symbolic_steps="S"), PassContext(), "unroll-lstm",
     "the sequence length of X is not static (dim 'S')"),
    (recurrent_model("GRU", layout=1, symbolic_steps="T"), PassContext(), "unroll-gru",
     "the sequence length of X is not static (dim 'T')"),
    (recurrent_model("LSTM"), PassContext(supported_ops=ALL_BUT_RECURRENT | {"LSTM"}), "unroll-lstm",
     "the target's backend supports LSTM"),
    (recurrent_model("RNN"), PassContext(supported_ops=ALL_BUT_RECURRENT | {"RNN"}), "unroll-rnn",
     "the target's backend supports RNN"),
    (recurrent_model("GRU"), PassContext(supported_ops=ALL_BUT_RECURRENT - {"Gemm", "Sub"}), "unroll-gru",
     "the target's backend does not support Gemm, Sub"),
    (recurrent_model("LSTM", sequence_lens="partial"), PassContext(), "unroll-lstm",
     "sequence_lens [3, 2] is not the full sequence length 3 for every batch entry"),
    (recurrent_model("LSTM", sequence_lens="input"), PassContext(), "unroll-lstm",
     "sequence_lens is not a constant"),
    (recurrent_model("RNN", activations=["LeakyRelu"]), PassContext(), "unroll-rnn",
     "activation 'LeakyRelu' is not supported (only Sigmoid, Tanh, Relu)"),
    (recurrent_model("GRU", direction="bidirectional", activations=["Sigmoid", "Tanh"]), PassContext(), "unroll-gru",
     "activations lists 2 functions, a bidirectional GRU needs 4"),
], ids=["dynamic-sequence", "dynamic-sequence-layout1", "target-has-lstm", "target-has-rnn", "target-lacks-gemm",
        "partial-sequence-lens", "runtime-sequence-lens", "leaky-relu", "activation-count"])
def test_must_not_fire_and_explain_says_why(model, ctx, rule, reason):
    ctx.with_config(explain=rule)
    result = SubstituteRecurrent().run(model, ctx)
    assert not result.modified
    assert ctx.explanations == [f"substitute-recurrent: {rule} at 'rnn': {reason}"]


def test_max_steps_option():
    ctx = PassContext().with_config(explain="unroll-lstm")
    assert not SubstituteRecurrent(max_steps=2).run(recurrent_model("LSTM", steps=3), ctx).modified
    assert ctx.explanations == ["substitute-recurrent: unroll-lstm at 'rnn': the sequence length 3 exceeds max-steps=2"]


def test_fires_for_a_target_without_the_op_and_explains_it():
    ctx = PassContext(supported_ops=ALL_BUT_RECURRENT | {"Conv"}).with_config(explain="unroll-lstm")
    assert SubstituteRecurrent().run(recurrent_model("LSTM"), ctx).modified
    assert ctx.explanations == ["substitute-recurrent: unroll-lstm at 'rnn': fired"]


def test_in_the_default_pipeline_after_constant_folding():
    from mcc.toolchain.pipeline import format_pipeline, parse_pipeline

    names = format_pipeline(parse_pipeline("default"))
    assert "substitute-recurrent" in names
    assert names.index("fold-constants") < names.index("substitute-recurrent") < names.index("fuse-gemm")


@pytest.mark.slow
def test_silero_vad_compiles_and_validates_for_the_host(shared_models, run_mcc, tmp_path):
    """silero VAD's decoder is an ONNX LSTM: the graph keeps it (one node, as onnxruntime's does), the
    TVM backend unrolls it before TVM's importer, and the whole model compiles and matches onnxruntime."""
    out = tmp_path / "out"
    result = run_mcc("compile", shared_models / "silero_vad/silero_vad_v6_fasterwhisper.onnx",
                     "--target", "host", "--input-shape", "input=16x576", "-o", out)  # 16 steps: the recurrence runs
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["passed"]
    assert {o["name"] for o in report["validation"]["outputs"]} == {"speech_probs", "hn", "cn"}
    for output in report["validation"]["outputs"]:
        assert output["cosine"] > 0.99999, output
    (record,) = [r for r in report["passes"] if r["name"] == "substitute-recurrent"]
    assert not record["modified"]  # the backend compiles LSTM: the graph pass leaves it
    assert op_types(onnx.load(str(out / "model.onnx"))).count("LSTM") == 1
    assert report["kernels"]["lowered_before_import"] == ["LSTM at '/decoder/rnn/LSTM'"]


@pytest.mark.parametrize("op, options", [
    ("LSTM", dict(steps=4, direction="bidirectional", initial="input", peepholes=True)),
    ("GRU", dict(steps=3, linear_before_reset=1, initial="constant")),
    ("RNN", dict(steps=2, direction="reverse")),
])
def test_the_host_backend_compiles_recurrent_nodes_the_graph_keeps(op, options, run_mcc, tmp_path):
    """The TVM backend declares LSTM, GRU and RNN: the graph keeps the node (substitute-recurrent does
    not fire) and the backend unrolls it with the same rules right before TVM's importer."""
    path = tmp_path / "rnn.onnx"
    onnx.save(recurrent_model(op, **options), str(path))
    out = tmp_path / "out"
    result = run_mcc("compile", path, "--target", "host", "-o", out)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["passed"], report["validation"]
    assert op_types(onnx.load(str(out / "model.onnx"))) == [op]
    assert report["kernels"]["lowered_before_import"] == [f"{op} at 'rnn'"]
