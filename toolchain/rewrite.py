"""Declarative rewrite rules: a pattern, a check that says why a match does not apply, a rewrite.

A rule is a frozen dataclass with a kebab-case `name`, a `pattern`, and two methods:

    @dataclass(frozen=True)
    class MatMulAddToGemm(Rule):
        '''MatMul(a, B) + c with a 2-D, B and c constant -> Gemm(a, B, c).'''

        name: ClassVar[str] = "matmul-add-to-gemm"
        pattern: ClassVar[Op] = Op("Add", Op("MatMul", Var("a"), Const("b"), name="matmul"), Const("c"))

        def check(self, m: Match) -> str | None:
            if m.rank("a") != 2:
                return "the MatMul input is not 2-D"
            return None  # applies

        def rewrite(self, m: Match, b: Builder) -> None:
            b.node("Gemm", [m["a"], m["b"], m["c"]], outputs=m.root.outputs)

Patterns are trees rooted at the last node: `Op(op_type_or_types, *inputs, name=...)` matches a node
and, recursively, the producers of its inputs; `Var(name)` matches any tensor, `Const(name)` a
constant one, `Opt(pattern)` also an absent optional input. Naming the same `Var` or `Op` twice
in one pattern requires the same tensor or node there (how diamonds such as x * Sigmoid(x) are
written). Add, Mul, Max, Min, Sum and Equal match their two inputs in either order.

A match is accepted only when every matched node except the root is read by matched nodes alone
(and is no graph output): the rewrite removes them all. `Rule.check` then refuses with a reason.
The engine (`apply_rules`) sweeps the graph until no rule fires; `RewritePass` wraps rules as a
pass. With `explain` set (`mcc compile --explain RULE`), the last sweep records, for every node the
pattern's root op could match, why the rule did not fire there.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx

from mcc.toolchain import ir
from mcc.toolchain.passmanager import Pass, PassContext, PassResult

COMMUTATIVE = {"Add", "Mul", "Max", "Min", "Sum", "Equal"}
MAX_SWEEPS = 50


# --------------------------------------------------------------------------------------------------
# Patterns


class Pattern:
    """Base of pattern elements."""

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class Var(Pattern):
    """Any tensor, bound to `name`."""

    name: str

    def describe(self) -> str:
        return self.name


@dataclass(frozen=True, eq=False)
class Const(Pattern):
    """A constant tensor (initializer), bound to `name`."""

    name: str

    def describe(self) -> str:
        return f"constant {self.name}"


@dataclass(frozen=True, eq=False)
class Opt(Pattern):
    """`pattern`, or an absent optional input (bound to None)."""

    pattern: Pattern

    def describe(self) -> str:
        return f"optional {self.pattern.describe()}"


class Op(Pattern):
    """A node whose op type is `ops` (one or a tuple) and whose inputs match `inputs` in order.

    Extra inputs of the node beyond the pattern's are not allowed unless `extra_inputs=True`.
    """

    def __init__(self, ops: str | tuple[str, ...], *inputs: Pattern, name: str | None = None,
                 extra_inputs: bool = False):
        self.ops = (ops,) if isinstance(ops, str) else tuple(ops)
        self.inputs = inputs
        self.name = name or f"{self.ops[0].lower()}{next(_counter)}"
        self.extra_inputs = extra_inputs

    def describe(self) -> str:
        return "/".join(self.ops)


_counter = itertools.count()


# --------------------------------------------------------------------------------------------------
# Matches


@dataclass
class Match:
    """Bindings of one pattern match: pattern names -> graph nodes and tensors."""

    root: object  # gs.Node
    nodes: dict[str, object] = field(default_factory=dict)
    tensors: dict[str, object] = field(default_factory=dict)
    #: the model's default-domain opset (None: unknown)
    opset: int | None = None

    def __getitem__(self, name: str):
        return self.tensors[name]

    def node(self, name: str):
        return self.nodes[name]

    def const(self, name: str) -> np.ndarray:
        return np.asarray(self.tensors[name].values)

    def is_scalar_const(self, name: str) -> bool:
        tensor = self.tensors.get(name)
        return tensor is not None and hasattr(tensor, "values") and np.asarray(tensor.values).size == 1

    def shape(self, name: str) -> tuple | None:
        shape = getattr(self.tensors[name], "shape", None)
        return tuple(shape) if shape is not None else None

    def rank(self, name: str) -> int | None:
        shape = self.shape(name)
        return len(shape) if shape is not None else None

    def dtype(self, name: str):
        dtype = getattr(self.tensors[name], "dtype", None)
        try:
            return np.dtype(dtype) if dtype is not None else None
        except TypeError:  # an ONNX type numpy has no dtype for (bfloat16, float8, ...)
            return None


class _NoMatch(Exception):
    pass


def _is_constant(tensor) -> bool:
    import onnx_graphsurgeon as gs

    return isinstance(tensor, gs.Constant)


def _label(node) -> str:
    return f"{node.op} '{node.name}'"


def _match_tensor(pattern: Pattern, tensor, match: Match, where: str) -> None:
    if isinstance(pattern, Opt):
        if tensor is None or (not tensor.name and not _is_constant(tensor)):
            return
        _match_tensor(pattern.pattern, tensor, match, where)
        return
    if tensor is None or (not tensor.name and not _is_constant(tensor)):
        raise _NoMatch(f"{where} is absent")
    if isinstance(pattern, (Var, Const)):
        bound = match.tensors.get(pattern.name)
        if bound is not None and bound is not tensor:
            raise _NoMatch(f"{where} is '{tensor.name}', not '{bound.name}' as the pattern requires")
        if isinstance(pattern, Const) and not _is_constant(tensor):
            raise _NoMatch(f"{where} ('{tensor.name}') is not a constant")
        match.tensors[pattern.name] = tensor
        return
    assert isinstance(pattern, Op)
    producers = list(tensor.inputs)
    if len(producers) != 1:
        raise _NoMatch(f"{where} ('{tensor.name}') is not produced by {pattern.describe()}")
    _match_node(pattern, producers[0], match, where)
    match.tensors.setdefault(pattern.name, tensor)


def _match_node(pattern: Op, node, match: Match, where: str = "") -> None:
    bound = match.nodes.get(pattern.name)
    if bound is not None:
        if bound is not node:
            raise _NoMatch(f"{where or 'root'} is {_label(node)}, not {_label(bound)} as the pattern requires")
        return
    prefix = f"{where} " if where else ""
    if node.op not in pattern.ops or node.domain not in ir.DEFAULT_DOMAINS:
        raise _NoMatch(f"{prefix}is produced by {_label(node)}, not {pattern.describe()}")
    inputs = list(node.inputs)
    while inputs and not inputs[-1].name and not _is_constant(inputs[-1]):
        inputs.pop()  # trailing empty optional inputs
    if len(inputs) > len(pattern.inputs) and not pattern.extra_inputs:
        raise _NoMatch(f"{_label(node)} has {len(inputs)} inputs, the pattern {len(pattern.inputs)}")
    match.nodes[pattern.name] = node
    orders = [pattern.inputs]
    if node.op in COMMUTATIVE and len(pattern.inputs) == 2:
        orders.append(pattern.inputs[::-1])
    failure = None
    for order in orders:
        trial = Match(match.root, dict(match.nodes), dict(match.tensors))
        try:
            for position, sub in enumerate(order):
                tensor = inputs[position] if position < len(inputs) else None
                _match_tensor(sub, tensor, trial, f"input {position} of {_label(node)}")
        except _NoMatch as exc:
            failure = failure or exc
            continue
        match.nodes, match.tensors = trial.nodes, trial.tensors
        return
    del match.nodes[pattern.name]
    raise failure


def match_pattern(pattern: Op, node, graph) -> Match | str:
    """A Match of `pattern` rooted at `node`, or the reason it does not match."""
    match = Match(root=node)
    try:
        _match_node(pattern, node, match)
    except _NoMatch as exc:
        return str(exc)
    members = {id(n) for n in match.nodes.values()}
    graph_outputs = {id(t) for t in graph.outputs}
    for inner in match.nodes.values():
        if inner is node:
            continue
        for tensor in inner.outputs:
            if id(tensor) in graph_outputs:
                return f"the output of {_label(inner)} is a graph output"
            if any(id(reader) not in members for reader in tensor.outputs):
                return f"the output of {_label(inner)} is also read outside the pattern"
    return match


# --------------------------------------------------------------------------------------------------
# Rules and the engine


class Builder:
    """Creates the nodes and constants a rewrite puts in place of the match."""

    def __init__(self, graph, taken: set[str], base: str, opset: int = 17):
        self.graph = graph
        self.taken = taken
        self.base = base
        self.opset = opset  # the model's default-domain opset, for ops whose form changed (ReduceMean axes)
        self.nodes: list = []

    def constant(self, name: str, values: np.ndarray):
        import onnx_graphsurgeon as gs

        # np.array keeps 0-d scalars 0-d (np.ascontiguousarray would make them shape [1])
        return gs.Constant(ir.unique_name(f"{self.base}.{name}", self.taken), np.array(values, order="C"))

    def node(self, op: str, inputs: list, attrs: dict | None = None, outputs: list | None = None,
             dtype=None, shape=None):
        """Add a node; without `outputs` it gets one new tensor, returned. Returns the outputs list otherwise."""
        import onnx_graphsurgeon as gs

        name = ir.unique_name(f"{self.base}.{op}", self.taken)
        created = outputs is None
        if created:
            outputs = [gs.Variable(ir.unique_name(f"{name}.out", self.taken), dtype=dtype, shape=shape)]
        node = gs.Node(op=op, name=name, attrs=dict(attrs or {}), inputs=list(inputs), outputs=list(outputs))
        self.nodes.append(node)
        return outputs[0] if created else outputs


@dataclass(frozen=True)
class Rule:
    """Base of rewrite rules (see the module docstring). Subclasses are frozen dataclasses."""

    name: ClassVar[str] = ""
    pattern: ClassVar[Op]
    #: the rewrite changes results (an approximation): only applied within an accuracy budget
    lossy: ClassVar[bool] = False
    #: the op the rewrite introduces that older opsets or some backends lack, and its first opset
    produces_op: ClassVar[str | None] = None
    produces_since: ClassVar[int] = 1
    #: a substitution: fires only when the target is known and its backend lacks the root's op
    substitutes: ClassVar[bool] = False

    def check(self, m: Match) -> str | None:
        """Why the rule does not apply to this match, or None when it does."""
        return None

    def rewrite(self, m: Match, b: Builder) -> None:
        raise NotImplementedError

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0].strip() if doc else ""


@dataclass
class Explanation:
    rule: str
    node: str
    reason: str  # "fired" when it applied

    def __str__(self) -> str:
        return f"{self.rule} at '{self.node}': {self.reason}"


def _replace(graph, match: Match, builder: Builder) -> None:
    root = match.root
    index = graph.nodes.index(root)
    for node in match.nodes.values():
        node.inputs.clear()
        node.outputs.clear()
    graph.nodes[:] = [n for n in graph.nodes if all(n is not m for m in match.nodes.values())]
    graph.nodes[index:index] = builder.nodes


def capability_reason(rule: Rule, opset: int | None, supported_ops: frozenset[str] | None,
                      root_op: str = "") -> str | None:
    """Why the model or the target cannot take the op `rule` introduces (or, for a substitution,
    does not need it), or None."""
    if rule.substitutes:
        if supported_ops is None:
            return "no target is known, so nothing needs substituting"
        if root_op in supported_ops:
            return f"the target's backend supports {root_op}"
    if rule.produces_op is None:
        return None
    if opset is not None and opset < rule.produces_since:
        return f"the model's opset {opset} has no {rule.produces_op} (added in opset {rule.produces_since})"
    if supported_ops is not None and rule.produces_op not in supported_ops:
        return f"the target's backend does not support {rule.produces_op}"
    return None


def apply_rules(graph, rules: list[Rule], explain: set[str] | None = None,
                explanations: list[Explanation] | None = None, opset: int | None = None,
                supported_ops: frozenset[str] | None = None, allow_lossy: bool = False,
                lossy_fired: list[str] | None = None) -> int:
    """Apply `rules` until none fires; returns how many rewrites were made.

    `opset` and `supported_ops` (None: unknown) gate rules that introduce newer or optional ops
    and substitutions; lossy rules fire only with `allow_lossy`, and are listed in `lossy_fired`.
    """
    # Dead nodes must not count as readers: a match they block would fire on the next run, once
    # the cleanup after this run's rewrites has removed them (the pass would not be idempotent).
    graph.cleanup(remove_unused_graph_inputs=False)
    taken = set(graph.tensors()) | {node.name for node in graph.nodes}
    fired = 0
    for _ in range(MAX_SWEEPS):
        sweep: list[Explanation] = []
        changed = False
        for node in list(graph.nodes):
            if not node.outputs:  # removed by an earlier rewrite in this sweep
                continue
            for rule in rules:
                if node.op not in rule.pattern.ops:
                    continue
                match = match_pattern(rule.pattern, node, graph)
                if isinstance(match, str):
                    reason = match
                else:
                    match.opset = opset
                    reason = capability_reason(rule, opset, supported_ops, node.op) or rule.check(match)
                    if reason is None and rule.lossy and not allow_lossy:
                        reason = "the rewrite is an approximation; it needs an accuracy budget (--min-sqnr-db)"
                if explain and rule.name in explain:
                    label = node.name or (f"-> {node.outputs[0].name}" if node.outputs else "?")
                    sweep.append(Explanation(rule.name, label, reason or "fired"))
                if reason is not None:
                    continue
                builder = Builder(graph, taken, node.name or rule.name, opset or 17)
                rule.rewrite(match, builder)
                if rule.lossy and lossy_fired is not None:
                    lossy_fired.append(f"{rule.name} at '{node.name or node.outputs[0].name}'")
                _replace(graph, match, builder)
                fired += 1
                changed = True
                break
        if explanations is not None and explain:
            explanations[:] = [e for e in explanations if e.reason == "fired"] + sweep
        if not changed:
            break
        # a rewrite can leave nodes dead (a Shape that only fed a merged Reshape); as readers they
        # would block matches on their inputs until the next run
        graph.cleanup(remove_unused_graph_inputs=False)
    if fired:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return fired


@dataclass(frozen=True)
class RewritePass(Pass):
    """Base of passes made of rewrite rules: `rules` lists the rule classes, applied to a fixed point."""

    rules: ClassVar[tuple[type[Rule], ...]] = ()

    def active_rules(self, ctx: PassContext) -> list[Rule]:
        """The rules this run applies (subclasses may filter by options or the target)."""
        return [rule() for rule in self.rules]

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        graph = ir.to_graphsurgeon(ir.infer_shapes(model))
        explain = set(filter(None, str(ctx.config.get("explain", "")).split(",")))
        explanations: list[Explanation] = []
        lossy: list[str] = []
        fired = apply_rules(graph, self.active_rules(ctx), explain, explanations, opset=ir.opset_version(model),
                            supported_ops=ctx.supported_ops, allow_lossy=bool(ctx.config.get("allow-lossy", False)),
                            lossy_fired=lossy)
        for explanation in explanations:
            ctx.explain(f"{self.name}: {explanation}", key=(self.name, explanation.rule, explanation.node))
        ctx.lossy_rewrites.extend(f"{self.name}: {item}" for item in lossy)
        if not fired:
            return PassResult(model, False)
        return PassResult(ir.from_graphsurgeon(graph, like=model), True)


def flatten_passes(passes) -> list[Pass]:
    """The passes of a pipeline with fixed-point groups opened up."""
    flat: list[Pass] = []
    for item in passes:
        flat.extend(flatten_passes(item.passes) if item.name == "fixed-point" else [item])
    return flat


def why_not_substituted(model: onnx.ModelProto, node_name: str, passes, ctx: PassContext) -> str | None:
    """Why no substitution rule of the pipeline rewrote node `node_name` (the first rule whose root
    op matches it answers), or None when no rule is written for its op."""
    graph = ir.to_graphsurgeon(ir.infer_shapes(model))
    node = next((n for n in graph.nodes if n.name == node_name), None)
    if node is None:
        return None
    opset = ir.opset_version(model)
    for pass_ in flatten_passes(passes):
        if not isinstance(pass_, RewritePass):
            continue
        for rule in pass_.active_rules(ctx):
            if node.op not in rule.pattern.ops:  # a rule rooted at an op the target lacks is a substitution
                continue
            match = match_pattern(rule.pattern, node, graph)
            if isinstance(match, str):
                return f"{rule.name}: {match}"
            match.opset = opset
            reason = capability_reason(rule, opset, ctx.supported_ops, node.op) or rule.check(match)
            if reason is not None:
                return f"{rule.name}: {reason}"
    return None
