#!/usr/bin/env python3
"""Run the ONNX backend node-test cases through mcc's TVM host backend and track the verdicts.

Every node case of the *installed* onnx package (shipped under `onnx/backend/test/data/node`, or
generated offline from `onnx.backend.test.case.node` into a temporary folder when the wheel does
not ship them) is compiled the way `mcc compile` does it and compared with its expected outputs
(`mcc.toolchain.nodecases.run_case`): pass / fail / error / skip, with a reason.

Cases run in worker processes (a TVM compile can hang or crash): each case has a timeout, and a
worker that times out or dies is replaced, the case recorded as an error at the stage it reached.

    python tools/onnx_node_tests.py [--cases SUBSTR,...] [--jobs 2] [--timeout-s 120] [--write]

Without `--write` it prints the summary and the differences from the tracked table
`tests/backends/onnx_node_results.json`. With `--write` it updates that table (the cases run
replace their entries; with `--cases` the others stay) and writes `benchmarks/onnx_node_tests.md`
(per op: cases, pass, fail, error, skip and the distinct reasons; totals; the command and its
wall time). A progress line per case goes to stdout (and to `--log FILE`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shlex
import sys
import tempfile
import time
from collections import Counter, defaultdict
from multiprocessing.connection import wait
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS_JSON = REPO / "tests" / "backends" / "onnx_node_results.json"
RESULTS_MD = REPO / "benchmarks" / "onnx_node_tests.md"
STATUSES = ("pass", "fail", "error", "skip")


# --------------------------------------------------------------------------------------------------
# Workers


def _worker(connection, threads: int) -> None:
    """Run the cases the parent sends, reporting each stage and then the result."""
    os.environ["TVM_NUM_THREADS"] = str(threads)  # before tvm is imported in this process
    from mcc.backends.tvm import common
    from mcc.toolchain.nodecases import run_case

    common.frontend_ops()  # imports TVM and its ONNX frontend now, not in the first case's time
    while True:
        case_dir = connection.recv()
        if case_dir is None:
            return
        result = run_case(case_dir, on_stage=lambda stage: connection.send(("stage", stage)))
        connection.send(("done", result))


class Slot:
    """One worker process and the case it is running."""

    def __init__(self, context, threads: int):
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, threads), daemon=True)
        self.process.start()
        child.close()
        self.case: Path | None = None
        self.stage = ""
        self.started = 0.0

    def submit(self, case_dir: Path) -> None:
        self.case, self.stage, self.started = case_dir, "start", time.monotonic()
        self.connection.send(str(case_dir))

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.connection.send(None)
            except OSError:
                pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.connection.close()


def _exit_text(code: int | None) -> str:
    import signal

    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def run_all(cases: list[Path], jobs: int, timeout_s: float, progress) -> dict[str, dict]:
    """Run every case in `jobs` worker processes; returns case name -> tracked record."""
    from mcc.toolchain.nodecases import CaseResult, case_op

    context = multiprocessing.get_context("spawn")  # no fork of a process that has TVM threads
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pending = list(reversed(cases))
    slots = [Slot(context, threads) for _ in range(min(jobs, len(cases)))]
    results: dict[str, dict] = {}
    done = 0

    def finish(slot: Slot, result: CaseResult) -> None:
        nonlocal done
        done += 1
        results[result.name] = result.record()
        progress(done, len(cases), result)
        slot.case = None

    def abandon(slot: Slot, why: str) -> Slot:
        """Replace a worker that hung or died; its case is an error at the stage it reached."""
        case = slot.case
        stage = slot.stage if slot.stage not in ("", "start") else "load"
        seconds = round(time.monotonic() - slot.started, 3)
        slot.stop(kill=True)
        finish(slot, CaseResult(case.name, case_op(case), "error", f"{stage}: {why}", stage, seconds))
        return Slot(context, threads)

    try:
        for slot in slots:
            if pending:
                slot.submit(pending.pop())
        while any(slot.case is not None for slot in slots):
            busy = [slot for slot in slots if slot.case is not None]
            deadline = min(slot.started for slot in busy) + timeout_s
            ready = wait([s.connection for s in busy] + [s.process.sentinel for s in busy],
                         timeout=max(0.0, deadline - time.monotonic()))
            for index, slot in enumerate(slots):
                if slot.case is None:
                    continue
                replaced = None
                if slot.connection in ready:
                    try:
                        while slot.connection.poll():
                            kind, payload = slot.connection.recv()
                            if kind == "stage":
                                if payload == "load":  # the worker has started the case: time it from here
                                    slot.started = time.monotonic()
                                slot.stage = payload
                            else:
                                finish(slot, payload)
                                break
                    except (EOFError, OSError):
                        slot.process.join(timeout=5)
                        replaced = abandon(slot, f"worker crashed ({_exit_text(slot.process.exitcode)})")
                elif slot.process.sentinel in ready:
                    slot.process.join(timeout=5)
                    replaced = abandon(slot, f"worker crashed ({_exit_text(slot.process.exitcode)})")
                elif time.monotonic() - slot.started > timeout_s:
                    replaced = abandon(slot, f"timeout after {timeout_s:g} s")
                if replaced is not None:
                    slots[index] = slot = replaced
                if slot.case is None and pending:
                    slot.submit(pending.pop())
    finally:
        for slot in slots:
            slot.stop(kill=slot.case is not None)
    return results


# --------------------------------------------------------------------------------------------------
# Reporting


def load_tracked() -> dict[str, dict]:
    return json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else {}


def write_tracked(results: dict[str, dict]) -> None:
    text = json.dumps(dict(sorted(results.items())), indent=1, sort_keys=True) + "\n"
    temporary = RESULTS_JSON.with_name(RESULTS_JSON.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, RESULTS_JSON)


def short_reason(record: dict) -> str:
    """A reason without case-specific numbers and names, so equal causes group together."""
    reason = record["reason"]
    prefix = ""
    constant = re.match(r"^with --const-input \S+: ", reason)
    if constant:
        prefix, reason = "with --const-input: ", reason[constant.end():]
    if record["status"] == "pass":
        return "needs --const-input" if reason.startswith("needs --const-input") else ""
    if record["status"] == "fail":
        kinds = []
        for part in reason.split(" | "):
            detail = part.split(": ", 1)[-1]
            for pattern, label in ((r"^shape", "wrong shape"), (r"dtype .* expected", "wrong dtype"),
                                   (r"NaN/Inf", "NaN/Inf positions differ"), (r"integer output differs", "integer values differ"),
                                   (r"max_abs|cosine|SQNR", "values outside tolerance"),
                                   (r"outputs, expected", "wrong output count")):
                if re.search(pattern, detail):
                    kinds.append(label)
                    break
            else:
                kinds.append(detail)
        return prefix + ", ".join(sorted(set(kinds)))
    # tensor names in skip reasons; in errors quotes hold pass names, keys and types: they stay
    text = re.sub(r"'[^'\s]*'", "'…'", reason) if record["status"] == "skip" else reason
    text = re.sub(r"\b\d+(\.\d+)?(e-?\d+)?\b", "N", text)
    text = re.sub(r"\[[^\]]*\]", "[…]", text)
    text = re.sub(r"\([^)]*\)", "(…)", text) if record["status"] == "error" else text
    return prefix + text[:140]


def summary_counts(results: dict[str, dict]) -> Counter:
    return Counter(record["status"] for record in results.values())


def categories(results: dict[str, dict], status: str) -> list[tuple[str, int, list[str]]]:
    """(short reason, case count, ops) for the cases with `status`, most frequent first."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for record in results.values():
        if record["status"] == status:
            grouped[short_reason(record)].append(record["op"])
    return sorted(((reason, len(ops), sorted(set(ops))) for reason, ops in grouped.items()),
                  key=lambda item: (-item[1], item[0]))


def markdown(results: dict[str, dict], command: str, wall_s: float, ran: int, total_cases: int, source: str) -> str:
    import numpy
    import onnx

    try:
        import tvm

        tvm_version = tvm.__version__
    except Exception:  # the table is still written without TVM's version
        tvm_version = "?"
    counts = summary_counts(results)
    lines = [
        "# ONNX backend node tests through mcc (TVM host backend)",
        "",
        f"Command: `{command}`  ",
        f"Wall time: {wall_s:.0f} s for {ran} case(s) of {total_cases} ({os.cpu_count()} CPU cores)  ",
        f"Cases: {source}; onnx {onnx.__version__}, apache-tvm {tvm_version}, numpy {numpy.__version__}  ",
        "Tracked table: `tests/backends/onnx_node_results.json` (checked by `tests/backends/test_onnx_node_cases.py`).",
        "",
        "Each case is compiled as `mcc compile` does it (default pipeline, upgrade to opset 13, host target),",
        "loaded from disk, run on the case's inputs and compared with its expected outputs (fp32 tolerances,",
        "integers exact, output dtype must match). Runtime inputs that only define shapes or axes are given",
        "as constants (`--const-input`) when the case fails without them; the reason then says so.",
        "`skip` is a capability gap (an op the backend cannot import) or a case the harness cannot judge",
        "(sequence/optional values, random or training ops).",
        "",
        f"**Totals: {len(results)} cases: {counts['pass']} pass, {counts['fail']} fail, "
        f"{counts['error']} error, {counts['skip']} skip.**",
        "",
    ]
    needs_constants = sorted({r["op"] for r in results.values() if short_reason(r) == "needs --const-input"})
    if needs_constants:
        count = sum(1 for r in results.values() if short_reason(r) == "needs --const-input")
        lines += [f"{count} of the passes need their shape/axes/size inputs as constants (`--const-input`); "
                  f"as runtime inputs they fail or error (the reason keeps how): {', '.join(needs_constants)}.", ""]
    for status in ("fail", "error", "skip"):
        cats = categories(results, status)
        if not cats:
            continue
        lines += [f"## Top {status} reasons", "", "| cases | reason | ops |", "|---:|---|---|"]
        for reason, count, ops in cats[:25]:
            shown = ", ".join(ops[:12]) + (f" and {len(ops) - 12} more" if len(ops) > 12 else "")
            lines.append(f"| {count} | {_cell(reason)} | {shown} |")
        if len(cats) > 25:
            lines.append(f"| {sum(c for _, c, _ in cats[25:])} | ({len(cats) - 25} other reasons) | |")
        lines.append("")
    lines += ["## Per op", "", "| op | cases | pass | fail | error | skip | reasons (fail, error, skip) |",
              "|---|---:|---:|---:|---:|---:|---|"]
    by_op: dict[str, list[dict]] = defaultdict(list)
    for record in results.values():
        by_op[record["op"]].append(record)
    for op in sorted(by_op, key=str.lower):
        records = by_op[op]
        op_counts = Counter(record["status"] for record in records)
        reasons = Counter(f"{r['status']}: {short_reason(r)}" for r in records if short_reason(r))
        text = "; ".join(f"{reason} ({n})" if n > 1 else reason for reason, n in sorted(reasons.items()))
        lines.append(f"| {op} | {len(records)} | " + " | ".join(str(op_counts[s]) for s in STATUSES)
                     + f" | {_cell(text)} |")
    lines += [f"| **total** | {len(results)} | " + " | ".join(str(counts[s]) for s in STATUSES) + " | |", ""]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def print_diff(results: dict[str, dict], tracked: dict[str, dict]) -> int:
    changed = 0
    for name in sorted(results):
        old = tracked.get(name)
        new = results[name]
        if old is None:
            print(f"  new      {name}: {new['status']} {new['reason']}".rstrip())
            changed += 1
        elif old["status"] != new["status"] or old["reason"] != new["reason"] or old["op"] != new["op"]:
            print(f"  changed  {name}: {old['status']} -> {new['status']}  {new['reason']}".rstrip())
            changed += 1
    return changed


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="", help="comma-separated substrings; run only cases whose name contains one")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="per-case timeout in seconds (default 120)")
    parser.add_argument("--write", action="store_true", help="update the tracked JSON table and the markdown report")
    parser.add_argument("--log", type=Path, help="also append the progress lines to this file")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")

    from mcc.toolchain import nodecases

    command = "python tools/onnx_node_tests.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    substrings = [s.strip() for s in args.cases.split(",") if s.strip()]
    start = time.perf_counter()
    log = open(args.log, "a") if args.log else None

    def progress(done: int, total: int, result) -> None:
        line = f"[{done}/{total}] {result.name} ({result.op}): {result.status} {result.seconds:.1f}s {result.reason}".rstrip()
        print(line, flush=True)
        if log is not None:
            log.write(line + "\n")
            log.flush()

    with tempfile.TemporaryDirectory(prefix="onnx-node-cases-") as scratch:
        root = nodecases.shipped_cases_dir()
        if root is not None:
            source = f"shipped with onnx ({root})"
        else:
            import onnx

            root = Path(scratch)
            nodecases.generate_cases(root)
            source = f"generated offline from onnx.backend.test.case.node (onnx {onnx.__version__})"
        all_cases = nodecases.case_dirs(root)
        cases = nodecases.case_dirs(root, substrings)
        print(f"{len(cases)} of {len(all_cases)} case(s), {args.jobs} worker(s), timeout {args.timeout_s:g} s", flush=True)
        interrupted = False
        try:
            results = run_all(cases, args.jobs, args.timeout_s, progress)
        except KeyboardInterrupt:
            interrupted = True
            results = {}
    wall = time.perf_counter() - start
    if log is not None:
        log.close()
    if interrupted:
        print("interrupted: nothing written", file=sys.stderr)
        return 130

    counts = summary_counts(results)
    print(f"\n{len(results)} case(s) in {wall:.0f} s: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES))
    for status in ("fail", "error"):
        for reason, count, ops in categories(results, status)[:10]:
            print(f"  {status} x{count}: {reason}  [{', '.join(ops[:8])}{' ...' if len(ops) > 8 else ''}]")
    tracked = load_tracked()
    print("\nDifferences from the tracked table:")
    if not print_diff(results, tracked):
        print("  none")
    if args.write:
        merged = dict(tracked) if substrings else {}
        merged.update(results)
        write_tracked(merged)
        RESULTS_MD.write_text(markdown(merged, command, wall, len(results), len(all_cases), source))
        print(f"wrote {RESULTS_JSON.relative_to(REPO)} and {RESULTS_MD.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
