"""The declarative rewrite-rule engine: patterns, reasons, diamonds, and the README's plugin example."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from mcc.toolchain import ir
from mcc.toolchain.passmanager import PassContext
from mcc.toolchain.rewrite import Const, Op, Opt, RewritePass, Rule, Var, apply_rules, match_pattern
from tests.conftest import assert_same_function, op_types, parse_model

README = Path(__file__).resolve().parents[2] / "README.md"


def _graph(text):
    return ir.to_graphsurgeon(ir.infer_shapes(parse_model(text)))


def _node(graph, output):
    return next(n for n in graph.nodes if n.outputs and n.outputs[0].name == output)


DIAMOND = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4] x, float[4] z) => (float[4] y, float[4] w) {
    s = Sigmoid(x)
    y = Mul(s, x)
    t = Sigmoid(z)
    w = Mul(x, t)
}
"""


def test_named_var_twice_requires_the_same_tensor():
    graph = _graph(DIAMOND)
    pattern = Op("Mul", Var("x"), Op("Sigmoid", Var("x"), name="sig"), name="mul")
    match = match_pattern(pattern, _node(graph, "y"), graph)  # commutative: Sigmoid first matches too
    assert not isinstance(match, str) and match["x"].name == "x"
    reason = match_pattern(pattern, _node(graph, "w"), graph)
    assert reason == "input 0 of Sigmoid '' is 'z', not 'x' as the pattern requires"


def test_inner_nodes_read_outside_the_match_are_refused():
    graph = _graph("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y, float[4] s) {
        s = Sigmoid(x)
        y = Mul(x, s)
    }
    """)
    pattern = Op("Mul", Var("x"), Op("Sigmoid", Var("x"), name="sig"), name="mul")
    assert match_pattern(pattern, _node(graph, "y"), graph) == "the output of Sigmoid '' is a graph output"


def test_optional_inputs_match_present_or_absent():
    graph = _graph("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 2, 4, 4] x) => (float[1, 2, 4, 4] y, float[1, 2, 4, 4] z) <float[2, 2, 1, 1] w = {1, 0, 0, 1}, float[2] b = {1, 2}> {
        y = Conv(x, w)
        z = Conv(x, w, b)
    }
    """)
    pattern = Op("Conv", Var("x"), Const("w"), Opt(Const("b")), name="conv")
    assert "b" not in match_pattern(pattern, _node(graph, "y"), graph).tensors
    assert match_pattern(pattern, _node(graph, "z"), graph)["b"].name == "b"
    strict = Op("Conv", Var("x"), Const("w"), name="conv")
    assert match_pattern(strict, _node(graph, "z"), graph) == "Conv '' has 3 inputs, the pattern 2"


def _readme_rule_module():
    """The plugin example from the README, executed as written."""
    text = README.read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index("### Rewrite rules"):], re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README example", "exec"), namespace)  # noqa: S102 (our own documentation)
    return namespace


def test_the_readme_plugin_example_works():
    namespace = _readme_rule_module()
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y) <float one = {1.0}, float two = {2.0}> {
        a = Mul(x, one)
        b = Mul(a, two)
        y = Relu(b)
    }
    """)
    ctx = PassContext().with_config(explain="remove-mul-by-one")
    result = namespace["MyRules"]().run(model, ctx)
    assert op_types(result.model) == ["Identity", "Mul", "Relu"]
    assert_same_function(model, result.model)
    assert any(line.endswith("not a multiplication by 1") for line in ctx.explanations)
    assert any(line.endswith("fired") for line in ctx.explanations)


def test_rules_run_to_a_fixed_point():
    @dataclass(frozen=True)
    class ReluRelu(Rule):
        """Relu(Relu(x)) -> Relu(x)."""

        name: ClassVar[str] = "relu-relu"
        pattern: ClassVar[Op] = Op("Relu", Op("Relu", Var("x"), name="inner"), name="outer")

        def rewrite(self, m, b):
            b.node("Relu", [m["x"]], outputs=list(m.root.outputs))

    graph = _graph("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y) {
        a = Relu(x)
        b = Relu(a)
        c = Relu(b)
        y = Relu(c)
    }
    """)
    assert apply_rules(graph, [ReluRelu()]) == 3
    assert [n.op for n in graph.nodes] == ["Relu"]


def test_a_rewrite_pass_without_rules_firing_returns_the_same_model():
    @dataclass(frozen=True)
    class Nothing(RewritePass):
        """No rules."""

        name: ClassVar[str] = "nothing"

    model = parse_model(DIAMOND)
    assert Nothing().run(model, PassContext()).model is model


@pytest.mark.parametrize("bad", ["no-such-rule"])
def test_explain_names_an_unknown_rule_before_any_work(run_mcc, tmp_path, bad):
    from tests.conftest import EXAMPLE

    result = run_mcc("compile", str(EXAMPLE), "--explain", bad, "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"mcc: usage error: --explain {bad}: no rewrite rule of that name in the pipeline; candidates are: ")
    assert not (tmp_path / "out").exists()
