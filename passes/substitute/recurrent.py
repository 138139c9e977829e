"""LSTM, GRU and RNN unrolled over a static sequence, for targets whose backend lacks them.

TVM 0.27's ONNX frontend has no recurrent converters. When the sequence length S is static, one
direction of a recurrent node is S applications of its cell (ONNX operator spec; x is X at step
t, h and c the previous states, ' a transpose, (.) the elementwise product; defaults f = Sigmoid,
g = h = Tanh):

    LSTM (gates iofc)  i  = f(x Wi' + h Ri' + Pi (.) c + Wbi + Rbi)
                       f_ = f(x Wf' + h Rf' + Pf (.) c + Wbf + Rbf)     (1 - i when input_forget=1)
                       g_ = g(x Wc' + h Rc' + Wbc + Rbc)
                       c' = f_ (.) c + i (.) g_
                       o  = f(x Wo' + h Ro' + Po (.) c' + Wbo + Rbo)
                       h' = o (.) h(c')
    GRU (gates zrh)    z  = f(x Wz' + h Rz' + Wbz + Rbz)
                       r  = f(x Wr' + h Rr' + Wbr + Rbr)
                       n  = g(x Wh' + (r (.) h) Rh' + Rbh + Wbh)       (linear_before_reset = 0)
                       n  = g(x Wh' + r (.) (h Rh' + Rbh) + Wbh)       (linear_before_reset = 1)
                       h' = (1 - z) (.) n + z (.) h
    RNN                h' = f(x Wi' + h Ri' + Wbi + Rbi)

`clip` bounds the input of the gate activations (f and g) to [-clip, clip]. The spec's "applied
to the input of activations" could also cover h(c'); onnxruntime, the reference mcc validates
against, leaves c' unclipped there, and so does this pass. The reverse direction runs the same
cell from t = S-1 down to 0 and writes each h' back at its own t.

What is emitted, per direction: the input projection of all steps as one MatMul
`XW = X @ W' + (Wb + Rb)` ([S, B, G*H]; for GRU with linear_before_reset=1, Rbh stays in the
recurrent term); per step `Gather(XW, t) + Gemm(h, R', ...)`, a Split into the G gates and the
elementwise ops above (an LSTM without peepholes or input_forget activates i, o and f as one
slice, then splits them); at the end Y, Y_h and Y_c as one Concat + Reshape each. A single step
of one direction (a streaming model that carries its state between calls) stays in the node's
3-D layout instead: `Concat([X, h]) @ [W; R]' + b`, and the new h and c are Y_h and Y_c as they
are (12 nodes for an LSTM, against 19). Constant W, R, B,
P, initial_h and initial_c are sliced, summed and pre-transposed here, with numpy; inputs that are
not constant get the same Gather/Transpose/Split/Add ops at run time. A state that is known to be
zero (no initial_h/initial_c, the first step) drops the terms it would multiply, and so do
all-zero constant biases and peepholes: the result is the same function.

A rule fires only where the target's backend cannot run the op (the pass context's
`supported_ops` is unknown or lacks it), the sequence length is static (at most `max-steps`),
`sequence_lens` is absent or the full length for every batch entry, and the activations are
Sigmoid, Tanh or Relu; otherwise `--explain` says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mcc.toolchain import ir
from mcc.toolchain.passmanager import PassContext
from mcc.toolchain.rewrite import Builder, Match, Op, Opt, RewritePass, Rule, Var

ACTIVATIONS = ("Sigmoid", "Tanh", "Relu")
FLOAT_DTYPES = (np.float16, np.float32, np.float64)
DIRECTIONS = {"forward": ("forward",), "reverse": ("reverse",), "bidirectional": ("forward", "reverse")}
#: the pattern's names for the node's inputs -> the spec's
SPEC_NAMES = {"x": "X", "w": "W", "r": "R", "b": "B", "seq": "sequence_lens", "h0": "initial_h", "c0": "initial_c",
              "p": "P"}


# --------------------------------------------------------------------------------------------------
# What a recurrent node asks for


@dataclass(frozen=True)
class Recurrence:
    """A recurrent node's attributes and static sizes, read and checked once."""

    steps: int  # S
    hidden: int  # H
    layout: int
    directions: tuple[str, ...]  # "forward"/"reverse", one per direction in W's order
    activations: tuple[tuple[str, ...], ...]  # per direction: (f, g, h) / (f, g) / (f,)
    clip: float | None
    input_forget: bool
    linear_before_reset: bool
    dtype: np.dtype

    @property
    def time_axis(self) -> int:
        return 0 if self.layout == 0 else 1


def _attr(node, name: str, default):
    value = node.attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else value


def _dims(tensor) -> tuple | None:
    shape = getattr(tensor, "shape", None)
    return tuple(shape) if shape is not None else None


def _static(dim) -> bool:
    return isinstance(dim, (int, np.integer)) and dim >= 0


def _is_const(tensor) -> bool:
    return tensor is not None and hasattr(tensor, "values")


def read_recurrence(m: Match, op: str, gates: int, default_activations: tuple[str, ...],
                    max_steps: int) -> Recurrence | str:
    """The node's Recurrence, or the reason it cannot be unrolled."""
    node = m.root
    direction = _attr(node, "direction", "forward")
    if direction not in DIRECTIONS:
        return f"direction '{direction}' is not forward, reverse or bidirectional"
    directions = DIRECTIONS[direction]
    layout = int(_attr(node, "layout", 0))
    if layout not in (0, 1):
        return f"layout {layout} is not 0 or 1"

    dtype = m.dtype("x")
    if dtype is None or dtype.type not in FLOAT_DTYPES:
        return f"X has element type {dtype or 'unknown'}, not float16, float32 or float64"
    x_dims = _dims(m["x"])
    if x_dims is None or len(x_dims) != 3:
        return "the shape of X is unknown" if x_dims is None else f"X has rank {len(x_dims)}, not 3"
    steps = x_dims[0 if layout == 0 else 1]
    if not _static(steps):
        return f"the sequence length of X is not static (dim '{steps}')" if steps else \
            "the sequence length of X is not static"
    steps = int(steps)
    if steps == 0:
        return "the sequence is empty"
    if steps > max_steps:
        return f"the sequence length {steps} exceeds max-steps={max_steps}"

    r_dims = _dims(m["r"])
    hidden = _attr(node, "hidden_size", None)
    if hidden is None and r_dims is not None and len(r_dims) == 3 and _static(r_dims[2]):
        hidden = int(r_dims[2])
    if hidden is None:
        return "the hidden size is unknown (no hidden_size attribute, and R's shape is not known)"
    hidden = int(hidden)
    expected = {"w": (len(directions), gates * hidden, None), "r": (len(directions), gates * hidden, hidden),
                "b": (len(directions), 2 * gates * hidden), "p": (len(directions), 3 * hidden)}
    for name, want in expected.items():
        dims = _dims(m.tensors.get(name))
        if dims is None:
            continue
        if len(dims) != len(want) or any(_static(d) and w is not None and d != w for d, w in zip(dims, want)):
            shown = ", ".join("*" if w is None else str(w) for w in want)
            return f"{SPEC_NAMES[name]} has shape {list(dims)}, not [{shown}]"
    for name in ("w", "r", "b", "p", "h0", "c0"):
        if m.tensors.get(name) is not None and m.dtype(name) is not None and m.dtype(name) != dtype:
            return f"{SPEC_NAMES[name]} has element type {m.dtype(name)}, X has {dtype}"

    sequence_lens = m.tensors.get("seq")
    if sequence_lens is not None:
        if not _is_const(sequence_lens):
            return "sequence_lens is not a constant"
        lengths = np.asarray(sequence_lens.values).reshape(-1)
        if np.any(lengths != steps):
            return (f"sequence_lens {lengths.tolist()} is not the full sequence length {steps} for every batch "
                    "entry")

    per_direction = len(default_activations)
    names = _attr(node, "activations", None)
    if names is None:
        activations = (default_activations,) * len(directions)
    else:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        if len(names) != per_direction * len(directions):
            return (f"activations lists {len(names)} functions, a {direction} {op} needs "
                    f"{per_direction * len(directions)}")
        for name in names:
            if name not in ACTIVATIONS:
                return f"activation '{name}' is not supported (only {', '.join(ACTIVATIONS)})"
        activations = tuple(tuple(names[k * per_direction:(k + 1) * per_direction]) for k in range(len(directions)))

    clip = _attr(node, "clip", None)
    input_forget = bool(_attr(node, "input_forget", 0))
    linear_before_reset = bool(_attr(node, "linear_before_reset", 0))
    return Recurrence(steps, hidden, layout, directions, activations,
                      None if clip is None else float(clip), input_forget, linear_before_reset, dtype)


# --------------------------------------------------------------------------------------------------
# Emitting the unrolled graph


class Emitter:
    """Builds the unrolled graph. A value is a numpy array (folded here), a graph tensor, or None (zero).

    Gather/Transpose/Split/Add/Concat of arrays are evaluated with numpy; anything touching a
    tensor becomes a node. `mul` and `add` treat None and all-zero constants as zero, which is
    how a zero initial state drops out of the first step.
    """

    def __init__(self, b: Builder, opset: int, dtype: np.dtype, clip: float | None):
        self.b = b
        self.opset = opset
        self.dtype = dtype
        self.clip_threshold = clip
        self._constants: dict[tuple, object] = {}

    # ---- values and nodes ------------------------------------------------------------------------

    def tensor(self, value, name: str = "const"):
        """A graph tensor for `value` (arrays become constants, equal ones shared)."""
        if not isinstance(value, np.ndarray):
            return value
        key = (value.dtype.str, value.shape, value.tobytes())
        if key not in self._constants:
            import onnx_graphsurgeon as gs

            # Not Builder.constant: np.ascontiguousarray there turns a 0-d index into shape [1]
            self._constants[key] = gs.Constant(ir.unique_name(f"{self.b.base}.{name}", self.b.taken),
                                               np.array(value, order="C"))
        return self._constants[key]

    def op(self, op: str, inputs: list, attrs: dict | None = None, outputs: list | None = None):
        tensors = [self.tensor(value) for value in inputs]
        result = self.b.node(op, tensors, attrs, outputs=outputs, dtype=self.dtype)
        return result if outputs is None else outputs[0]

    def scalar(self, value: float) -> np.ndarray:
        return np.asarray(value, dtype=self.dtype)

    def named(self, value, name: str):
        """`value` as a constant called `name`; None when it is an all-zero array (or absent)."""
        return None if self.is_zero(value) else self.tensor(value, name)

    def int64(self, values) -> np.ndarray:
        return np.asarray(values, dtype=np.int64)

    # ---- structural ops (folded for constants) -----------------------------------------------------

    def take(self, value, index: int, axis: int):
        """value[index] along `axis` (the axis is removed)."""
        if value is None or isinstance(value, np.ndarray):
            return None if value is None else np.take(value, index, axis=axis)
        return self.op("Gather", [value, self.tensor(self.int64(index), f"index{index}")], {"axis": axis})

    def transpose(self, value):
        if isinstance(value, np.ndarray):
            return np.ascontiguousarray(value.T)
        return self.op("Transpose", [value], {"perm": [1, 0]})

    def split(self, value, sizes: list[int], axis: int) -> list:
        if len(sizes) == 1:
            return [value]
        if value is None:
            return [None] * len(sizes)
        if isinstance(value, np.ndarray):
            return [np.ascontiguousarray(part) for part in np.split(value, np.cumsum(sizes)[:-1], axis=axis)]
        import onnx_graphsurgeon as gs

        outputs = [gs.Variable(ir.unique_name(f"{self.b.base}.Split.out", self.b.taken), dtype=self.dtype)
                   for _ in sizes]
        if self.opset >= 13:
            self.b.node("Split", [value, self.tensor(self.int64(sizes), "sizes")], {"axis": axis}, outputs=outputs)
        else:
            self.b.node("Split", [value], {"axis": axis, "split": list(sizes)}, outputs=outputs)
        return outputs

    def concat(self, values: list, axis: int):
        if len(values) == 1:
            return values[0]
        if all(isinstance(value, np.ndarray) for value in values):
            return np.concatenate(values, axis=axis)
        return self.op("Concat", values, {"axis": axis})

    # ---- arithmetic (None and all-zero constants are zero) ----------------------------------------

    @staticmethod
    def is_zero(value) -> bool:
        return value is None or (isinstance(value, np.ndarray) and not value.any())

    def add(self, a, b):
        if a is None or b is None:
            return b if a is None else a
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            return a + b
        if self.is_zero(a) or self.is_zero(b):
            return b if self.is_zero(a) else a
        return self.op("Add", [a, b])

    def mul(self, a, b):
        if self.is_zero(a) or self.is_zero(b):
            return None
        return self.op("Mul", [a, b])

    def one_minus(self, value):
        return self.op("Sub", [self.tensor(self.scalar(1.0), "one"), value])

    def affine(self, a, weight, bias):
        """a @ weight + bias, with a [B, K], weight [K, N] and bias [N] or [B, N]; a None is zero."""
        if a is None:
            return bias
        if self.is_zero(bias):
            return self.op("MatMul", [a, weight])
        return self.op("Gemm", [a, weight, bias])

    def activate(self, name: str, value, clip: bool = True):
        """An activation of `value`, its input clipped to [-clip, clip] when the node has a clip."""
        if clip and self.clip_threshold is not None:
            low, high = -self.clip_threshold, self.clip_threshold
            if self.opset >= 11:
                value = self.op("Clip", [value, self.tensor(self.scalar(low), "clip_min"),
                                         self.tensor(self.scalar(high), "clip_max")])
            else:
                value = self.op("Clip", [value], {"min": low, "max": high})
        return self.op(name, [value])

    def reshape(self, value, shape: list[int], output):
        return self.op("Reshape", [value, self.tensor(self.int64(shape), "shape")], outputs=[output])


def _param(m: Match, name: str):
    """A node input as a numpy array (constant), a tensor, or None (absent)."""
    tensor = m.tensors.get(name)
    if tensor is None:
        return None
    return np.asarray(tensor.values) if _is_const(tensor) else tensor


def _outputs(m: Match) -> list:
    """The node's outputs Y, Y_h, Y_c; None where absent."""
    outputs = [t if t is not None and t.name else None for t in m.root.outputs]
    return outputs + [None] * (3 - len(outputs))


def _assemble(e: Emitter, rec: Recurrence, per_direction: list, all_steps: bool, output) -> None:
    """Write Y (all steps) or a final state into `output` in the node's layout."""
    if output is None:
        return
    directions, hidden = len(rec.directions), rec.hidden
    axis = 0 if rec.layout == 0 else 1
    if all_steps:  # Y: [S, D, B, H] or [B, S, D, H]; the parts are [B, H], time-major then direction
        parts = [per_direction[d][t] for t in range(rec.steps) for d in range(directions)]
        shape = [rec.steps, directions, -1, hidden] if rec.layout == 0 else [-1, rec.steps, directions, hidden]
    else:  # Y_h / Y_c: [D, B, H] or [B, D, H]
        parts = [per_direction[d] for d in range(directions)]
        shape = [directions, -1, hidden] if rec.layout == 0 else [-1, directions, hidden]
    e.reshape(e.concat(parts, axis), shape, output)


# --------------------------------------------------------------------------------------------------
# Rules


@dataclass(frozen=True)
class UnrollRecurrent(Rule):
    """Base of the three rules: gating, reading the node, the per-direction loop and the outputs."""

    gates: ClassVar[int] = 1
    default_activations: ClassVar[tuple[str, ...]] = ()
    #: the ops the target's backend can compile (None: unknown, so the op is assumed missing)
    supported_ops: frozenset[str] | None = None
    max_steps: int = 256

    @property
    def op(self) -> str:
        return self.pattern.ops[0]

    def check(self, m: Match) -> str | None:
        if self.supported_ops is not None and self.op in self.supported_ops:
            return f"the target's backend supports {self.op}"
        if m.opset is not None and m.opset < 7:
            return f"the model's opset {m.opset} predates {self.op}-7"
        rec = read_recurrence(m, self.op, self.gates, self.default_activations, self.max_steps)
        if isinstance(rec, str):
            return rec
        if self.supported_ops is not None:
            missing = sorted(self.emitted_ops(m, rec) - self.supported_ops)
            if missing:
                return f"the target's backend does not support {', '.join(missing)}"
        return None

    def emitted_ops(self, m: Match, rec: Recurrence) -> set[str]:
        """The ops the unrolled form may use."""
        ops = {"MatMul", "Gemm", "Add", "Mul", "Gather", "Split", "Concat", "Reshape", "Identity"}
        ops |= {name for per_direction in rec.activations for name in per_direction}
        if rec.clip is not None:
            ops.add("Clip")
        if not (_is_const(m["w"]) and _is_const(m["r"])):
            ops.add("Transpose")
        return ops

    def rewrite(self, m: Match, b: Builder) -> None:
        rec = read_recurrence(m, self.op, self.gates, self.default_activations, self.max_steps)
        e = Emitter(b, b.opset, rec.dtype, rec.clip)
        if rec.steps == 1 and len(rec.directions) == 1 and self.single_step(m, rec):
            return self.rewrite_single_step(e, m, rec)
        x = m["x"]
        state_axis = 0 if rec.layout == 0 else 1
        states: list[list] = []  # per direction: its step outputs h, indexed by t
        finals: list[tuple] = []  # per direction: (h, c) after its last step
        for d, direction in enumerate(rec.directions):
            suffix = "" if len(rec.directions) == 1 else f".{direction}"
            weights = self.prepare(e, m, rec, d, suffix)
            projected = e.add(e.op("MatMul", [x, weights.pop("W_t")]), weights.pop("bias"))
            h, c = (e.take(_param(m, name), d, state_axis) for name in ("h0", "c0"))
            h, c = (None if e.is_zero(state) else state for state in (h, c))
            order = range(rec.steps) if direction == "forward" else range(rec.steps - 1, -1, -1)
            outputs: list = [None] * rec.steps
            for t in order:
                step_input = e.take(projected, t, rec.time_axis)
                h, c = self.cell(e, rec, rec.activations[d], step_input, h, c, weights)
                outputs[t] = h
            states.append(outputs)
            finals.append((h, c))
        y, y_h, y_c = _outputs(m)
        _assemble(e, rec, states, True, y)
        _assemble(e, rec, [h for h, _ in finals], False, y_h)
        _assemble(e, rec, [c for _, c in finals], False, y_c)

    def single_step(self, m: Match, rec: Recurrence) -> bool:
        """Whether one step's gates are a single `[x, h] @ [W; R]' + b` (a subclass that says so has `update`)."""
        return False

    def rewrite_single_step(self, e: Emitter, m: Match, rec: Recurrence) -> None:
        """One step of one direction, kept in the node's 3-D state layout: no Gemm, and Y_h and Y_c need no Reshape.

        X is [1, B, I] ([B, 1, I] with layout 1) and so are initial_h and initial_c with H for I,
        so the step's gates are `Concat([X, h]) @ [W; R]' + b` without re-laying out anything, and the
        new h and c already have the shape of Y_h and Y_c. A streaming model that carries its state
        between calls (one step per call, as silero VAD) gets 12 nodes per LSTM instead of 19.
        """
        h, c = (_param(m, name) for name in ("h0", "c0"))
        h, c = (None if e.is_zero(state) else state for state in (h, c))
        w_t, r_t, w_bias, r_bias = self.input_weights(e, m, rec, 0, self.gates)
        bias = e.named(e.add(w_bias, r_bias), "bias")
        if h is None:
            gates = e.op("MatMul", [m["x"], e.tensor(w_t, "W_t")])
        else:
            gates = e.op("MatMul", [e.concat([m["x"], h], 2), e.tensor(e.concat([w_t, r_t], 0), "WR_t")])
        gates = e.add(gates, bias)
        h, c = self.update(e, rec, rec.activations[0], gates, c, {}, axis=2)
        y, y_h, y_c = _outputs(m)
        for state, output in ((h, y_h), (c, y_c)):
            if output is not None:
                e.op("Identity", [state], outputs=[output])
        if y is not None:
            shape = [1, 1, -1, rec.hidden] if rec.layout == 0 else [-1, 1, 1, rec.hidden]
            e.reshape(h, shape, y)

    def prepare(self, e: Emitter, m: Match, rec: Recurrence, d: int, suffix: str) -> dict:
        """Direction d's weights: `W_t` ([I, G*H]), `bias` (added to X @ W_t) and what `cell` reads."""
        raise NotImplementedError

    def cell(self, e: Emitter, rec: Recurrence, activations: tuple[str, ...], step_input, h, c, weights: dict):
        """One step: the input projection of this step ([B, G*H]), the previous h and c -> the new h and c.

        By default the gates are that projection plus h @ R' (LSTM, RNN), and `update` does the rest."""
        return self.update(e, rec, activations, e.affine(h, weights["R_t"], step_input), c, weights)

    def update(self, e: Emitter, rec: Recurrence, activations: tuple[str, ...], gates, c, weights: dict, axis: int = 1):
        """The new h and c from a step's gate pre-activations (G*H along `axis`) and the previous c."""
        raise NotImplementedError

    @staticmethod
    def input_weights(e: Emitter, m: Match, rec: Recurrence, d: int, gates: int) -> tuple:
        """W_d', R_d', and the W and R biases of direction d (None without B)."""
        w_t = e.transpose(e.take(_param(m, "w"), d, 0))
        r_t = e.transpose(e.take(_param(m, "r"), d, 0))
        bias = e.take(_param(m, "b"), d, 0)
        w_bias, r_bias = e.split(bias, [gates * rec.hidden] * 2, 0)
        return w_t, r_t, w_bias, r_bias


_RECURRENT_INPUTS = (Var("x"), Var("w"), Var("r"), Opt(Var("b")), Opt(Var("seq")), Opt(Var("h0")))


@dataclass(frozen=True)
class UnrollLSTM(UnrollRecurrent):
    """LSTM over a static sequence -> per-step Gemm, Split into gates iofc, Sigmoid/Tanh and Mul/Add."""

    name: ClassVar[str] = "unroll-lstm"
    pattern: ClassVar[Op] = Op("LSTM", *_RECURRENT_INPUTS, Opt(Var("c0")), Opt(Var("p")), name="lstm")
    gates: ClassVar[int] = 4
    default_activations: ClassVar[tuple[str, ...]] = ("Sigmoid", "Tanh", "Tanh")

    def emitted_ops(self, m: Match, rec: Recurrence) -> set[str]:
        return super().emitted_ops(m, rec) | ({"Sub"} if rec.input_forget else set())

    def prepare(self, e, m, rec, d, suffix):
        w_t, r_t, w_bias, r_bias = self.input_weights(e, m, rec, d, 4)
        peepholes = e.split(e.take(_param(m, "p"), d, 0), [rec.hidden] * 3, 0)
        return {"W_t": e.tensor(w_t, f"W_t{suffix}"), "bias": e.named(e.add(w_bias, r_bias), f"bias{suffix}"),
                "R_t": e.tensor(r_t, f"R_t{suffix}"),
                "peepholes": [e.named(p, f"P_{gate}{suffix}") for p, gate in zip(peepholes, "iof")]}

    def single_step(self, m, rec):
        return Emitter.is_zero(_param(m, "p"))

    def update(self, e, rec, activations, gates, c, weights, axis=1):
        """The new h and c from a step's gate pre-activations (4H along `axis`, gates iofc) and the previous c."""
        f, g, h_act = activations
        hidden = rec.hidden
        peep_i, peep_o, peep_f = weights.get("peepholes", (None, None, None))
        if all(p is None for p in (peep_i, peep_o, peep_f)) and not rec.input_forget:
            # i, o and f all go through f: one activation over the three, then split them
            sigmoid_part, gate_c = e.split(gates, [3 * hidden, hidden], axis)
            input_gate, output_gate, forget_gate = e.split(e.activate(f, sigmoid_part), [hidden] * 3, axis)
            cell = e.add(e.mul(forget_gate, c), e.mul(input_gate, e.activate(g, gate_c)))
            return e.mul(output_gate, e.activate(h_act, cell, clip=False)), cell
        gate_i, gate_o, gate_f, gate_c = e.split(gates, [hidden] * 4, axis)
        input_gate = e.activate(f, e.add(gate_i, e.mul(peep_i, c)))
        if rec.input_forget:
            forget_gate = e.one_minus(input_gate)
        else:
            forget_gate = e.activate(f, e.add(gate_f, e.mul(peep_f, c)))
        candidate = e.activate(g, gate_c)
        cell = e.add(e.mul(forget_gate, c), e.mul(input_gate, candidate))
        output_gate = e.activate(f, e.add(gate_o, e.mul(peep_o, cell)))
        return e.mul(output_gate, e.activate(h_act, cell, clip=False)), cell


@dataclass(frozen=True)
class UnrollGRU(UnrollRecurrent):
    """GRU over a static sequence -> per-step Gemm, Split into gates zrh, Sigmoid/Tanh and Mul/Add/Sub."""

    name: ClassVar[str] = "unroll-gru"
    pattern: ClassVar[Op] = Op("GRU", *_RECURRENT_INPUTS, name="gru")
    gates: ClassVar[int] = 3
    default_activations: ClassVar[tuple[str, ...]] = ("Sigmoid", "Tanh")

    def emitted_ops(self, m: Match, rec: Recurrence) -> set[str]:
        return super().emitted_ops(m, rec) | {"Sub"}

    def prepare(self, e, m, rec, d, suffix):
        hidden = rec.hidden
        w_t, r_t, w_bias, r_bias = self.input_weights(e, m, rec, d, 3)
        r_t_zr, r_t_h = e.split(r_t, [2 * hidden, hidden], 1)
        if rec.linear_before_reset:  # Rbh is added before the reset gate multiplies: it stays per step
            w_zr, w_h = e.split(w_bias, [2 * hidden, hidden], 0)
            r_zr, r_h = e.split(r_bias, [2 * hidden, hidden], 0)
            bias = None if w_bias is None else e.concat([e.add(w_zr, r_zr), w_h], 0)
            recurrent_bias = r_h
        else:
            bias, recurrent_bias = e.add(w_bias, r_bias), None
        return {"W_t": e.tensor(w_t, f"W_t{suffix}"), "bias": e.named(bias, f"bias{suffix}"),
                "R_t_zr": e.tensor(r_t_zr, f"R_t_zr{suffix}"), "R_t_h": e.tensor(r_t_h, f"R_t_h{suffix}"),
                "R_bias_h": e.named(recurrent_bias, f"R_bias_h{suffix}")}

    def cell(self, e, rec, activations, step_input, h, c, weights):
        f, g = activations
        hidden = rec.hidden
        input_zr, input_h = e.split(step_input, [2 * hidden, hidden], 1)
        gate_z, gate_r = e.split(e.affine(h, weights["R_t_zr"], input_zr), [hidden, hidden], 1)
        update = e.activate(f, gate_z)
        reset = e.activate(f, gate_r)
        if rec.linear_before_reset:
            candidate_input = e.add(input_h, e.mul(reset, e.affine(h, weights["R_t_h"], weights["R_bias_h"])))
        else:
            candidate_input = e.affine(e.mul(reset, h), weights["R_t_h"], input_h)
        candidate = e.activate(g, candidate_input)
        return e.add(e.mul(e.one_minus(update), candidate), e.mul(update, h)), None


@dataclass(frozen=True)
class UnrollRNN(UnrollRecurrent):
    """RNN over a static sequence -> per-step Gemm and its activation."""

    name: ClassVar[str] = "unroll-rnn"
    pattern: ClassVar[Op] = Op("RNN", *_RECURRENT_INPUTS, name="rnn")
    gates: ClassVar[int] = 1
    default_activations: ClassVar[tuple[str, ...]] = ("Tanh",)

    def prepare(self, e, m, rec, d, suffix):
        w_t, r_t, w_bias, r_bias = self.input_weights(e, m, rec, d, 1)
        return {"W_t": e.tensor(w_t, f"W_t{suffix}"), "bias": e.named(e.add(w_bias, r_bias), f"bias{suffix}"),
                "R_t": e.tensor(r_t, f"R_t{suffix}")}

    def single_step(self, m, rec):
        return True

    def update(self, e, rec, activations, gates, c, weights, axis=1):
        (f,) = activations
        return e.activate(f, gates), None


# --------------------------------------------------------------------------------------------------
# The pass


@dataclass(frozen=True)
class SubstituteRecurrent(RewritePass):
    """Unroll LSTM, GRU and RNN over a static sequence into MatMul/Gemm and elementwise ops, where the target lacks them."""

    name: ClassVar[str] = "substitute-recurrent"
    rules: ClassVar[tuple] = (UnrollLSTM, UnrollGRU, UnrollRNN)
    #: the longest sequence unrolled (each step adds about 12 nodes per direction)
    max_steps: int = 256

    def active_rules(self, ctx: PassContext) -> list[Rule]:
        # The gate reads the context: unlike a `substitutes` rule (which waits for a known target),
        # these also fire when no target is known, since a model with an LSTM is then unlikely to
        # compile anywhere mcc targets.
        return [rule(supported_ops=ctx.supported_ops, max_steps=self.max_steps) for rule in self.rules]
