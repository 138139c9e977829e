"""Default CPU schedules for the kernels TVM's Relax legalization produces (no measurement).

TVM 0.27 ships no untuned CPU schedule for convolution or matmul: its kernels are single-threaded
scalar loop nests (shared/notes/tvm-0.27.md, section 3). These rules give every kernel a schedule
chosen analytically from the kernel's shape and the target's vector width and core count:

* `tile-reduction` -- kernels built around one multiply-accumulate reduction (convolutions of every
  kind, matmul/dense, batched matmul): a register tile of `rows x vector` accumulators kept in
  registers across the whole reduction, the outer tiles spread over the cores, producers inlined
  (a padding stage runs once, in parallel), the fused epilogue (bias, activation, residual add)
  computed from the accumulators before they are stored (`plan_tile` picks the layout):
  - output-vector: lanes on the innermost output axis, rows on the axis of the operand that does
    not move with it (output channels of a convolution, rows of a matmul);
  - channel-vector: lanes on the output channels, rows on the innermost axis, when that axis has
    no divisor filling a register or is strided;
  - constant operands the lanes would gather from are re-laid out at compile time (a block Relax
    splits out and folds on the weights); strided inputs are stored de-interleaved; an einsum
    whose vector axis has no good divisor is padded (`pad_einsum`).
* `dot-product` -- a multiply-accumulate whose output axes do not tile (prime extents such as an
  STFT's 257 x 97) but whose innermost reduction axis is long: vector-wide partial sums (rfactor).
* `injective` -- elementwise and data movement: outer axes in parallel, the innermost loop whole
  (LLVM vectorizes it); an innermost axis of at most 4 is unrolled and the loop around it vectorized;
  a concatenation or pad that several stages read keeps a loop nest of its own.
* `reduction` -- other reductions (pooling, mean, softmax, norms): elementwise producers inlined,
  outer axes in parallel; compute-bound bodies (GELU then max, softmax's exp-sum) in vector lanes
  across an outer axis.

Each rule returns False when its pattern does not hold; a kernel no rule fits keeps TVM's loops.
"""

from __future__ import annotations

from dataclasses import dataclass

#: most accumulator vector registers a register tile may use (x86 AVX-512 and AArch64 have 32
#: vector registers; the rest hold the operands)
MAX_ACCUMULATOR_REGISTERS = 24
#: most rows of a register tile (squeezenet's convolutions: 16 rows 7.4 ms, 8 rows 8.6 ms, 4 rows 14.4 ms)
MAX_TILE_ROWS = 16
#: most vectors along the vector axis one tile holds when there is no row axis (matrix-vector)
MAX_VECTOR_ROWS = 8
#: most vectors of output channels in a channel-vector tile
MAX_CHANNEL_VECTORS = 2
#: an output-vector tile with rows (a channels-last convolution: lanes on the channels, rows
#: along the width) holds up to this many vectors per row and this many accumulators: 13 rows x
#: 2 vectors of SqueezeNet's classifier is 26 FMAs per 15 loads instead of 13 per 14 (the other
#: registers hold the vectors of weights and the broadcast input). Measured on SqueezeNet and
#: orientation: 0.94x and 0.92x the time of one vector per row.
MAX_OUTPUT_VECTORS = 3
MAX_OUTPUT_VECTOR_ACCUMULATORS = 28
#: below this many output elements per core a kernel is not worth a parallel loop
MIN_PARALLEL_ELEMENTS = 4096
#: An elementwise kernel (every stage elementwise: a quantize, a transpose, a concatenation) of
#: fewer elements than this runs on one core. Starting a parallel loop costs ~1.5 us on the 2-vCPU
#: host (TVM's thread pool: MNIST int8's 4,096-value input quantize 0.10 us on one core, 1.7 us on
#: two), about what an elementwise pass over this many values takes. Whole models, A/B in one
#: process, outputs identical: MNIST int8 0.92x, openWakeWord melspectrogram 0.96x, UltraFace RFB
#: 0.96x and slim 0.98x (RFB's 17,680-value box gather: 10.8 us against 21.6 alone), SqueezeNet
#: int8, MNIST fp32, cls, magika, embedding and silero 0.99-1.01x. The elementwise stages of other kernels
#: (a convolution's padding) keep MIN_PARALLEL_ELEMENTS: on one core while the convolution reading
#: them ran on two, PP-OCRv5 cls took 1.06x as long. Multiply-accumulate kernels keep their
#: parallel loops at any size: measured alone, those under ~10,000 vector MACs were 1.5-3x faster
#: on one core, but in the models silero ran 1.14x and MNIST fp32 1.09x as long that way
MIN_PARALLEL_ELEMENTWISE_KERNEL = 100_000
#: an elementwise kernel's innermost axis this short or shorter is unrolled (`schedule_injective`)
MAX_UNROLLED_INNER = 4
#: a select stage (concatenation, pad) read by this many stages or more keeps its own loop nest
#: in an elementwise kernel instead of being inlined into each reader (`schedule_all_injective`)
MIN_SELECT_READERS_KEPT = 2


@dataclass(frozen=True)
class CpuInfo:
    """What the schedules need to know about a CPU target."""

    vector_bits: int
    cores: int
    #: uint8 x int8 -> int32 dot products in vector lanes (x86 AVX-512 VNNI)
    integer_dot: bool = False

    @classmethod
    def from_target(cls, target) -> "CpuInfo":
        from tvm.target.codegen import llvm_get_vector_width

        try:
            bits = int(llvm_get_vector_width(target))
        except Exception:  # a target LLVM does not know: the baseline vector width of every ISA
            bits = 128
        cores = int(target.attrs.get("num-cores", 0) or 0) if hasattr(target, "attrs") else 0
        from mcc.backends.tvm.integer import target_has_integer_dot

        return cls(vector_bits=bits if bits > 0 else 128, cores=max(cores, 1),
                   integer_dot=target_has_integer_dot(target))

    def lanes(self, dtype_bits: int) -> int:
        return max(self.vector_bits // max(dtype_bits, 8), 1)


# --------------------------------------------------------------------------------------------------
# Block analysis helpers


def _iter_kinds(block) -> str:
    from tvm import tirx

    return "".join({tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}.get(iv.iter_type, "O")
                   for iv in block.iter_vars)


def _has_if_then_else(block) -> bool:
    from tvm import get_global_func

    return bool(get_global_func("s_tir.schedule.HasIfThenElse")(block))


def _vars_in(expr) -> list:
    from tvm.tirx.analysis import undefined_vars

    return list(undefined_vars(expr))


def _region_vars(region) -> list:
    found = []
    for dim in region.region:
        found.extend(_vars_in(dim.min))
    return found


def _int_extent(sch, loop) -> int | None:
    from tvm import tirx

    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _is_multiply_accumulate(block) -> bool:
    """The block's update is `out = out + a * b` (maybe with casts): a convolution or matmul."""
    from tvm import tirx
    from tvm.ir.expr import TensorLoad

    store = block.body
    if not isinstance(store, tirx.BufferStore):
        return False
    value = store.value
    if not isinstance(value, tirx.Add):
        return False
    operands = [value.a, value.b]

    def is_self_load(expr):
        return isinstance(expr, TensorLoad) and expr.source.same_as(store.buffer)

    def strip_cast(expr):
        while isinstance(expr, tirx.Cast):
            expr = expr.value
        return expr

    if is_self_load(operands[0]):
        other = strip_cast(operands[1])
    elif is_self_load(operands[1]):
        other = strip_cast(operands[0])
    else:
        return False
    return isinstance(other, tirx.Mul)


def _bindings(sch, block_rv) -> list:
    """The expressions a block's iters are bound to, in order."""
    from tvm import get_global_func

    return list(get_global_func("s_tir.schedule.GetSBlockRealize")(sch, block_rv).iter_values)


def _loops_bind_iters(sch, block_rv) -> list | None:
    """The block's loops when each binds exactly one block iter, in order (legalized TOPI form)."""
    from tvm import tirx

    loops = sch.get_loops(block_rv)
    realize = sch.get_sref(block_rv).stmt
    bindings = _bindings(sch, block_rv)
    if len(loops) != len(bindings) or len(loops) != len(realize.iter_vars):
        return None
    for loop, binding in zip(loops, bindings):
        if not (isinstance(binding, tirx.Var) and binding.same_as(sch.get(loop).loop_var)):
            return None
    return list(loops)


# --------------------------------------------------------------------------------------------------
# Building blocks


def _largest_divisor_at_most(value: int, limit: int) -> int:
    for candidate in range(min(value, limit), 0, -1):
        if value % candidate == 0:
            return candidate
    return 1


def _vector_split(extent: int, lanes: int) -> int:
    """How many elements of the vector axis one tile covers: the largest divisor of the extent
    that fits one vector register. A divisor, because a guarded tail stops vectorization; one
    register, because LLVM spills wider vectors of a local accumulator (measured: squeezenet's
    55-wide 1x1 convolutions ran 12x slower with 55-lane vectors than with 11-lane ones).
    """
    return _largest_divisor_at_most(extent, lanes)


def schedule_injective(sch, block_rv, cpu: CpuInfo, parallel: bool = True, partition_selects: bool = False,
                      min_parallel: int = MIN_PARALLEL_ELEMENTS) -> None:
    """Leading loops fused and spread over the cores; the innermost loop left whole (and, with
    `partition_selects`, split where a select changes branch along it).

    LLVM vectorizes a plain innermost loop by itself; fusing or splitting it turns its indices
    into div/mod expressions that defeat that (measured on squeezenet's pooling: 0.15 ms with the
    innermost loop whole, 0.70 ms with it fused).
    """
    loops = sch.get_loops(block_rv)
    if len(loops) < 2:
        return
    extents = [_int_extent(sch, loop) for loop in loops]
    if any(extent is None for extent in extents):
        return
    total = 1
    for extent in extents:
        total *= extent
    outer = loops[:-1]
    if len(loops) >= 3 and extents[-1] <= MAX_UNROLLED_INNER and extents[-2] >= 2 * MAX_UNROLLED_INNER:
        # a short innermost axis (the 4 channels an integer kernel's input is padded to, a box's 4
        # coordinates): unrolled, so LLVM vectorizes the loop around it with interleaved accesses.
        # Measured: SqueezeNet int8's input quantize-pad-transpose 59 -> 40 us, MNIST's 1.17 ->
        # 0.62 us, UltraFace RFB 0.89x in all
        sch.unroll(loops[-1])
        outer = list(loops[:-2])
        vector_loop = loops[-2]
        leading = total // (extents[-1] * extents[-2])
        if parallel and cpu.cores > 1 and total >= min_parallel and leading < cpu.cores:
            # too few leading iterations to share ([1, 17640, 4] boxes): the vector loop's outer
            # part goes to the cores (a split keeps its index affine, unlike a fuse)
            chunks = _largest_divisor_at_most(extents[-2], cpu.cores)
            if chunks > 1:
                chunk, vector_loop = sch.split(loops[-2], factors=[chunks, None])
                outer.append(chunk)
    else:
        vector_loop = loops[-1]
    if outer and parallel and cpu.cores > 1 and total >= min_parallel:
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        sch.parallel(fused)
    if partition_selects:
        _partition_at_select_bounds(sch, block_rv, vector_loop)


def _partition_at_select_bounds(sch, block_rv, loop) -> None:
    """The vector loop split where a select of the block changes branch along it (a pad's edge:
    `x < 224` of an int8 input padded to 230 columns), so that each part computes one branch
    without a per-element test LLVM cannot vectorize around. Measured on SqueezeNet int8's input
    quantize-pad-transpose: 83.5 -> 13.6 us (timed alone)."""
    block = sch.get(block_rv)
    if not _is_select(block):
        return
    value = block.body.value
    loop_var = sch.get(loop).loop_var
    iter_var = next((iv.var for iv, binding in zip(block.iter_vars, _bindings(sch, block_rv))
                     if binding is not None and binding.same_as(loop_var)), None)
    extent = _int_extent(sch, loop)
    if iter_var is None or extent is None:
        return
    bounds = sorted(b for b in _select_bounds(value.args[0], iter_var) if 0 < b < extent)
    if not bounds:
        return
    sizes = [b - a for a, b in zip([0] + bounds, bounds)] + [None]  # the last part: the rest
    try:
        sch.loop_partition(loop, factors=sizes)
    except Exception:  # noqa: BLE001 -- a primitive that refuses leaves the schedule as it was
        pass


def _select_bounds(condition, var) -> set[int]:
    """Where `condition` (comparisons of `var` with constants, joined by and/or) can change value."""
    from tvm import tirx

    if isinstance(condition, (tirx.And, tirx.Or)):
        return _select_bounds(condition.a, var) | _select_bounds(condition.b, var)
    # the first index where the comparison's value differs from the one before: var < c and
    # var >= c change at c, var <= c and var > c at c + 1; mirrored when the constant comes first
    var_first = {tirx.LT: 0, tirx.GE: 0, tirx.LE: 1, tirx.GT: 1}
    constant_first = {tirx.LE: 0, tirx.GT: 0, tirx.LT: 1, tirx.GE: 1}
    for kind in var_first:
        if isinstance(condition, kind):
            a, b = condition.a, condition.b
            if a.same_as(var) and isinstance(b, tirx.IntImm):
                return {int(b.value) + var_first[kind]}
            if b.same_as(var) and isinstance(a, tirx.IntImm):
                return {int(a.value) + constant_first[kind]}
    return set()


# --------------------------------------------------------------------------------------------------
# Rules


@dataclass(frozen=True)
class TilePlan:
    """A register tile: `vector_count` vectors of `vector` lanes along `vec_axis`, times `rows`
    along `row_axis`; `pack` is the read index of a constant operand to re-lay out at compile time
    so the vector axis is its innermost (contiguous) dimension."""

    vec_axis: int
    vector: int
    vector_count: int
    row_axis: int | None
    rows: int
    pack: int | None = None


def _mac_anchor(sch):
    """(anchor block, producers, consumers) of a kernel built around one multiply-accumulate
    reduction whose other blocks are all data-parallel; None when the kernel is not one."""
    root = sch.get_sblock("root")
    blocks = list(sch.get_child_blocks(root))
    anchors = []
    for block_rv in blocks:
        kinds = _iter_kinds(sch.get(block_rv))
        if "R" in kinds:
            anchors.append(block_rv)
        elif kinds.strip("S"):
            return None
    if len(anchors) != 1:
        return None
    anchor = anchors[0]
    block = sch.get(anchor)
    if not _is_multiply_accumulate(block) or len(block.writes) != 1:
        return None
    kinds = _iter_kinds(block)
    if not kinds.startswith("S") or kinds != "S" * kinds.count("S") + "R" * kinds.count("R"):
        return None
    if _loops_bind_iters(sch, anchor) is None:
        return None
    index = _position(sch, blocks, anchor)
    return anchor, blocks[:index], blocks[index + 1:]


def _index_position(read, var) -> int | None:
    """The dimension of a read region indexed by exactly `var`, if any."""
    for position, dim in enumerate(read.region):
        if isinstance(dim.min, type(var)) and dim.min.same_as(var):
            return position
    return None


def _stride_of(read, var) -> int:
    """How far consecutive values of `var` move along the read's innermost dimension (0: not at
    all); 1 is contiguous. Only `var`, `var * c` and sums of such terms are understood."""
    from tvm import tirx

    def coefficient(expr) -> int | None:
        if isinstance(expr, type(var)):
            return 1 if expr.same_as(var) else 0
        if isinstance(expr, tirx.IntImm):
            return 0
        if isinstance(expr, tirx.Add):
            a, b = coefficient(expr.a), coefficient(expr.b)
            return None if a is None or b is None else a + b
        if isinstance(expr, tirx.Mul):
            if isinstance(expr.b, tirx.IntImm):
                inner = coefficient(expr.a)
                return None if inner is None else inner * int(expr.b.value)
            if isinstance(expr.a, tirx.IntImm):
                inner = coefficient(expr.b)
                return None if inner is None else inner * int(expr.a.value)
        return None

    result = coefficient(read.region[-1].min)
    return -1 if result is None else result


def plan_tile(sch, anchor, cpu: CpuInfo) -> TilePlan | None:
    """The register tile for a multiply-accumulate block (None: no tile worth having).

    Two layouts are considered. *Output-vector*: the vector along the innermost output axis
    (contiguous in the output and, at stride 1, in the input), rows along the axis of the operand
    the vector axis does not index (output channels of a convolution, rows of a matmul), so each
    loaded operand value is broadcast to a whole row. *Channel-vector*: the vector along that
    other axis instead, with the constant operand (the weights) re-laid out at compile time so
    those values are contiguous, and rows along the innermost output axis; it wins when the
    innermost axis has no divisor filling a vector register (55, 13, 7) or is strided (a
    stride-2 convolution's input).
    """
    block = sch.get(anchor)
    kinds = _iter_kinds(block)
    n_spatial = kinds.count("S")
    spatial_vars = [iv.var for iv in block.iter_vars][:n_spatial]
    write = block.writes[0]
    write_vars = [_vars_in(dim.min)[0] if len(_vars_in(dim.min)) == 1 else None for dim in write.region]
    # the output is indexed by the spatial iters in order (TOPI's convolutions and matmuls)
    if len(write_vars) != n_spatial or any(w is None or not w.same_as(v) for w, v in zip(write_vars, spatial_vars)):
        return None
    extents = [_int_extent(sch, loop) for loop in sch.get_loops(anchor)]
    if any(extent is None for extent in extents):
        return None
    # the innermost output axis longer than 1 (a 1-D convolution written as a 2-D one has a
    # trailing axis of 1); only unit axes follow it, so it is contiguous
    inner_axis = max((axis for axis in range(n_spatial) if extents[axis] > 1), default=None)
    if inner_axis is None:
        return None
    inner_var = spatial_vars[inner_axis]
    lanes = cpu.lanes(write.source.dtype.bits)

    # the operand the innermost axis does not index, and its reused output axis
    reuse_axis, reuse_read = None, None
    for read_index, read in enumerate(block.reads):
        used = _region_vars(read)
        if any(v.same_as(inner_var) for v in used):
            continue
        for axis in range(inner_axis - 1, -1, -1):
            if extents[axis] > 1 and any(v.same_as(spatial_vars[axis]) for v in used):
                reuse_axis, reuse_read = axis, read_index
                break
        if reuse_axis is not None:
            break

    vector = _vector_split(extents[inner_axis], lanes)
    inner_stride = max((_stride_of(read, inner_var) for read in block.reads
                        if any(v.same_as(inner_var) for v in _region_vars(read))), default=1)

    # channel-vector: the reused axis in the lanes, its operand packed at compile time
    if reuse_axis is not None and (vector < lanes or inner_stride != 1):
        read = block.reads[reuse_read]
        is_constant = _is_constant_operand(sch, read)
        # a power-of-two vector dividing the channels, of at least half a register (1000 -> 8)
        width = lanes
        while width * 2 > lanes and extents[reuse_axis] % width:
            width //= 2
        # it must fill more lanes than the output-vector tile, or spare it strided loads
        better = width > vector or (inner_stride != 1 and width * 2 >= lanes)
        # the other operand must not move with the channels (a depthwise convolution's input
        # does: its loads would become gathers)
        reuse_var = spatial_vars[reuse_axis]
        better = better and not any(
            any(v.same_as(reuse_var) for v in _region_vars(other))
            for index, other in enumerate(block.reads) if index != reuse_read and not other.source.same_as(write.source))
        if (better and is_constant and extents[reuse_axis] % width == 0
                and _index_position(read, spatial_vars[reuse_axis]) is not None):
            rows = _largest_divisor_at_most(extents[inner_axis], MAX_TILE_ROWS)
            count = _largest_divisor_at_most(extents[reuse_axis] // width, max(MAX_CHANNEL_VECTORS, 1))
            while count > 1 and count * rows > MAX_ACCUMULATOR_REGISTERS:
                count = _largest_divisor_at_most(extents[reuse_axis] // width, count - 1)
            if rows * count >= 4:
                return TilePlan(reuse_axis, width, count, inner_axis, rows, pack=reuse_read)

    # output-vector
    row_axis = reuse_axis
    if row_axis is None:  # no reused operand: other output rows (independent accumulators)
        row_axis = next((axis for axis in range(inner_axis - 1, -1, -1) if extents[axis] > 1), None)
    rows = _largest_divisor_at_most(extents[row_axis], MAX_TILE_ROWS) if row_axis is not None else 1
    count = 1
    if rows == 1:  # a matrix-vector product: independent accumulators along the vector axis
        count = _largest_divisor_at_most(extents[inner_axis] // vector, MAX_VECTOR_ROWS)
    elif vector == lanes and reuse_axis is not None and write.source.dtype.bits == 32:
        # (float16 kept one vector per row: SqueezeNet fp16 ran 1.07x slower with more)
        rows, count = _rows_and_vectors(extents[row_axis], extents[inner_axis] // vector)
    if vector * 2 < lanes and rows * count < 4:
        return None  # prime extents: the `dot-product` rule vectorizes the reduction instead
    # a constant operand the vector axis indexes along another dimension than its innermost (a
    # matrix-vector product's W[n, k] in NCHW: vector loads would be gathers) is re-laid out
    pack = None
    for read_index, read in enumerate(block.reads):
        if read.source.same_as(write.source) or not any(v.same_as(inner_var) for v in _region_vars(read)):
            continue
        position = _index_position(read, inner_var)
        if _stride_of(read, inner_var) != 1 and position is not None and _is_constant_operand(sch, read):
            pack = read_index
            break
    return TilePlan(inner_axis, vector, count, row_axis if rows > 1 else None, rows, pack=pack)


def _rows_and_vectors(row_extent: int, vectors: int) -> tuple[int, int]:
    """(rows, vectors per row) of an output-vector tile with a reused operand: divisors of the
    two extents with the most multiply-adds per load (rows x vectors FMAs for rows broadcasts and
    `vectors` vector loads), within the accumulator budget; ties go to the larger tile."""
    best = (0.0, 0), 1, 1
    for rows in range(1, min(row_extent, MAX_TILE_ROWS) + 1):
        if row_extent % rows:
            continue
        for count in range(1, MAX_OUTPUT_VECTORS + 1):
            if vectors % count or rows * count > MAX_OUTPUT_VECTOR_ACCUMULATORS:
                continue
            key = (rows * count / (rows + count), rows * count)
            if key > best[0]:
                best = key, rows, count
    return best[1], best[2]


def _is_constant_operand(sch, read) -> bool:
    """Whether a read is of a parameter Relax passes a constant (AttachAttrLayoutFreeBuffers)."""
    func = sch.mod["main"]
    layout_free = [int(i) for i in (func.attrs.get("layout_free_buffers", []) if func.attrs else [])]
    params = list(func.params)
    return any(i < len(params) and params[i].same_as(read.source) for i in layout_free)


def _deinterleave(stride: int):
    """The index map x -> (x % stride, x // stride) on the innermost dimension."""

    def index_map(*index):
        return (*index[:-1], index[-1] % stride, index[-1] // stride)

    return index_map


def _deinterleave_strided_reads(sch, anchor, plan: TilePlan) -> list:
    """Operands read with a stride along the vector axis (a stride-2 convolution's input) stored
    de-interleaved instead, x -> (x % stride, x // stride), so the vector loads are contiguous
    rather than gathers: the padding stage writes that layout, or a copy stage is added for an
    operand the kernel receives. Returns the copy stages added (scheduled as passes over memory).
    """
    from tvm.tirx import IndexMap

    added = []
    block = sch.get(anchor)
    vec_var = block.iter_vars[plan.vec_axis].var
    for read_index, read in enumerate(block.reads):
        if read.source.same_as(block.writes[0].source):
            continue
        stride = _stride_of(read, vec_var)
        width = int(read.source.shape[-1])
        if stride <= 1 or width % stride:
            continue
        produced_here = any(sch.get(b).writes and sch.get(b).writes[0].source.same_as(read.source)
                            for b in sch.get_child_blocks(sch.get_sblock("root")))
        if not produced_here:
            added.append(sch.cache_read(anchor, read_index, "global"))
        sch.transform_layout(anchor, ("read", read_index), IndexMap.from_func(_deinterleave(stride), ndim=len(read.region)))
    return added


#: an input of at least this many bytes that both tile axes index is streamed pixel by pixel
MIN_STREAMED_INPUT_BYTES = 512 * 1024


def _vector_operand_is_larger(block, plan: TilePlan) -> bool:
    """Whether the operand indexed by the vector axis (and not the row axis) holds more elements
    than the one indexed by the row axis (and not the vector axis)."""
    spatial = [iv.var for iv in block.iter_vars]
    vec_var, row_var = spatial[plan.vec_axis], spatial[plan.row_axis]

    def size(read) -> int:
        total = 1
        for dim in read.source.shape:
            total *= int(dim)
        return total

    vec_sizes, row_sizes = [0], [0]
    for read in block.reads:
        if read.source.same_as(block.writes[0].source):
            continue
        used = _region_vars(read)
        has_vec = any(v.same_as(vec_var) for v in used)
        has_row = any(v.same_as(row_var) for v in used)
        if has_vec and not has_row:
            vec_sizes.append(size(read))
        elif has_row and not has_vec:
            row_sizes.append(size(read))
        elif has_row and size(read) * read.source.dtype.bits // 8 >= MIN_STREAMED_INPUT_BYTES:
            # an input both axes index (a depthwise convolution's: its channels are the vector
            # axis) counts against the reorder once it is large: with the channel blocks
            # outermost, each pass over it read one cache line of every pixel's four (64
            # channels, a 3x3 depthwise at 56 x 56: 159 -> 134 us on one thread with them
            # innermost; 480 channels at 6 x 80, 5x5: 300 -> 261 us; whole models on two
            # threads: ultraface RFB 0.70x, orientation 0.90x). A small one is better read one
            # channel block at a time, its window of rows staying in L1 from one output row to
            # the next (256 channels at 14 x 14, 5x5, one thread: 48 against 51 us).
            row_sizes.append(size(read))
    return max(vec_sizes) > max(row_sizes)


def _pad_vector_axis(sch, anchor, cpu: CpuInfo) -> bool:
    """Pad an einsum (matmul) whose innermost output axis has no divisor filling a vector register
    (a classifier's 18385 outputs: 5 lanes) to a multiple of the vector width (`pad_einsum`).

    The zero-padded copies of constant operands are marked as weight re-layouts, so Relax splits
    them out and folds them on the constants at compile time; the padded result is copied back
    into the output by a consumer stage. False when nothing was padded.
    """
    block = sch.get(anchor)
    kinds = _iter_kinds(block)
    n_spatial = kinds.count("S")
    extents = [_int_extent(sch, loop) for loop in sch.get_loops(anchor)]
    if any(extent is None for extent in extents):
        return False
    axis = max((a for a in range(n_spatial) if extents[a] > 1), default=None)
    lanes = cpu.lanes(block.writes[0].source.dtype.bits)
    if axis is None or extents[axis] <= lanes or _vector_split(extents[axis], lanes) * 2 > lanes:
        return False
    padding = [1] * len(extents)
    padding[axis] = lanes
    root = sch.get_sblock("root")
    before = {sch.get(b).name_hint for b in sch.get_child_blocks(root)}
    try:
        sch.pad_einsum(anchor, padding)
    except Exception:  # not an einsum (a convolution's input index is a sum)
        return False
    for block_rv in sch.get_child_blocks(root):
        new = sch.get(block_rv)
        if new.name_hint in before or len(new.reads) != 1 or len(new.writes) != 1:
            continue
        if _is_constant_operand(sch, new.reads[0]):
            sch.annotate(block_rv, RELAYOUT_ANNOTATION, 1)
    return True


def tile_reduction(sch, cpu: CpuInfo) -> bool:
    """Register-tiled multiply-accumulate with a fused epilogue; False when the pattern does not hold."""
    found = _mac_anchor(sch)
    if found is None:
        return False
    anchor, producers, consumers = found
    root = sch.get_sblock("root")

    kept_producers, consumers = inline_stages(sch, anchor, producers, consumers)
    kept_producers = _inline_short_reduction_padding(sch, anchor, kept_producers)
    unroll_taps = _is_short_depthwise(sch, anchor)

    padded = _pad_vector_axis(sch, anchor, cpu)
    if padded:
        blocks = list(sch.get_child_blocks(root))
        index = _position(sch, blocks, anchor)
        kept_producers += [b for b in blocks[:index] if not any(sch.get(b).same_as(sch.get(k)) for k in kept_producers)]
        consumers = blocks[index + 1:]

    plan = plan_tile(sch, anchor, cpu)
    if plan is None:
        return False
    n_spatial = _iter_kinds(sch.get(anchor)).count("S")

    if plan.pack is not None:
        # weights re-laid out so the vector axis is innermost: a preprocessing block Relax splits
        # out (SplitLayoutRewritePreproc) and folds on the constant at compile time
        read = sch.get(anchor).reads[plan.pack]
        position = _index_position(read, [iv.var for iv in sch.get(anchor).iter_vars][plan.vec_axis])
        ndim = len(read.region)
        lanes = plan.vector
        packer = sch.cache_read(anchor, plan.pack, "global")
        sch.annotate(packer, RELAYOUT_ANNOTATION, 1)
        from tvm.tirx import IndexMap

        def relayout(*index):
            return (*index[:position], index[position] // lanes, *index[position + 1:], index[position] % lanes)

        sch.transform_layout(anchor, ("read", plan.pack), IndexMap.from_func(relayout, ndim=ndim))

    if plan.pack is None or plan.vec_axis == n_spatial - 1:
        kept_producers += _deinterleave_strided_reads(sch, anchor, plan)
    if plan.pack is None and plan.row_axis is not None:
        _pack_panels(sch, anchor, plan)

    accumulator_shape = sch.get(anchor).writes[0].source.shape
    writeback = sch.cache_write(anchor, 0, "local")
    if plan.vec_axis != n_spatial - 1:
        # the accumulators with the vector axis innermost, so each is one register
        from tvm.tirx import IndexMap

        vec = plan.vec_axis
        sch.transform_layout(anchor, ("write", 0),
                             IndexMap.from_func(lambda *i: (*i[:vec], *i[vec + 1:], i[vec]), ndim=n_spatial))
    unfused = inline_epilogue(sch, consumers, accumulator_shape)

    loops = sch.get_loops(anchor)
    spatial_loops, reduction_loops = loops[:n_spatial], loops[n_spatial:]
    inner = []
    row_outer = None
    if plan.row_axis is not None:
        row_outer, row_inner = sch.split(spatial_loops[plan.row_axis], factors=[None, plan.rows])
        inner.append(row_inner)
    if plan.vector_count > 1:
        vec_outer, vec_count, vec_inner = sch.split(spatial_loops[plan.vec_axis],
                                                    factors=[None, plan.vector_count, plan.vector])
        inner.append(vec_count)
    else:
        vec_outer, vec_inner = sch.split(spatial_loops[plan.vec_axis], factors=[None, plan.vector])
    inner.append(vec_inner)
    outer = []
    for axis, loop in enumerate(spatial_loops):
        outer.append(vec_outer if axis == plan.vec_axis else row_outer if axis == plan.row_axis else loop)
    if row_outer is not None and _vector_operand_is_larger(sch.get(anchor), plan):
        # the tiles of one block of the large operand's vectors run one after another, reusing
        # it from cache (a classifier's 120 x 18400 weights are read once instead of once per row
        # tile; a channels-last 512 -> 1000 convolution's 2 MB of weights once, not once per row
        # of its 13 x 13 output)
        outer = [vec_outer] + [loop for loop in outer if loop is not vec_outer and loop is not row_outer] + [row_outer]
    sch.reorder(*outer, *reduction_loops, *inner)
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    sch.reverse_compute_at(writeback, fused, preserve_unit_loops=True)
    tiled_epilogue = []
    if padded and unfused:
        # the padded columns cut off and the epilogue after them, per tile (a classifier's
        # 40 x 18400 result was copied and biased in two more passes over 2.9 MB)
        for block_rv in unfused[:-1]:
            try:
                sch.compute_inline(block_rv)
            except Exception:
                break
        else:
            unfused = unfused[-1:]
            tiled_epilogue = compute_epilogue_per_tile(sch, unfused, fused)
    if cpu.cores > 1:
        sch.parallel(fused)
    # vectorize and unroll before decomposing: the update block of a decomposed reduction no
    # longer counts as a reduction block for the `vectorize` primitive's checks
    sch.vectorize(vec_inner)
    for loop in inner[:-1]:
        sch.unroll(loop)
    if unroll_taps:
        # each input vector serves kw taps of neighbouring rows of the tile: with the taps
        # unrolled too, LLVM loads (and, for uint8 input, converts) it once per tap row
        for loop in reduction_loops:
            sch.unroll(loop)
    writeback_loops = sch.get_loops(writeback)
    if plan.row_axis is not None and plan.row_axis > plan.vec_axis:
        # channel-vector: the epilogue runs on the accumulators as they are, a vector of channels
        # at a time (its loads of bias and scale are contiguous too), and each vector is stored
        # across the channel planes; a scalar epilogue over rows x channels costs as much as the
        # multiply-adds on a 1x1 convolution
        axis_loops = writeback_loops[len(writeback_loops) - n_spatial:]
        channels, rows = axis_loops[plan.vec_axis], axis_loops[plan.row_axis]
        sch.reorder(rows, channels)
        channel_outer, channel_inner = sch.split(channels, factors=[None, plan.vector])
        sch.unroll(rows)
        sch.unroll(channel_outer)
        sch.vectorize(channel_inner)
    else:
        sch.vectorize(writeback_loops[-1])
    sch.decompose_reduction(anchor, reduction_loops[0])
    for block_rv in tiled_epilogue:
        sch.vectorize(sch.get_loops(block_rv)[-1])
    for block_rv in kept_producers + [b for b in unfused if b not in tiled_epilogue]:
        schedule_injective(sch, block_rv, cpu)
    return True


#: a constant operand whose rows are at least this many bytes apart is read by the register tile
#: as panels: the tile's slice of every row, stored together
MIN_PANEL_ROW_BYTES = 4096


def _pack_panels(sch, anchor, plan: TilePlan) -> None:
    """A constant operand read along the vector axis in its innermost dimension, with rows far
    apart (a classifier's weights [120, 18400]: each step of the reduction reads 128 bytes of
    another 74 KB row, another page), re-laid out at compile time as panels
    `[n / P, ..., P]` of the tile's `P = vector x vector_count` columns, so a tile reads one
    contiguous block."""
    from tvm.tirx import IndexMap

    block = sch.get(anchor)
    vec_var = block.iter_vars[plan.vec_axis].var
    panel = plan.vector * plan.vector_count
    for read_index, read in enumerate(block.reads):
        if read.source.same_as(block.writes[0].source) or len(read.region) < 2:
            continue
        if _index_position(read, vec_var) != len(read.region) - 1:
            continue
        # the constant itself, or its zero-padded copy (`_pad_vector_axis`: folded at compile time
        # too, and written in the panel layout directly)
        relayout = next((b for b in sch.get_child_blocks(sch.get_sblock("root"))
                         if sch.get(b).writes and sch.get(b).writes[0].source.same_as(read.source)
                         and RELAYOUT_ANNOTATION in sch.get(b).annotations), None)
        if relayout is None and not _is_constant_operand(sch, read):
            continue
        width = int(read.source.shape[-1])
        if width % panel or width * read.source.dtype.bits // 8 < MIN_PANEL_ROW_BYTES:
            continue
        if relayout is None:
            packer = sch.cache_read(anchor, read_index, "global")
            sch.annotate(packer, RELAYOUT_ANNOTATION, 1)
        sch.transform_layout(anchor, ("read", read_index), IndexMap.from_func(
            lambda *index: (index[-1] // panel, *index[:-1], index[-1] % panel), ndim=len(read.region)))
        return


#: a convolution with at most this many multiply-adds per output (a depthwise 3x3 or 5x5, an RGB
#: image's 3x3x3 first layer) reads its padding from the input as it goes, rather than from a
#: padded copy written in a pass of its own
MAX_INLINED_PAD_REDUCTION = 32
#: tirx.IterVar.CommReduce, a reduction iterator's type
_COMM_REDUCE = 2


def _inline_short_reduction_padding(sch, anchor, kept: list) -> list:
    """The padding stages of a short-reduction convolution inlined into it, where the padding
    leaves the innermost axis alone (channels-last: the condition is the same for every vector
    lane, so the loads stay vector loads). Such a convolution is a pass over memory, and the
    padded copy was a second one: orientation's depthwise layers, 0.89x the model's time. In NCHW
    the condition varies along the vector lanes (PP-OCRv5 cls ran 1.25x slower), so those keep
    their padding stage. Returns the stages still kept."""
    reduction = _reduction_extent(sch.get(anchor))
    if reduction is None or reduction > MAX_INLINED_PAD_REDUCTION:
        return kept
    def pads_in_place(stage) -> bool:
        return (_has_if_then_else(stage) and len(stage.reads) == 1
                and int(stage.writes[0].source.shape[-1]) == int(stage.reads[0].source.shape[-1]))

    candidates = [b for b in kept if pads_in_place(sch.get(b))]
    return [b for b in kept if b not in candidates] + _inline_or_keep(sch, candidates)


def _reduction_extent(block) -> int | None:
    """The product of a block's reduction extents (None when one is symbolic)."""
    total = 1
    for iter_var in block.iter_vars:
        if iter_var.iter_type == _COMM_REDUCE:
            extent = iter_var.dom.extent
            if not hasattr(extent, "value"):
                return None
            total *= int(extent.value)
    return total


def _is_short_depthwise(sch, anchor) -> bool:
    """A channels-last depthwise convolution (its input indexed by every output axis longer than
    1, the channels included; the channels innermost) with at most MAX_INLINED_PAD_REDUCTION taps:
    a 3x3 or 5x5 one.

    Its register tile's reduction loops are unrolled as well: PP-OCRv5 rec's 5x5 depthwise
    layers ran in 0.82x the time (3x3: 0.92x), ultraface slim and RFB in 0.82x and 0.95x, rec
    0.92x. An ordinary convolution's input is not indexed by the output channels; unrolling its
    channel loop too ran 1.46x slower, and an RGB first layer's 27 taps 1.05x."""
    block = sch.get(anchor)
    reduction = _reduction_extent(block)
    if reduction is None or reduction > MAX_INLINED_PAD_REDUCTION:
        return False
    spatial = [iv.var for iv in block.iter_vars
               if iv.iter_type != _COMM_REDUCE and not (hasattr(iv.dom.extent, "value") and int(iv.dom.extent.value) == 1)]
    if not spatial:
        return False

    def uses(read, var) -> bool:
        return any(u.same_as(var) for u in _region_vars(read))

    data = [read for read in block.reads
            if not read.source.same_as(block.writes[0].source) and not _is_constant_operand(sch, read)]
    weights = [read for read in block.reads if _is_constant_operand(sch, read)]
    # channels-last: the innermost output axis (the vector lanes) is the channels the weights
    # are indexed by; NCHW depthwise layers (PP-OCRv5 cls) ran 1.11x slower with their taps unrolled
    return (any(all(uses(read, var) for var in spatial) for read in data)
            and any(uses(read, spatial[-1]) for read in weights))


def _inline_or_keep(sch, blocks) -> list:
    """Each of `blocks` inlined into its readers where TVM can; returns those it could not."""
    kept = []
    for block_rv in blocks:
        try:
            sch.compute_inline(block_rv)
        except Exception:
            kept.append(block_rv)
    return kept


def inline_stages(sch, anchor, producers, consumers) -> tuple[list, list]:
    """(producers kept, epilogue stages left) around a multiply-accumulate block.

    Producers: pure index remappings are inlined; a padding stage (if_then_else) stays a parallel
    pass. Epilogue: every stage but the last is inlined forward into its readers (an expression
    DAG such as GELU reads one intermediate several times); the last is later inlined into the
    store of the accumulators (`inline_epilogue`).
    """
    padding = [b for b in producers if _has_if_then_else(sch.get(b))]
    kept = padding + _inline_or_keep(sch, [b for b in producers if b not in padding])
    _inline_or_keep(sch, consumers[:-1])
    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    return kept, blocks[_position(sch, blocks, anchor) + 1:]


def compute_epilogue_per_tile(sch, blocks, loop) -> list:
    """The stages of `blocks` moved under `loop` (each computes the tile just stored, with its own
    bounds); returns those that moved."""
    moved = []
    for block_rv in blocks:
        try:
            sch.reverse_compute_at(block_rv, loop, preserve_unit_loops=True)
            moved.append(block_rv)
        except Exception:
            pass
    return moved


def inline_epilogue(sch, consumers, accumulator_shape) -> list:
    """Inline the epilogue stages into the store of the accumulators; returns the stages kept
    separate.

    A stage whose output has fewer elements than the accumulators (a slice: the padded channels of
    an einsum, or of an integer convolution, cut off) stays separate: TVM 0.27's
    reverse_compute_inline drops such a consumer's bound, and the store then writes the whole
    tile past the end of the smaller output.
    """
    def elements(shape) -> int | None:
        total = 1
        for dim in shape:
            if not hasattr(dim, "value"):
                return None
            total *= int(dim.value)
        return total

    unfused = []
    for block_rv in consumers:
        size = elements(sch.get(block_rv).writes[0].source.shape)
        if size is None or size != elements(accumulator_shape):
            unfused.append(block_rv)
            continue
        try:
            sch.reverse_compute_inline(block_rv)
        except Exception:
            unfused.append(block_rv)
    return unfused


def _position(sch, blocks, block_rv) -> int:
    target = sch.get(block_rv)
    for i, candidate in enumerate(blocks):
        if sch.get(candidate).same_as(target):
            return i
    raise ValueError("block not found")


#: the names TVM gives its if_then_else op across versions
SELECT_OPS = ("prim.if_then_else", "tir.if_then_else", "tirx.if_then_else")


def _is_select(block) -> bool:
    """Whether a block stores an if_then_else of its inputs (TOPI's concatenate and pad)."""
    body = block.body
    op = getattr(getattr(body, "value", None), "op", None)
    return getattr(op, "name", "") in SELECT_OPS


def schedule_all_injective(sch, cpu: CpuInfo) -> bool:
    """Every block data-parallel: each gets the injective schedule."""
    root = sch.get_sblock("root")
    blocks = list(sch.get_child_blocks(root))
    if not blocks or any(_iter_kinds(sch.get(b)).strip("S") for b in blocks):
        return False
    # chains of elementwise stages are already one loop nest after FuseTIR; inline what we can,
    # except a select (a concatenation or a pad) that several stages read: inlined, each of them
    # would repeat its branches and index arithmetic (UltraFace's box decoding reads its
    # concatenated heads through four slices: 157 us inlined, 22 us with the two concatenations
    # kept as stages of their own)
    remaining = []
    for block_rv in blocks[:-1]:
        if _is_select(sch.get(block_rv)) and len(sch.get_consumers(block_rv)) >= MIN_SELECT_READERS_KEPT:
            remaining.append(block_rv)
            continue
        try:
            sch.compute_inline(block_rv)
        except Exception:
            remaining.append(block_rv)
    for block_rv in remaining + [blocks[-1]]:
        schedule_injective(sch, block_rv, cpu, partition_selects=True, min_parallel=MIN_PARALLEL_ELEMENTWISE_KERNEL)
    return True


def schedule_reduction(sch, cpu: CpuInfo) -> bool:
    """Pooling, mean and other reductions: elementwise stages inlined into the reductions that read
    them; each remaining stage's leading spatial axes in parallel."""
    root = sch.get_sblock("root")
    blocks = list(sch.get_child_blocks(root))
    if not blocks:
        return False
    for block_rv in blocks:
        kinds = _iter_kinds(sch.get(block_rv))
        if "O" in kinds or not kinds.startswith("S"):
            return False
        if _loops_bind_iters(sch, block_rv) is None:
            return False
    for block_rv in blocks[:-1]:
        if "R" not in _iter_kinds(sch.get(block_rv)):
            try:
                sch.compute_inline(block_rv)
            except Exception:
                pass
    for block_rv in sch.get_child_blocks(root):
        block = sch.get(block_rv)
        kinds = _iter_kinds(block)
        loops = sch.get_loops(block_rv)
        extents = [_int_extent(sch, loop) for loop in loops]
        if any(extent is None for extent in extents):
            return False
        if "R" not in kinds:
            schedule_injective(sch, block_rv, cpu)
            continue
        n_spatial = kinds.count("S")
        spatial = loops[:n_spatial]
        work = 1
        for extent in extents:
            work *= extent
        if _vectorize_reduction_lanes(sch, block_rv, extents, n_spatial, cpu):
            continue
        if ((_expression_cost(block.body) >= COMPUTE_BOUND_NODES or _spatial_axis_is_contiguous(block, extents, n_spatial, cpu))
                and _vectorize_spatial_lanes(sch, block_rv, extents, n_spatial, cpu)):
            continue
        if (_spatial_axis_is_contiguous(block, extents, n_spatial, cpu, shorter_than_vector=True)
                and _vectorize_spatial_lanes(sch, block_rv, extents, n_spatial, cpu,
                                             min_parallel=MIN_PARALLEL_ELEMENTWISE_KERNEL)):
            continue
        # The innermost spatial loops stay whole for LLVM to vectorize where the loops outside
        # them give every core work (squeezenet's stride-2 pooling: 0.16 ms with the two
        # innermost whole, 0.49 ms with the innermost in explicit vector lanes).
        for keep in (2, 1, 0):
            outer = spatial[:n_spatial - keep] if n_spatial > keep else []
            parallelism = 1
            for extent in extents[:len(outer)]:
                parallelism *= extent
            if outer and parallelism >= 4 * cpu.cores:
                break
        if not outer:
            continue
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        if cpu.cores > 1 and work >= MIN_PARALLEL_ELEMENTS:
            sch.parallel(fused)
    return True


#: calls that make a reduction's body compute-bound (LLVM does not vectorize around them itself)
TRANSCENDENTAL_OPS = frozenset({"tirx.tanh", "tirx.exp", "tirx.erf", "tirx.sigmoid", "tirx.log", "tirx.pow",
                                "tirx.sqrt", "tirx.rsqrt"})


#: a reduction body with at least this many arithmetic nodes is compute-bound (fast_exp expands
#: to about 40; a max pool's body is 3)
COMPUTE_BOUND_NODES = 24


def _expression_cost(node) -> int:
    """Nodes in an expression or store, a transcendental call counting as COMPUTE_BOUND_NODES."""
    from tvm.ir.expr import Call

    if isinstance(node, Call):
        own = COMPUTE_BOUND_NODES if getattr(node.op, "name", "") in TRANSCENDENTAL_OPS else 1
        return own + sum(_expression_cost(arg) for arg in node.args)
    total = 1
    for attribute in ("value", "a", "b", "condition", "true_value", "false_value"):
        child = getattr(node, attribute, None)
        if child is not None and not isinstance(child, (int, float, str)):
            total += _expression_cost(child)
    return total


#: a contiguous innermost reduction at least this long is summed in vector lanes (`rfactor`)
MIN_LANE_REDUCTION = 1024


def _contiguous_trailing_reductions(block, extents) -> int:
    """How many of the block's innermost reduction axes index every input's innermost dimensions
    directly, in order and whole (so that together they walk one contiguous run of each input)."""
    inputs = [read for read in block.reads if not read.source.same_as(block.writes[0].source)]
    if not inputs:
        return 0
    count = 0
    for j in range(1, len(block.iter_vars) + 1):
        iter_var = block.iter_vars[-j]
        if _iter_kinds(block)[-j] != "R":
            break
        if not all(len(read.region) >= j and read.region[-j].min.same_as(iter_var.var)
                   and int(read.source.shape[-j]) == extents[-j] for read in inputs):
            break
        count += 1
    return count


def _vectorize_reduction_lanes(sch, block_rv, extents, n_spatial: int, cpu: CpuInfo) -> bool:
    """A long contiguous innermost reduction, a multiple of the vector width (a softmax over a
    classifier's padded 18400 classes): vector-wide partial results along it (`rfactor`),
    combined per output at the end; the outputs in parallel. Reading the reduction axis in lanes
    keeps the loads contiguous, where lanes across the outputs gathered them a row apart
    (measured on [40, 18400]: 0.99 ms against 2.1 ms)."""
    block = sch.get(block_rv)
    if not _iter_kinds(block).endswith("R"):
        return False
    trailing = _contiguous_trailing_reductions(block, extents)
    if trailing >= 2 and extents[-1] < MIN_LANE_REDUCTION:
        # a global mean over [C, H, W]: the H x W values of a channel are one contiguous run;
        # its loops fused, they are summed in lanes like one long axis (PP-OCRv5 det's 96 x 80 x 80
        # mean: a chain of 6400 dependent scalar adds per channel otherwise). Tried on a copy first:
        # a fused loop rfactor refuses leaves the kernel to the other strategies as it was
        total = 1
        for extent in extents[-trailing:]:
            total *= extent
        if total < MIN_LANE_REDUCTION or total % cpu.lanes(block.writes[0].source.dtype.bits):
            return False
        for candidate in (sch.copy(), sch):
            loops = candidate.get_loops(block_rv)
            candidate.fuse(*loops[-trailing:])
            try:
                _sum_in_lanes(candidate, block_rv, n_spatial, cpu.lanes(block.writes[0].source.dtype.bits), cpu)
            except Exception:  # noqa: BLE001 -- only the copy can get here: the original is untouched
                return False
        return True
    if extents[-1] < MIN_LANE_REDUCTION:
        return False
    k_var = block.iter_vars[-1].var
    inputs = [read for read in block.reads if not read.source.same_as(block.writes[0].source)]
    if not any(any(v.same_as(k_var) for v in _region_vars(read)) for read in inputs):
        return False
    if any(_stride_of(read, k_var) != 1 for read in inputs if any(v.same_as(k_var) for v in _region_vars(read))):
        return False
    lanes = cpu.lanes(block.writes[0].source.dtype.bits)
    if extents[-1] % lanes:
        # a guarded tail (18385 = 1149 x 16 + 1) makes TVM scalarize the whole vector loop:
        # measured 2.3x slower than lanes across the outputs
        return False
    try:
        _sum_in_lanes(sch, block_rv, n_spatial, lanes, cpu)
    except Exception:  # not a reduction TVM can factor (no identity element)
        return False
    return True


def _sum_in_lanes(sch, block_rv, n_spatial: int, vector: int, cpu: CpuInfo) -> None:
    """The innermost reduction loop of `block_rv` split into `vector`-wide partial results
    (`rfactor`), accumulated in a vector register per output and combined at the end; the
    outputs in parallel. Measured on openwakeword's STFT: four partial-sum vectors per output
    (ILP) were 2.3x slower, the horizontal sums growing with them; a `local` partial buffer 1.5x
    slower."""
    _, lane = sch.split(sch.get_loops(block_rv)[-1], factors=[None, vector])
    partial = sch.rfactor(lane, factor_axis=n_spatial)
    # partial: spatial..., reductions..., reduction outer, lane (now spatial, innermost)
    spatial = sch.get_loops(partial)[:n_spatial]
    fused = sch.fuse(*spatial) if n_spatial > 1 else spatial[0]
    sch.reverse_compute_at(block_rv, fused, preserve_unit_loops=True)
    if cpu.cores > 1:
        sch.parallel(fused)
    sch.vectorize(sch.get_loops(partial)[-1])
    sch.decompose_reduction(partial, sch.get_loops(partial)[1])


#: ... when it reduces at least this many values per output (a global mean): a channels-last 3x3
#: max pool ran 1.06-1.28x slower in lanes (SqueezeNet fp32 / fp16) than left to LLVM
MIN_CONTIGUOUS_LANE_REDUCTION = 32


def _spatial_axis_is_contiguous(block, extents, n_spatial: int, cpu: CpuInfo,
                                shorter_than_vector: bool = False) -> bool:
    """Whether every input the innermost spatial axis (longer than 1) indexes is read along it
    contiguously, in its innermost dimension, with a reduction inside: a channels-last pooling or
    global mean, where vector lanes along the channels are plain vector loads.

    With `shorter_than_vector`, instead: whether that axis is shorter than one vector (at least 4)
    and the reduction of any length: MNIST's 2 x 2 pool over 8 channels. LLVM leaves such a loop
    scalar (its trip count is under its vector factor): 0.95 us on two cores, against 0.10 us on
    one in 8 explicit lanes."""
    axis = max((a for a in range(n_spatial) if extents[a] > 1), default=None)
    reduced = 1
    for extent in extents[n_spatial:]:
        reduced *= extent
    lanes = cpu.lanes(block.writes[0].source.dtype.bits)
    if shorter_than_vector:
        if axis is None or not 4 <= extents[axis] < lanes or reduced < 2:
            return False
    # whole vectors only (SqueezeNet fp16's global pool over 1000 channels in 8 of 32 lanes: slower)
    elif axis is None or reduced < MIN_CONTIGUOUS_LANE_REDUCTION or extents[axis] % lanes:
        return False
    var = block.iter_vars[axis].var
    inputs = [read for read in block.reads if not read.source.same_as(block.writes[0].source)
              and any(v.same_as(var) for v in _region_vars(read))]
    return bool(inputs) and all(_stride_of(read, var) == 1 for read in inputs)


def _vectorize_spatial_lanes(sch, block_rv, extents, n_spatial: int, cpu: CpuInfo, min_parallel: int = 0) -> bool:
    """A reduction whose body is compute-bound (GELU before a global max pool), or whose innermost
    spatial axis its inputs hold contiguously (a channels-last global mean: the loop over channels
    outside the reduction read each value a row of 1920 bytes after the last, 0.37 ms on one
    thread for [6, 80, 480]): that axis split into vector lanes and moved inside the reduction
    loops, the rest in parallel (with `min_parallel` iterations or more); loads along it are vector
    loads, or gathers cheap next to the math."""
    block = sch.get(block_rv)
    lanes = cpu.lanes(block.writes[0].source.dtype.bits)
    axis = max((a for a in range(n_spatial) if extents[a] > 1), default=None)
    if axis is None:
        return False
    while lanes >= 4 and extents[axis] % lanes:  # a power of two dividing the axis (40 rows -> 8)
        lanes //= 2
    if lanes < 4:
        return False
    loops = sch.get_loops(block_rv)
    spatial, reduction = loops[:n_spatial], loops[n_spatial:]
    lane_outer, lane_inner = sch.split(spatial[axis], factors=[None, lanes])
    outer = [lane_outer if a == axis else loop for a, loop in enumerate(spatial)]
    sch.reorder(*outer, *reduction, lane_inner)
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    work = 1
    for extent in extents:
        work *= extent
    if cpu.cores > 1 and work >= min_parallel:
        sch.parallel(fused)
    sch.vectorize(lane_inner)
    sch.decompose_reduction(block_rv, reduction[0])
    return True


def dot_product(sch, cpu: CpuInfo) -> bool:
    """A multiply-accumulate whose output axes do not tile (prime extents, a strided input) but
    whose innermost reduction axis is long: that axis split into vector-wide partial sums
    (`rfactor`), accumulated in a vector register and summed at the end."""
    root = sch.get_sblock("root")
    blocks = list(sch.get_child_blocks(root))
    anchors = [b for b in blocks if "R" in _iter_kinds(sch.get(b))]
    if len(anchors) != 1 or any(_iter_kinds(sch.get(b)).strip("S") for b in blocks if b is not anchors[0]):
        return False
    anchor = anchors[0]
    block = sch.get(anchor)
    if not _is_multiply_accumulate(block) or _loops_bind_iters(sch, anchor) is None:
        return False
    kinds = _iter_kinds(block)
    if kinds != "S" * kinds.count("S") + "R" * kinds.count("R"):
        return False
    index = _position(sch, blocks, anchor)
    for block_rv in blocks[:index]:
        if not _has_if_then_else(sch.get(block_rv)):
            try:
                sch.compute_inline(block_rv)
            except Exception:
                pass
    loops = sch.get_loops(anchor)
    extents = [_int_extent(sch, loop) for loop in loops]
    if any(extent is None for extent in extents):
        return False
    n_spatial = kinds.count("S")
    lanes = cpu.lanes(block.writes[0].source.dtype.bits)
    vector = _largest_divisor_at_most(extents[-1], lanes)
    if vector * 2 < lanes:
        return False
    _sum_in_lanes(sch, anchor, n_spatial, vector, cpu)
    for block_rv in blocks[index + 1:]:
        schedule_injective(sch, block_rv, cpu)
    for block_rv in blocks[:index]:
        try:
            sch.get(block_rv)
        except Exception:
            continue
        schedule_injective(sch, block_rv, cpu)
    return True


def integer_dot(sch, cpu: CpuInfo) -> bool:
    """uint8 x int8 convolutions tensorized with VNNI (schedules/integer.py)."""
    from mcc.backends.tvm.schedules.integer import integer_dot as rule

    return rule(sch, cpu)


RULES = (
    ("integer-dot", integer_dot),
    ("tile-reduction", tile_reduction),
    ("dot-product", dot_product),
    ("injective", schedule_all_injective),
    ("reduction", schedule_reduction),
)


def schedule(func, cpu: CpuInfo):
    """(s_tir.Schedule holding the scheduled kernel and its trace, rule name), or (None, None)
    when no rule fits."""
    from tvm import s_tir

    for name, rule in RULES:
        sch = s_tir.Schedule(func)
        try:
            if rule(sch, cpu):
                return sch, name
        except Exception:  # a rule whose primitives refuse this kernel: the next rule, or TVM's loops
            continue
    return None, None


def schedule_func(func, cpu: CpuInfo):
    """(scheduled PrimFunc, rule name), or (None, None) when no rule fits."""
    sch, name = schedule(func, cpu)
    return (None, None) if sch is None else (sch.mod["main"], name)


def has_relayout_block(func) -> bool:
    """Whether a kernel's root holds a weight re-layout block (ours, or a tuned record's)."""
    from tvm import s_tir

    try:
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # a kernel without the usual root block (TVM's scatter kernels)
        return False
    return any(RELAYOUT_ANNOTATION in sch.get(block).annotations for block in blocks)


#: the block annotation Relax's SplitLayoutRewritePreproc moves into a kernel of its own
RELAYOUT_ANNOTATION = "meta_schedule.layout_rewrite_preproc"
