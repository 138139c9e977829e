"""Pass declarations, the pass context, analyses, instruments and the pass manager.

A pass is a small frozen dataclass (after onnx-ir's passes and MLIR/LLVM):

    @dataclass(frozen=True)
    class FoldConstants(Pass):
        '''Evaluate subgraphs whose inputs are all constant.'''
        name: ClassVar[str] = "fold-constants"
        max_size_mb: float = 64.0            # a typed option, written max-size-mb=... in pipeline text

        def run(self, model, ctx) -> PassResult: ...

Options are the dataclass fields; they are parsed and validated before anything runs
(`mcc.toolchain.pipeline`), are hashable, and print back to text. A pass returns the model and
whether it changed anything; the manager uses `modified` to invalidate cached analyses, time
and count each pass, and (with `verify_each`) check the model after every pass.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol

import onnx

from mcc.toolchain import ir
from mcc.toolchain.errors import MccError, ModelError, PassError
from mcc.toolchain.stats import ModelStats, model_stats

KEBAB_CASE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclass(frozen=True)
class PassResult:
    model: onnx.ModelProto
    modified: bool


@dataclass(frozen=True)
class Pass:
    """Base of every pass. Subclasses are frozen dataclasses whose fields are the options."""

    name: ClassVar[str] = ""
    #: the lowest default-domain opset the pass is written for; the manager upgrades first
    min_opset: ClassVar[int | None] = None
    #: the pass needs static input shapes (fixed by the driver before the pipeline runs)
    requires_static_shapes: ClassVar[bool] = False
    #: the pass trades precision on purpose (float16, quantization): equivalence is judged with
    #: that precision's tolerance, not float32's
    changes_precision: ClassVar[bool] = False
    #: the precision a model computes at after this pass modified it ("fp16", "int8"): validation
    #: then uses that precision's tolerances (None: unchanged)
    precision: ClassVar[str | None] = None

    def run(self, model: onnx.ModelProto, ctx: "PassContext") -> PassResult:
        raise NotImplementedError

    # ---- declaration helpers -------------------------------------------------------------------

    @classmethod
    def summary(cls) -> str:
        """One-line doc: the first line of the class docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0].strip() if doc else ""

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.init]

    def non_default_options(self) -> dict[str, Any]:
        values = {}
        for option in self.options():
            value = getattr(self, option.name)
            if value != option.default:
                values[option.name] = value
        return values

    def to_text(self) -> str:
        from mcc.toolchain.pipeline import format_pass

        return format_pass(self)


def validate_pass_class(cls: Any) -> None:
    """Raise TypeError/ValueError when `cls` is not a well-formed pass declaration."""
    if not isinstance(cls, type) or not issubclass(cls, Pass):
        raise TypeError(f"{cls!r} is not a subclass of mcc.toolchain.passmanager.Pass")
    if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:
        raise TypeError(f"{cls.__name__} must be a frozen dataclass")
    if not isinstance(cls.name, str) or not KEBAB_CASE.match(cls.name):
        raise ValueError(f"{cls.__name__} has pass name {cls.name!r}, which is not kebab-case")
    if cls.run is Pass.run:
        raise TypeError(f"{cls.__name__} does not implement run()")
    for option in cls.options():
        if option.default is dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}: option '{option.name}' has no default")
        if option_type(cls, option) not in (bool, int, float, str):
            raise TypeError(f"{cls.__name__}: option '{option.name}' must be bool, int, float or str")


def option_type(cls: type, option: dataclasses.Field) -> type:
    """The option's Python type (annotations may be strings under `from __future__ import annotations`)."""
    annotation = option.type
    if isinstance(annotation, str):
        annotation = {"bool": bool, "int": int, "float": float, "str": str}.get(annotation, annotation)
    return annotation


# --------------------------------------------------------------------------------------------------
# Analyses


class AnalysisManager:
    """Analyses computed on demand and cached until a pass modifies the model.

    An analysis is a function `model -> value`; it is identified by the function itself.
    """

    def __init__(self) -> None:
        self._cache: dict[Callable, Any] = {}

    def get(self, analysis: Callable[[onnx.ModelProto], Any], model: onnx.ModelProto) -> Any:
        entry = self._cache.get(analysis)
        if entry is not None and entry[0] is model:
            return entry[1]
        value = analysis(model)
        self._cache[analysis] = (model, value)
        return value

    def invalidate(self, preserved: frozenset[Callable] = frozenset()) -> None:
        for analysis in list(self._cache):
            if analysis not in preserved:
                del self._cache[analysis]


# --------------------------------------------------------------------------------------------------
# Context and instruments


class PassInstrument(Protocol):
    def before_pass(self, pass_: Pass, model: onnx.ModelProto, ctx: "PassContext") -> None: ...

    def after_pass(self, pass_: Pass, result: PassResult, seconds: float, ctx: "PassContext") -> None: ...


@dataclass
class PassContext:
    """Policy for one pipeline run (after TVM's PassContext).

    `config` holds typed keys; unknown keys are rejected by `with_config`.
    """

    verify_each: bool = False
    disabled: frozenset[str] = frozenset()
    instruments: list[PassInstrument] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    analyses: AnalysisManager = field(default_factory=AnalysisManager)
    #: remarks passes make for the report (what they skipped and why)
    notes: list[str] = field(default_factory=list)
    #: why the rules named in the `explain` config key did or did not fire (rewrite passes)
    explanations: list[str] = field(default_factory=list)
    _explained: dict[tuple, int] = field(default_factory=dict, repr=False)
    #: the ops the target's backend can compile (None: no target, so no op is known to be missing)
    supported_ops: frozenset[str] | None = None
    #: approximations applied (lossy rewrite rules), for the report
    lossy_rewrites: list[str] = field(default_factory=list)
    #: long-running passes report progress here: (label, done, total); the CLI draws a bar
    progress: Callable[[str, int, int], None] | None = None

    def report_progress(self, label: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(label, done, total)

    CONFIG_KEYS: ClassVar[dict[str, type]] = {"dump-dir": str, "bisect-limit": int, "explain": str, "allow-lossy": bool}

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def explain(self, text: str, key: tuple | None = None) -> None:
        """Record an explanation; one with the same `key` (pass, rule, node) replaces the earlier one,
        so passes that run once per fixed-point round report each node once, with its latest reason."""
        if key is not None:
            index = self._explained.get(key)
            if index is not None:
                self.explanations[index] = text
                return
            self._explained[key] = len(self.explanations)
        self.explanations.append(text)

    def with_config(self, **values: Any) -> "PassContext":
        for key, value in values.items():
            key = key.replace("_", "-")
            if key not in self.CONFIG_KEYS:
                from mcc.toolchain.errors import UsageError

                raise UsageError(
                    f"invalid config option '{key}', candidates are: {', '.join(sorted(self.CONFIG_KEYS))}"
                )
            self.config[key] = self.CONFIG_KEYS[key](value)
        return self


@dataclass
class PassRecord:
    """What the report says about one pass run."""

    name: str
    text: str
    modified: bool
    seconds: float
    before: ModelStats
    after: ModelStats

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "pipeline_text": self.text,
            "modified": self.modified,
            "seconds": round(self.seconds, 6),
            "nodes_before": self.before.nodes,
            "nodes_after": self.after.nodes,
            "params_before": self.before.params,
            "params_after": self.after.params,
            "macs_before": self.before.macs,
            "macs_after": self.after.macs,
        }


class PreconditionError(PassError):
    """A pass was asked to run on a model that does not meet its declared preconditions."""


def has_static_inputs(model: onnx.ModelProto) -> bool:
    return all(ir.static_shape(ir.input_dims(value)) is not None for value in ir.graph_inputs(model))


def verify_model(model: onnx.ModelProto, pass_name: str) -> None:
    """The invariant every pass keeps: onnx.checker and strict shape inference succeed."""
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise PassError(pass_name, f"model fails onnx.checker after the pass: {ir._first_line(exc)}") from None
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as exc:
        raise PassError(pass_name, f"shape inference fails after the pass: {ir._first_line(exc)}") from None


class PassManager:
    """Runs a pipeline of passes over a model, with timing, statistics and verification."""

    def __init__(self, passes: list[Pass] | tuple[Pass, ...], ctx: PassContext | None = None):
        self.passes = list(passes)
        self.ctx = ctx or PassContext()
        dump_dir = self.ctx.config.get("dump-dir")
        if dump_dir and not any(isinstance(i, DumpAfterChange) for i in self.ctx.instruments):
            self.ctx.instruments.append(DumpAfterChange(dump_dir))

    def run(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[PassRecord]]:
        records: list[PassRecord] = []
        ctx = self.ctx
        limit = ctx.config.get("bisect-limit")
        for index, pass_ in enumerate(self.passes):
            if pass_.name in ctx.disabled or (limit is not None and index >= limit):
                continue
            if isinstance(pass_, FixedPoint):
                model = self._run_fixed_point(pass_, model, records)
            else:
                model = self._run_checked(pass_, model, records)
        return model, records

    def _run_checked(self, pass_: Pass, model: onnx.ModelProto, records: list[PassRecord]) -> onnx.ModelProto:
        if pass_.requires_static_shapes and not has_static_inputs(model):
            raise PreconditionError(pass_.name, "needs static input shapes (fix them with --input-shape)")
        if pass_.min_opset is not None and ir.opset_version(model) < pass_.min_opset:
            from mcc.passes.upgrade_opset import UpgradeOpset

            model = self._run_one(UpgradeOpset(version=pass_.min_opset), model, records)
        return self._run_one(pass_, model, records)

    def _run_fixed_point(self, group: "FixedPoint", model: onnx.ModelProto, records: list[PassRecord]) -> onnx.ModelProto:
        """Run the group's passes in order, again and again, until a round changes nothing."""
        for _ in range(group.max_iterations):
            start = len(records)
            for pass_ in group.passes:
                if pass_.name in self.ctx.disabled:
                    continue
                if isinstance(pass_, FixedPoint):
                    model = self._run_fixed_point(pass_, model, records)
                else:
                    model = self._run_checked(pass_, model, records)
            if not any(record.modified for record in records[start:]):
                return model
        self.ctx.note(f"fixed-point group '{group.to_text()}' still changed the model after "
                      f"{group.max_iterations} rounds")
        return model

    def _run_one(self, pass_: Pass, model: onnx.ModelProto, records: list[PassRecord]) -> onnx.ModelProto:
        ctx = self.ctx
        before = ctx.analyses.get(model_stats, model)
        for instrument in ctx.instruments:
            instrument.before_pass(pass_, model, ctx)
        start = time.perf_counter()
        try:
            result = pass_.run(model, ctx)
        except PassError:
            raise
        except ModelError as exc:
            # The model was accepted before the pipeline ran; a pass making it unreadable is a defect.
            raise PassError(pass_.name, str(exc)) from exc
        except MccError:
            raise
        except Exception as exc:
            raise PassError(pass_.name, f"{type(exc).__name__}: {ir._first_line(exc)}") from exc
        seconds = time.perf_counter() - start
        if not isinstance(result, PassResult):
            raise PassError(pass_.name, f"run() returned {type(result).__name__}, not PassResult")
        if result.modified:
            ctx.analyses.invalidate()
            if ctx.verify_each:
                verify_model(result.model, pass_.name)
        for instrument in ctx.instruments:
            instrument.after_pass(pass_, result, seconds, ctx)
        after = ctx.analyses.get(model_stats, result.model)
        records.append(PassRecord(pass_.name, pass_.to_text(), result.modified, seconds, before, after))
        return result.model


@dataclass(frozen=True)
class FixedPoint(Pass):
    """Run a group of passes repeatedly until a whole round changes nothing (text: `fixed-point(a,b)`)."""

    name: ClassVar[str] = "fixed-point"
    max_iterations: int = 4
    #: the group, set by the pipeline parser (`fixed-point{max-iterations=N}(pass,pass,...)`)
    passes: tuple = field(default=(), init=False)

    @classmethod
    def of(cls, passes, max_iterations: int = 4) -> "FixedPoint":
        group = cls(max_iterations=max_iterations)
        object.__setattr__(group, "passes", tuple(passes))
        return group

    def __post_init__(self) -> None:
        if self.max_iterations < 1:
            raise ValueError("max-iterations must be at least 1")

    def run(self, model: onnx.ModelProto, ctx: "PassContext") -> PassResult:
        result, records = PassManager([self], ctx).run(model)
        return PassResult(result, any(record.modified for record in records))


class DumpAfterChange:
    """Instrument: write the model to `<dir>/<NN>-<pass>.onnx` after every pass that changed it."""

    def __init__(self, directory: str):
        self.directory = directory
        self.count = 0

    def before_pass(self, pass_: Pass, model: onnx.ModelProto, ctx: PassContext) -> None:
        return None

    def after_pass(self, pass_: Pass, result: PassResult, seconds: float, ctx: PassContext) -> None:
        if not result.modified:
            return
        import os

        self.count += 1
        os.makedirs(self.directory, exist_ok=True)
        onnx.save(result.model, os.path.join(self.directory, f"{self.count:02d}-{pass_.name}.onnx"))
