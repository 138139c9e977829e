"""Pipeline text: parse and print, in MLIR/LLVM style.

Grammar:
    pipeline := item ("," item)*        (empty text = no passes)
    item     := NAME ["{" option ("," option)* "}"] ["(" pipeline ")"]
    option   := KEY "=" VALUE            (KEY in kebab-case; VALUE: true/false, int, float, word)

Only `fixed-point` takes a parenthesised pipeline: its passes run again and again until a round
changes nothing (at most `max-iterations` rounds).

A NAME is a pass name or a named pipeline (`default`, `none`, ...), which expands in place.
`format_pipeline(parse_pipeline(text))` is canonical: named pipelines expanded, only options that
differ from their defaults printed. Parsing it again yields an equal pipeline (round trip).
Everything is validated here, before any pass runs: unknown passes and options fail with the
candidates listed.
"""

from __future__ import annotations

import difflib
import math
import re

from mcc.toolchain.errors import UsageError
from mcc.toolchain.passmanager import Pass, option_type

#: Named pipelines expand to pipeline text. `default` runs when `--passes` is not given.
NAMED_PIPELINES: dict[str, str] = {
    "default": (
        # Fold first: a Dropout's training_mode, a Reshape's shape or an If's condition may be
        # computed from constants (an inlined If branch may fold further, hence the loop).
        # cse before fusion, so repeated subgraphs fuse once; the fusions, chain merges and
        # activation recognition enable each other (a Pad folded into a Conv lets BN fold, a merged
        # Reshape exposes a MatMul + Add), so they loop to a fixed point; eliminate-identity removes
        # what the rewrites marked as no-ops, and cse merges the equal activations that
        # recognize-activations made of differently written copies. decompose-unsupported only touches ops the target lacks
        # and recognize-activations only builds ops it has, so the two never undo each other.
        # combine-parallel after the loop: a convolution merged with its siblings no longer
        # matches the folds of a following BatchNormalization or affine op.
        # flush-subnormals last: the folds above make the subnormal weights it removes.
        "inline-initializer-inputs,fixed-point(fold-constants,fold-constant-if),substitute-recurrent,"
        "eliminate-identity,cse,"
        "decompose-unsupported,"
        "fixed-point(fuse-conv-bn,fold-conv-affine,fuse-gemm,fold-pad,simplify-chains,remove-noops,recognize-activations,recognize-magnitude,"
        "eliminate-identity,cse),combine-parallel,eliminate-dead-nodes,flush-subnormals"
    ),
    "none": "",
}

_ITEM = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*(\{[^{}]*\})?\s*")
_SEPARATOR = re.compile(r"\s*(?:,|$)")


def _group_end(text: str, start: int) -> int:
    """Index of the ')' closing the '(' at `start`."""
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "(":
            depth += 1
        elif text[index] == ")":
            depth -= 1
            if depth == 0:
                return index
    raise UsageError(f"malformed pipeline text: '(' at column {start + 1} is never closed")


def _registry() -> dict[str, type[Pass]]:
    from mcc.toolchain.registry import available_passes

    return available_passes()


def _suggest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"{hint}; candidates are: {', '.join(sorted(candidates))}"


def _plugin_failure(name: str) -> str:
    from mcc.toolchain.registry import plugin_errors

    for error in plugin_errors():
        if error.entry_point == name:
            return f" (plugin '{name}' from '{error.distribution}' failed to load: {error.reason})"
    return ""


def _convert(pass_cls: type[Pass], key: str, raw: str):
    field_name = key.replace("-", "_")
    fields = {f.name: f for f in pass_cls.options()}
    if field_name not in fields:
        names = [f.name.replace("_", "-") for f in pass_cls.options()]
        raise UsageError(
            f"pass '{pass_cls.name}' has no option '{key}'"
            + (_suggest(key, names) if names else "; it takes no options")
        )
    kind = option_type(pass_cls, fields[field_name])
    try:
        if kind is bool:
            lowered = raw.lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError
            value = lowered in ("true", "1")
        elif kind is int:
            value = int(raw)
        elif kind is float:
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError
        else:
            value = raw
    except ValueError:
        raise UsageError(
            f"option '{key}' of pass '{pass_cls.name}' expects {kind.__name__}, got '{raw}'"
        ) from None
    return field_name, value


def parse_pipeline(text: str, registry: dict[str, type[Pass]] | None = None) -> list[Pass]:
    """Parse pipeline text into configured pass instances (validating everything)."""
    registry = registry if registry is not None else _registry()
    text = text.strip()
    passes: list[Pass] = []
    position = 0
    while position < len(text):
        match = _ITEM.match(text, position)
        if not match or match.end() == position:
            raise UsageError(f"malformed pipeline text at column {position + 1}: '{text[position:]}'")
        name, braces = match.group(1), match.group(2)
        position = match.end()
        group_text = None
        if position < len(text) and text[position] == "(":
            end = _group_end(text, position)
            group_text, position = text[position + 1:end], end + 1
            if name != "fixed-point":
                raise UsageError(f"pass '{name}' takes no pass list; only fixed-point(...) does")
        separator = _SEPARATOR.match(text, position)
        if separator is None or (separator.end() == position and position < len(text)):
            raise UsageError(f"malformed pipeline text at column {position + 1}: '{text[position:]}'")
        position = separator.end()
        if name in NAMED_PIPELINES and name not in registry:
            if braces:
                raise UsageError(f"named pipeline '{name}' takes no options")
            passes.extend(parse_pipeline(NAMED_PIPELINES[name], registry))
            continue
        if name not in registry:
            raise UsageError(f"unknown pass '{name}'" + _plugin_failure(name)
                             + _suggest(name, list(registry) + list(NAMED_PIPELINES)))
        pass_cls = registry[name]
        options = {}
        if braces:
            body = braces[1:-1].strip()
            for item in filter(None, (part.strip() for part in body.split(","))):
                key, sep, raw = item.partition("=")
                if not sep:
                    raise UsageError(f"option '{item}' of pass '{name}' is not KEY=VALUE")
                field_name, value = _convert(pass_cls, key.strip(), raw.strip())
                options[field_name] = value
        try:
            instance = pass_cls(**options)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"pass '{name}': {exc}") from None
        if name == "fixed-point":
            instance = pass_cls.of(parse_pipeline(group_text or "", registry), instance.max_iterations)
        passes.append(instance)
    if text.endswith(","):
        raise UsageError("malformed pipeline text: trailing ','")
    return passes


def _format_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def format_pass(pass_: Pass) -> str:
    options = {key: value for key, value in pass_.non_default_options().items() if key != "passes"}
    group = f"({format_pipeline(list(pass_.passes))})" if pass_.name == "fixed-point" else ""
    if not options:
        return pass_.name + group
    body = ",".join(f"{key.replace('_', '-')}={_format_value(value)}" for key, value in options.items())
    return f"{pass_.name}{{{body}}}{group}"


def format_pipeline(passes: list[Pass]) -> str:
    return ",".join(format_pass(pass_) for pass_ in passes)
