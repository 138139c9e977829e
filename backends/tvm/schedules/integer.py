"""`integer-dot`: uint8 x int8 -> int32 convolutions and matmuls on x86 VNNI (the kernels
backends/tvm/integer.py lowers quantized convolutions and matmuls to).

Matmuls `[..., M, K] x [K, N]`: weights packed `[N/16, K/4, 16, 4]` at compile time, the data
read as it is (4 consecutive K values are contiguous), a register tile of rows x 16-column
vectors. Convolutions:

The register tile holds `vectors x pixels` accumulators of 16 int32 output channels each, kept
across the whole reduction. Each step of the reduction is one `vpdpbusd`: 4 input channels of one
input pixel (broadcast) times a 16 x 4 block of weights, 64 multiply-adds. For that the operands
are re-laid out:

* weights `[O, C, KH, KW]` -> `[O/16, C/4, KH, KW, 16, 4]` at compile time (a block Relax splits out
  and folds on the constant, as the float schedules' packed weights);
* the (padded) input `[N, C, H, W]` -> `[N, C/4, H, W, 4]`, written by the padding stage (or a copy),
  a pass over uint8 data that costs little against the convolution;
* the accumulators `[pixel][16 channels]`, so each is one register.

The fused epilogue (to float, scale, bias, activation, requantization) is computed from the
accumulators as they are stored.

Channels-last (NHWC, what backends/tvm/layout.py gives most models) needs no input re-layout:
each pixel's input channels are contiguous, 4 of them one intrinsic operand; the weights are
packed `[O/16, KH, KW, C/4, 16, 4]`, and each pixel's 16 output channels are one vector store.

Measured here (2 cores, AVX-512 VNNI, against mcc's float32 schedule of the same convolution):
3x3 convolutions 0.34-0.61x the float time, a 512 -> 1008 1x1 convolution 0.31x; 1x1
convolutions with 16-32 input channels about equal (1.0-1.1x), their reduction is too short to
outweigh the re-layout and the store.
"""

from __future__ import annotations

from mcc.backends.tvm.schedules import cpu as base

#: the tensor intrinsic: C[16] (local accumulators) += A[4] (uint8) x B[16, 4] (int8)
VNNI_INTRINSIC = "mcc_dot_16x4_u8i8i32_vnni"
#: accumulator registers a tile may use (of AVX-512's 32: the rest hold weights and the input)
MAX_ACCUMULATORS = 24
LANES = 16
GROUP = 4

_registered = False


def _register_intrinsic() -> None:
    """TVM's own x86 VNNI intrinsic targets a global accumulator and an older LLVM signature of
    vpdpbusd (<16 x i32> operands; LLVM now takes <64 x i8>); this one accumulates into local
    registers."""
    global _registered
    if _registered:
        return
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def description(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((16, 4), "int8", offset_factor=1),
                    c: T.Buffer((16,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def implementation(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((16, 4), "int8", offset_factor=1),
                       c: T.Buffer((16,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            a_i32 = T.reinterpret(a.vload([0], "uint8x4"), dtype="int32")
            c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                c.vload([0], dtype="int32x16"),
                T.reinterpret(T.broadcast(a_i32, 16), dtype="int8x64"),
                b.vload([0, 0], dtype="int8x64"),
                dtype="int32x16")

    TensorIntrin.register(VNNI_INTRINSIC, description, implementation, override=True)
    _registered = True


def register_tile(out_channels: int, width: int) -> tuple[int, int]:
    """(channel vectors, pixels) of the register tile, each count a divisor (a guarded tail cannot
    be tensorized), within the accumulator budget: the most multiply-adds per load first (a step
    of the reduction loads one 16 x 4 weight block per vector and broadcasts one pixel's 4 inputs
    per pixel, for vectors x pixels `vpdpbusd`), then the most accumulators, then the most pixels
    (each channel's results stored as longer runs).

    Measured: squeezenet's first convolution (3 -> 64 channels, 3x3, 111 wide) ran 1.07 ms with
    the 1 x 16 tile the most accumulators alone picked, 0.43 ms with 4 x 6 on a width of 114."""
    blocks = out_channels // LANES
    best, best_key = (1, 1), (0.0, 0, 0)
    for vectors in range(1, min(blocks, MAX_ACCUMULATORS) + 1):
        if blocks % vectors:
            continue
        pixels = base._largest_divisor_at_most(width, max(MAX_ACCUMULATORS // vectors, 1))
        key = (vectors * pixels / (vectors + pixels), vectors * pixels, pixels)
        if key > best_key:
            best, best_key = (vectors, pixels), key
    return best


def multiply_adds_per_load(out_channels: int, width: int) -> float:
    """The register tile's multiply-adds per load (`register_tile`) on an output `width` wide."""
    vectors, pixels = register_tile(out_channels, width)
    return vectors * pixels / (vectors + pixels)


def integer_dot(sch, cpu: base.CpuInfo) -> bool:
    """A uint8 x int8 -> int32 NCHW convolution or matmul tensorized with VNNI; False when the pattern
    does not hold."""
    if not cpu.integer_dot:
        return False
    found = base._mac_anchor(sch)
    if found is None:
        return False
    anchor, producers, consumers = found
    block = sch.get(anchor)
    if base._iter_kinds(block) not in ("SSSSRRR", "SR", "SSR", "SSSR") or block.writes[0].source.dtype != "int32":
        return False
    output = block.writes[0].source
    reads = list(block.reads)
    operands = [i for i, r in enumerate(reads) if not r.source.same_as(output)]
    dtypes = {str(reads[i].source.dtype): i for i in operands}
    if len(operands) != 2 or set(dtypes) != {"uint8", "int8"}:
        return False
    data_index, weight_index = dtypes["uint8"], dtypes["int8"]
    if not base._is_constant_operand(sch, reads[weight_index]):
        return False
    iters = [iv.var for iv in block.iter_vars]
    weight_vars = [base._index_position(reads[weight_index], var) for var in iters]
    kinds = base._iter_kinds(block)
    if kinds.count("R") == 1 and kinds.endswith("R") and weight_vars[-2:] == [1, 0]:
        # the legalized matmul: out[..., m, n] += data[..., m, k] * weight[k, n]
        return _integer_matmul(sch, cpu, anchor, producers, consumers, data_index, weight_index)
    # the legalized conv2d_nhwc (channels-last, layout.py): out[n, y, x, o] +=
    # data[n, y*s + ky, x*s + kx, c] * weight[o, ky, kx, c]
    channels_last = weight_vars == [None, None, None, 0, 1, 2, 3]
    # the legalized conv2d_nchw: out[n, o, y, x] += data[n, c, y*s + ky, x*s + kx] * weight[o, c, ky, kx]
    if not channels_last and weight_vars != [None, 0, None, None, 1, 2, 3]:
        return False
    extents = [base._int_extent(sch, loop) for loop in sch.get_loops(anchor)]
    if None in extents:
        return False
    if channels_last:
        _, height, width, out_channels, _, _, in_channels = extents
    else:
        _, out_channels, height, width, in_channels, _, _ = extents
    if out_channels % LANES or in_channels % GROUP:
        return False
    _register_intrinsic()
    from tvm.tirx import IndexMap

    kept, consumers = base.inline_stages(sch, anchor, producers, consumers)
    if channels_last:
        return _integer_conv_nhwc(sch, cpu, anchor, kept, consumers, weight_index, out_channels, height, width)

    # input channels in groups of 4 innermost: the padding stage writes them so, or a copy does
    data = sch.get(anchor).reads[data_index].source
    relayout = next((b for b in kept if sch.get(b).writes[0].source.same_as(data)), None)
    if relayout is None:
        relayout = sch.cache_read(anchor, data_index, "global")
        kept.append(relayout)
    to_groups = IndexMap.from_func(lambda n, c, y, x: (n, c // 4, y, x, c % 4), ndim=4)
    sch.transform_layout(relayout, ("write", 0), to_groups)
    # iterate in the written order: each pixel's 4 channels stored together, not byte by byte
    # 4 bytes apart
    sch.transform_block_layout(relayout, to_groups)
    _pack_weights(sch, anchor, weight_index, lambda o, c, y, x: (o // 16, c // 4, y, x, o % 16, c % 4))
    writeback = sch.cache_write(anchor, 0, "local")
    sch.transform_layout(anchor, ("write", 0), IndexMap.from_func(lambda n, o, y, x: (n, y, x, o), ndim=4))
    unfused = base.inline_epilogue(sch, consumers, output.shape)

    n, o, y, x, c, ky, kx = sch.get_loops(anchor)
    c_outer, c_group = sch.split(c, factors=[None, GROUP])
    if width == 1:
        # a 1-D convolution written as 2-D ([N, C, L, 1], magika's): the pixels of a tile run
        # along the height
        vectors, pixels = register_tile(out_channels, height)
        o_outer, o_vectors, o_lanes = sch.split(o, factors=[None, vectors, LANES])
        y_outer, y_pixels = sch.split(y, factors=[None, pixels])
        sch.reorder(n, o_outer, y_outer, x, c_outer, ky, kx, o_vectors, y_pixels, o_lanes, c_group)
        fused = sch.fuse(n, o_outer, y_outer, x)
        pixel_loop = y_pixels
    else:
        vectors, pixels = register_tile(out_channels, width)
        o_outer, o_vectors, o_lanes = sch.split(o, factors=[None, vectors, LANES])
        x_outer, x_pixels = sch.split(x, factors=[None, pixels])
        sch.reorder(n, o_outer, y, x_outer, c_outer, ky, kx, o_vectors, x_pixels, o_lanes, c_group)
        fused = sch.fuse(n, o_outer, y, x_outer)
        pixel_loop = x_pixels
    tiled_epilogue = _tensorize_tile(sch, cpu, anchor, writeback, unfused, fused, c_outer,
                                     (o_vectors, pixel_loop), o_lanes)
    # the store: accumulators [pixel][channel] -> NCHW output, channels and pixels unrolled
    # (measured: 0.24 ms against 0.39 ms for a 64 -> 128 3x3 convolution with only the pixels
    # unrolled)
    store_loops = sch.get_loops(writeback)
    sch.unroll(store_loops[-3])
    sch.unroll(store_loops[-2] if width == 1 else store_loops[-1])
    for block_rv in kept + [b for b in unfused if not any(sch.get(b).same_as(sch.get(t)) for t in tiled_epilogue)]:
        if sch.get(block_rv).same_as(sch.get(relayout)):
            *outer, x_loop, group = sch.get_loops(relayout)
            fused_outer = sch.fuse(*outer)
            if cpu.cores > 1:
                sch.parallel(fused_outer)
            sch.unroll(group)
            continue
        base.schedule_injective(sch, block_rv, cpu)
    return True


def _elements(extents) -> int:
    total = 1
    for extent in extents:
        total *= extent
    return total


def _pack_weights(sch, anchor, weight_index: int, relayout) -> None:
    """The int8 weights re-laid out by `relayout` (index -> packed index) in a block Relax splits out
    and folds on the constant at compile time."""
    from tvm.tirx import IndexMap

    packer = sch.cache_read(anchor, weight_index, "global")
    sch.annotate(packer, base.RELAYOUT_ANNOTATION, 1)
    ndim = len(sch.get(anchor).reads[weight_index].region)
    sch.transform_layout(anchor, ("read", weight_index), IndexMap.from_func(relayout, ndim=ndim))


def _tensorize_tile(sch, cpu: base.CpuInfo, anchor, writeback, unfused, fused, first_reduction, unrolled,
                    lanes) -> list:
    """The common end of both convolution layouts: the writeback (and a slicing epilogue: padded
    channels or columns cut off) per tile, the tiles over the cores, the accumulators initialised
    before `first_reduction`, the tile's loops `unrolled`, `lanes` x 4 as one `vpdpbusd`. Returns
    the epilogue blocks computed per tile."""
    sch.reverse_compute_at(writeback, fused, preserve_unit_loops=True)
    tiled_epilogue = base.compute_epilogue_per_tile(sch, unfused, fused)
    if cpu.cores > 1:
        sch.parallel(fused)
    init = sch.decompose_reduction(anchor, first_reduction)
    for loop in unrolled:
        sch.unroll(loop)
    sch.tensorize(lanes, VNNI_INTRINSIC)
    sch.vectorize(sch.get_loops(init)[-1])
    return tiled_epilogue


def _integer_conv_nhwc(sch, cpu: base.CpuInfo, anchor, kept, consumers, weight_index: int, out_channels: int,
                       height: int, width: int) -> bool:
    """The channels-last convolution (its producers already inlined, `kept` the stages that were
    not): each pixel's input channels are already contiguous, so 4 of them are the intrinsic's
    operand as they are (no re-layout of the input), and the accumulators [pixel][16 channels]
    are stored as contiguous vectors."""
    output = sch.get(anchor).writes[0].source
    _pack_weights(sch, anchor, weight_index, lambda o, y, x, c: (o // 16, y, x, c // 4, o % 16, c % 4))
    writeback = sch.cache_write(anchor, 0, "local")
    unfused = base.inline_epilogue(sch, consumers, output.shape)

    n, y, x, o, ky, kx, c = sch.get_loops(anchor)
    c_outer, c_group = sch.split(c, factors=[None, GROUP])
    rows, row_extent = (y, height) if width == 1 else (x, width)
    vectors, pixels = register_tile(out_channels, row_extent)
    o_outer, o_vectors, o_lanes = sch.split(o, factors=[None, vectors, LANES])
    row_outer, row_pixels = sch.split(rows, factors=[None, pixels])
    other = x if width == 1 else y
    sch.reorder(n, o_outer, other, row_outer, ky, kx, c_outer, row_pixels, o_vectors, o_lanes, c_group)
    fused = sch.fuse(n, o_outer, other, row_outer)
    tiled_epilogue = _tensorize_tile(sch, cpu, anchor, writeback, unfused, fused, ky, (o_vectors, row_pixels),
                                     o_lanes)
    store_loops = sch.get_loops(writeback)
    sch.unroll(store_loops[-2])
    sch.vectorize(store_loops[-1])
    for block_rv in kept + [b for b in unfused if not any(sch.get(b).same_as(sch.get(t)) for t in tiled_epilogue)]:
        base.schedule_injective(sch, block_rv, cpu)
    return True


def _integer_matmul(sch, cpu: base.CpuInfo, anchor, producers, consumers, data_index: int, weight_index: int) -> bool:
    """uint8 [..., M, K] x int8 [K, N] -> int32: weights packed [N/16, K/4, 16, 4], the data read
    as is (4 consecutive K values are contiguous), a tile of rows x 16-column vectors."""
    loops = sch.get_loops(anchor)
    extents = [base._int_extent(sch, loop) for loop in loops]
    if None in extents:
        return False
    *row_extents, columns, depth = extents
    if columns % LANES or depth % GROUP or base._loops_bind_iters(sch, anchor) is None:
        return False
    if any(not base._has_if_then_else(sch.get(b)) for b in producers):
        return False  # the data must be a buffer the intrinsic loads from, not an inlined expression
    _register_intrinsic()
    _, consumers = base.inline_stages(sch, anchor, [], consumers)
    output = sch.get(anchor).writes[0].source

    _pack_weights(sch, anchor, weight_index, lambda k, n: (n // 16, k // 4, n % 16, k % 4))
    writeback = sch.cache_write(anchor, 0, "local")
    unfused = base.inline_epilogue(sch, consumers, output.shape)

    *row_loops, n, k = sch.get_loops(anchor)
    rows = row_extents[-1] if row_extents else 1
    if row_loops and rows > 1:
        # rows x vectors as a convolution's pixels x vectors: the most multiply-adds per load
        vectors, tile_rows = register_tile(columns, rows)
    else:  # a matrix-vector product: all accumulators along the columns
        vectors, tile_rows = max(v for v in range(1, MAX_ACCUMULATORS + 1) if (columns // LANES) % v == 0), 1
    n_outer, n_vectors, n_lanes = sch.split(n, factors=[None, vectors, LANES])
    k_outer, k_group = sch.split(k, factors=[None, GROUP])
    outer = list(row_loops[:-1])
    inner = []
    if row_loops:
        m_outer, m_inner = sch.split(row_loops[-1], factors=[None, tile_rows])
        outer.append(m_outer)
        inner.append(m_inner)
    if columns > _elements(row_extents):  # weights [depth, columns] against data [rows, depth]
        # more weights than data (PP-OCRv5 rec's classifier: 120 x 18400 against 40 x 120): the
        # row tiles of one block of columns run one after another, so the weights stream through
        # once rather than once per row tile (1 row x 23 vectors read them 40 times: 3.9 ms)
        sch.reorder(n_outer, *outer, k_outer, *inner, n_vectors, n_lanes, k_group)
        fused = sch.fuse(n_outer, *outer)
    else:
        sch.reorder(*outer, n_outer, k_outer, *inner, n_vectors, n_lanes, k_group)
        fused = sch.fuse(*outer, n_outer) if outer else n_outer
    sch.reverse_compute_at(writeback, fused, preserve_unit_loops=True)
    base.compute_epilogue_per_tile(sch, unfused, fused)
    if cpu.cores > 1 and (base._int_extent(sch, fused) or 1) > 1:
        sch.parallel(fused)
    init = sch.decompose_reduction(anchor, k_outer)
    for loop in inner:
        sch.unroll(loop)
    sch.unroll(n_vectors)
    sch.tensorize(n_lanes, VNNI_INTRINSIC)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(writeback)[-1])
    return True

