#!/usr/bin/env python3
"""Long property run: every built-in pass and the default pipeline on thousands of random graphs.

    python tools/fuzz_passes.py --graphs 2000 [--seed 0] [--out DIR]

Model i is `mcc.toolchain.graphgen.random_model(seed + i)`. Every built-in pass (upgrade-opset to
opset 21, its default being the models' own opset) and the default pipeline run on each model,
which must keep three properties (`graphgen.check_pass`): onnx.checker and strict shape inference
pass, a second run changes nothing, onnxruntime computes the same outputs as on the original.
A progress line is printed as it goes; at the end, a markdown table per pass (graphs, times
modified, failures by kind, the motifs it rewrote most), the wall time and the exact command.
Each failing model is saved to DIR (default: a new temporary folder) as
`<pass>-seed<N>.onnx`, with `<pass>-seed<N>.txt` saying what failed and how to reproduce it.
Exit status 1 when anything failed.

The property tests in tests/property run a quick sample of the same checks.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from mcc.toolchain.graphgen import FAILURE_KINDS, PassCheck, check_pass, checked_transforms, random_model

PROGRESS_EVERY_S = 15.0


@dataclass
class PassTally:
    """One pass's results over the run."""

    graphs: int = 0
    modified: int = 0
    failures: Counter = field(default_factory=Counter)
    motifs: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def record(self, outcome: PassCheck, seconds: float) -> None:
        self.graphs += 1
        self.modified += outcome.modified
        self.motifs.update(outcome.motifs)
        self.seconds += seconds
        if outcome.failure:
            self.failures[outcome.failure] += 1


def _file_stem(pass_text: str, seed: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_-]+', '_', pass_text)}-seed{seed}"


def save_failure(out_dir: Path, pass_text: str, seed: int, model: onnx.ModelProto, outcome: PassCheck) -> Path:
    """Write the failing model, the pass's result (when there is one) and a note on reproducing it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = _file_stem(pass_text, seed)
    onnx.save(model, out_dir / f"{stem}.onnx")
    if outcome.result is not None:
        onnx.save(outcome.result, out_dir / f"{stem}.after.onnx")
    reproduce = (
        "python -c \"from mcc.toolchain.graphgen import check_pass, checked_transforms, random_model; "
        f"c = check_pass({pass_text!r}, checked_transforms()[{pass_text!r}], random_model({seed})); "
        "print(c.failure, c.reason)\""
    )
    note = out_dir / f"{stem}.txt"
    note.write_text(f"pass: {pass_text}\nseed: {seed}\nfailure: {outcome.failure}\nreason: {outcome.reason}\n"
                    f"model: {stem}.onnx (random_model({seed}))\nreproduce: {reproduce}\n")
    return note


def markdown_table(tallies: dict[str, PassTally]) -> str:
    header = ["pass", "graphs", "modified", *FAILURE_KINDS, "seconds", "motifs rewritten most"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 2) + ["---"]) + "|"]
    for name, tally in tallies.items():
        motifs = ", ".join(f"{motif} {count}" for motif, count in tally.motifs.most_common(4)) or "-"
        cells = [f"`{name}`", str(tally.graphs), str(tally.modified),
                 *(str(tally.failures[kind]) for kind in FAILURE_KINDS), f"{tally.seconds:.1f}", motifs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(graph_count: int, first_seed: int, out_dir: Path) -> tuple[dict[str, PassTally], list[Path]]:
    transforms = checked_transforms()
    tallies = {name: PassTally() for name in transforms}
    notes: list[Path] = []
    start = last_progress = time.perf_counter()
    for index in range(graph_count):
        seed = first_seed + index
        model = random_model(seed)
        for name, transform in transforms.items():
            began = time.perf_counter()
            outcome = check_pass(name, transform, model)
            tallies[name].record(outcome, time.perf_counter() - began)
            if outcome.failure:
                notes.append(save_failure(out_dir, name, seed, model, outcome))
                print(f"FAIL {name} seed {seed}: {outcome.failure}: {outcome.reason}", flush=True)
        now = time.perf_counter()
        if now - last_progress >= PROGRESS_EVERY_S or index + 1 == graph_count:
            last_progress = now
            print(f"[{index + 1:>5}/{graph_count}] {now - start:7.1f} s, {len(notes)} failures", flush=True)
    return tallies, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=int, default=2000, help="how many random graphs (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first graph (default 0)")
    parser.add_argument("--out", type=Path, default=None, help="where failing models go (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.graphs < 1:
        parser.error("--graphs must be at least 1")
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="mcc-fuzz-passes-"))
    command = shlex.join(["python", "tools/fuzz_passes.py", *(sys.argv[1:] if argv is None else argv)])

    start = time.perf_counter()
    tallies, notes = run(args.graphs, args.seed, out_dir)
    wall_s = time.perf_counter() - start

    print()
    print(markdown_table(tallies))
    print()
    print(f"graphs: {args.graphs} (seeds {args.seed}..{args.seed + args.graphs - 1}), wall time: {wall_s:.1f} s")
    print(f"command: {command}")
    if notes:
        print(f"{len(notes)} failures; models and notes in {out_dir}")
        return 1
    print("no failures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
