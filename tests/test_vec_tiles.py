"""The per-op vector tile rule (issue 20 item 2; codegen/pypto/tiles.py, pypto-legalize `vec_tile`): an op's tile
is as large as its live tiles in UB allow, up to the rule's cap, and the emitter prints the stated tile."""
from __future__ import annotations

import math
import re

import pytest

from attnc.cli import load_source
from attnc.codegen.pypto.emit import BINARY, CMP, ROW_REDUCE, SCALAR, UNARY, emit_pypto
from attnc.codegen.pypto.legalize import op_tile_operands
from attnc.ir.common import op_location
from attnc.ir.types import dtype_of, shape_of
from attnc.passes import PYPTO_PIPELINE
from attnc.passes.verify import run_pipeline

UB = 192 * 1024  # pypto 0.2.0's vector buffer (A2/A3)
MIN_ELEMS = 16384  # the stated minimum: a governed op's tile is at least this large where a larger one fits
SIZE = {"bf16": 2, "f16": 2, "f32": 4, "i32": 4, "i8": 1, "i1": 1}


def _compiled(stage: str, sets: list[str], pipeline: str = PYPTO_PIPELINE):
    src = load_source(stage, "flash", sets)
    run_pipeline(src.module, pipeline)
    return src.module


def _ub_bytes(tile, tensors) -> int:
    """Written here, not taken from tiles.py: each tensor's part of the tile (clipped to its shape, the last dim
    rounded up to a 32-byte block) in bytes, summed."""
    total = 0
    for shape, dtype in tensors:
        part = [min(t, d) for t, d in zip(tile, shape)] if len(shape) == len(tile) else list(shape)
        block = 32 // SIZE[dtype]
        part[-1] = -(-part[-1] // block) * block
        total += math.prod(part) * SIZE[dtype]
    return total


def _printed_tiles(program: str) -> list[tuple[list[int], str]]:
    """(tile in effect, statement) for each statement of the emitted program."""
    tile, out = None, []
    for line in program.splitlines():
        m = re.match(r"\s*pypto\.set_vec_tile_shapes\(([\d, ]+)\)", line)
        if m:
            tile = [int(x) for x in m.group(1).split(",")]
        elif line.strip() and tile is not None:
            out.append((tile, line.strip()))
    return out


def _call(op) -> str:
    """The pypto call the emitter prints for a governed op."""
    kind = op.name.split(".", 1)[1]
    fixed = {"select": "pypto.where", "cast": "pypto.cast", "broadcast": "pypto.expand_clone", "view": "pypto.view",
             "or": "pypto.logical_not"}
    if kind == "cmp":
        return CMP[op.predicate.data]
    return fixed.get(kind) or {**BINARY, **UNARY, **ROW_REDUCE, **SCALAR}[kind]


def _in_free_chain(op, shape) -> bool:
    """No value of the tiled shape that op's chain (the governed ops linked to it by such values) reads or makes
    is made or read by a vector op outside the rule (tiled by the budget: a change of tiling along a chain is a
    new pypto task, so the rule leaves such a chain)."""
    seen, todo = {op}, [op]
    while todo:
        cur = todo.pop()
        for v in (*cur.operands, *cur.results):
            if not hasattr(v.type, "get_shape") or shape_of(v.type) != shape:
                continue
            others = [u.operation for u in v.uses] + ([v.owner] if hasattr(v, "owner") else [])
            for other in others:
                if other in seen or other.name in ("tile.matmul", "tile.matmul_acc"):
                    continue
                if other.name == "tile.full" and other.attributes.get("splat") is not None:
                    continue
                found = op_tile_operands(other)
                if found is None:
                    return False
                if found[0][0] == shape:
                    seen.add(other)
                    todo.append(other)
    return True


def _too_small(module) -> list[str]:
    """The governed ops whose printed tile is under MIN_ELEMS while the tile of twice its elements (the inner
    leading dim doubled) holds no more than the tensor and fits UB, in a chain of governed ops only, located by
    the emitted program."""
    printed = _printed_tiles(emit_pypto(module))
    bad = []
    for op in module.walk():
        found = op_tile_operands(op)
        if found is None:
            continue
        (shape, dtype), tensors = found
        loc = op_location(op)
        padded = [*shape[:-1], -(-shape[-1] // 16) * 16]
        tiles = [t for t, line in printed if line.endswith(f"# {loc}") and f"{_call(op)}(" in line
                 and len(t) == len(shape) and all(a <= b for a, b in zip(t, padded))]
        stated = [a.value.data for a in op.attributes["vec_tile"].data] if "vec_tile" in op.attributes else None
        if not tiles:  # a statement printed without its location (ops inlined from a helper): by its call alone
            tiles = [t for t, line in printed if f"{_call(op)}(" in line and len(t) == len(shape)]
            if stated is None:
                continue
        if stated is not None:
            assert stated in tiles, f"{op.name} at {loc}: stated tile {stated} not printed ({tiles})"
            assert _ub_bytes(stated, tensors) <= UB, f"{op.name} at {loc}: stated tile {stated} overflows UB"
        tile = stated or max(tiles, key=math.prod)  # ops of one call at one line: the largest of their tiles
        if math.prod(tile) >= MIN_ELEMS or not _in_free_chain(op, shape):
            continue
        for i in range(len(tile) - 2, -1, -1):  # the inner leading dim that can grow
            if tile[i] < shape[i]:
                bigger = list(tile)
                bigger[i] *= 2
                if bigger[i] <= shape[i] and _ub_bytes(bigger, tensors) <= UB:
                    bad.append(f"{op.name} at {loc}: tile {tile} of {list(shape)} {dtype}, {bigger} fits UB")
                break
    return bad


@pytest.fixture(scope="module")
def indexer():
    return _compiled("indexer", [])


def test_indexer_scoring_tiles_are_the_largest_that_fit(indexer):
    """The scoring's ReLU, head-weight multiply and head sum over [64, 2048, 64] f32: [1, 256, 64] tiles (3 x 64 KiB
    in UB), half the copies of the program-wide budget's [1, 128, 64] (flash indexer 223.3 -> 210.6 us)."""
    printed = _printed_tiles(emit_pypto(indexer))
    scoring = [(t, s) for t, s in printed if re.search(r"= pypto\.(relu|mul|sum|expand_clone)\(", s)
               and s.endswith("kernels_src/indexer.py:60") or s.endswith("kernels_src/indexer.py:59")
               and "pypto.sum(" in s]
    assert len(scoring) == 8, scoring
    assert all(t == [1, 256, 64] for t, _ in scoring), scoring
    assert _too_small(indexer) == []


def test_the_check_fails_without_the_rule():
    """With the rule off (vec-tile-max=0) the scoring ops keep the budget's 8192-element tiles where 16384 fit:
    the check above finds them."""
    module = _compiled("indexer", [], PYPTO_PIPELINE.replace("pypto-legalize", "pypto-legalize{vec-tile-max=0}"))
    bad = _too_small(module)
    assert any("tile.relu" in b and "[1, 128, 64]" in b for b in bad), bad


@pytest.mark.parametrize("stage,sets", [("sparse_attn_core", ["compress_ratio=4"]),
                                        ("compressor", ["compress_ratio=4"])])
def test_stated_tiles_fit_and_are_printed(stage, sets):
    module = _compiled(stage, sets)
    _too_small(module)  # asserts every stated tile is printed before its op and fits UB
