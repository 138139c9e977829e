"""mcc's tuning database: MetaSchedule records in the user cache, keyed by target and workload.

Layout: one folder per canonical TVM target under the user cache (as calibration profiles:
`$MCC_CACHE_DIR`, else `$XDG_CACHE_HOME/mcc`, else `~/.cache/mcc`):

    tuning/<kind>-<mcpu>-<cores>c-<hash of str(target)>/
        database_workload.json        MetaSchedule's JSONDatabase: one line per kernel (workload)
        database_tuning_record.json   one line per measured schedule (workload line, trace, run time)
        tune.log                      MetaSchedule's log of the last `tune` (build and run errors)
        .lock                         held by the `tune` writing the files

The whole target string is hashed (mcpu, num-cores included): records measured for one CPU say
nothing about another, and MetaSchedule applies records of its database whatever their target.
Records are keyed by the workload's structural hash, so a kernel two models share (same ops,
shapes and dtypes; weights are parameters, not part of it) is tuned once and used by both.

`tune` gives a wall-clock budget to the kernels without a record, largest estimated FLOPs first, in
rounds of a few trials per kernel (MetaSchedule's own schedulers take a trial count, not a time).
Before each batch it checks the time left against the seconds per trial measured so far, so it
stops about one batch late at worst. MetaSchedule appends every measured batch to the database
files as it arrives: an interrupted run keeps what it measured, and the next run tunes only the
kernels that still have no record. A database that cannot be read (a line cut by a kill, a file
that is not MetaSchedule's) is moved aside as `*.corrupt-<time>` and rebuilt from its valid lines.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mcc.toolchain.errors import UsageError

log = logging.getLogger("mcc.tuning")

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
#: subfolder holding the measured default schedules (same two files), see `_seed_default_schedules`;
#: versioned with the way mcc builds them: v2 keeps register tiles on the stack (stack.py), 0.75-0.93x
#: the time of v1's, so v1's timings would let slower tuned records win. Tuned records keep their
#: (older, slower-built) times: conservative, a record must beat today's default to be used. v3:
#: elementwise kernels with an innermost axis of at most 4 unroll it, keep a concatenation
#: several stages read as a stage of its own, split their vector loop where a select changes
#: branch, and means over contiguous rows sum in vector lanes (schedules/cpu.py). v4: rounding
#: vectorized in integer epilogues (stack.py), small elementwise kernels and pools over fewer
#: channels than a vector on one core.
DEFAULTS_DIR = "default_schedules-v4"
LOG_FILE = "tune.log"
LOCK_FILE = ".lock"
#: MetaSchedule's LocalBuilder default (30 s) times out on a loaded 2-core machine, silently
#: leaving every kernel untuned (shared/notes/tvm-0.27.md, section 4)
BUILD_TIMEOUT_S = 120
RUN_TIMEOUT_S = 60
#: `--search` names -> MetaSchedule search strategies. "random" measures random samples of the
#: design space: no cost model, far less search time per batch; fine for small budgets.
SEARCH_STRATEGIES = {"evolutionary": "evolutionary", "random": "replay-trace"}
DEFAULT_MAX_TRIALS_PER_TASK = 32
DEFAULT_TRIALS_PER_ROUND = 8


# --------------------------------------------------------------------------------------------------
# Where the database lives, and opening it


def cache_root() -> Path:
    from mcc.hwmodels.host import cache_dir

    return cache_dir()


def target_key(target) -> str:
    """A folder name for a TVM target: a readable slug plus a hash of the whole target string."""
    digest = hashlib.sha256(str(target).encode()).hexdigest()[:12]
    parts = [str(target.kind.name)]
    mcpu = target.attrs.get("mcpu")
    if mcpu:
        parts.append(str(mcpu))
    cores = target.attrs.get("num-cores")
    if cores:
        parts.append(f"{int(cores)}c")
    slug = "-".join(re.sub(r"[^A-Za-z0-9._]+", "_", part) for part in parts)
    return f"{slug}-{digest}"


def database_dir(target) -> Path:
    return cache_root() / "tuning" / target_key(target)


def _json_database(directory: Path):
    from tvm.s_tir import meta_schedule as ms

    return ms.database.JSONDatabase(
        path_workload=str(directory / WORKLOAD_FILE),
        path_tuning_record=str(directory / RECORD_FILE),
        allow_missing=True,
        module_equality="structural",
    )


@contextlib.contextmanager
def _exclusive_lock(directory: Path):
    """Yields whether this process got the database's lock (never waits for it)."""
    import fcntl

    with open(directory / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line for line in path.read_text(errors="replace").splitlines() if line.strip()]


def _write_valid_lines(directory: Path, into: Path) -> tuple[int, int]:
    """Write the lines of `directory`'s database that parse into `into`; (records kept, lines dropped).

    A workload line must load as a MetaSchedule Workload, a record line as a TuningRecord of a kept
    workload. Records name their workload by line number, so they are renumbered when a workload
    line before theirs is dropped (the rest of the line is kept byte for byte).
    """
    from tvm.s_tir import meta_schedule as ms

    dropped = 0
    workload_lines: list[str] = []
    workloads = []
    new_index: dict[int, int] = {}
    for old_index, line in enumerate(_lines(directory / WORKLOAD_FILE)):
        try:
            workloads.append(ms.database.Workload.from_json(json.loads(line)))
        except Exception:  # any defect of the line: it is dropped, the rest is kept
            dropped += 1
            continue
        new_index[old_index] = len(workload_lines)
        workload_lines.append(line)
    record_lines: list[str] = []
    for line in _lines(directory / RECORD_FILE):
        try:
            index, record = json.loads(line)
            if isinstance(index, bool) or not isinstance(index, int) or index not in new_index:
                raise ValueError(f"no workload line {index}")
            ms.database.TuningRecord.from_json(record, workloads[new_index[index]])
        except Exception:
            dropped += 1
            continue
        record_lines.append(re.sub(r"^\[\s*\d+", f"[{new_index[index]}", line, count=1))
    for name, lines in ((WORKLOAD_FILE, workload_lines), (RECORD_FILE, record_lines)):
        (into / name).write_text("".join(f"{line}\n" for line in lines))
    return len(record_lines), dropped


def _open(directory: Path, *, holding_lock: bool):
    """(JSONDatabase, notes). A database that fails to load is repaired: in place when this
    process holds, or can take, the lock; otherwise (a `tune` is appending to it) a repaired
    copy is read and the files are left to the writer."""
    try:
        return _json_database(directory), []
    except Exception as exc:  # TVM raises RuntimeError, ValueError or InternalError by defect
        problem = _first_line(exc)
    with contextlib.ExitStack() as stack:
        locked = holding_lock or stack.enter_context(_exclusive_lock(directory))
        scratch = Path(tempfile.mkdtemp(prefix=".repair-", dir=directory))
        try:
            kept, dropped = _write_valid_lines(directory, scratch)
            if not locked:
                database = _json_database(scratch)  # read into memory; the copy can go
                return database, [f"tuning database {directory} is being written by another `mcc tune` and "
                                  f"did not load ({problem}); used its {kept} complete record(s)"]
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for name in (WORKLOAD_FILE, RECORD_FILE):
                if (directory / name).exists():
                    os.replace(directory / name, directory / f"{name}.corrupt-{stamp}")
                os.replace(scratch / name, directory / name)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    note = (f"tuning database {directory} was corrupt ({problem}): moved aside as *.corrupt-{stamp}, "
            f"rebuilt from its {kept} valid record(s), {dropped} line(s) dropped")
    try:
        return _json_database(directory), [note]
    except Exception as exc:  # the valid lines still do not load together: start empty
        for name in (WORKLOAD_FILE, RECORD_FILE):
            os.replace(directory / name, directory / f"{name}.corrupt-{stamp}-rebuilt")
        return _json_database(directory), [f"{note}; the rebuilt files did not load either "
                                           f"({_first_line(exc)}), started an empty database"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def check_database(target) -> list[str]:
    """Open the target's database if there is one, repairing it if it is corrupt; the notes say what was done."""
    directory = database_dir(target)
    if not (directory / RECORD_FILE).is_file():
        return []
    return _open(directory, holding_lock=False)[1]


# --------------------------------------------------------------------------------------------------
# Applying records


def apply_records(mod, target, default_schedules: bool = True):
    """(module with tuned PrimFuncs replaced, names of the kernels that got a tuned schedule).

    `mod` is a legalized and fused Relax module; free when the target has no database. With
    `default_schedules` False (the compile leaves untuned kernels as TVM's loops) a record is not
    held back for lack of a default timing to compare with.
    """
    directory = database_dir(target)
    if not (directory / RECORD_FILE).is_file():
        return mod, []
    import tvm
    from tvm import relax

    database, notes = _open(directory, holding_lock=False)
    defaults = None
    if (directory / DEFAULTS_DIR / RECORD_FILE).is_file():
        defaults, more = _open(directory / DEFAULTS_DIR, holding_lock=False)
        notes = notes + more
    database, unmeasured = _records_beating(database, defaults, target, drop_unmeasured=default_schedules)
    if unmeasured:
        notes.append(f"{unmeasured} tuned record(s) not used: mcc's default schedule of their kernel has no "
                     f"timing in this database ({DEFAULTS_DIR}, the way mcc builds kernels now); "
                     "`mcc tune` measures it")
    for note in notes:
        log.warning(note)
    if len(database) == 0:
        return mod, []

    def apply():
        with target, database:
            return relax.transform.MetaScheduleApplyDatabase()(mod)

    try:
        try:
            applied = apply()
        except Exception:  # a record's trace may name a tensor intrinsic: register them and retry
            _import_tensor_intrinsics()
            applied = apply()
    except Exception as exc:
        log.warning("tuning records in %s could not be applied (%s); compiling without them", directory,
                    _first_line(exc))
        return mod, []
    tuned = [
        gv.name_hint
        for gv, func in applied.functions_items()
        if isinstance(func, tvm.tirx.PrimFunc) and not func.same_as(mod[gv])
    ]
    return applied, sorted(tuned)


def _mean_s(record) -> float:
    return sum(float(t) for t in record.run_secs) / max(len(record.run_secs), 1)


#: how much faster than mcc's default schedule a tuned record must have measured to be used. The
#: best of a kernel's trials is the minimum of many noisy timings, biased low (the winner's curse):
#: with records taken on any gain, squeezenet fp32 took 4 tuned kernels and ran 2.19 ms against
#: the defaults' 1.94 ms (AMD EPYC, 600 s of tuning)
MIN_TUNED_SPEEDUP = 1.1


def _has_default_schedule(func, cpu) -> bool:
    """Whether `apply_default_schedules` would schedule this kernel (a rule fits and its result is
    well formed)."""
    import tvm

    from mcc.backends.tvm.schedules.cpu import schedule_func

    scheduled, _ = schedule_func(func, cpu)
    return scheduled is not None and bool(tvm.s_tir.analysis.verify_well_formed(scheduled, assert_mode=False))


def _records_beating(database, defaults, target, drop_unmeasured: bool = True):
    """(in-memory database, unmeasured): each kernel's best tuned record, for the kernels where that
    record measured at least MIN_TUNED_SPEEDUP times faster than mcc's default schedule (the others
    keep the default schedule). Without a defaults database of this version (`defaults` None:
    DEFAULTS_DIR moved on, or the folder is lost) no record was compared with today's default, and
    a kernel mcc has a default schedule for keeps that default (a record may be slower); `unmeasured`
    counts them, until `mcc tune` measures the defaults again. Kernels with no default schedule
    (TVM's naive loops otherwise) keep their record, and so does a kernel missing from an existing
    defaults database: `mcc tune` tried to measure its default and could not (TVM refused its
    re-layout, or it failed to build or run)."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    from mcc.backends.tvm.schedules.cpu import CpuInfo

    cpu = CpuInfo.from_target(target)
    kept = ms.database.MemoryDatabase()
    unmeasured = 0
    seen = set()
    for record in database.get_all_tuning_records():
        workload_mod = record.workload.mod
        key = tvm_ffi.structural_hash(workload_mod)
        if key in seen:
            continue
        seen.add(key)
        best = database.query_tuning_record(workload_mod, target, "main")
        default = None if defaults is None else defaults.query_tuning_record(workload_mod, target, "main")
        if best is None or (default is not None and _mean_s(default) < MIN_TUNED_SPEEDUP * _mean_s(best)):
            continue
        if defaults is None and drop_unmeasured and _has_default_schedule(workload_mod["main"], cpu):
            unmeasured += 1
            continue
        workload = kept.commit_workload(workload_mod)
        kept.commit_tuning_record(ms.database.TuningRecord(best.trace, workload, best.run_secs, best.target,
                                                           best.args_info))
    return kept, unmeasured


# --------------------------------------------------------------------------------------------------
# Kernel FLOPs (how much of a model the tuned kernels cover)


def kernel_flops(mod) -> dict[str, float]:
    """Estimated FLOPs of each PrimFunc of a legalized Relax module, times its calls from `main`."""
    import tvm
    from tvm import relax

    calls: dict[str, int] = {}

    @relax.expr_functor.visitor
    class CountCalls(relax.PyExprVisitor):
        def visit_call_(self, call):
            for argument in call.args:
                if isinstance(argument, tvm.ir.GlobalVar):
                    calls[argument.name_hint] = calls.get(argument.name_hint, 0) + 1
            super().visit_call_(call)

    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            CountCalls().visit_expr(func)
    flops: dict[str, float] = {}
    for gv, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            flops[gv.name_hint] = _estimate_flops(tvm.IRModule({"main": func})) * calls.get(gv.name_hint, 1)
    return flops


def _estimate_flops(prim_mod) -> float:
    import tvm

    try:
        return float(tvm.s_tir.analysis.estimate_tir_flops(prim_mod))
    except Exception:  # symbolic loop extents: no estimate
        return 0.0


def tuned_flops_fraction(flops: dict[str, float], tuned: list[str]) -> float | None:
    """Share of the estimated FLOPs in tuned kernels; None when nothing has an estimate."""
    total = sum(flops.values())
    if total <= 0:
        return None
    return sum(flops.get(name, 0.0) for name in tuned) / total


def lowered_for_tuning(model, target, input_shapes: dict):
    """The Relax module whose kernels `mcc compile` looks up in the database: imported, then
    legalized and fused exactly as the backend's `lower()` does before it applies records."""
    from mcc.backends.tvm.llvm import import_for_target, legalize, rewrite_for_target

    mod, _ = rewrite_for_target(import_for_target(model, target, input_shapes)[0], target)
    return legalize(mod)


# --------------------------------------------------------------------------------------------------
# Tuning


@dataclass
class TuneSummary:
    """What a `tune` run did. Task names are MetaSchedule's (the fused kernel's name)."""

    database: str
    target: str
    budget_s: float
    tasks_total: int = 0
    #: got their first record in this run
    tuned: list[str] = field(default_factory=list)
    already_in_database: list[str] = field(default_factory=list)
    #: task -> why it has no record (dynamic shape, budget ran out, every trial failed)
    skipped: dict[str, str] = field(default_factory=dict)
    trials: int = 0
    failed_trials: int = 0
    #: records with a measured time, appended to the database
    records_written: int = 0
    #: kernels whose default schedule was measured and committed as their first record
    default_schedules_measured: int = 0
    wall_s: float = 0.0
    #: the budget ran out before every task had its trials
    stopped_early: bool = False
    #: Ctrl-C stopped it (after the batch being measured)
    interrupted: bool = False
    search: str = "evolutionary"
    runner: str = "local"
    log: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["wall_s"] = round(self.wall_s, 3)
        return data


def tune(mod, target, budget_s: float, progress=None, runner=None, work_dir=None, *,
         max_trials_per_task: int = DEFAULT_MAX_TRIALS_PER_TASK, trials_per_round: int = DEFAULT_TRIALS_PER_ROUND,
         search: str = "evolutionary", seed: int = 0) -> TuneSummary:
    """Tune the kernels of a legalized, fused Relax module that the target's database lacks.

    `progress(label, done, total)` follows the batches; `runner` is a MetaSchedule runner (default:
    a LocalRunner; `remote.tuning_runner` measures on an RPC device); MetaSchedule's log goes to
    `work_dir` (default: the database folder). Raises UsageError when another `tune` holds the
    database.
    """
    from tvm.s_tir import meta_schedule as ms

    if search not in SEARCH_STRATEGIES:
        raise UsageError(f"unknown search '{search}'; candidates are: {', '.join(SEARCH_STRATEGIES)}")
    if budget_s <= 0:
        raise UsageError("the tuning budget must be positive")
    start = time.monotonic()
    directory = database_dir(target)
    directory.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(directory) as locked:
        if not locked:
            raise UsageError(f"the tuning database {directory} is in use by another `mcc tune`; "
                             "run again when it has finished")
        database, notes = _open(directory, holding_lock=True)
        summary = TuneSummary(database=str(directory), target=str(target), budget_s=budget_s, notes=notes,
                              search=search, runner="local" if runner is None else type(runner).__name__)
        tasks = ms.relax_integration.extract_tasks(mod, target)
        summary.tasks_total = len(tasks)
        pending = []
        for task in tasks:
            workload = task.dispatched[0]
            if _is_dynamic(workload):
                summary.skipped[task.task_name] = "dynamic shape (MetaSchedule tunes static shapes only)"
                summary.notes.append(f"kernel {task.task_name} has a dynamic shape: not tuned")
            elif database.query_tuning_record(workload, target, task.task_name) is not None:
                summary.already_in_database.append(task.task_name)
            else:
                pending.append(task)
        # kernels tuned earlier whose default schedule has no timing in this version's defaults
        # (DEFAULTS_DIR moved on): measured again, or apply_records keeps their default
        recorded = [task for task in tasks if task.task_name in summary.already_in_database]
        if pending or _without_default_timing(recorded, target):
            # the largest kernels first: a short budget goes where the time is
            pending.sort(key=lambda task: -task.weight * _estimate_flops(task.dispatched[0]))
            log_dir = Path(work_dir) if work_dir is not None else directory
            log_dir.mkdir(parents=True, exist_ok=True)
            summary.log = str(log_dir / LOG_FILE)
            with _metaschedule_log(log_dir / LOG_FILE), _stop_on_interrupt() as interrupted:
                _tune_pending(pending, target, database, summary, start + budget_s, progress, runner,
                              max_trials_per_task, trials_per_round, search, seed, interrupted, recorded)
        summary.wall_s = time.monotonic() - start
        return summary


def tune_model(model, target, input_shapes: dict, budget_s: float, **options) -> TuneSummary:
    """`tune` for an ONNX model (imported, legalized and fused as `mcc compile` does)."""
    return tune(lowered_for_tuning(model, target, input_shapes), target, budget_s, **options)


def _is_dynamic(prim_mod) -> bool:
    import tvm

    for func in prim_mod.functions.values():
        for param in func.params:
            shape = getattr(param.ty, "shape", None)
            # a scalar parameter of a legalized kernel is a shape variable
            if shape is None or any(not isinstance(dim, tvm.tirx.IntImm) for dim in shape):
                return True
    return False


@contextlib.contextmanager
def _stop_on_interrupt():
    """Yields a list that becomes non-empty at the first Ctrl-C, which then stops the tuning after
    the batch in flight instead of raising in the middle of MetaSchedule (where TVM turns the
    KeyboardInterrupt into a bare RuntimeError). A second Ctrl-C interrupts at once."""
    import signal
    import threading

    interrupted: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    previous = signal.getsignal(signal.SIGINT)

    def first_interrupt(signum, frame):
        interrupted.append(True)
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, first_interrupt)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _metaschedule_log(path: Path):
    """Route MetaSchedule's Python loggers to one file for the run (and nowhere else)."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _without_default_timing(tasks, target) -> bool:
    """Whether any of `tasks` has no measured default schedule in this version's defaults database."""
    folder = database_dir(target) / DEFAULTS_DIR
    if not tasks:
        return False
    if not (folder / RECORD_FILE).is_file():
        return True
    defaults, _ = _open(folder, holding_lock=True)
    return any(defaults.query_tuning_record(task.dispatched[0], target, task.task_name) is None for task in tasks)


def _tune_pending(pending, target, database, summary: TuneSummary, deadline: float, progress, runner,
                  max_trials_per_task: int, trials_per_round: int, search: str, seed: int,
                  interrupted: list, recorded=()) -> None:
    """Rounds of at most `trials_per_round` trials per task until each has `max_trials_per_task`,
    the deadline comes or `interrupted` fills; a batch is shrunk, or not started, when the time
    left cannot pay for it. The default schedules of `pending` and of `recorded` (tasks tuned
    earlier) are measured first where the defaults database has no timing of them."""
    from tvm.s_tir import meta_schedule as ms

    _import_tensor_intrinsics()
    cores = int(target.attrs.get("num-cores") or os.cpu_count() or 1)
    builder = ms.builder.LocalBuilder(timeout_sec=BUILD_TIMEOUT_S, f_build=_build_candidate)
    if runner is None:
        runner = local_runner()
    cost_model = ms.cost_model.CostModel.create("xgb", num_tuning_cores=cores) if search == "evolutionary" else None
    counter = _make_counter()
    callbacks = [ms.measure_callback.AddToDatabase(), ms.measure_callback.RemoveBuildArtifact()]
    if cost_model is not None:
        callbacks.append(ms.measure_callback.UpdateCostModel())
    callbacks.append(counter)

    (database_dir(target) / DEFAULTS_DIR).mkdir(exist_ok=True)
    defaults, notes = _open(database_dir(target) / DEFAULTS_DIR, holding_lock=True)
    summary.notes.extend(notes)
    summary.default_schedules_measured = _seed_default_schedules(list(pending) + list(recorded), target, defaults,
                                                                 builder, runner, deadline, interrupted)
    if not pending:
        return

    trials_per_round = max(1, min(trials_per_round, max_trials_per_task))
    rounds = math.ceil(max_trials_per_task / trials_per_round)
    total_batches = rounds * len(pending)
    done_trials = {task.task_name: 0 for task in pending}
    errors: dict[str, str] = {}
    batches = 0
    spent_s = 0.0
    timed_trials = 0
    label = "tuning"
    if progress is not None:
        progress(label, 0, total_batches)
    try:
        for round_index in range(rounds):
            for task_index, task in enumerate(pending):
                name = task.task_name
                if name in errors and database.query_tuning_record(task.dispatched[0], target, name) is None:
                    continue  # every trial so far failed: the time goes to the other kernels
                count = min(trials_per_round, max_trials_per_task - done_trials[name])
                left = deadline - time.monotonic()
                if timed_trials:
                    count = min(count, int(left // (spent_s / timed_trials)))
                if interrupted:
                    summary.interrupted = summary.stopped_early = True
                    return
                if count <= 0 or left <= 0:
                    summary.stopped_early = True
                    return
                counter.reset()
                started = time.monotonic()
                context = ms.TuneContext(
                    mod=task.dispatched[0], target=target, space_generator="post-order-apply",
                    search_strategy=SEARCH_STRATEGIES[search], task_name=name,
                    logger=logging.getLogger(f"tvm.s_tir.meta_schedule.mcc.{name}"),
                    rand_state=seed + 7919 * round_index + task_index, num_threads=cores,
                )
                scheduler = ms.task_scheduler.TaskScheduler.create("round-robin")
                try:
                    scheduler.tune(tasks=[context], task_weights=[float(task.weight)], max_trials_global=count,
                                   max_trials_per_task=count, num_trials_per_iter=count, builder=builder,
                                   runner=runner, measure_callbacks=callbacks, database=database,
                                   cost_model=cost_model)
                except Exception:
                    if not interrupted:
                        raise
                    # Ctrl-C also reached the builder and runner processes: the batch broke
                    summary.interrupted = summary.stopped_early = True
                    return
                spent_s += time.monotonic() - started
                timed_trials += max(counter.trials, 1)
                done_trials[name] += max(counter.trials, count)
                summary.trials += counter.trials
                summary.failed_trials += counter.failed
                summary.records_written += counter.trials - counter.failed
                if counter.first_error and counter.failed == counter.trials:
                    errors.setdefault(name, counter.first_error)
                batches += 1
                if progress is not None:
                    progress(label, batches, total_batches)
    finally:
        for task in pending:
            name = task.task_name
            if database.query_tuning_record(task.dispatched[0], target, name) is not None:
                summary.tuned.append(name)
            elif name in errors:
                summary.skipped[name] = f"every trial failed: {errors[name]}"
            elif summary.interrupted:
                summary.skipped[name] = "interrupted before it was tuned"
            else:
                summary.skipped[name] = "the budget ran out before it was tuned"
        if progress is not None and batches < total_batches:
            progress(label, total_batches, total_batches)  # closes the bar when the budget ended it


def _seed_default_schedules(pending, target, defaults, builder, runner, deadline: float, interrupted: list) -> int:
    """Measure mcc's default schedule of every pending kernel with the tuning's own builder and
    runner, into the `defaults` database beside the records: `apply_records` uses a tuned record
    only where it measured faster than the default. (Without that, a short tuning made squeezenet
    3.6x slower than the default schedules: 32 trials per kernel rarely find schedules as good.)
    A database of their own, because MetaSchedule's evolutionary search seeds its population with
    a task's records and fails to replay these traces in its design space. Returns how many were
    measured."""
    from tvm.s_tir import meta_schedule as ms

    from mcc.backends.tvm.schedules.cpu import CpuInfo, schedule

    cpu = CpuInfo.from_target(target)
    measured = 0
    for task in pending:
        if interrupted or time.monotonic() >= deadline:
            break
        workload_mod = task.dispatched[0]
        if defaults.query_tuning_record(workload_mod, target, task.task_name) is not None:
            continue  # measured by an earlier run
        sch, _ = schedule(workload_mod["main"], cpu)
        if sch is None:
            continue
        try:
            args_info = ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
        except Exception:  # noqa: BLE001 -- TVM refuses some re-layouts as pre-processing
            # (a zero-padded weight copy, PP-OCRv5 rec's 18385-class classifier: "Check failed:
            # (load)"); that kernel is tuned without a measured default to beat
            continue
        built = builder.build([ms.builder.BuilderInput(sch.mod, target)])[0]
        if built.error_msg is not None:
            continue
        try:
            device = "cpu" if target.kind.name == "llvm" else target.kind.name
            result = runner.run([ms.runner.RunnerInput(built.artifact_path, device, args_info)])[0].result()
        finally:  # the built library's temporary folder, as RemoveBuildArtifact does for trials
            shutil.rmtree(os.path.dirname(built.artifact_path), ignore_errors=True)
        if result.error_msg is not None or not result.run_secs:
            continue
        workload = defaults.commit_workload(workload_mod)
        defaults.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, result.run_secs, target, args_info))
        measured += 1
    return measured


#: the name `local_runner`'s worker process registers its evaluator under
RUN_EVALUATOR = "mcc.tuning.run_evaluator_off_worker_cpus"


def _register_run_evaluator() -> None:
    """The LocalRunner worker process's initializer: registers RUN_EVALUATOR, MetaSchedule's
    evaluator run with the calling thread off the CPUs of TVM's pinned workers
    (`common.off_tvm_worker_cpus`). Without it, a candidate whose worker thread shared the
    calling thread's CPU measured at one thread's speed (2x on this 2-vCPU VM), at random."""
    import tvm
    from tvm.s_tir.meta_schedule.runner.config import EvaluatorConfig
    from tvm.s_tir.meta_schedule.runner.utils import run_evaluator_common

    from mcc.backends.tvm import common

    warmed: list[bool] = []

    def run_evaluator(rt_mod, device, evaluator_config, repeated_args):
        if not hasattr(evaluator_config, "number"):  # a global function's arguments arrive as FFI arrays
            number, repeat, min_repeat_ms, flush = (x for x in evaluator_config)
            evaluator_config = EvaluatorConfig(int(number), int(repeat), int(min_repeat_ms), bool(flush))
        if not warmed and common.cpus_free_of_tvm_workers() is None:
            # TVM's pool starts with the first parallel kernel: the worker process's first
            # candidate runs once unpinned to start it
            warmed.append(True)
            run_evaluator_common(rt_mod, device, evaluator_config, repeated_args[:1])
        with common.off_tvm_worker_cpus():
            return run_evaluator_common(rt_mod, device, evaluator_config, repeated_args)

    tvm.register_global_func(RUN_EVALUATOR, run_evaluator, override=True)


def local_runner():
    """MetaSchedule's LocalRunner, its evaluator run off TVM's worker CPUs (`_register_run_evaluator`)."""
    from tvm.s_tir import meta_schedule as ms

    return ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S, f_run_evaluator=RUN_EVALUATOR,
                                 initializer=_register_run_evaluator)


def _make_counter():
    """A MetaSchedule measure callback counting trials and failures of the current batch."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class CountTrials(PyMeasureCallback):
        def __init__(self):
            self.reset()

        def reset(self):
            self.trials = 0
            self.failed = 0
            self.first_error = None

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            for result in runner_results:
                self.trials += 1
                if result.error_msg:
                    self.failed += 1
                    if self.first_error is None:
                        lines = [line for line in str(result.error_msg).splitlines() if line.strip()]
                        self.first_error = lines[-1][:200] if lines else "unknown error"

    return CountTrials()


def _build_candidate(mod, target, _params):
    """MetaSchedule's default LocalBuilder build, minus its `import tvm.s_tir.tensor_intrin`, with
    the TIR pipeline `mcc compile` builds with (stack.py), so candidates and defaults are timed as
    they will run.

    LocalBuilder starts fresh worker processes for every batch, and that import costs 10-25 s in
    each here (the ~500 TVMScript intrinsics are parsed at import): most of a trial's time. The
    candidate arrives with its schedule applied, intrinsics inlined, so building needs no registry.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    from mcc.backends.tvm.stack import pipeline_name

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target, pipeline=pipeline_name(target))


def _import_tensor_intrinsics() -> None:
    """Register TVM's tensor intrinsics (MetaSchedule's TuneContext imports them; do it faster).

    Each of their ~500 TVMScript functions calls `inspect.stack()`, which reads the source line of
    every frame on the stack: 17 s of import on this 2-core machine, 8 s when the stack is taken
    without source lines. TVMScript reads those lines only to recognise a function defined inside a
    class, and no intrinsic is (checked for TVM 0.27, which pyproject.toml pins).
    """
    import sys

    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    import inspect

    original = inspect.stack

    def stack_without_source(context=1):
        return original(0)

    inspect.stack = stack_without_source
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.stack = original
