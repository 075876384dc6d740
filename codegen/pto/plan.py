"""The on-chip memory plan of an emitted PTO kernel (A2/A3, ptoas 0.1.1's PlanMemory capacities and alignments):
every tile gets a lifetime (its first to last access in program order; a tile accessed both inside and outside a
loop lives through the whole loop, since the next iteration reads it again) and an address in its space (first
fit, by start of life), and the plan's peak per space must fit the capacity. attnc checks this before a kernel is
written or handed to ptoas, so ptoas never sees a kernel that overflows a buffer.

ptoas plans the addresses itself (0.1.1 has no address operand on alloc_tile); this plan is attnc's proof that
one exists at these lifetimes. ptoas reuses memory only between tiles it sees as dead, with its own liveness, so
its plan may need more than this one: `tests/test_ptoas.py` compares both on the emitted kernels."""
from __future__ import annotations

from dataclasses import dataclass, field

# space -> (capacity bytes, alignment bytes): PTOAS c3457e04 lib/PTO/Transforms/PTOPlanMemory.cpp
# (InitMemSpecsFromModule: ub 1572864 bits, l1 4194304, l0a/l0b 524288, l0c 1048576; align 256/256/4096 bits)
CAPACITY = {"ub": (196608, 32), "mat": (524288, 32), "left": (65536, 512), "right": (65536, 512),
            "acc": (131072, 512)}
SPACE_NAME = {"ub": "UB", "mat": "L1", "left": "L0A", "right": "L0B", "acc": "L0C"}
_BYTES = {"f32": 4, "i32": 4, "f16": 2, "bf16": 2}


@dataclass
class TilePlan:
    name: str
    space: str
    dtype: str
    shape: tuple[int, int]
    where: str            # DSL location of the op that made it
    start: int
    end: int
    size: int             # aligned bytes
    offset: int = -1
    reads: int = 0


@dataclass
class MemoryPlan:
    tiles: list[TilePlan]
    peak: dict[str, int] = field(default_factory=dict)

    def overflow(self) -> tuple[str, TilePlan] | None:
        """The first space whose plan exceeds its capacity, and the tile placed highest in it."""
        for space, (cap, _) in CAPACITY.items():
            if self.peak.get(space, 0) > cap:
                top = max((t for t in self.tiles if t.space == space), key=lambda t: t.offset + t.size)
                return space, top
        return None

    def overflow_message(self) -> str | None:
        o = self.overflow()
        if o is None:
            return None
        space, t = o
        cap = CAPACITY[space][0]
        live = [u for u in self.tiles if u.space == space and u.start <= t.end and t.start <= u.end]
        return (f"tile {t.name} ({t.dtype} {list(t.shape)}, {t.size} bytes, made at {t.where}) does not fit the "
                f"{SPACE_NAME[space]}: {len(live)} tiles live with it need {self.peak[space]} bytes of {cap}")

    def dead_loads(self) -> list[TilePlan]:
        """Tiles written and never read (a load or result nothing uses: an emitter bug)."""
        return [t for t in self.tiles if t.reads == 0]

    def summary(self) -> str:
        return ", ".join(f"{SPACE_NAME[s]} {self.peak.get(s, 0)}/{CAPACITY[s][0]}" for s in CAPACITY
                         if self.peak.get(s, 0))


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


def plan_memory(accesses: dict[str, list[tuple[int, bool]]], loop_spans: list[tuple[int, int]],
                tile_info: dict[str, tuple[str, str, tuple[int, int], str]]) -> MemoryPlan:
    tiles = []
    for name, (space, dtype, shape, where) in tile_info.items():
        steps = accesses.get(name, [])
        if not steps:
            continue  # allocated, never touched: ptoas drops it too (no TASSIGN use)
        pos = [s for s, _ in steps]
        start, end = min(pos), max(pos)
        changed = True
        while changed:  # a tile live across a loop's boundary lives through the whole loop
            changed = False
            for lo, hi in loop_spans:
                inside = any(lo <= p <= hi for p in pos)
                if inside and (start < lo or end > hi) and not (start <= lo and end >= hi):
                    start, end, changed = min(start, lo), max(end, hi), True
        size = _align(shape[0] * shape[1] * _BYTES[dtype], CAPACITY[space][1])
        tiles.append(TilePlan(name, space, dtype, shape, where, start, end, size,
                              reads=sum(1 for _, r in steps if r)))
    plan = MemoryPlan(tiles)
    for space, (_, align) in CAPACITY.items():
        placed: list[TilePlan] = []
        for t in sorted((t for t in tiles if t.space == space), key=lambda t: (t.start, -t.size, t.name)):
            busy = sorted((u.offset, u.offset + u.size) for u in placed if u.start <= t.end and t.start <= u.end)
            off = 0
            for lo, hi in busy:
                if off + t.size <= lo:
                    break
                off = max(off, _align(hi, align))
            t.offset = off
            placed.append(t)
        if placed:
            plan.peak[space] = max(t.offset + t.size for t in placed)
    return plan
