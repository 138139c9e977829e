import re
from dataclasses import dataclass
from typing import ClassVar

import onnx
import pytest

from mcc.toolchain.errors import PassError, UsageError
from mcc.toolchain.passmanager import Pass, PassContext, PassManager, PassResult, validate_pass_class
from mcc.toolchain.pipeline import NAMED_PIPELINES, format_pipeline, parse_pipeline
from mcc.toolchain.registry import available_passes
from tests.conftest import parse_model

SIMPLE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 4] x) => (float[2, 4] y) {
    a = Identity(x)
    b = Relu(a)
    y = Identity(b)
}
"""


@pytest.mark.parametrize(
    "text",
    [
        "fold-constants,fuse-conv-bn",
        "fold-constants{max-size-mb=2.5,max-rounds=3},eliminate-dead-nodes",
        "eliminate-identity{dropout=false}",
        "upgrade-opset{version=13}",
        "",
    ],
)
def test_pipeline_text_round_trips(text):
    passes = parse_pipeline(text)
    printed = format_pipeline(passes)
    assert printed == text
    assert parse_pipeline(printed) == passes


def test_defaults_are_not_printed_and_spaces_are_tolerated():
    passes = parse_pipeline(" fold-constants { max-size-mb = 64 } , fuse-conv-bn ")
    assert format_pipeline(passes) == "fold-constants,fuse-conv-bn"


def test_named_pipeline_expands_in_place():
    passes = parse_pipeline("default")
    assert format_pipeline(passes) == NAMED_PIPELINES["default"]
    assert parse_pipeline("none") == []
    assert format_pipeline(parse_pipeline("none,fuse-conv-bn")) == "fuse-conv-bn"


def test_unknown_pass_lists_candidates():
    with pytest.raises(UsageError) as info:
        parse_pipeline("fold-constant,fuse-conv-bn")
    message = str(info.value)
    assert "unknown pass 'fold-constant'" in message and "did you mean fold-constants" in message
    assert "eliminate-dead-nodes" in message  # the candidate list


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("fold-constants{max-size=3}", "has no option 'max-size'"),
        ("fold-constants{max-size-mb=big}", "expects float"),
        ("eliminate-identity{dropout=maybe}", "expects bool"),
        ("fuse-conv-bn{x=1}", "takes no options"),
        ("fold-constants{max-size-mb}", "is not KEY=VALUE"),
        ("fold-constants{max-size-mb=-1}", "must be positive"),
        ("fold-constants,", "trailing"),
        ("default{x=1}", "takes no options"),
    ],
)
def test_bad_options_fail_before_running(text, fragment):
    with pytest.raises(UsageError) as info:
        parse_pipeline(text)
    assert fragment in str(info.value)


def test_pass_options_are_hashable_and_comparable():
    a, b = parse_pipeline("fold-constants{max-size-mb=2}")[0], parse_pipeline("fold-constants{max-size-mb=2.0}")[0]
    assert a == b and hash(a) == hash(b)


def test_every_builtin_pass_is_well_declared():
    for name, cls in available_passes().items():
        validate_pass_class(cls)
        assert cls.summary(), f"{name} has no one-line doc"


def test_manager_records_statistics_and_timing():
    model = parse_model(SIMPLE)
    manager = PassManager(parse_pipeline("eliminate-identity,eliminate-dead-nodes"))
    result, records = manager.run(model)
    assert [r.name for r in records] == ["eliminate-identity", "eliminate-dead-nodes"]
    assert records[0].modified and not records[1].modified
    assert (records[0].before.nodes, records[0].after.nodes) == (3, 1)
    assert records[0].seconds >= 0
    assert [n.op_type for n in result.graph.node] == ["Relu"]


@dataclass(frozen=True)
class BreaksModel(Pass):
    """Test pass: renames a node input to a tensor that does not exist."""

    name: ClassVar[str] = "breaks-model"

    def run(self, model, ctx):
        broken = onnx.ModelProto()
        broken.CopyFrom(model)
        broken.graph.node[0].input[0] = "nowhere"
        return PassResult(broken, True)


@dataclass(frozen=True)
class NeedsOpset15(Pass):
    """Test pass: records the opset it saw."""

    name: ClassVar[str] = "needs-opset-15"
    min_opset: ClassVar[int] = 15

    def run(self, model, ctx):
        ctx.note(f"saw opset {model.opset_import[0].version}")
        return PassResult(model, False)


def test_verify_each_names_the_pass_that_broke_the_model():
    model = parse_model(SIMPLE)
    with pytest.raises(PassError, match="breaks-model"):
        PassManager([BreaksModel()], PassContext(verify_each=True)).run(model)
    # without verification the manager does not look
    PassManager([BreaksModel()], PassContext(verify_each=False)).run(model)


def test_min_opset_inserts_an_upgrade_first():
    model = parse_model(SIMPLE.replace('"" : 17', '"" : 13'))
    ctx = PassContext()
    _, records = PassManager([NeedsOpset15()], ctx).run(model)
    assert [r.text for r in records] == ["upgrade-opset{version=15}", "needs-opset-15"]
    assert ctx.notes == ["saw opset 15"]


def test_analysis_cache_invalidated_only_on_change():
    from mcc.toolchain.stats import model_stats

    model = parse_model(SIMPLE)
    ctx = PassContext()
    first = ctx.analyses.get(model_stats, model)
    assert ctx.analyses.get(model_stats, model) is first
    ctx.analyses.invalidate()
    assert ctx.analyses.get(model_stats, model) is not first


def test_unknown_context_config_key_is_rejected():
    with pytest.raises(UsageError, match="candidates are: allow-lossy, bisect-limit, dump-dir, explain"):
        PassContext().with_config(dump_directory="x")


def test_bisect_limit_runs_only_the_first_passes():
    model = parse_model(SIMPLE)
    ctx = PassContext().with_config(bisect_limit=1)
    _, records = PassManager(parse_pipeline("eliminate-identity,eliminate-dead-nodes"), ctx).run(model)
    assert [r.name for r in records] == ["eliminate-identity"]


@dataclass(frozen=True)
class NeedsStaticShapes(Pass):
    """Test pass: declares that it needs static input shapes."""

    name: ClassVar[str] = "needs-static"
    requires_static_shapes: ClassVar[bool] = True

    def run(self, model, ctx):
        return PassResult(model, False)


def test_static_shape_precondition_is_checked_before_the_pass_runs():
    from mcc.toolchain.passmanager import PreconditionError

    dynamic = parse_model(SIMPLE.replace("float[2, 4] x", "float[N, 4] x").replace("float[2, 4] y", "float[N, 4] y"))
    with pytest.raises(PreconditionError, match="needs-static.*static input shapes"):
        PassManager([NeedsStaticShapes()]).run(dynamic)
    PassManager([NeedsStaticShapes()]).run(parse_model(SIMPLE))


def test_dump_dir_config_writes_the_model_after_each_change(tmp_path):
    model = parse_model(SIMPLE)
    ctx = PassContext().with_config(dump_dir=str(tmp_path / "dumps"))
    PassManager(parse_pipeline("eliminate-identity,eliminate-dead-nodes"), ctx).run(model)
    assert [p.name for p in sorted((tmp_path / "dumps").iterdir())] == ["01-eliminate-identity.onnx"]


def test_fixed_point_groups_parse_print_and_loop_until_nothing_changes():
    from mcc.toolchain.passmanager import FixedPoint, PassManager

    text = "fixed-point{max-iterations=3}(fold-constants,fold-constant-if),cse"
    passes = parse_pipeline(text)
    assert isinstance(passes[0], FixedPoint) and [p.name for p in passes[0].passes] == ["fold-constants",
                                                                                        "fold-constant-if"]
    assert format_pipeline(passes) == text and parse_pipeline(format_pipeline(passes)) == passes
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) <float[2] a = {1, 2}> {
        b = Neg(a)
        y = Add(x, b)
    }
    """)
    _, records = PassManager(passes).run(model)
    # round 1 folds Neg, round 2 changes nothing: the group stops there
    assert [(r.name, r.modified) for r in records] == [("fold-constants", True), ("fold-constant-if", False),
                                                      ("fold-constants", False), ("fold-constant-if", False),
                                                      ("cse", False)]


@pytest.mark.parametrize("text, message", [
    ("cse(fold-constants)", "pass 'cse' takes no pass list; only fixed-point(...) does"),
    ("fixed-point(cse", "'(' at column 12 is never closed"),
    ("fixed-point{max-iterations=0}(cse)", "max-iterations must be at least 1"),
    ("fixed-point(cse)x", "malformed pipeline text at column 17"),
])
def test_fixed_point_errors(text, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_pipeline(text)


def test_readme_states_the_default_pipeline_and_lists_every_builtin_pass():
    from pathlib import Path

    from mcc.toolchain.registry import builtin_passes

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"`default` is `{NAMED_PIPELINES['default']}`." in readme
    for cls in builtin_passes():
        assert f"| `{cls.name}` |" in readme, f"README's pass table lacks {cls.name}"
