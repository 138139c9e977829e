"""mcc's default CPU schedules: every kernel scheduled analytically, no measurement (see cpu.py)."""

from __future__ import annotations

#: bumped whenever the default schedules change what kernels reach: measurements taken with other
#: kernels (a host calibration profile) no longer describe mcc's output
SCHEDULES_VERSION = 9


def apply_default_schedules(mod, target, skip: frozenset[str] = frozenset()):
    """Schedule every PrimFunc of `mod` not yet scheduled and not in `skip`.

    Returns (module, {kernel name: rule name}); kernels no rule fits are absent from the dict and
    keep TVM's loops. Only LLVM (CPU) targets are scheduled here.
    """
    import tvm

    from mcc.backends.tvm.schedules.cpu import CpuInfo, schedule_func

    if target.kind.name != "llvm":
        return mod, {}
    cpu = CpuInfo.from_target(target)
    applied: dict[str, str] = {}
    updates = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc) or gvar.name_hint in skip:
            continue
        if func.attrs is not None and int(func.attrs.get("tirx.is_scheduled", 0) or 0):
            continue
        scheduled, rule = schedule_func(func, cpu)
        if scheduled is None or not tvm.s_tir.analysis.verify_well_formed(scheduled, assert_mode=False):
            continue  # no rule fits, or a primitive produced a malformed function: TVM's loops
        updates[gvar] = scheduled.with_attr("tirx.is_scheduled", True)
        applied[gvar.name_hint] = rule
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod, applied


def split_relayouts(mod):
    """Move the weight re-layout blocks the schedules added into kernels of their own, then
    evaluate those on the constant weights (Relax SplitLayoutRewritePreproc + FoldConstant).

    SplitLayoutRewritePreproc asserts on kernels whose root holds no blocks (TVM's own scatter
    kernels), so it sees only the kernels that carry a re-layout (from a default schedule or a
    tuned record); the others are put back after.
    """
    import tvm
    from tvm import relax

    from mcc.backends.tvm.schedules.cpu import has_relayout_block

    others = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc) and not has_relayout_block(func):
            others[gvar] = func
    if len(others) == sum(1 for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)):
        return mod
    for gvar in others:
        del mod[gvar]
    mod = relax.transform.SplitLayoutRewritePreproc()(mod)
    for gvar, func in others.items():
        mod[gvar] = func
    return relax.transform.FoldConstant()(mod)
