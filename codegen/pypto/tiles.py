"""Vector tile shapes for pypto 0.2.0: the default tile of a shape under a budget (`vec_tile`) and the per-op
rule (`chain_budget`) that pypto-legalize states on an op as `vec_tile` (issue 20 item 2), which the emitter prints
and the tuner's static filter checks (`live_bytes`).

Every vector tile is copied into the vector unit's buffer (UB) and out as one task's work; the cost model charges
a fixed ~0.78 µs per copied tile (docs/benchmarks.md, the indexer), so an op's tile is made as large as its live
tiles (its result and every tensor operand, together in UB) allow, up to a cap: one program-wide budget large
enough for the indexer's scoring overflows UB at other ops (OoOSchedule)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .options import PyptoOptions

if TYPE_CHECKING:  # the CLI's error path imports this module (via the tuner) and must stay free of xDSL
    from xdsl.ir import Operation

BYTES = {"bf16": 2, "f16": 2, "f32": 4, "i32": 4, "i8": 1, "i1": 1}
UB_BYTES = 192 * 1024  # the vector unit's buffer: an op's tiles (inputs and output) live there together
DEFAULT_VEC_TILE_ELEMS = PyptoOptions.vec_tile_elems  # the program's budget
L0AB_BYTES, L0C_BYTES = 64 * 1024, 128 * 1024
CUBE_CORES = 24  # pypto 0.2.0's A2/A3 cost model (tile-matmul{tasks=24})
L1_OPERAND_BYTES = (128 * 512 + 512 * 256) * 2  # the L1 tiles of A and B at most (bf16 M 128, K 512, N 256)


def _up16(x: int) -> int:
    return max(16, -(-x // 16) * 16)


def cube_tiles(m: int, k: int, n: int, in_bytes: int = 2, n_max: int | None = None,
               m_tile: int | None = None) -> tuple[int, int, int, int]:
    """(M tile, K tile in L0, K tile in L1, N tile) of an [m, k] · [k, n] matmul, which the pypto emitter prints
    (`set_cube_tile_shapes([m0, m0], [k0, k1], [n0, n0])`). Tiles in multiples of 16 (the fractal size): M
    `m_tile` where stated (pypto-legalize), else 128 rows, or 256 where that takes no more N tiles and K steps (N
    and K whole in L0 at 256 rows: the indexer's Q·Kᵀ, [2048, 128] · [128, 128]ᵀ per batch row, in half the tasks
    and A copies: 208.3 -> 177.9 µs); K per L0 step a power of two up to 256 (L1 holds up to 512 of K, a multiple
    of the L0 step); N as wide as L0B (bf16 K x N) and L0C (f32 M x N) allow. Fewest N tiles first, then fewest K
    steps: every N tile is a cube task, and a task costs the scheduler more than its compute at decode sizes (SWA
    core: Q·Kᵀ over 130 keys as one 144-wide tile, 142.5 vs 147.7 µs). `in_bytes` 1 (int8 operands): L0A/L0B hold
    twice the elements, so N tiles twice as wide, and L1 twice the K (as mla_prolog_quant_v4's wq_b tiles); 4
    (f32): half. `n_max`: the N tile the IR states (tile-matmul{tasks}), a cap."""
    best = None
    if m_tile is not None:
        m_options = (m_tile,)
    else:
        m_options = (128, 256) if _up16(m) >= 256 else (min(128, _up16(m)),)
    for m0 in m_options:
        for k0 in (256, 128, 64, 32, 16):
            k0 = min(k0, _up16(k))
            if m0 * k0 * in_bytes > L0AB_BYTES:
                continue
            n0 = min(512 // in_bytes, _up16(n), n_max or _up16(n))
            while n0 > 16 and (k0 * n0 * in_bytes > L0AB_BYTES or m0 * n0 * 4 > L0C_BYTES):
                n0 -= 16
            cost = (-(-n // n0), -(-k // k0), -(-m // m0))
            if best is None or cost < best[0]:
                best = (cost, m0, k0, n0)
    _, m0, k0, n0 = best
    k1 = min(512 // k0, -(-min(_up16(k), 512) // k0)) * k0
    if in_bytes == 1 and (m0 + n0) * 2 * k1 <= L1_OPERAND_BYTES:  # int8: twice the K in bf16's L1 bytes
        k1 = min(2 * k1, -(-_up16(k) // k0) * k0)
    return m0, k0, k1, n0


def cube_m_tile(m: int, k: int, n: int, in_bytes: int = 2, n_max: int | None = None) -> int:
    """The cube M tile of an [m, k] · [k, n] matmul (`cube_tiles`): what pypto-legalize states as `m_tile`."""
    return cube_tiles(m, k, n, in_bytes, n_max)[0]


def cube_tile(m: int, k: int, n: int, in_bytes: int = 2, n_max: int | None = None, m_tile: int | None = None) -> str:
    """The `pypto.set_cube_tile_shapes` statement of `cube_tiles`."""
    m0, k0, k1, n0 = cube_tiles(m, k, n, in_bytes, n_max, m_tile)
    return f"pypto.set_cube_tile_shapes([{m0}, {m0}], [{k0}, {k1}], [{n0}, {n0}])"


def lanes(dtype: str) -> int:
    """The vector tile's trailing-dim alignment: the 32-byte block, and at least 16 lanes (pypto 0.2.0 copies
    tensors a loop captures with the tile in effect at the loop, whatever their dtype, and bf16 needs 16)."""
    return max(32 // BYTES[dtype], 16)


def vec_tile(shape, dtype: str = "f32", budget: int = DEFAULT_VEC_TILE_ELEMS) -> list[int]:
    """A tile of the op's rank: the trailing dim padded to the 32-byte block, then the inner leading dims as large
    as the budget allows (fewer, larger tiles: every tile is a task of the scheduler-bound cost model).
    The trailing dim is a multiple of 16 elements even for 4-byte types: pypto 0.2.0 copies tensors that a loop
    captures with the tile in effect at the loop, whatever their dtype, and a bf16 tensor needs 16 lanes."""
    tile = [max(1, int(d)) for d in shape] or [1]
    align = lanes(dtype)
    tile[-1] = -(-tile[-1] // align) * align
    while tile[-1] > budget and tile[-1] > align:
        tile[-1] = -(-(tile[-1] // 2) // align) * align
    for i in range(len(tile) - 2, -1, -1):
        room = max(1, budget // math.prod(tile[i + 1:]))
        if tile[i] > room:  # a power of two: other splits crash pypto 0.2.0's simulator (ItemPool double free)
            tile[i] = 1 << (room.bit_length() - 1)
    return tile


def live_bytes(tile, tensors) -> int:
    """UB bytes an op holds with `tile` in effect: for each tensor (shape, dtype) of the op (its results and
    tensor operands) the tile clipped to its shape, the trailing dim padded to the 32-byte block (a row
    operand [R, 1] or a keepdim reduction's [.., 1] takes a block per row); a tensor of another rank takes its
    own default tile."""
    need = 0
    for shape, dtype in tensors:
        shape = [max(1, int(d)) for d in shape] or [1]
        if len(shape) == len(tile):
            own = [min(t, d) for t, d in zip(tile, shape)]
            block = 32 // BYTES[dtype]
            own[-1] = -(-own[-1] // block) * block
        else:
            own = vec_tile(shape, dtype, math.prod(tile))
        need += math.prod(own) * BYTES[dtype]
    return need


def chain_budget(members, budget: int, cap: int) -> int:
    """The per-op rule for ops that share one tile (a chain: pypto 0.2.0 starts a new task where the tiling of a
    chain changes): the largest budget from `budget` doubling up to `cap` elements at which every member's live
    tiles (`live_bytes` of its tensors under its tile of the budget) fit UB and some member's tile grows;
    `budget` itself when none does. `members`: (tiled (shape, dtype) -- the op's result, a reduction's input --,
    tensors) per op."""
    best, b = budget, budget * 2
    while b <= cap:
        tiles = [(vec_tile(*tiled, b), tensors) for tiled, tensors in members]
        if all(t == vec_tile(*tiled, b // 2) for (t, _), (tiled, _) in zip(tiles, members)):
            break  # every member's tensor whole already
        if any(live_bytes(t, tensors) > UB_BYTES for t, tensors in tiles):
            break
        best, b = b, b * 2
    return best


def loop_vec_budget(loop: Operation, outer: int) -> int:
    """The vector tile budget inside `loop`: the one the pass that scheduled it chose (`vec_tile_elems`), else
    the budget in force around it."""
    attr = loop.attributes.get("vec_tile_elems")
    return attr.value.data if attr is not None else outer


def crosses_cube_tiles(tile, shape, m0: int, n0: int) -> bool:
    """Whether a vector tile of a matmul's [M, N] result (`shape`, cube tiles M `m0`, N `n0`) takes part of a cube
    tile along one axis while crossing a cube tile boundary along the other (e.g. half a tile's rows across its
    column boundary). pypto 0.2.0's per-pass verify fails on such a read, FB200B at ExpandFunction, SplitK and
    L1CopyInReuseMerge (GetValidDataView: an operand tile with an empty valid shape, no op named), as it does where
    a vector op reads another's result so (docs/limitations.md; reproducer tests/test_pypto_legalize.py)."""
    dims = shape[-2:]
    made = [min(m0, dims[0]), min(n0, dims[1])]
    read = [min(tile[-2], dims[0]), min(tile[-1], dims[1])]
    part = [not (r % m == 0 or r == d) for m, r, d in zip(made, read, dims)]
    cross = [m < d and m % r != 0 for m, r, d in zip(made, read, dims)]
    return (part[0] and cross[1]) or (part[1] and cross[0])


def cube_reader_tile(tile, shape, m0: int, n0: int, dtype: str, budget: int) -> list[int]:
    """A vector tile inside one cube tile ([M tile, N tile] `m0` x `n0`) of a matmul's result for ops that read it
    (`crosses_cube_tiles`): the widest trailing dim dividing `n0` (in the dtype's lanes) up to `tile`'s, then
    the most rows dividing `m0` within `budget` elements (pypto-legalize states it only where the ops past them
    read their results through a reshape). A union of whole cube tiles instead was slower where it fits (W8A8 t = 16, [16, 1024] over [16, 512]:
    149.1 vs 145.3 µs at flash)."""
    align = lanes(dtype)
    cols = max([c for c in range(align, min(tile[-1], n0) + 1, align) if n0 % c == 0], default=align)
    m = min(m0, shape[-2])
    rows = max([r for r in range(1, min(max(budget // cols, 1), m) + 1) if m % r == 0 and r & (r - 1) == 0], default=1)
    return [*tile[:-2], rows, cols]


def reshaped_tile(tile, shape, new_shape) -> list[int] | None:
    """`tile` of a rank-2 `shape` [M, N] as a tile of `new_shape` [.., N] (its rows split into leading dims), the
    same elements tile by tile; None where no tile of `new_shape` covers them so (a tile's rows neither divide nor
    fill the trailing dims they span, or N changes)."""
    if len(shape) != 2 or len(tile) != 2 or not new_shape or new_shape[-1] != shape[-1] or \
            math.prod(new_shape[:-1]) != shape[0]:
        return None
    rows, lead = min(tile[0], shape[0]), []
    for d in reversed(new_shape[:-1]):
        if rows >= d:
            if rows % d:
                return None
            lead.append(d)
            rows //= d
        else:
            if d % rows:
                return None
            lead.append(rows)
            rows = 1
    return [*reversed(lead), tile[1]]
