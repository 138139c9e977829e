"""Einsum -> Transpose / Reshape / MatMul / ReduceSum, for targets without Einsum.

Two operands: every index is a batch index (in both operands and the output), a contracted one
(in both, not in the output), or free (in one operand and the output). Each operand is transposed
to [batch, free, contracted] (the right one to [batch, contracted, free]), flattened to 3-D, the
two are multiplied with one batched MatMul, and the result is reshaped and transposed to the
output's index order. One operand: indices missing from the output are summed (ReduceSum), the
rest transposed. Needs static shapes; ellipsis ("..."), an index repeated within one operand
(a diagonal), an index summed within one operand of two, and broadcast size-1 dims are refused.
The identity Transposes and Reshapes this may emit are removed by `simplify-chains`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mcc.toolchain.rewrite import Builder, Match, Op, Opt, Rule, Var


def _parse(equation: str) -> tuple[list[str], str] | str:
    text = equation.replace(" ", "")
    if "..." in text:
        return "the equation uses an ellipsis"
    if "->" not in text:
        return "the equation has no explicit output ('->')"
    inputs, output = text.split("->")
    terms = inputs.split(",")
    for term in terms + [output]:
        if len(set(term)) != len(term):
            return f"'{term}' repeats an index (a diagonal)"
        if not term.isalpha() and term:
            return f"'{term}' is not a list of letters"
    return terms, output


def _sizes(m: Match, terms: list[str], names: list[str]) -> dict[str, int] | str:
    sizes: dict[str, int] = {}
    for term, name in zip(terms, names):
        shape = m.shape(name)
        if shape is None or any(not isinstance(d, (int, np.integer)) for d in shape):
            return "an operand's shape is not static"
        if len(shape) != len(term):
            return f"operand '{term}' does not match its rank {len(shape)}"
        for letter, dim in zip(term, shape):
            if sizes.setdefault(letter, int(dim)) != int(dim):
                return f"index '{letter}' has sizes {sizes[letter]} and {dim} (broadcasting is not supported)"
    return sizes


def _reduce_sum(b: Builder, x, axes: list[int]):
    """ReduceSum without keepdims, in the form of the model's opset (axes an input from 13)."""
    if b.opset >= 13:
        return b.node("ReduceSum", [x, b.constant("axes", np.array(axes, np.int64))], {"keepdims": 0})
    return b.node("ReduceSum", [x], {"axes": axes, "keepdims": 0})


def _permute(b: Builder, x, perm: list[int], outputs: list) -> None:
    """Transpose by `perm` into `outputs`, or an Identity when it moves nothing (a scalar too)."""
    if perm == list(range(len(perm))):
        b.node("Identity", [x], outputs=outputs)
    else:
        b.node("Transpose", [x], {"perm": perm}, outputs=outputs)


@dataclass(frozen=True)
class DecomposeEinsum(Rule):
    """Einsum with one or two operands -> Transpose, Reshape, MatMul, ReduceSum."""

    name: ClassVar[str] = "decompose-einsum"
    substitutes: ClassVar[bool] = True
    pattern: ClassVar[Op] = Op("Einsum", Var("a"), Opt(Var("b")), name="einsum")

    def _plan(self, m: Match):
        equation = m.node("einsum").attrs.get("equation", "")
        equation = equation.decode() if isinstance(equation, bytes) else equation
        parsed = _parse(equation)
        if isinstance(parsed, str):
            return parsed
        terms, output = parsed
        names = ["a", "b"][: len(terms)]
        if len(terms) != len([n for n in ("a", "b") if n in m.tensors]):
            return "the equation's operand count differs from the node's inputs"
        sizes = _sizes(m, terms, names)
        if isinstance(sizes, str):
            return sizes
        if any(letter not in sizes for letter in output):
            return "an output index appears in no operand"
        if len(terms) == 2:
            a, b = terms
            lonely = [x for x in a + b if x not in output and ((x in a) != (x in b))]
            if lonely:
                return f"index '{lonely[0]}' is summed within one operand"
        return terms, output, sizes

    def check(self, m: Match) -> str | None:
        plan = self._plan(m)
        return plan if isinstance(plan, str) else None

    def rewrite(self, m: Match, b: Builder) -> None:
        terms, output, sizes = self._plan(m)
        outputs = list(m.root.outputs)
        if len(terms) == 1:
            (term,) = terms
            x = m["a"]
            summed = [i for i, letter in enumerate(term) if letter not in output]
            kept = [letter for letter in term if letter in output]
            if summed:
                x = _reduce_sum(b, x, summed)
            _permute(b, x, [kept.index(letter) for letter in output], outputs)
            return
        left_term, right_term = terms
        batch = [x for x in left_term if x in right_term and x in output]
        contracted = [x for x in left_term if x in right_term and x not in output]
        left = [x for x in left_term if x not in right_term]
        right = [x for x in right_term if x not in left_term]

        def dims(letters):
            return [sizes[x] for x in letters]

        def operand(name, term, order, shape3):
            moved = b.node("Transpose", [m[name]], {"perm": [term.index(x) for x in order]})
            return b.node("Reshape", [moved, b.constant("shape", np.array(shape3, np.int64))])

        batch_size, k = math.prod(dims(batch)), math.prod(dims(contracted))
        lhs = operand("a", left_term, batch + left + contracted, [batch_size, math.prod(dims(left)), k])
        rhs = operand("b", right_term, batch + contracted + right, [batch_size, k, math.prod(dims(right))])
        product = b.node("MatMul", [lhs, rhs])
        order = batch + left + right
        full = b.node("Reshape", [product, b.constant("shape", np.array(dims(order), np.int64))])
        _permute(b, full, [order.index(x) for x in output], outputs)
