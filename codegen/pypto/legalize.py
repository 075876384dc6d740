"""pypto-legalize: state on the tile IR what the pypto 0.2.0 program needs, so that the emitter prints it.

The last pass of the pypto pipeline. It does not change values (tolerance 0: `--verify-each` interprets the
module before and after it). It rewrites the ops pypto 0.2.0 cannot run as they are into ops it can (the
emitter prints each tile op plainly):

* `tile.cast` to i8 -> casts to i32 (by its mode), f16 (round), i8 (trunc, saturated): pypto 0.2.0 casts a
  float to int8 only from f16 (rewrite_i8_casts).
* `tile.floordiv` / `tile.rem` (integers, read as a tensor) -> casts to f32, div, `tile.floor` (rem: a - b *
  floor), a cast back: pypto 0.2.0 has no int32 division and its cost model no REM (rewrite_int_divisions); by a
  power-of-two fill inside a loop stating `reciprocal_divisions`, a multiplication by its exact reciprocal
  (`tile.muls`: no divisor tensor to copy in).
* `tile.concat` of i1 -> selects of 1.0/0.0 (f32, `splat`), their concat, a compare with 1.0: pypto 0.2.0
  cannot concat bool tensors (rewrite_bool_concats).
* `tile.broadcast` over several axes -> one broadcast per axis; a `tile.iota` whose ramp expands over several
  axes -> an iota over the first and such broadcasts: pypto 0.2.0's expand_clone expands one axis
  (rewrite_broadcast_chains).
* `tile.topk` -> a select of its scores (f32) where valid, else the lowest f32; `tile.topk_pairs` (pypto.topk:
  values and ids); a select in f32 of the ids (cast) where the value is above the sentinel, else -1.0; a cast
  back to i32: pypto.topk has no validity operand and pypto 0.2.0 selects between int32 tensors poorly
  (rewrite_topks).
* `tile.full` of i1 -> a fill of 1.0/0.0 in f32 and a compare with 1.0 (`splat`): pypto 0.2.0's codegen cannot
  fill a bool tensor (rewrite_bool_splats).
* a `packed` row concat (below) -> assembles into a local buffer (rewrite_packed_concats).
* a concat of casts that a loop assembles into a tensor another loop reads -> a cast of the concat of their
  inputs: the loop writes the tensor in whole-row tiles, and pypto 0.2.0 links each reader in another root
  function to each cell of it, a cell the smallest tile the loop writes it in (rewrite_cast_concats; decode_swa's
  q: 2048 links -> 256).
* a zero-padded `tile.view` read by a concat that is not packed -> read through `tile.fill_padding` (all of the
  tile valid): pypto 0.2.0 concatenates the valid parts only (rewrite_padded_concat_reads).
* a `tile.reshape` of an in-place reshape of a kernel buffer -> one reshape of the buffer (in place; not a chain
  back to the buffer's shape, whose one-tile copy hands the rows to a loop's iterations: rewrite_reshape_chains).
* a scratch buffer a loop writes and later loops read only through an in-place reshape merging its leading axes
  -> the buffer declared in the reshape's shape, the loop assembling its piece reshaped, cut into the readers'
  rows: pypto 0.2.0 made the reshape a sync task every reader waited on (rewrite_reshaped_scratch; decode_swa's q
  and attention output).
* the init of a loop that writes it in parts -> a scratch buffer (a copy of the init, or the buffer alone),
  a `tile.scatter_rows` not `in_place` -> a copy of its table scattered into in place (rewrite_carried_tensors;
  see below).

Then it records, as attributes, the facts that the pypto 0.2.0 program depends on and
that only an analysis of uses and producers can establish. The emitter (codegen/pypto/emit.py) reads them and
never walks use chains itself (tests/test_pypto_legalize.py lists the emitter's IR queries). The op verifiers
check each attribute's form (attnc.ir.common.pypto_facts_verify).

* `func.func` `in_out = [names]`: results that are their parameter updated in place (a chain of `in_place`
  scatters from the argument of the same name, set by update-in-place): one in/out kernel parameter each.
* `tile.full` `buffer = "output"`, `output = i`: the init of a `tile.parallel` whose result is returned as
  result i (as it is, or through one reshape: token rows returned as [batch, seq, ...]) and whose iterations write
  every element: the output parameter is carried instead of a filled tensor (no copy; pypto 0.2.0 also drops
  `out[:] = carried`). Through a reshape the emitter declares the parameter with the loop's shape (the same bytes;
  `RESULT_SHAPES` gives the harness the stage's): pypto 0.2.0 does not write an output back through an in-place
  reshape of it (SIM outputs all zero at tiny), and a copy out of a scratch buffer cost qkv_proj_rope 88 tasks.
  `buffer = "scratch"`: the init of a `tile.parallel` that writes every element of it: its value is dead; a
  scratch parameter is declared, never filled.
* loops (`tile.parallel`, `scf.for`) carry each tensor in place. pypto 0.2.0's runtime needs an assembled tensor
  to be a kernel parameter: a loop assembling into an op's result is never given its buffer (F74007 "Missing
  RUNTIME_SlotMarkNeedAlloc for assemble slot", then F7A008 and a double free; at larger sizes the simulator
  hangs), and a `pypto.tensor` declaration crashes the verify runs of some programs (F76005 "Invalid slot
  index"). So a loop that writes in parts (pypto.assemble) an init that is not a kernel parameter or a declared
  buffer, or that has other uses, is given a new `buffer = "scratch"` tile.full (a scratch parameter) as its
  init: with a copy of the old init assembled into it, or alone when the old init is a splat the loop overwrites
  everywhere (rewrite_carried_tensors; a non-`in_place` scatter's table the same way).
* `tile.full` `splat`: a float splat inside a loop read only as a value operand of selects: pypto.where takes
  the number (a filled tensor is vector tasks in every iteration: the CSA core's per-token logit fill cost 256
  tasks, 232.2 -> 210.8 us). Outside loops a fill is made once (folding those too moved decode_hca 4050.9 ->
  4184.5 us); floats only (pypto 0.2.0's verifier cannot execute an int32 WHERE_TS). The splats a rewrite
  makes (rewrite_bool_concats) are numbers wherever they are, while they are read as a select's value or a
  compare's right-hand side.
* `tile.concat` `packed`: a row concat (axis 0, rank 2, not i1) with a zero-padded piece; `padded = [bools]`
  marks its zero-padded pieces. Then rewritten (rewrite_packed_concats) into assembles of the pieces at their row
  offsets into a `tile.full` with `buffer = "local"` (a `pypto.tensor`; no copy task per piece, which a
  pypto.concat costs: CSA core 308.5 -> 263.7 us). A zero-padded piece's assemble is followed by an `scf.if valid < rows`
  around an assemble of a zero `tile.full` at row + valid with valid shape [rows - valid, ...]: zeros at its
  padding rows (pypto 0.2.0 assembles a tile's valid rows only; the branch skips a piece without padding rows). The buffer lists its pieces (`pieces = [[rows, row offset, zero-padded], ...]`) for the program's
  AssembleChecker excuse. A piece that is all of a kernel parameter's
  buffer (an input, an output or a scratch buffer) is assembled as a clone (`clone`): pypto 0.2.0 fails to
  compile an assemble of all of a parameter's buffer inside a loop into a tensor a matmul reads ("The L0C-to-L1
  copy op can have only one input and one output tensor", SrcDstBufferMerge; verify runs SIGSEGV).
* `tile.view` `clone`: a rank >= 3 view not read only by reshapes: pypto 0.2.0
  mis-sizes its raw tensor when a batched matmul reads it ("Shape size mismatch" at codegen).
* `tile.reshape` `clone`: the lhs of a batched matmul (both operands rank >= 3) with one row per batch and more
  than one batch: pypto 0.2.0's per-pass verify, from InferDynShape on, reads batch 0's row of a reshaped lhs for
  every batch (FB4001, values wholly different; SIM right): a clone gives the operand its own buffer.
  `inplace`: a reshape of a kernel input's, an output's or a scratch buffer (the attention output assembled per batch row,
  read as token rows by the o-projection's de-rotation) (through views of all of it, assembles, in-place scatters,
  loops: buffer_of) is a view of it, no copy: a copy is one task per tile, and pypto 0.2.0 links each
  data-dependent gather task from it to each copy task (2048 x 2048 links for the indexer's idx_cmp at B=64, more
  than the runtime's stitch pool holds: F74001 "Slab alloc null, type=9").
* `tile.gather_rows` / `tile.view` `prefix`: a row-list gather read only through one zero-padded view of its
  leading rows that packed concats (or their pieces' assembles) consume: only the valid ids are gathered, where the view is (pypto 0.2.0's
  per-pass verifier cannot execute a gather whose index has a runtime valid shape: FB200F).
* `scalar_ids` on top-level tile ops used only as scatter_rows ids (or by such ops): the ids are evaluated as
  scalars where used (pypto reads scalars only from kernel parameters), so these tensors are never made.
* `tile.scatter_rows` `scalar_id = [steps]`: its row m's id as pypto scalar expressions of the ops computing the
  ids ({m} the row, {sN} step N's value; the last step is the id): pypto 0.2.0 reads a scalar only from a kernel
  parameter (GetTensorData), not from a computed tensor.
  `rows_per_trip = n`: the rows its loop writes per iteration (each its own id, branch and assemble), the option
  `scatter-rows` (default 2) where it divides the rows, else their greatest common divisor: pypto 0.2.0 stitches
  at most 128 loop iterations into one group and starts a group after the last one ends, so 3 scatters of 128
  rows (a compressor's state rings and cache) ran as 3 more groups after everything else (flash index_compressor:
  1 row 135.0 us, 2 rows 127.6, 4 140.5).
* loops (`tile.parallel`, `scf.for`) `one_trip = i`: constant bounds with one iteration (at most), its index the
  constant i: a view of a whole tensor at it is the tensor (no copy: the o-projection's single 128-row chunk read
  the attention output through a clone of all of it).
* loops `body_l1_reuse = n`: the `l1_reuse` (tile-matmul) every matmul of the loop's body states: pypto 0.2.0
  reads cube_l1_reuse_setting per loop body, not per op (set around the matmul alone it changes nothing), so the
  body sets it and the loop's end restores the program's; absent where the body's matmuls differ or state none.
  `body_nbuffer = n` likewise from the matmuls' `nbuffer` (tile-matmul: 1 where each N tile is its own task), the
  body's cube_nbuffer_setting.
* `func.func` `copy_out = [bools]`: per result, stored into its output parameter as `out[:] = pypto.clone(t)`
  after the body (pypto 0.2.0 may leave the output untouched for `out[:] = t`), unless it is the output buffer its
  loop wrote in place or an in/out parameter; `copy_out_tile_elems = [ints]`: the vector tile budget of the loop
  that made it (`vec_tile_elems`; 0: the kernel's), under which the copy runs.
* `tile.reshape` `padded_out = F`, `tile.transpose` `padded_in = F`: the reshape's output, the transpose's input
  has a trailing dim narrower than the vector tile's alignment (the 32-byte block, at least 16 lanes: `lanes`;
  the RoPE pairs' [.., 32, 2]): pypto 0.2.0 holds that side's tile in UB with the dim padded to the alignment,
  F times its elements (2 f32 -> 16 lanes: F = 8), so the emitter divides the op's tile budget by F (else
  OoOSchedule fails, "exceeds MEM_UB size").
  `tile.reshape` `padded_in = F`: the reshape folds away its input's trailing dim narrower than the 32-byte block
  (a keepdim reduction's [T, d, 1] -> [T, d]): pypto 0.2.0 copies its readers' tiles in through the input's
  layout with that dim padded to the block, F times the elements (1 f32 -> 8: a [16, 512] f32 reader tile takes
  16 x 512 x 8 x 4 = 256 KiB, OoOSchedule fails "exceeds MEM_UB size"), so when the padded reader tile would not
  fit UB the emitter clones the result dense under a tile budget divided by F. Stated for F > 1 only
  (padding_factors; the tile budget is the emitter's, so the fit is decided there).

* `row_group_types = [types]`, `row_group_cap = n` on the ops of a `row_group` (fuse-rmsnorm's and
  rope-selector-matmul's per-row chains): the result types of rank >= 2 of the group's ops in the same block and
  their smallest `tile_rows`. The emitter tiles every vector result of the group with one row count, the fewest
  rows any of these types' tiles takes under the loop's tile budget (the budget is the emitter's, as for the
  padding factors): pypto 0.2.0 starts a new task where the row tiling of a chain changes (flash compressor m = 4:
  its RMSNorm and RoPE vector work in 4 tasks per chunk, not 7; 177.0 -> 158.4 us).

* `vec_tile = [dims]` on the vector ops of a chain (op_vec_tiles; codegen/pypto/tiles.py): the tile the emitter
  prints for the op, the largest up to the option `vec-tile-max` (elements) at which every member's live tiles
  fit UB, where that is larger than the budget's in force: every copied tile costs the cost model a fixed ~0.78
  µs, and one program-wide budget large enough for the indexer's scoring fails OoOSchedule at other ops.
  On the elementwise ops reading a matmul's result (and theirs of its shape, and a `matmul_acc`'s add) whose
  tiles would take part of a cube tile along one axis across a cube tile boundary along the other: one tile
  inside a cube tile (`cube_reader_tiles`; pypto 0.2.0's per-pass verify fails FB200B on such a read), and on
  an assemble of their result through a reshape the same tiles (tiles.reshaped_tile; on `tile.assemble`).

* `m_tile = n` on `tile.matmul` / `tile.matmul_acc`: the cube M tile (matmul_m_tile, codegen/pypto/tiles.py
  `cube_m_tile`: 128 rows, or 256 where that takes no more N tiles and K steps). A batched lhs read by a rank-2
  rhs is one matmul over its rows folded: its M is all of them where they fill the cube cores in 256-row tiles
  and K is at least 128 (the indexer's [8192, 128] pair swap and Hadamard: 181.5 -> 174.9 µs), else the last
  batch dim's rows, as measured (qkv_proj_rope's [.., 64] RoPE pair swap with all its rows: t = 16 151.3 ->
  151.5 µs, W8A8 225.8 -> 227.5). The emitter prints the cube tile with it.

* `sort_rows = 1` on `tile.topk_pairs`: the rows of its vector tile (its scores' tile otherwise). pypto 0.2.0 runs
  the top-k of 4 tiles as one task (vec n-buffering) and sorts a tile's rows one after another; with one row per
  tile the flash indexer's top-k tasks (16 rows each) take 8.2 µs instead of 12.9 (167.0 -> 162.4 µs; its select
  and the picks keep the budget's tiles: in one-row tiles too, the tasks took 26.7 µs).

* `host_constant = "hcN"` on an op computed from no kernel input or loop index (index ramps, fills and what is computed
  from them only: the Hadamard signs, RoPE selectors) that is more than a lone ramp or fill: its value is a
  kernel parameter `hcN`, computed on the host from these same ops (codegen/pypto/host.py, the interpreter; the
  emitter writes the values into the program), so the kernel does not run the chain of small vector tasks that
  builds it (the indexer: 17-61 us of its prolog).
  `host_only` on the ops that only feed such values: not emitted.

A `tile.read` of a computed tensor is refused (check_scalar_reads): pypto 0.2.0 reads a scalar only from a
kernel parameter (GetTensorData fails at run time, F3FFFF).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from xdsl.dialects import arith, func, scf
from xdsl.dialects.builtin import ArrayAttr, IntegerAttr, StringAttr, TensorType, UnitAttr, i1, i64
from xdsl.ir import Block, BlockArgument, Operation, OpResult, Region, SSAValue

from attnc.codegen.escape import code_text
from attnc.ir.common import LOC_ATTR, bool_attr, float_attr, op_location, str_attr
from attnc.ir.types import dtype_of, shape_of, tensor_type
from attnc.passes import AttncPass, PassError, register
from attnc.ir.dsl import emit_op
from attnc.ir.tile_dialect import TILE
from attnc.passes._build import at_end, before, const, tile_full, tile_op
from attnc.passes.tile_matmul import operand_bytes

from .tiles import (BYTES, CUBE_CORES, DEFAULT_VEC_TILE_ELEMS, chain_budget, crosses_cube_tiles, cube_m_tile,
                    cube_reader_tile, cube_tiles, lanes, loop_vec_budget, reshaped_tile, vec_tile)

# every attribute this pass sets (cleared first: the pass is idempotent)
FACTS = ("in_out", "buffer", "output", "splat", "packed", "padded", "pieces", "one_trip", "body_l1_reuse", "body_nbuffer",
         "clone", "inplace",
         "prefix", "scalar_ids", "scalar_id", "rows_per_trip", "together_rows", "rows_together", "copy_out", "copy_out_tile_elems", "host_constant", "host_only",
         "padded_in", "padded_out", "valid_tile", "row_group_types", "row_group_cap", "vec_tile", "m_tile", "sort_rows", "pypto_legalized")


def _flag(v: bool = True) -> IntegerAttr:
    return IntegerAttr(int(v), i1)


def flag(op: Operation, name: str) -> bool:
    """Does op carry the fact `name` (a bool attribute set to true)?"""
    attr = op.attributes.get(name)
    return attr is not None and bool(attr.value.data)


def _in_place(op: Operation) -> bool:
    return flag(op, "in_place")


def _const(v: SSAValue):
    op = v.owner
    if isinstance(op, arith.ConstantOp):
        return op.value.value.data
    return None


def _is(v_or_op, name: str) -> bool:
    op = v_or_op.owner if isinstance(v_or_op, SSAValue) else v_or_op
    return isinstance(op, Operation) and op.name == name


# ------------------------------------------------------------------------------------------- buffers


def _parallel_carried(v: SSAValue) -> bool:
    """v is a tensor a tile.parallel carries (a block argument of its body): the loop already holds it in a
    kernel parameter or a declared scratch tensor, so a nested loop given it (its only use) updates it in place,
    as the interpreter does (no copy: a copy back after a nested pypto.loop is stale in pypto 0.2.0)."""
    return (isinstance(v, BlockArgument) and v.index > 0 and isinstance(v.owner.parent_op(), Operation)
            and v.owner.parent_op().name == "tile.parallel")


def _assembles_into(v: SSAValue, dest: SSAValue) -> list | None:
    """The ops writing v from dest, oldest first: tile.assembles and scf.fors (each carrying the tensor through
    a chain of its own), each the only user of what it writes into; None if v is made otherwise."""
    chain = []
    while v is not dest:
        op = v.owner
        if isinstance(op, scf.ForOp):
            body = op.body.block
            if not (op.iter_args[v.index].has_one_use() and body.args[1 + v.index].has_one_use()
                    and _assembles_into(body.last_op.operands[v.index], body.args[1 + v.index]) is not None):
                return None
            chain.append((op, v.index))
            v = op.iter_args[v.index]
        elif isinstance(op, Operation) and op.name == "tile.assemble" and op.dest.has_one_use():
            chain.append((op, None))
            v = op.dest
        else:
            return None
    return chain[::-1]


def _parallel_covers(par: Operation, j: int) -> bool:
    """Does every iteration of `par` assemble a full row chunk into carried tensor j — one full-width tile, or
    tiles at the chunk row and offsets that are constants or indices of nested scf.fors (constant bounds), which
    partition the chunk (k = rows / upper rows of the tensor per loop row when it has more rows than the loop:
    tiles at row offsets k·row + c, e.g. a loop over batch rows writing token rows) — so that together they write
    every element (then its tile.full init is dead and the output param can be carried instead)?"""
    block = par.body.block
    row, dest = block.args[0], block.args[1 + j]
    chain = _assembles_into(block.last_op.operands[j], dest)
    if not chain or not dest.has_one_use():
        return False
    rows, dshape, upper = par.rows.value.data, shape_of(dest.type), _const(par.upper)
    if _const(par.lower) != 0 or not upper or dshape[0] % upper:
        return False
    if dshape[0] != upper:  # k rows of dest per loop row (token rows of a loop over batch rows)
        return _tiles_partition(chain, row, rows, dshape, dshape[0] // upper)
    if len(chain) > 1 or chain[0][1] is not None:
        return _tiles_partition(chain, row, rows, dshape)
    asm = chain[0][0]
    tshape = shape_of(asm.tile.type)
    if tshape[0] != rows or tshape[1:] != dshape[1:]:
        return False
    if asm.offsets[0] is not row or any(_const(o) != 0 for o in asm.offsets[1:]):
        return False
    if not len(asm.valid):
        return dshape[0] % rows == 0
    if any(_const(v) != d for v, d in zip(asm.valid[1:], dshape[1:])):
        return False
    n = asm.valid[0].owner  # the ragged row count min(upper - row, rows)
    if not isinstance(n, arith.MinSIOp):
        return False
    a, b = n.operands
    sub = a.owner if _const(b) == rows else b.owner if _const(a) == rows else None
    return isinstance(sub, arith.SubiOp) and _const(sub.lhs) == dshape[0] and sub.rhs is row


def _affine(v: SSAValue, row, env: dict):
    """v as (a, c) with v = a * row + c, from constants, `row`, the indices in env and arith adds and products;
    None if it is made otherwise."""
    if v is row:
        return 1, 0
    c = env.get(v, _const(v))
    if c is not None:
        return 0, c
    op = v.owner
    if not isinstance(op, arith.AddiOp | arith.MuliOp):
        return None
    x, y = _affine(op.lhs, row, env), _affine(op.rhs, row, env)
    if x is None or y is None:
        return None
    if isinstance(op, arith.AddiOp):
        return x[0] + y[0], x[1] + y[1]
    if x[0] and y[0]:
        return None
    return x[0] * y[1] + y[0] * x[1], x[1] * y[1]


def _tiles_partition(chain, row, rows: int, dshape, per_row: int = 1) -> bool:
    """Whole tiles [rows, ...] at the chunk row and offsets (constants, or indices of the scf.fors of the chain,
    whose bounds are constants: every iteration counted) that cover dest[1:] exactly once. With per_row = k > 1
    each loop row owns dest rows k·row .. k·row + k·rows - 1, and tiles at row offsets k·row + c (c from constants
    and those indices) must cover them and dest[1:] exactly once."""
    if dshape[0] % rows:
        return False
    k = per_row
    cover = np.zeros((k * rows, *dshape[1:]) if k > 1 else dshape[1:], dtype=np.int32)

    def place(chain, env: dict) -> bool:
        for op, j in chain:
            if j is not None:  # an scf.for: its body's chain once per iteration
                lb, ub, step = (_const(b) for b in (op.lb, op.ub, op.step))
                body = op.body.block
                inner = _assembles_into(body.last_op.operands[j], body.args[1 + j])
                if None in (lb, ub, step) or step <= 0 or not all(
                        place(inner, {**env, body.args[0]: i}) for i in range(lb, ub, step)):
                    return False
                continue
            tshape = shape_of(op.tile.type)
            offs = [env.get(o, _const(o)) for o in op.offsets[1:]]
            if len(op.valid) or None in offs:
                return False
            if k > 1:  # the row offset k·row + c joins the covered axes
                first = _affine(op.offsets[0], row, env)
                if first is None or first[0] != k:
                    return False
                offs, tshape, dims = [first[1], *offs], tshape, (k * rows, *dshape[1:])
            elif op.offsets[0] is not row or tshape[0] != rows:
                return False
            else:
                tshape, dims = tshape[1:], dshape[1:]
            if any(o < 0 or o + t > d for o, t, d in zip(offs, tshape, dims)):
                return False
            cover[tuple(slice(o, o + t) for o, t in zip(offs, tshape))] += 1
        return True

    return place(chain, {}) and bool((cover == 1).all())


def written_in_parts(loop: Operation, j: int) -> bool:
    """Does the loop write its carried tensor j in parts (pypto.assemble)? A tile.parallel always assembles; an
    scf.for when its carried block argument is an assemble's destination."""
    if loop.name == "tile.parallel":
        return True
    arg = loop.body.block.args[1 + j]
    return any(u.operation.name == "tile.assemble" and u.index == 1 for u in arg.uses)


def output_inits(ret: Operation) -> dict:
    """tile.full inits of tile.parallel loops whose result is returned (result i) as-is or reshaped (token rows
    returned as [batch, seq, ...]: the loop writes the output parameter reshaped in place) and fully written."""
    found = {}
    for i, v in enumerate(ret.operands):
        if _is(v.owner, "tile.reshape") and v.has_one_use():
            v = v.owner.input
        par = v.owner
        if not (isinstance(par, Operation) and par.name == "tile.parallel") or not v.has_one_use():
            continue
        init = par.inits[v.index]
        if init.owner.name == "tile.full" and init.has_one_use() and _parallel_covers(par, v.index):
            found[init] = i
    return found


def scratch_inits(block, outputs: dict) -> set:
    """tile.full inits (one use) of tile.parallel loops that write every element of them: declared, not filled."""
    found = set()
    for par in block.walk():
        if par.name != "tile.parallel":
            continue
        for j, init in enumerate(par.inits):
            if (_is(init, "tile.full") and init.has_one_use() and init not in outputs
                    and _parallel_covers(par, j)):
                found.add(init)
    return found


def _carry(loop: Operation, inits, params: set, declared: set) -> list[str]:
    """How the loop can hold each carried tensor: "same" (in place), "copy" (a scratch copy of it), "scratch"
    (a scratch buffer alone: a splat the loop overwrites everywhere); see the module docstring."""
    out = []
    for j, v in enumerate(inits):
        known = v in params or v in declared or _parallel_carried(v)
        if not v.has_one_use() or (not known and written_in_parts(loop, j)):
            dead = _is(v, "tile.full") and loop.name == "tile.parallel" and _parallel_covers(loop, j)
            out.append("scratch" if dead else "copy")
        else:
            out.append("same")
    return out


def in_out_results(fn: Operation) -> list[str]:
    """Results the IR states are their parameter updated in place: a chain of `in_place` scatters from the
    argument of the same name (update-in-place)."""
    block = fn.body.block
    args = dict(zip((a.data for a in fn.attributes["arg_names"].data), block.args))
    found = []
    for name, v in zip((a.data for a in fn.attributes["result_names"].data), block.last_op.operands):
        while name in args and v is not args[name] and isinstance(v.owner, Operation) and _in_place(v.owner):
            v = v.owner.table
        if name in args and v is args[name] and name not in found:
            found.append(name)
    return found


# ------------------------------------------------------------------------------------------- buffers a value names


def _is_loop(op) -> bool:
    return isinstance(op, Operation) and op.name in ("tile.parallel", "scf.for")


def buffer_of(v: SSAValue) -> SSAValue:
    """The value whose buffer v is in the program (the emitter gives v its name): through views of all of a
    tensor, assembles (their destination), scatters (in place: their table) and loops (a carried tensor's init)."""
    while True:
        if isinstance(v, BlockArgument):
            loop = v.owner.parent_op()
            if not (_is_loop(loop) and v.index > 0):
                return v
            v = loop.operands[_first_init(loop) + v.index - 1]
            continue
        op = v.owner
        if _is_loop(op):
            v = op.operands[_first_init(op) + v.index]
        elif op.name == "tile.assemble":
            v = op.dest
        elif op.name == "tile.scatter_rows":
            v = op.table
        elif op.name == "scf.if":  # a piece's zero padding (_zero_padding): the else branch yields the buffer
            v = op.false_region.block.last_op.operands[v.index]
        elif (op.name == "tile.view" and not len(op.valid) and all(_const(o) == 0 for o in op.offsets)
              and shape_of(op.source.type) == shape_of(v.type)):
            v = op.source
        else:
            return v


def whole_of(v: SSAValue) -> SSAValue:
    """The value whose whole buffer v is: through reshapes and views of all of their source (a view whose type is
    its source's, no valid shape: at a runtime offset that can only be 0, e.g. the row of a one-trip batch loop)."""
    while True:
        op = v.owner
        if _is(op, "tile.reshape"):
            v = op.input
        elif _is(op, "tile.view") and not len(op.valid) and v.type == op.source.type:
            v = op.source
        else:
            return v


def _is_param(v: SSAValue) -> bool:
    """v is a kernel input parameter (an argument of the entry function)."""
    return isinstance(v, BlockArgument) and isinstance(v.owner.parent_op(), func.FuncOp)


_PARAM_BUFFERS = (StringAttr("output"), StringAttr("scratch"))


def _is_kernel_parameter(v: SSAValue, buffers=_PARAM_BUFFERS) -> bool:
    """v's buffer is a kernel parameter: an input, or a `tile.full` whose `buffer` is one of `buffers` (an output
    carried by its loop, a scratch buffer)."""
    b = buffer_of(v)
    return _is_param(b) or (_is(b, "tile.full") and b.owner.attributes.get("buffer") in buffers)


def output_copies(fn: Operation) -> tuple[list, list]:
    """Per result: is it copied into its output parameter after the body (not when it is the output buffer a loop
    wrote in place, or a parameter updated in place), and the vector tile budget of the loop that made it (0:
    the kernel's)."""
    block = fn.body.block
    in_out = {a.data for a in fn.attributes["in_out"].data}
    args = dict(zip((a.data for a in fn.attributes["arg_names"].data), block.args))
    copied, budgets = [], []
    for i, (name, v) in enumerate(zip((a.data for a in fn.attributes["result_names"].data), block.last_op.operands)):
        b = buffer_of(v)
        w = buffer_of(whole_of(v))  # through a reshape: an output written reshaped (output_inits)
        carried = _is(w, "tile.full") and w.owner.attributes.get("buffer") == StringAttr("output") and \
            w.owner.attributes["output"].value.data == i
        copied.append(not (carried or (name in in_out and b is args.get(name))))
        loop = whole_of(v).owner
        budget = loop.attributes.get("vec_tile_elems") if _is_loop(loop) else None
        budgets.append(budget.value.data if budget is not None else 0)
    return copied, budgets


# ------------------------------------------------------------------------------------------- views, concats


def zero_padded_rows(v: SSAValue) -> bool:
    """v is a zero-padded view whose padding is trailing rows only (its valid shape differs in dim 0 only)."""
    view = v.owner
    if not (_is(view, "tile.view") and len(view.valid) and view.pad.data == "zero"):
        return False
    return all(_const(w) == d for w, d in zip(list(view.valid)[1:], shape_of(v.type)[1:]))


def packs(concat: Operation) -> bool:
    """A row concat (axis 0, rank 2) with a zero-padded piece: emitted as assembles into a scratch tensor."""
    return (concat.axis.value.data == 0 and len(shape_of(concat.result.type)) == 2
            and dtype_of(concat.result.type) != "i1" and any(zero_padded_rows(v) for v in concat.inputs))


def gathers_prefix(gather: Operation) -> bool:
    """A row-list gather read only through one zero-padded view of its leading rows that a packed concat
    consumes."""
    if gather.name != "tile.gather_rows" or len(shape_of(gather.indices.type)) != 1 or \
            not gather.result.has_one_use():
        return False
    view = next(iter(gather.result.uses)).operation
    return (view.name == "tile.view" and zero_padded_rows(view.result)
            and all(_const(o) == 0 for o in view.offsets)
            and shape_of(view.result.type) == shape_of(gather.result.type)
            and view.result.uses and all((u.operation.name == "tile.concat" and packs(u.operation))
                                         or (u.index == 0 and _is_piece(u.operation)) for u in view.result.uses))


def _is_piece(op: Operation) -> bool:
    """op assembles a piece of a packed concat (rewrite_packed_concats): into a `buffer = "local"` tile.full."""
    if op.name != "tile.assemble":
        return False
    b = buffer_of(op.dest)
    return _is(b, "tile.full") and b.owner.attributes.get("buffer") == StringAttr("local")


def select_splat(full: Operation) -> bool:
    """A float splat inside a loop read only as a value operand of selects (see the module docstring)."""
    return (full.parent_op() is not None and full.parent_op().name in ("tile.parallel", "scf.for")
            and dtype_of(full.result.type) in ("f32", "bf16", "f16") and bool(full.result.uses)
            and all(u.operation.name == "tile.select" and u.index in (1, 2) for u in full.result.uses))


def scatter_id_ops(block) -> set:
    """Top-level tile ops whose every result is used only as scatter_rows ids or by such ops."""
    found: set = set()
    changed = True
    while changed:
        changed = False
        for op in reversed(list(block.ops)):
            if op in found or not op.results or not op.name.startswith("tile.") or op.regions:
                continue
            uses = [u for r in op.results for u in r.uses]
            if uses and all((u.operation.name == "tile.scatter_rows" and u.index == 2) or u.operation in found
                            for u in uses):
                found.add(op)
                changed = True
    return found


class _ScalarId:
    """The steps computing one element of an integer tensor as a pypto scalar expression, from the ops that
    compute it (iota, full, reshape, broadcast, integer arithmetic, compare, select, row/col expands, a gather of
    a row of a table) and scalar reads of kernel parameters. A step's text names the scatter loop's row as {m}
    and step N's value as {sN}; each step is bound once to a scalar variable. A compare is a 0/1 scalar, so
    select(c, x, y) is c*x + (1-c)*y."""

    ARITH = {"add": "+", "sub": "-", "mul": "*", "rem": "%", "floordiv": "//"}
    CMP = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}

    def __init__(self, params: dict):
        self.params = params  # kernel parameter -> its name (as a format string)
        self.bound: dict = {}
        self.steps: list[str] = []
        self.ops: set = set()  # the ops the id is computed from

    def element(self, v: SSAValue, idx: list[str]) -> str:
        """A placeholder or literal for element `idx` of v (each element a step of its own, once)."""
        key = (v, tuple(idx))
        if key not in self.bound:
            expr = self._expr(v, idx)
            if not (re.fullmatch(r"\{\w+\}", expr) or expr.lstrip("-").isdigit()):
                self.steps.append(expr)
                expr = f"{{s{len(self.steps) - 1}}}"
            self.bound[key] = expr
        return self.bound[key]

    def _expr(self, v: SSAValue, idx: list[str]) -> str:
        shape = list(shape_of(v.type))
        if v in self.params:
            return f"{self.params[v]}[{', '.join(idx)}]"
        op = v.owner
        self.ops.add(op)
        name = op.name.split(".", 1)[1] if op.name.startswith("tile.") else op.name
        if name == "iota":
            return idx[op.axis.value.data]
        if name == "full":
            return repr(int(op.value.value.data))
        if name == "reshape":
            return self.element(op.input, _reindex(idx, shape, list(shape_of(op.input.type))))
        if name == "broadcast":
            return self.element(op.input, [i if d != 1 else "0" for i, d in zip(idx, shape_of(op.input.type))])
        if name.startswith(("row_expand_", "col_expand_")):
            kind = name.split("_", 2)[2]
            rhs = [i if d != 1 else "0" for i, d in zip(idx, shape_of(op.rhs.type))]
            return self._binary(kind, self.element(op.lhs, idx), self.element(op.rhs, rhs), op)
        if name in self.ARITH or name in ("and", "or", "max", "min"):
            return self._binary(name, self.element(op.lhs, idx), self.element(op.rhs, idx), op)
        if name == "cmp":
            return f"({self.element(op.lhs, idx)} {self.CMP[op.predicate.data]} {self.element(op.rhs, idx)})"
        if name == "gather_rows":  # a row of the table at the index's element (a block table lookup)
            k = len(shape_of(op.indices.type))
            return self.element(op.table, [self.element(op.indices, idx[:k]), *idx[k:]])
        if name == "select":
            c = self.element(op.cond, idx)
            return f"({c} * {self.element(op.on_true, idx)} + (1 - {c}) * {self.element(op.on_false, idx)})"
        raise PassError(f"{code_text(op_location(op))}: {op.name} computes a scatter_rows id: pypto 0.2.0 reads ids "
                        "as scalars, which pypto-legalize derives only from iota/full/reshape/broadcast/integer "
                        "arithmetic/cmp/select/gather_rows and kernel parameters")

    def _binary(self, kind: str, a: str, b: str, op) -> str:
        if kind in self.ARITH:
            return f"({a} {self.ARITH[kind]} {b})"
        if kind == "and":
            return f"({a} * {b})"
        if kind == "or":
            return f"({a} + {b} - {a} * {b})"
        if kind in ("max", "min"):
            return f"pypto.{kind}({a}, {b})"
        raise PassError(f"{code_text(op_location(op))}: {op.name} has no scalar form for a scatter_rows id")


def _reindex(idx: list[str], shape: list[int], to: list[int]) -> list[str]:
    """The index into a tensor of shape `to` of element `idx` of its reshape to `shape` (row-major)."""
    terms, stride = [], 1
    for i, d in zip(reversed(idx), reversed(shape)):
        if d != 1:
            terms.append(i if stride == 1 else f"{i} * {stride}")
        stride *= d
    flat = " + ".join(reversed(terms)) or "0"
    out, stride = [], 1
    for d in reversed(to):
        if d == 1:
            out.insert(0, "0")
        else:
            part = flat if stride == 1 else f"(({flat}) // {stride})"
            out.insert(0, f"({part}) % {d}" if stride * d < math.prod(to) else part)
        stride *= d
    return out


def scalar_id_steps(op: Operation, params: dict, ops: set | None = None) -> list[str]:
    """A scatter_rows's `scalar_id`: the steps of its row m's id, the last the id (see _ScalarId); `ops`
    collects the ops the id is computed from."""
    sid = _ScalarId(params)
    last = sid.element(op.ids, ["{m}"])
    if ops is not None:
        ops |= sid.ops
    return [*sid.steps, last]


# pypto 0.2.0 prints each node of a loop's `if` condition as a macro EXPR_LOOP_PATHCOND_<loop>_<cond>_<index>_CALC,
# left-aligned in 32 columns with no separator before its value (symbolic_scalar.cpp BuildExpressionList,
# setw(0x20); upstream adds the space after r0.2.0, hicann/pypto d23a73b26): a name of 32 characters runs into its
# value, gcc reads `..._30_0_100_CALC(... > 0)` as a function-like macro, the control-flow code does not compile
# and the SIM child exits 1 with no message (decode_csa_paged's ring writes: loop keys 30-34, 101 nodes). A
# condition of at most this many nodes keeps its indices at two digits (names <= 31 characters for loop keys < 100).
PATHCOND_NODES = 100


def rows_together(op: Operation) -> tuple[int, str] | None:
    """A scatter's `together_rows` n and `rows_together`: the runtime condition (over the ids {r0} .. {r<n-1>} of n
    rows of its trip) under which those rows land at consecutive ids of one table block (a ring's step rows: slots
    p, p+1 of a block), so one [n, d] assemble writes them; each group of n rows of a trip gets its own. n = 2 where
    rows_per_trip is even (the S = 2 step rows of one batch row; a trip of 4 holds two batch rows), else all of
    them. None (row by row only) for one row per trip or where the condition would exceed PATHCOND_NODES nodes of
    pypto's path-condition table (the 0.2.0 bug above)."""
    per = op.attributes["rows_per_trip"].value.data
    if per == 1:
        return None
    n = 2 if per % 2 == 0 else per
    table, rows = shape_of(op.table.type), shape_of(op.rows.type)
    block = table[len(table) - len(rows)]  # the table dim a row id runs over last (the rows of one block)
    cond = " * ".join([f"({{r0}} >= 0)", f"({{r0}} % {block} < {block - n + 1})",
                       *[f"({{r{k}}} == {{r0}} + {k})" for k in range(1, n)]])
    steps = [s.data for s in op.attributes["scalar_id"].data]
    nodes = max(pathcond_nodes(steps, n, cond, g) for g in range(0, per, n))
    return (n, cond) if nodes <= PATHCOND_NODES else None


def pathcond_nodes(steps: list[str], per: int, cond: str, first: int = 0) -> int:
    """The nodes pypto 0.2.0's path-condition table lists for `if (cond) > 0` over `per` rows of a scatter loop
    iteration from its row `first` (row k's id by the `scalar_id` steps, {m} = (w + k)): one per operation on a
    runtime value (a parameter read, an arithmetic or compare, a min/max), shared where the emitted program shares
    a scalar variable (a step), new for each textual repeat; integer-only operations fold, as does x + 0."""
    names = {f"s{i}": f"s{i}" for i in range(len(steps))}
    ids = []
    for k in range(first, first + per):  # as the emitter binds them: each step but the last a variable, the last id
        env: dict = {}
        for i, step in enumerate(steps[:-1]):
            env[f"s{i}"] = _scalar_eval(step.format(m=f"(w + {k})", **names), env)
        ids.append(_scalar_eval(steps[-1].format(m=f"(w + {k})", **names), env))
    top = ("gt", _scalar_eval(cond.format(**{f"r{k}": f"r{k}" for k in range(per)}),
                              {f"r{k}": v for k, v in enumerate(ids)}), 0)
    seen, todo = set(), [top]
    while todo:
        n = todo.pop()
        if isinstance(n, tuple) and id(n) not in seen:
            seen.add(id(n))
            todo.extend(n[1:])
    return len(seen)


_LEAF = "runtime"  # the loop index: a value, not a node of the table


def _scalar_eval(text: str, env: dict):
    """`text` (a scalar expression of the emitted program) as ints (folded) and nodes (tuples: kind, operands)."""
    import ast
    import operator

    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
           ast.Mod: operator.mod, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
           ast.GtE: operator.ge, ast.Eq: operator.eq, ast.NotEq: operator.ne}

    def ev(n):
        if isinstance(n, ast.Constant):
            return int(n.value)
        if isinstance(n, ast.Name):
            return env.get(n.id, _LEAF)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            v = ev(n.operand)
            return -v if isinstance(v, int) else ("neg", v)
        if isinstance(n, (ast.BinOp, ast.Compare)):
            a, op, b = ((ev(n.left), type(n.op), ev(n.right)) if isinstance(n, ast.BinOp)
                        else (ev(n.left), type(n.ops[0]), ev(n.comparators[0])))
            if isinstance(a, int) and isinstance(b, int):
                return int(ops[op](a, b))
            if op is ast.Add and (a == 0 or b == 0):
                return b if a == 0 else a
            return (op.__name__, a, b)
        if isinstance(n, ast.Call):  # pypto.min / pypto.max
            a, b = (ev(x) for x in n.args)
            if isinstance(a, int) and isinstance(b, int):
                return min(a, b) if n.func.attr == "min" else max(a, b)
            return (n.func.attr, a, b)
        if isinstance(n, ast.Subscript):  # a kernel parameter's element
            idx = n.slice.elts if isinstance(n.slice, ast.Tuple) else [n.slice]
            return ("read", *(ev(i) for i in idx))
        raise ValueError(f"no scalar form: {ast.dump(n)}")

    return ev(ast.parse(text, mode="eval").body)


def _params(fn: Operation) -> dict:
    """Kernel parameter -> its name, as a format string (scalar_id steps)."""
    return {a: n.data.replace("{", "{{").replace("}", "}}")
            for a, n in zip(fn.body.block.args, fn.attributes["arg_names"].data)}


def one_row_batched_lhs(use) -> bool:
    """Is `use` the lhs of a batched matmul (both operands rank >= 3) with one row per batch and more than one
    batch (indexer at seq 1: the weighted head sum [B, 1, H] x [B, H, NC])?"""
    op = use.operation
    if op.name not in ("tile.matmul", "tile.matmul_acc") or use.index != 0:
        return False
    sa, sb = shape_of(op.lhs.type), shape_of(op.rhs.type)
    return len(sa) >= 3 and len(sb) >= 3 and sa[-2] == 1 and int(np.prod(sa[:-2])) > 1


# readers that do not see a zero-padded view's padding as zeros: pypto concatenates the valid parts only
_ZERO_FILL_READERS = ("tile.concat",)


def _names(values) -> ArrayAttr:
    return ArrayAttr([StringAttr(v) for v in values])


# ------------------------------------------------------------------------------------------- rewrites


def _replace(op: Operation, new: SSAValue) -> None:
    op.result.replace_all_uses_with(new)
    op.detach()
    op.erase()


def _legal_i8_cast(op: Operation) -> bool:
    return (dtype_of(op.input.type) == "f16" and op.rounding.data == "trunc" and op.saturate is not None
            and bool(op.saturate.value.data))


def rewrite_i8_casts(fn: Operation) -> None:
    """A cast to i8 (round by its mode, saturate to [-128, 127]) becomes the casts the quantised kernels make on
    Ascend (hicann/pypto mla_prolog_quant_v4 `quant`): to i32 by its mode (an integer source skips it), i32 -> f16
    (exact for |v| <= 2048; larger values stay beyond the i8 range), f16 -> i8 truncating, saturated. pypto 0.2.0
    casts a float to int8 only from f16."""
    for op in [o for o in fn.walk() if o.name == "tile.cast"]:
        if dtype_of(op.result.type) != "i8" or _legal_i8_cast(op):
            continue
        shape = shape_of(op.result.type)
        with before(op):
            x = op.input
            if dtype_of(x.type) not in ("i32", "i8"):
                x = tile_op("cast", [x], tensor_type(shape, "i32"), rounding=str_attr(op.rounding.data)).value
            half = tile_op("cast", [x], tensor_type(shape, "f16"), rounding=str_attr("round")).value
            q = tile_op("cast", [half], op.result.type, rounding=str_attr("trunc"), saturate=bool_attr(True))
        if "tile_rows" in op.attributes:  # the row cap of its vector tile (quantize-w8a8{tile-rows})
            for v in (x, half, q.value):
                if v is not op.input:
                    v.owner.attributes["tile_rows"] = op.attributes["tile_rows"]
        _replace(op, q.value)


def rewrite_bool_concats(fn: Operation) -> None:
    """A concat of i1 tensors becomes selects of 1.0/0.0 (f32), their concat, and a compare with 1.0: pypto 0.2.0
    cannot concat bool tensors. The 1.0/0.0 splats are `splat` (pypto.where and pypto.eq take the number)."""
    for op in [o for o in fn.walk() if o.name == "tile.concat"]:
        if dtype_of(op.result.type) != "i1":
            continue
        with before(op):
            floats = []
            for v in op.inputs:
                shape = shape_of(v.type)
                one, zero = _splat(shape, 1.0), _splat(shape, 0.0)
                floats.append(tile_op("select", [v, one, zero], tensor_type(shape, "f32")).value)
            shape = shape_of(op.result.type)
            joined = emit_op(TILE["concat"], [floats], [tensor_type(shape, "f32")], {"axis": op.axis}).results[0]
            eq = tile_op("cmp", [joined, _splat(shape, 1.0)], op.result.type, predicate=str_attr("eq"))
        _replace(op, eq.value)


def rewrite_bool_splats(fn: Operation) -> None:
    """An i1 tile.full becomes an f32 fill of 1.0/0.0 and a compare with 1.0 (`splat`: pypto.eq takes the
    number): pypto 0.2.0's codegen cannot fill a bool tensor. A buffer (`buffer`) is never filled; a fill nobody
    reads (the init a loop overwrites everywhere, once rewrite_carried_tensors gave the loop a scratch buffer)
    goes."""
    for op in [o for o in fn.walk() if o.name == "tile.full" and dtype_of(o.result.type) == "i1"
               and "buffer" not in o.attributes]:
        if not op.result.uses:
            op.detach()
            op.erase()
            continue
        shape = shape_of(op.result.type)
        with before(op):
            fill = tile_full(shape, float(op.value.value.data != 0), "f32").value
            eq = tile_op("cmp", [fill, _splat(shape, 1.0)], op.result.type, predicate=str_attr("eq"))
        if "tile_rows" in op.attributes:  # the row cap of its vector tile (schedule-compressor)
            fill.owner.attributes["tile_rows"] = eq.value.owner.attributes["tile_rows"] = op.attributes["tile_rows"]
        _replace(op, eq.value)


def _expanded_axes(src, dst) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(src, dst)) if a != b]


def rewrite_broadcast_chains(fn: Operation) -> None:
    """A tile.broadcast over several axes becomes one broadcast per axis, in axis order; a tile.iota whose ramp
    expands over several axes becomes an iota over the first of them and such broadcasts: pypto 0.2.0's
    expand_clone expands one axis."""
    for op in [o for o in fn.walk() if o.name in ("tile.broadcast", "tile.iota")]:
        dst = list(shape_of(op.result.type))
        if op.name == "tile.iota":
            axis = op.axis.value.data
            src = [d if i == axis else 1 for i, d in enumerate(dst)]
        else:
            src = list(shape_of(op.input.type))
        axes = _expanded_axes(src, dst)
        if len(axes) < 2:
            continue
        dtype, cur_shape = dtype_of(op.result.type), list(src)
        with before(op):
            cur_shape[axes[0]] = dst[axes[0]]
            if op.name == "tile.iota":
                cur = emit_op(TILE["iota"], [], [tensor_type(cur_shape, dtype)], {"axis": op.axis}).results[0]
            else:
                cur = tile_op("broadcast", [op.input], tensor_type(cur_shape, dtype)).value
            for i in axes[1:-1]:
                cur_shape[i] = dst[i]
                cur = tile_op("broadcast", [cur], tensor_type(cur_shape, dtype)).value
            last = tile_op("broadcast", [cur], op.result.type)
        if "tile_rows" in op.attributes:  # the row cap of its vector tile (schedule-compressor)
            last.value.owner.attributes["tile_rows"] = op.attributes["tile_rows"]
        _replace(op, last.value)


def _in_reciprocal_loop(op: Operation) -> bool:
    """op is inside a tile.parallel whose schedule states `reciprocal_divisions` (schedule-attention's option)."""
    return any(p.name == "tile.parallel" and "reciprocal_divisions" in p.attributes for p in _ancestors(op))


def _power_of_two_fill(v: SSAValue) -> int | None:
    """The value of a tile.full of a positive power of two (a divisor whose reciprocal is exact in f32), else None."""
    op = v.owner
    if not (isinstance(op, Operation) and op.name == "tile.full" and "buffer" not in op.attributes):
        return None
    value = op.value.value.data
    return int(value) if value >= 1 and value == int(value) and int(value) & (int(value) - 1) == 0 else None


def rewrite_int_divisions(fn: Operation) -> None:
    """An integer floordiv/rem read as a tensor becomes f32 arithmetic: casts of both operands to f32, div, floor
    (rem: a - b * floor), a cast back (rint): pypto 0.2.0 has no int32 division and its cost model no REM. Exact
    for |a| < 2^22 (the index ranges of the stages). The uses that compute scatter_rows ids keep the op: they are
    printed as scalar expressions (`scalar_id`), where pypto divides integers."""
    id_ops: set = set()
    params = _params(fn)
    for op in fn.walk():
        if op.name == "tile.scatter_rows":
            scalar_id_steps(op, params, id_ops)
    for op in [o for o in fn.walk() if o.name in ("tile.floordiv", "tile.rem")]:
        uses = [u for u in op.result.uses
                if not ((u.operation.name == "tile.scatter_rows" and u.index == 2) or u.operation in id_ops)]
        if not uses:
            continue
        shape = shape_of(op.result.type)
        f32 = tensor_type(shape, "f32")
        divisor = _power_of_two_fill(op.rhs) if _in_reciprocal_loop(op) else None
        with before(op):
            a = tile_op("cast", [op.lhs], f32, rounding=str_attr("rint")).value
            if divisor is not None:  # times its reciprocal, exact: no divisor tensor read (a host constant's copy-in)
                q = tile_op("floor", [tile_op("muls", [a], f32, scalar=float_attr(1.0 / divisor))], f32).value
                if op.name == "tile.rem":
                    q = tile_op("sub", [a, tile_op("muls", [q], f32, scalar=float_attr(float(divisor)))], f32).value
            else:
                b = tile_op("cast", [op.rhs], f32, rounding=str_attr("rint")).value
                q = tile_op("floor", [tile_op("div", [a, b], f32)], f32).value
                if op.name == "tile.rem":
                    q = tile_op("sub", [a, tile_op("mul", [b, q], f32)], f32).value
            out = tile_op("cast", [q], op.result.type, rounding=str_attr("rint")).value
        for u in uses:
            u.operation.operands[u.index] = out
        if not op.result.uses:
            op.detach()
            op.erase()


def _is_copy_buffer(full: Operation) -> bool:
    """A scratch tile.full a copy was assembled into (_scratch_copy): its one use the assemble's destination."""
    return (full.attributes.get("buffer") == StringAttr("scratch") and full.result.has_one_use()
            and next(iter(full.result.uses)).operation.name == "tile.assemble"
            and next(iter(full.result.uses)).index == 1)


def _scratch_buffer(at: Operation, like: SSAValue, value: float = 0.0) -> SSAValue:
    """A tile.full of like's type before `at`, `buffer = "scratch"`: a scratch kernel parameter, never filled."""
    with before(at):
        full = tile_full(shape_of(like.type), value, dtype_of(like.type)).value
    full.owner.attributes["buffer"] = StringAttr("scratch")
    return full


def _scratch_copy(at: Operation, v: SSAValue) -> SSAValue:
    """v assembled whole into a scratch buffer before `at` (which then writes the copy in parts): pypto 0.2.0's
    runtime gives an assembled tensor its buffer only when it is a kernel parameter (module docstring)."""
    buf = _scratch_buffer(at, v)
    with before(at):
        zeros = [const(0) for _ in shape_of(v.type)]
        copy = emit_op(TILE["assemble"], [v, buf, zeros, []], [buf.type]).results[0]
    if LOC_ATTR not in at.attributes:
        copy.owner.attributes.pop(LOC_ATTR)
    return copy


def rewrite_carried_tensors(fn: Operation, carries: list) -> None:
    """Each loop's carried tensor that `_carry` does not find "same" held in a scratch buffer, and each scatter
    that is not `in_place` made one into a copy of its table (see the module docstring)."""
    for loop, how in carries:
        for j, kind in enumerate(how):
            if kind != "same":
                _carry_in_scratch(loop, j, kind)
    for op in [o for o in fn.walk() if o.name == "tile.scatter_rows" and not _in_place(o)]:
        op.operands[0] = _scratch_copy(op, op.table)
        op.attributes["in_place"] = _flag()


def _carry_in_scratch(loop: Operation, j: int, kind: str) -> None:
    """The loop's carried tensor j held in a scratch parameter: a copy of its init ("copy"), or, for a splat the
    loop overwrites everywhere ("scratch"), the buffer alone."""
    init = loop.operands[_first_init(loop) + j]
    if kind == "scratch":
        loop.operands[_first_init(loop) + j] = _scratch_buffer(loop, init, init.owner.value.value.data)
    else:
        loop.operands[_first_init(loop) + j] = _scratch_copy(loop, init)


def _first_init(loop: Operation) -> int:
    """The operand index of a loop's first carried tensor (tile.parallel: lower, upper; scf.for: lb, ub, step)."""
    return 2 if loop.name == "tile.parallel" else 3


def _splat(shape, value: float) -> SSAValue:
    full = tile_full(shape, value, "f32").value
    full.owner.attributes["splat"] = _flag()
    return full


_WRITERS = ("tile.assemble", "tile.scatter_rows")  # ops that write into an operand's buffer


def host_constants(block) -> tuple[list, set]:
    """(ops whose value is a host-computed kernel parameter, in walk order; the ops that only feed them): the tile
    ops computed from no kernel input or loop index (no regions, no buffer, every operand such an op's; in a loop
    body too: loop-invariant), whose value a kernel op reads (never writes, carries, yields or returns) and which
    are more than a lone ramp or fill (one task either way)."""
    const: set = set()
    for op in block.walk():
        if (op.name.startswith("tile.") and op.name not in _WRITERS and not op.regions and op.results
                and "buffer" not in op.attributes and not flag(op, "scalar_ids")
                and all(isinstance(r.type, TensorType) for r in op.results)
                and all(isinstance(v, OpResult) and v.owner in const for v in op.operands)):
            const.add(op)

    def device_users(op):
        return [u.operation for r in op.results for u in r.uses if u.operation not in const]

    hoisted = [op for op in block.walk() if op in const and op.operands and len(op.results) == 1
               and (users := device_users(op))
               and all(not u.regions and u.name not in _WRITERS and not u.name.endswith("yield")
                       and not isinstance(u, func.ReturnOp) for u in users)]
    # the constant ops the kernel still computes: those it reads, other than the hoisted ones, and their producers
    device, todo = set(), [op for op in const if op not in hoisted and device_users(op)]
    while todo:
        op = todo.pop()
        if op in device or op in hoisted:
            continue
        device.add(op)
        todo.extend(v.owner for v in op.operands)
    return hoisted, const - device - set(hoisted)


def _read_as_number(full: Operation) -> bool:
    """A splat read only where pypto takes a number: a select's value, a compare's right-hand side."""
    return bool(full.result.uses) and all((u.operation.name == "tile.select" and u.index in (1, 2))
                                          or (u.operation.name == "tile.cmp" and u.index == 1)
                                          for u in full.result.uses)


def rewrite_reshape_chains(fn: Operation) -> None:
    """A tile.reshape of a reshape of a kernel buffer (an input, an output, a scratch buffer: both in place)
    becomes one reshape of the buffer, so that it is in place too: pypto 0.2.0 copies a reshape of a reshape
    (decode_swa's q, made as token rows in the projections' loop, viewed [B, S, H, D] by from_tokens and
    [B*S*H, D] by the attention: 63 copy tasks on the critical chain, 650.4 -> 634.7 us at flash B = 64 S = 2).
    A chain back to the buffer's own shape stays: its copy (one tile: decode_swa's kv step rows, [B*S, D] ->
    [B, S, D] -> [B*S, D]) is then the one cross-function predecessor of the 192 loop iterations that read it,
    where reading the buffer links each of them to every piece the projections' loop wrote (1261 edges from one
    task: 650.4 -> 692.3 us)."""
    for op in [o for o in fn.walk() if o.name == "tile.reshape"]:
        inner = op.input.owner
        if not (isinstance(inner, Operation) and inner.name == "tile.reshape"
                and _is_kernel_parameter(inner.input, _PARAM_BUFFERS)
                and shape_of(op.result.type) != shape_of(inner.input.type)):
            continue
        op.operands[0] = inner.input
        if not inner.result.uses:
            inner.detach()
            inner.erase()


def _merged_axes(src: list, dst: list) -> int:
    """m >= 2 when dst is src with its first m axes merged into one ([B*S, H, D] -> [B*S*H, D]), else 0."""
    for m in range(2, len(src) + 1):
        if list(dst) == [math.prod(src[:m]), *src[m:]]:
            return m
    return 0


def _read_by_the_next_loop(par: Operation, v: SSAValue) -> bool:
    """v is read in the first loop after `par` in their block: only that loop's iterations can start while par's
    last tasks run (a loop further on waits for the loops between; decode_csa's q, read by the attention after
    the compressors' and the indexer's loops: 894.5 -> 912.1 us rewritten, as pypto's stitching shifts)."""
    later = []
    op = par.next_op
    while op is not None:
        if _is_loop(op):
            later.append(op)
        op = op.next_op
    readers = {a for u in v.uses for a in _ancestors(u.operation) if a.parent_block() is par.parent_block()}
    return bool(later) and later[0] in readers


def rewrite_reshaped_scratch(fn: Operation) -> None:
    """A scratch buffer a tile.parallel writes by one assemble per iteration (a piece whole along every axis but
    the first) and that is read after the loop only through an in-place reshape merging its leading axes is
    declared in the reshape's shape: the loop assembles the piece reshaped, cut into pieces of the rows the
    reshape's readers view (when a piece holds more). pypto 0.2.0 made the in-place reshape a sync task that
    every reader (another root function) waited on, so each read waited for all of the loop; now a reader is
    linked to the writers of its own rows only, and a piece cut per reader keeps pypto's NBufferMerge from
    joining the writer tasks, as it joins tasks that write one reshape (decode_swa's q: [B*S, H, D] rows read
    as [B*S*H, D] by each batch row's attention, its output read as [B*S, H, D] by the o-projection)."""
    for par in [o for o in fn.body.block.ops if o.name == "tile.parallel"]:
        body = par.body.block
        for j, res in enumerate(par.results):
            init = par.inits[j]
            if not (isinstance(init.owner, Operation) and init.owner.name == "tile.full"
                    and init.owner.attributes.get("buffer") == StringAttr("scratch") and init.has_one_use()
                    and res.has_one_use()):
                continue
            reshape = next(iter(res.uses)).operation
            src, dst = list(shape_of(res.type)), list(shape_of(reshape.result.type))
            m = _merged_axes(src, dst) if reshape.name == "tile.reshape" else 0
            dest = body.args[1 + j]
            asm = next(iter(dest.uses)).operation if dest.has_one_use() else None
            if not (m and asm is not None and asm.name == "tile.assemble" and asm.dest is dest and not asm.valid
                    and body.last_op.operands[j] is asm.result and asm.result.has_one_use()
                    and list(shape_of(asm.tile.type))[1:] == src[1:]
                    and all(_const(o) == 0 for o in asm.offsets[1:])):
                continue
            if not _read_by_the_next_loop(par, reshape.result):
                continue
            per_row = math.prod(src[1:m])  # rows of the reshape per row of the buffer
            piece, (prows, *rest) = asm.tile, shape_of(asm.tile.type)
            viewed = [shape_of(u.operation.result.type)[0] for u in reshape.result.uses
                      if u.operation.name == "tile.view"]
            cut = min(viewed) if viewed else prows * per_row
            if cut % per_row or (prows * per_row) % cut:
                cut = prows * per_row
            dtype = dtype_of(res.type)
            with before(asm):
                if isinstance(piece.owner, Operation) and piece.owner.name == "tile.reshape" and piece.has_one_use():
                    piece = piece.owner.input  # a reshape of a reshape: one reshape
                row = emit_op(arith.MuliOp, [asm.offsets[0], const(per_row)], [asm.offsets[0].type]).results[0]
                cur, zeros = dest, [const(0) for _ in dst[1:]]
                for c in range(prows * per_row // cut):
                    part = piece
                    if cut != prows * per_row:
                        start = [const(c * cut // per_row), *(const(0) for _ in rest)]
                        part = emit_op(TILE["view"], [part, start, []],
                                       [tensor_type([cut // per_row, *rest], dtype)], {"pad": str_attr("none")}).results[0]
                    if list(shape_of(part.type)) != [cut, *dst[1:]]:
                        part = emit_op(TILE["reshape"], [part], [tensor_type([cut, *dst[1:]], dtype)]).results[0]
                    at = row if c == 0 else emit_op(arith.AddiOp, [row, const(c * cut)], [row.type]).results[0]
                    cur = emit_op(TILE["assemble"], [part, cur, [at, *zeros], []],
                                  [tensor_type(dst, dtype)]).results[0]
            new_type = tensor_type(dst, dtype)
            for v in (init, dest, res):
                v._type = new_type
            _replace(asm, cur)
            _replace(reshape, res)


def _read_in_loop(v: SSAValue) -> bool:
    """v is read (through reshapes) by an op in a tile.parallel's body."""
    return any(_read_in_loop(u.operation.result) if u.operation.name == "tile.reshape"
               else any(p.name == "tile.parallel" for p in _ancestors(u.operation)) for u in v.uses)


def _ancestors(op: Operation):
    parent = op.parent_op()
    while parent is not None:
        yield parent
        parent = parent.parent_op()


def crosses_loops(concat: Operation) -> bool:
    """concat's only use assembles it into a tensor its tile.parallel carries, and the loop's result is read
    after it by another tile.parallel's iterations (the attention's q), pypto root functions that pypto 0.2.0
    links to the loop's writes of it piece by piece. A result only returned (a stage's q) or read only by a
    scatter (the compressors' rows, their cache write) keeps its pieces: compressor m = 4 alone 152.3 -> 154.4
    us cast whole."""
    if not concat.result.has_one_use():
        return False
    asm = next(iter(concat.result.uses)).operation
    if asm.name != "tile.assemble" or asm.tile is not concat.result or not _parallel_carried(asm.dest):
        return False
    par = asm.dest.owner.parent_op()
    yielded = [u.index for u in asm.result.uses if u.operation is par.body.block.last_op]
    return len(yielded) == 1 and _read_in_loop(par.results[yielded[0]])


def rewrite_cast_concats(fn: Operation) -> None:
    """A concat of casts (one source and one target dtype, one rounding) that crosses loops (crosses_loops)
    becomes one cast of the concat of their inputs (the same values: a cast is elementwise), so that the loop
    writes the tensor in tiles of its whole rows: pypto 0.2.0 links a reader in another root function to every
    cell of the tensor, a cell the smallest tile any write of the loop has along each axis (dev_encode
    UpdateCellMatchShape), one link per cell a writer task covers. decode_swa's q, [T, H, 448 | 64] pieces cast
    apart: cells [1, 32, 64], 2048 links resolved by the AICPU while the projections' last tasks waited
    (624.0 us); cast whole: [1, 32, 512], 256 links."""
    for op in [o for o in fn.walk() if o.name == "tile.concat"]:
        casts = [v.owner for v in op.inputs]
        if not (dtype_of(op.result.type) != "i1" and crosses_loops(op)
                and all(isinstance(c, Operation) and c.name == "tile.cast" and c.result.has_one_use() for c in casts)):
            continue
        srcs = [c.operands[0] for c in casts]
        if (len({dtype_of(s.type) for s in srcs}) != 1
                or len({tuple(sorted((k, str(a)) for k, a in c.properties.items())) for c in casts}) != 1):
            continue
        with before(op):
            joined = emit_op(TILE["concat"], [srcs], [tensor_type(shape_of(op.result.type), dtype_of(srcs[0].type))],
                             dict(op.properties)).results[0]
            cast = emit_op(TILE["cast"], [joined], [op.result.type], dict(casts[0].properties)).results[0]
        if "row_group" in op.attributes:
            joined.owner.attributes["row_group"] = cast.owner.attributes["row_group"] = op.attributes["row_group"]
        _replace(op, cast)
        for c in casts:
            c.detach()
            c.erase()


def rewrite_packed_concats(fn: Operation) -> None:
    """A `packed` row concat becomes assembles of its pieces at their row offsets into a `buffer = "local"`
    tile.full (a `pypto.tensor`; no copy task per piece, which a pypto.concat costs: CSA core 308.5 -> 263.7 us),
    which lists them (`pieces`); a zero-padded piece is followed by its zeros (_zero_padding: pypto assembles the
    valid rows only), a piece that is all of a kernel parameter's buffer is `clone` (pypto 0.2.0 fails to compile
    an assemble of it inside a loop into a tensor a matmul reads: SrcDstBufferMerge)."""
    for op in [o for o in fn.walk() if o.name == "tile.concat" and flag(o, "packed")]:
        padded = [bool(p.value.data) for p in op.attributes["padded"].data]
        cloned = [_is_kernel_parameter(whole_of(v)) for v in op.inputs]
        rows_cap = op.attributes.get("tile_rows")
        with before(op):
            cur = tile_full(shape_of(op.result.type), 0.0, dtype_of(op.result.type)).value
            cur.owner.attributes["buffer"] = StringAttr("local")
            made, row, listed = [cur.owner], 0, []
            for v, pad, clone in zip(op.inputs, padded, cloned):
                offsets = [const(row), *(const(0) for _ in shape_of(v.type)[1:])]
                asm = emit_op(TILE["assemble"], [v, cur, offsets, []], [op.result.type])
                asm.attributes.pop(LOC_ATTR)
                if clone:
                    asm.attributes["clone"] = _flag()
                made.append(asm)
                cur = asm.results[0]
                if pad:
                    cur = _zero_padding(v, row, cur, made)
                listed.append(ArrayAttr([IntegerAttr(shape_of(v.type)[0], i64), IntegerAttr(row, i64), _flag(pad)]))
                row += shape_of(v.type)[0]
            made[0].attributes["pieces"] = ArrayAttr(listed)
        if rows_cap is not None:  # the row cap of its vector tile (schedule-compressor)
            for new in made:
                new.attributes["tile_rows"] = rows_cap
        _replace(op, cur)


def _zero_padding(piece: SSAValue, row: int, dest: SSAValue, made: list) -> SSAValue:
    """Zeros at the padding rows of a zero-padded piece assembled at `row` into dest (pypto assembles a tile's
    valid rows only): `scf.if valid < rows` around a zero tile.full assembled at row + valid with valid shape
    [rows - valid, ...] -- only when the piece has padding rows (no assemble of an empty valid shape)."""
    shape = shape_of(piece.type)
    valid = piece.owner.valid[0]
    rows = const(shape[0])
    has = emit_op(arith.CmpiOp, [valid, rows], [i1], {"predicate": IntegerAttr(2, i64)}).results[0]  # slt
    pad_rows = emit_op(arith.SubiOp, [rows, valid], [valid.type]).results[0]
    at = valid if row == 0 else emit_op(arith.AddiOp, [const(row), valid], [valid.type]).results[0]
    then, other = Block(), Block()
    with at_end(then, None):
        rest = [const(d) for d in shape[1:]]
        # the zeros made with their valid shape (pypto.full(valid_shape=)): a view of a whole zero tile with that
        # valid shape gives pypto 0.2.0 FB200F COPY_OUT verify records (InferParamIndex)
        zeros = emit_op(TILE["fill"], [[pad_rows, *rest]], [piece.type], {"value": float_attr(0.0)}).results[0]
        if "tile_rows" in piece.owner.attributes:  # the piece's row cap (schedule-compressor)
            zeros.owner.attributes["tile_rows"] = piece.owner.attributes["tile_rows"]
        asm = emit_op(TILE["assemble"], [zeros, dest, [at, *(const(0) for _ in shape[1:])], [pad_rows, *rest]],
                      [dest.type])
        asm.attributes["valid_tile"] = _flag()
        emit_op(scf.YieldOp, [asm.results[0]], [])
    with at_end(other, None):
        emit_op(scf.YieldOp, [dest], [])
    branch = emit_op(scf.IfOp, [has], [dest.type], regions=[Region(then), Region(other)])
    for o in [*then.ops, *other.ops, branch]:
        o.attributes.pop(LOC_ATTR, None)
    return branch.results[0]


F32_LOWEST = -3.4028234663852886e38  # the score of an entry top-k may not pick


def _same_select(op: Operation, scores: SSAValue) -> SSAValue | None:
    """A select the kernel made before the top-k in its block of the same scores where the same mask holds, else
    the lowest f32 (the indexer's index_score output): the top-k reads it instead of a second one (a [32, 2048]
    where per top-k chunk)."""
    for other in op.parent_block().ops:
        if other is op:
            return None
        if other.name != "tile.select" or list(other.operands[:2]) != [op.valid, scores]:
            continue
        fill = other.operands[2]
        if (isinstance(fill, OpResult) and fill.owner.name == "tile.full" and dtype_of(fill.type) == "f32"
                and float(fill.owner.value.value.data) == F32_LOWEST and dtype_of(other.result.type) == "f32"):
            return other.result
    return None


def rewrite_topks(fn: Operation) -> None:
    """A tile.topk becomes pypto 0.2.0's top-k and a pick through f32: its scores (in f32) where valid, else the
    lowest f32 (a `splat`); `tile.topk_pairs` (pypto.topk: the k largest and their ids, descending, last axis);
    a pick whose score is that sentinel is -1, selected in f32 (ids cast to f32, a select with a -1.0 splat, a cast
    back, rint): pypto.topk has no validity operand, and pypto 0.2.0 selects between int32 tensors poorly
    (the emitter's former workaround, kept as it was). Exact: ids < 2^24."""
    for op in [o for o in fn.walk() if o.name == "tile.topk"]:
        shape, out_shape, k = shape_of(op.scores.type), shape_of(op.result.type), op.k.value.data
        if k > shape[-1]:
            raise PassError(f"{code_text(op_location(op))}: tile.topk of {k} of {shape[-1]} entries has no pypto "
                            "0.2.0 lowering: pypto.topk picks at most a row's entries")
        f32, out_f32 = tensor_type(shape, "f32"), tensor_type(out_shape, "f32")
        with before(op):
            scores = op.scores if dtype_of(op.scores.type) == "f32" else \
                tile_op("cast", [op.scores], f32, rounding=str_attr("rint")).value
            masked = _same_select(op, scores) or tile_op("select", [op.valid, scores, _splat(shape, F32_LOWEST)],
                                                         f32).value
            pairs = emit_op(TILE["topk_pairs"], [masked], [out_f32, tensor_type(out_shape, "i32")], {"k": op.k})
            vals, ids = pairs.results
            live = tile_op("cmp", [vals, _splat(out_shape, F32_LOWEST)], tensor_type(out_shape, "i1"),
                           predicate=str_attr("gt")).value
            fids = tile_op("cast", [ids], out_f32, rounding=str_attr("rint")).value
            picked = tile_op("select", [live, fids, _splat(out_shape, -1.0)], out_f32).value
            out = tile_op("cast", [picked], op.result.type, rounding=str_attr("rint")).value
        if "tile_rows" in op.attributes:  # the row cap of its vector tiles (schedule-compressor)
            for v in (scores, masked, vals, live, fids, picked, out):
                v.owner.attributes["tile_rows"] = op.attributes["tile_rows"]
        _replace(op, out)


def one_trip(loop: Operation) -> int | None:
    """The index of a loop with constant bounds and at most one iteration (its lower bound), else None."""
    if loop.name == "tile.parallel":
        lo, hi, step = _const(loop.lower), _const(loop.upper), loop.rows.value.data
    else:
        lo, hi, step = _const(loop.lb), _const(loop.ub), _const(loop.step)
    return lo if None not in (lo, hi, step) and hi - lo <= step else None


def rewrite_padded_concat_reads(fn: Operation) -> None:
    """A zero-padded view read by a concat (one not packed: packed ones are assembles by now) is read through a
    `tile.fill_padding` (a reshape making all of the tile valid): pypto 0.2.0 concatenates the valid parts only, so
    the padding would be dropped, not read as zeros. (A matmul reading such a view fails pypto's verify, FB200F,
    even after it; the passes never make one.)"""
    for op in [o for o in fn.walk() if o.name == "tile.view"]:
        if not (len(op.valid) and op.pad.data == "zero"
                and any(u.operation.name in _ZERO_FILL_READERS for u in op.result.uses)):
            continue
        with before(op.next_op):
            filled = tile_op("fill_padding", [op.result], op.result.type).value
        filled.owner.attributes.pop(LOC_ATTR, None)  # the view's line, not the next op's
        if LOC_ATTR in op.attributes:
            filled.owner.attributes[LOC_ATTR] = op.attributes[LOC_ATTR]
        op.result.replace_all_uses_with(filled)
        filled.owner.operands[0] = op.result


def _padding(dim: int, align: int) -> int:
    """How many times its elements a trailing dim of `dim` takes padded to a multiple of `align` (1: none)."""
    return -(-dim // align) * align // dim if dim > 0 else 1


def padding_factors(op: Operation) -> dict:
    """The `padded_in` / `padded_out` facts (module docstring) of a tile.reshape or tile.transpose, F > 1 only."""
    facts = {}
    if op.name == "tile.transpose":
        shape = shape_of(op.input.type)
        facts["padded_in"] = _padding(shape[-1], lanes(dtype_of(op.input.type))) if shape else 1
    elif op.name == "tile.reshape":
        shape, out, dtype = shape_of(op.input.type), shape_of(op.result.type), dtype_of(op.result.type)
        if out:
            facts["padded_out"] = _padding(out[-1], lanes(dtype))
            if shape[-1:] != out[-1:]:  # the input's trailing dim folded away (a rank-0 input: one element)
                facts["padded_in"] = _padding(shape[-1] if shape else 1, max(1, 32 // BYTES[dtype]))
    return {k: f for k, f in facts.items() if f > 1}


# the ops whose one pypto statement the emitter prints under their own tile (a reduction's is its input's)
TILED_OPS = {f"tile.{k}" for k in ("add", "sub", "mul", "div", "max", "min", "and", "or", "neg", "exp", "sqrt",
                                    "rsqrt", "recip", "relu", "abs", "floor", "cmp", "select", "adds", "muls",
                                    "maxs", "cast", "broadcast")}
REDUCTIONS = {"tile.row_sum", "tile.row_max", "tile.row_min"}


def loop_budget(op: Operation, default: int = DEFAULT_VEC_TILE_ELEMS) -> int:
    """The vector tile budget in force at op: each enclosing loop's, outermost first (`loop_vec_budget`, the
    emitter's walk), starting from `default`."""
    loops = [p for p in _ancestors(op) if _is_loop(p)]
    budget = default
    for loop in reversed(loops):
        budget = loop_vec_budget(loop, budget)
    return budget


def _matmul_dims(op: Operation):
    """(M rows, K, N, operand bytes, N cap) a matmul's cube tiles are chosen for: a batched lhs read by a rank-2 rhs
    is one matmul over its rows folded (the pypto emitter), all of them where they fill the cube cores in 256-row
    tiles and K >= 128 (the indexer's [8192, 128] pair swap and Hadamard), else the last batch dim's rows."""
    sa, sb = shape_of(op.lhs.type), shape_of(op.rhs.type)
    n = sb[-2] if op.transpose_b.value.data else sb[-1]
    n_max = op.attributes["n_tile"].value.data if "n_tile" in op.attributes else None
    in_bytes = operand_bytes(op)
    folded = math.prod(sa[:-1])
    rows = folded if len(sa) > 2 and len(sb) == 2 and folded >= 256 * CUBE_CORES and sa[-1] >= 128 else sa[-2]
    return rows, sa[-1], n, in_bytes, n_max


def matmul_m_tile(op: Operation) -> int:
    """A matmul's cube M tile (`m_tile`; the module docstring)."""
    return cube_m_tile(*_matmul_dims(op))


# attributes of an op whose tile another rule fixes: rows a pass capped (`tile_rows`, a `row_group`), a tile pypto
# holds padded, a value made on the host or printed as a number
TILE_STATED_ELSEWHERE = ("tile_rows", "row_group", "row_group_types", "padded_in", "padded_out", "host_constant",
                         "host_only", "scalar_ids", "splat")


def op_tile_operands(op: Operation):
    """(tiled, tensors) of an op the per-op tile rule applies to, else None: the (shape, dtype) its tile is of
    (a reduction's input, else its result) and every tensor it holds in UB (results, tensor operands; a cloned
    view holds its copy twice: in and out). Ops whose rows a pass capped (`tile_rows`, a `row_group`) or whose
    tile pypto holds padded keep the budget's tile."""
    if any(k in op.attributes for k in TILE_STATED_ELSEWHERE):
        return None
    sd = lambda v: (shape_of(v.type), dtype_of(v.type))  # noqa: E731
    results = [r for r in op.results if isinstance(r.type, TensorType)]
    if len(results) != 1:
        return None
    if op.name == "tile.view" and flag(op, "clone") and not flag(op, "prefix"):
        return sd(results[0]), [sd(results[0])] * 2
    if op.name not in TILED_OPS | REDUCTIONS:
        return None
    tensors = [sd(v) for v in (*results, *op.operands) if isinstance(v.type, TensorType)
               and not (isinstance(v, OpResult) and flag(v.owner, "splat"))]  # a splat is printed as a number
    return (sd(op.operands[0]) if op.name in REDUCTIONS else sd(results[0])), tensors


def op_vec_tiles(fn: Operation, cap: int) -> dict:
    """op -> the `vec_tile` the per-op rule states for it (codegen/pypto/tiles.py `chain_budget`): the ops it
    governs (op_tile_operands) linked by a value of the shape they tile (one makes what the other reads, or both
    read it) form a chain with one tile, its tile under the largest budget up to `cap` elements at which
    every member's live tiles fit UB, stated where it is larger than the budget's in force (issue 20 item 2:
    the indexer's scoring chain in [1, 256, 64] f32 tiles, 3 x 64 KiB). A chain with such a value made or read
    by another vector op (a top-k, an assemble, a reshape: tiled by the budget in the emitter) keeps the
    budget's tile: a change of tiling along a chain starts a new pypto task (flash indexer: its top-k tail in
    [32, 512] between [16, 512] ops, 208.3 -> 210.6 us)."""
    governed = {}
    for op in fn.walk():
        found = op_tile_operands(op)
        if found is not None:
            governed[op] = found
    chain = {op: op for op in governed}

    def root(op):
        while chain[op] is not op:
            chain[op] = chain[chain[op]]
            op = chain[op]
        return op

    pinned = set()
    for op, ((shape, _), _) in governed.items():
        linked = [v for v in op.operands if isinstance(v.type, TensorType) and shape_of(v.type) == shape]
        linked += [r for r in op.results if shape_of(r.type) == shape]
        for v in linked:
            ends = [v.owner] if isinstance(v, OpResult) and v.owner is not op else []
            ends += [u.operation for u in v.uses if u.operation is not op]
            for other in ends:
                if other in governed and governed[other][0][0] == shape:
                    chain[root(other)] = root(op)
                elif other.name not in ("tile.matmul", "tile.matmul_acc") and not (
                        other.name == "tile.full" and flag(other, "splat")):
                    pinned.add(op)
    members: dict = {}
    for op in governed:
        members.setdefault(root(op), []).append(op)
    tiles = {}
    for ops in members.values():
        budgets = {op: loop_budget(op) for op in ops}
        chosen = dict(budgets)
        if not any(op in pinned for op in ops) and len(set(budgets.values())) == 1:
            chosen = dict.fromkeys(ops, chain_budget([governed[op] for op in ops], budgets[ops[0]], cap))
        for op in ops:
            (shape, dtype), _ = governed[op]
            tile = vec_tile(shape, dtype, chosen[op])
            if tile != vec_tile(shape, dtype, budgets[op]):
                tiles[op] = tile
    return tiles


def _elementwise_reader(op: Operation, shape) -> bool:
    """An op the emitter tiles by its result of `shape`, element by element (the per-op rule's, a row or column
    expansion's), whose tile no other pass stated."""
    if op.name not in TILED_OPS and not op.name.startswith(("tile.row_expand_", "tile.col_expand_")):
        return False
    if any(k in op.attributes for k in TILE_STATED_ELSEWHERE):
        return False
    return len(op.results) == 1 and isinstance(op.results[0].type, TensorType) and \
        shape_of(op.results[0].type) == shape


def cube_reader_tiles(fn: Operation, tiles: dict) -> dict:
    """op -> `vec_tile` for the vector ops reading a matmul's result in tiles that cross its cube tiles
    (tiles.crosses_cube_tiles: pypto 0.2.0's per-pass verify fails FB200B): the elementwise ops from the matmul on
    (its readers, their readers, ... while the shape stays the matmul's) all take one tile inside a cube tile
    (tiles.cube_reader_tile; one tile, as an op reading another's result across its tiles fails the verify or
    pypto 0.2.0's SIM, "opSequenceAfterOOO_.size"), as many rows as the budget in force allows where only
    reshapes read past them, else the budget tile's rows, which the ops past them then read whole (not stated yet:
    see below); an assemble of a past reshape's result then writes the same tiles (tiles.reshaped_tile). A K
    chunk's accumulation (`matmul_acc`, an add the emitter prints) reads its product so too."""
    found = {}
    for mm in fn.walk():
        if mm.name not in ("tile.matmul", "tile.matmul_acc"):
            continue
        cube = _cube_read(mm)
        shape = shape_of(mm.results[0].type)
        if cube is None or len(shape) < 2:
            continue
        region, todo = [], [mm] if mm.name == "tile.matmul_acc" else []
        todo += [u.operation for u in mm.results[0].uses if _elementwise_reader(u.operation, shape)]
        crossing = False
        for op in todo:
            tile = tiles.get(op) or vec_tile(shape, dtype_of(op.results[0].type), loop_budget(op))
            crossing |= crosses_cube_tiles(tile, shape, cube[0], cube[3])
        past = []  # the ops past the region that read its results
        while todo:
            op = todo.pop()
            if op in region:
                continue
            region.append(op)
            for u in op.results[0].uses:
                (todo if _elementwise_reader(u.operation, shape) else past).append(u.operation)
        if not crossing:
            continue
        # rows beyond the budget tile's only where nothing else reads the region's results or writes its operands
        made_outside = [v for op in region for v in op.operands if isinstance(v.type, TensorType)
                        and shape_of(v.type) == shape and not (isinstance(v, OpResult) and v.owner in region)
                        and v is not mm.results[0]]
        rows_free = not made_outside and all(op.name == "tile.reshape" for op in past)
        if not rows_free:  # narrowed in the budget tile's rows it costs tiles: flash compressor m = 4 152.3 -> 184.4 µs
            continue  # (its kv / gate products read with the gathered ape in [16, 1024] over [128, 128]); not done
        for op in region:
            dtype, budget = dtype_of(op.results[0].type), loop_budget(op)
            found[op] = cube_reader_tile(vec_tile(shape, dtype, budget), shape, cube[0], cube[3], dtype, budget)
        # an assemble of a reshaped result writes it in the same tiles: pypto 0.2.0 starts tasks where a chain's
        # tiling changes (flash SWA core, P·V's [64, 256] readers assembled in [1, 1, 32, 512]: 98.2 -> 87.5 µs)
        for reshape in past:
            made = reshape.operands[0]
            for u in reshape.results[0].uses:
                asm = u.operation
                if asm.name == "tile.assemble" and asm.tile is reshape.results[0] and made.owner in found and \
                        not any(k in asm.attributes for k in TILE_STATED_ELSEWHERE) and _only_returned(asm.results[0]):
                    tile = reshaped_tile(found[made.owner], shape_of(made.type), shape_of(reshape.results[0].type))
                    if tile is not None:
                        found[asm] = tile
    return found


def _only_returned(value) -> bool:
    """Whether `value` reaches nothing but the function's return: through reshapes, and through the yield of a loop
    whose result does. An assemble read again in other tiles (decode_swa's attention output, read by the
    o-projection) keeps the budget's tile: there pypto 0.2.0's per-pass verify fails FB200B (flash heads, batch 4)."""
    for use in value.uses:
        op = use.operation
        if op.name == "func.return":
            continue
        if op.name == "tile.reshape" and _only_returned(op.results[0]):
            continue
        if op.name == "tile.yield" and _is_loop(op.parent_op()) and _only_returned(op.parent_op().results[use.index]):
            continue
        return False
    return True


def matmul_cube_tiles(op: Operation) -> tuple[int, int, int, int]:
    """The cube tiles (M, K in L0, K in L1, N) the pypto emitter prints for a `tile.matmul` / `matmul_acc`
    (codegen/pypto/tiles.py `cube_tiles`): M its stated `m_tile`, N capped by its `n_tile`."""
    rows, k, n, in_bytes, n_max = _matmul_dims(op)
    m_tile = op.attributes["m_tile"].value.data if "m_tile" in op.attributes else None
    return cube_tiles(rows, k, n, in_bytes, n_max, m_tile)


def _cube_read(op: Operation):
    """The cube tiles of a matmul whose result vector ops read as it is, else None: a batched lhs read by a
    rank-2 rhs is multiplied with its rows folded and read back through a reshape (the pypto emitter)."""
    sa, sb = shape_of(op.lhs.type), shape_of(op.rhs.type)
    return None if len(sa) > 2 and len(sb) == 2 else matmul_cube_tiles(op)


def row_group_members(fn: Operation) -> dict:
    """Each op of a `row_group` (fuse-rmsnorm's, rope-selector-matmul's chains of per-row ops) -> its group's
    members in the same block: the result types of rank >= 2 and the smallest `tile_rows` cap among them."""
    found: dict = {}
    for op in fn.walk():
        g = op.attributes.get("row_group")
        if g is not None:
            found.setdefault((id(op.parent_block()), g.value.data), []).append(op)
    members = {}
    for ops in found.values():
        types = list(dict.fromkeys(r.type for o in ops for r in o.results
                                   if isinstance(r.type, TensorType) and len(shape_of(r.type)) > 1))
        caps = [o.attributes["tile_rows"].value.data for o in ops if "tile_rows" in o.attributes
                and any(isinstance(r.type, TensorType) and len(shape_of(r.type)) > 1 for r in o.results)]
        for o in ops:
            members[o] = (types, min(caps) if caps else None)
    return members


def check_scalar_reads(fn: Operation) -> None:
    """A tile.read must read a kernel parameter: pypto 0.2.0 reads a scalar only from one (GetTensorData of a
    computed tensor fails at run time, F3FFFF)."""
    for op in fn.walk():
        if op.name == "tile.read" and not _is_param(op.source):
            raise PassError(f"{code_text(op_location(op))}: tile.read of a computed tensor has no pypto 0.2.0 "
                            "lowering: pypto reads scalars only from kernel parameters")


def legalize_function(fn: Operation, hoist_constants: bool = True, scatter_rows: int = 2,
                      vec_tile_max: int = 0) -> None:
    """Rewrite fn's ops that pypto 0.2.0 cannot run as they are (values unchanged), then set every fact of the
    module docstring on fn and its ops (clearing the ones a previous run set)."""
    check_scalar_reads(fn)
    rewrite_i8_casts(fn)
    rewrite_bool_concats(fn)
    rewrite_broadcast_chains(fn)
    rewrite_int_divisions(fn)
    rewrite_topks(fn)
    rewrite_cast_concats(fn)
    # the scratch buffers a rewrite made (copies for a loop or a scatter to write in parts) stay declared, and the
    # packed concats a rewrite made stay assembles into a local buffer
    copies = [op for op in fn.walk() if op.name == "tile.full" and _is_copy_buffer(op)]
    locals_ = {op: op.attributes["pieces"] for op in fn.walk() if op.name == "tile.full"
               and op.attributes.get("buffer") == StringAttr("local")}
    pieces = {op: {k: op.attributes[k] for k in ("clone",) if k in op.attributes}
              for op in fn.walk() if _is_piece(op)}
    # the splats a rewrite made stay numbers while they are read as such (the others are stated again below)
    made = [op for op in fn.walk() if op.name == "tile.full" and flag(op, "splat") and _read_as_number(op)]
    for op in [fn, *fn.walk()]:
        for name in FACTS:
            op.attributes.pop(name, None)
    for op in made:
        op.attributes["splat"] = _flag()
    for op in copies:
        op.attributes["buffer"] = StringAttr("scratch")
    for op, listed in locals_.items():
        op.attributes["buffer"] = StringAttr("local")
        op.attributes["pieces"] = listed
    for op, facts in pieces.items():
        op.attributes.update(facts)
    block = fn.body.block
    fn.attributes["in_out"] = _names(in_out_results(fn))
    outputs = output_inits(block.last_op)
    scratch = scratch_inits(block, outputs)
    for init, i in outputs.items():
        init.owner.attributes["buffer"] = StringAttr("output")
        init.owner.attributes["output"] = IntegerAttr(i, i64)
    for init in scratch:
        init.owner.attributes["buffer"] = StringAttr("scratch")
    for op in scatter_id_ops(block):
        op.attributes["scalar_ids"] = _flag()
    names = _params(fn)
    for op in block.walk():
        if op.name == "tile.scatter_rows":
            op.attributes["scalar_id"] = _names(scalar_id_steps(op, names))
            op.attributes["rows_per_trip"] = IntegerAttr(math.gcd(shape_of(op.rows.type)[0], scatter_rows), i64)
            together = rows_together(op)
            if together is not None:
                op.attributes["together_rows"] = IntegerAttr(together[0], i64)
                op.attributes["rows_together"] = StringAttr(together[1])
    params = set(block.args)
    declared = set(outputs) | scratch | {next(iter(op.result.uses)).operation.result for op in copies}
    carries = []
    for op in block.walk():
        if op.name == "tile.full" and "buffer" not in op.attributes and select_splat(op):
            op.attributes["splat"] = _flag()
        elif op.name == "tile.assemble" and isinstance(op.tile, OpResult) and op.tile.owner.name == "tile.fill":
            op.attributes["valid_tile"] = _flag()  # the fill carries the valid shape: assembled as it is
        elif op.name == "tile.concat" and packs(op):
            op.attributes["packed"] = _flag()
            op.attributes["padded"] = ArrayAttr([_flag(zero_padded_rows(v)) for v in op.inputs])
        elif op.name == "tile.gather_rows" and gathers_prefix(op):
            op.attributes["prefix"] = _flag()
            next(iter(op.result.uses)).operation.attributes["prefix"] = _flag()
        elif op.name in ("tile.parallel", "scf.for"):
            inits = op.inits if op.name == "tile.parallel" else op.iter_args
            carries.append((op, _carry(op, inits, params, declared)))
            trip = one_trip(op)
            if trip is not None:
                op.attributes["one_trip"] = IntegerAttr(trip, i64)
            for fact, body_fact in (("l1_reuse", "body_l1_reuse"), ("nbuffer", "body_nbuffer")):
                stated = {o.attributes[fact].value.data if fact in o.attributes else None
                          for o in op.body.block.ops if o.name in ("tile.matmul", "tile.matmul_acc")}
                if len(stated) == 1 and None not in stated:
                    op.attributes[body_fact] = IntegerAttr(stated.pop(), i64)
    rewrite_carried_tensors(fn, carries)
    rewrite_bool_splats(fn)  # after: a bool splat a loop overwrites everywhere is a scratch buffer, never filled
    for op in block.walk():
        if op.name != "tile.view":
            continue
        shape = shape_of(op.result.type)
        if len(shape) >= 3 and not all(u.operation.name == "tile.reshape" for u in op.result.uses):
            op.attributes["clone"] = _flag()
    rewrite_reshape_chains(fn)
    rewrite_reshaped_scratch(fn)
    for op in block.walk():
        if op.name == "tile.reshape" and any(one_row_batched_lhs(u) for u in op.result.uses):
            op.attributes["clone"] = _flag()
        if op.name == "tile.reshape" and _is_kernel_parameter(op.input, _PARAM_BUFFERS):
            op.attributes["inplace"] = _flag()
    rewrite_packed_concats(fn)
    rewrite_padded_concat_reads(fn)
    for op in block.walk():
        for name, factor in padding_factors(op).items():
            op.attributes[name] = IntegerAttr(factor, i64)
    for op in block.walk():
        if op.name in ("tile.matmul", "tile.matmul_acc"):
            op.attributes["m_tile"] = IntegerAttr(matmul_m_tile(op), i64)
        elif op.name == "tile.topk_pairs":
            op.attributes["sort_rows"] = IntegerAttr(1, i64)
    for op, (types, cap) in row_group_members(fn).items():
        op.attributes["row_group_types"] = ArrayAttr(types)
        if cap is not None:
            op.attributes["row_group_cap"] = IntegerAttr(cap, i64)
    copied, budgets = output_copies(fn)
    fn.attributes["copy_out"] = ArrayAttr([_flag(c) for c in copied])
    fn.attributes["copy_out_tile_elems"] = ArrayAttr([IntegerAttr(b, i64) for b in budgets])
    hoisted, host_only = host_constants(block) if hoist_constants else ([], set())
    for i, op in enumerate(hoisted):
        op.attributes["host_constant"] = StringAttr(f"hc{i}")
    for op in host_only:
        op.attributes["host_only"] = _flag()
    tiles = op_vec_tiles(fn, vec_tile_max) if vec_tile_max else {}
    tiles.update(cube_reader_tiles(fn, tiles))  # not an option: pypto's verify fails without them
    for op, tile in tiles.items():
        op.attributes["vec_tile"] = ArrayAttr([IntegerAttr(d, i64) for d in tile])
    fn.attributes["pypto_legalized"] = UnitAttr()


@register
@dataclass(frozen=True)
class PyptoLegalize(AttncPass):
    name = "pypto-legalize"
    summary = ("pypto path, last: rewrites what pypto 0.2.0 cannot run (i8 casts, bool concats and fills, "
               "integer division, broadcasts over several axes, loops and scatters writing in parts), then the "
               "facts the program needs as attributes (buffers, packed concats, in-place reshapes, prefix "
               "gathers, splats, scalar ids, output copies, host constants) for the emitter to print")
    tolerance = 0.0
    # 0: values computed from no input stay kernel work (host_constants: the A/B of issue 20's indexer prolog)
    host_constants: int = 1
    scatter_rows: int = 2  # rows a scatter loop writes per iteration (`rows_per_trip`), where they divide its rows
    # the per-op tile rule's cap in elements (`vec_tile`; 0: every op under the budget in force)
    vec_tile_max: int = 16384
    option_choices = {"host_constants": (0, 1)}
    option_ranges = {"scatter_rows": (1, 128), "vec_tile_max": (0, 1 << 20)}

    def apply(self, ctx, op):
        from attnc.ir import entry_function

        self.check_options()
        legalize_function(entry_function(op), bool(self.host_constants), self.scatter_rows, self.vec_tile_max)
