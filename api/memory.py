"""What a command will allocate, estimated from the IR's types before anything is allocated, against what the
machine has. `check_memory` refuses on an upper bound (`interpreter_upper_bytes`, validated against measured peaks
by benchmarks/memory_bound.py), so what it admits fits; `interpreter_bytes` is the older lower bound (inputs,
outputs and the largest op's operands and results, float matmul operands counted in f64)."""
from __future__ import annotations

import math
import os

from xdsl.dialects.builtin import ModuleOp, TensorType
from xdsl.ir import Operation

from attnc.errors import AttncError
from attnc.ir.tensor_dialect import cache_entries, cache_window
from attnc.ir.types import dtype_of, shape_of

_BYTES = {"bf16": 2, "f16": 2, "f32": 4, "i32": 4, "i8": 1, "i1": 1}


class MemoryLimitError(AttncError):
    """A command would need more memory than the machine has; the message names the estimate."""


def tensor_bytes(t) -> int:
    return math.prod(shape_of(t)) * _BYTES[dtype_of(t)] if isinstance(t, TensorType) else 0


def _f64_bytes(t) -> int:
    return math.prod(shape_of(t)) * 8 if isinstance(t, TensorType) else 0


def _attention_bytes(op) -> int:
    """The interpreter's working set of an attention composite: every token's keys [T, N, d] in f32 (the keys
    gathered for cache_attention, made f32 for the matmuls) and the f32 logits [T, H, N], plus operands/results."""
    operands = sum(tensor_bytes(v.type) for v in op.operands) + tensor_bytes(op.results[0].type)
    q = shape_of(op.q.type)
    tokens, heads, d = math.prod(q[:-2]), q[-2], q[-1]
    if op.name == "attn.cache_attention":
        keys = cache_window(op) + sum(shape_of(c.type)[-1] if i else 0 for i, c in enumerate(op.compressed))
        keys += cache_entries(op) if len(op.compressed) == 1 else 0
    else:
        keys = shape_of(op.kv.type)[1]
    return operands + 4 * tokens * keys * (2 * d + heads)


def interpreter_bytes(module: ModuleOp, copies_of_inputs: int = 1) -> int:
    """Lower bound of the peak memory of interpreting `module` once (`copies_of_inputs`: how many copies of
    the inputs exist at once, e.g. seeded tensors plus the arrays handed to a child process)."""
    from attnc.ir.interpreter import entry_function

    fn = entry_function(module)
    io_bytes = (copies_of_inputs * sum(tensor_bytes(t) for t in fn.function_type.inputs.data)
                + sum(tensor_bytes(t) for t in fn.function_type.outputs.data))
    return io_bytes + max((_op_bytes(op) for op in module.walk()), default=0)


def _op_bytes(op) -> int:
    """One op's working set in the interpreter: its operands and results (matmuls in f64, attention composites
    with their gathered keys and logits)."""
    if "matmul" in op.name:
        return sum(_f64_bytes(v.type) for v in op.operands) + sum(_f64_bytes(r.type) for r in op.results)
    if op.name in ("attn.cache_attention", "attn.sparse_attention"):
        return _attention_bytes(op)
    return sum(tensor_bytes(v.type) for v in op.operands) + sum(tensor_bytes(r.type) for r in op.results)


OVERHEAD_BYTES = 96 << 20  # torch's allocator and per-op buffers beyond the tensors themselves (measured)


def interpreter_upper_bytes(module: ModuleOp, copies_of_inputs: int = 1) -> int:
    """Upper bound of the memory interpreting `module` once adds: the interpreter keeps every value of the
    function alive until it returns (each op's results counted once, in a loop body too), matmul weights as f64
    copies (8 bytes an element of every float input), the largest op's f64 working set twice (operands and
    result converted, then the result cast back), `copies_of_inputs` copies of the inputs plus the f32 of the
    largest while they are seeded, and a fixed allowance for torch itself. benchmarks/memory_bound.py compares it
    with measured peaks."""
    from attnc.ir.interpreter import entry_function

    fn = entry_function(module)
    ins = list(fn.function_type.inputs.data)
    inputs = sum(tensor_bytes(t) for t in ins)
    weights_f64 = sum(_f64_bytes(t) for t in ins if isinstance(t, TensorType) and dtype_of(t) in ("bf16", "f16", "f32"))
    seeding = max((4 * math.prod(shape_of(t)) for t in ins if isinstance(t, TensorType)), default=0)
    values, largest_op = 0, 0
    for op in module.walk():
        values += sum(tensor_bytes(r.type) for r in op.results)
        largest_op = max(largest_op, _op_bytes(op))
    return copies_of_inputs * inputs + seeding + weights_f64 + values + 2 * largest_op + OVERHEAD_BYTES


SIM_CHILD_BASE_BYTES = 768 << 20  # python, numpy, torch, pypto and its calculator (measured 371-620 MB at tiny)
# per f32 byte of the program's arrays: measured 11.2-11.5 at flash B=2; decode_hca at flash B=64 (tensor-graph
# verify) was killed by the OOM killer at 22.5 GB RSS, above 14's 21.6 GB, so its peak is at least that
SIM_CHILD_PER_BYTE = 16
# per byte a loop's calls read from outside its body (`loop_call_bytes`): pypto's verifier captures every call's
# input tensors whole (a batch loop's body reads the whole cache at each row's offset, so B calls x B rows), about
# 3 copies with the tensor graph alone and one more per verified pass (pypto's default filter: 6); fitted to
# sparse_attn_core at flash B = 4/8/16 (benchmarks/memory_bound_sim.json)
SIM_CHILD_PER_LOOP_BYTE = 12


def _const(v) -> int | None:
    from xdsl.dialects import arith

    o = v.owner
    return o.value.value.data if isinstance(o, arith.ConstantOp) and hasattr(o.value, "value") else None


def _trips(op) -> int:
    """A loop's trip count from its constant bounds; with a bound that is not a constant, the bound its maker
    stated (`max_trips`), else the most rows of any tensor its body reads (a loop runs over the rows of what it
    reads)."""
    if "max_trips" in op.attributes:
        return op.attributes["max_trips"].value.data
    if op.name == "tile.parallel":
        lo, hi, step = _const(op.lower), _const(op.upper), op.rows.value.data
    else:
        lo, hi, step = _const(op.lb), _const(op.ub), _const(op.step)
    if None in (lo, hi, step) or step <= 0:
        return max((shape_of(v.type)[0] for o in op.walk() for v in o.operands
                    if isinstance(v.type, TensorType) and shape_of(v.type)), default=1)
    return max(0, -(-(hi - lo) // step))


def loop_call_bytes(module: ModuleOp) -> int:
    """Sum over the loops (`scf.for`, `tile.parallel`) of the calls of its body (its trips times those of the loops
    around it) times the bytes of the tensors the body reads from outside (whole, as pypto's function takes them;
    its carried tensors included): what pypto's pass verifier captures, one copy per call."""
    from xdsl.dialects import scf

    total = 0
    for loop in module.walk():
        if not (loop.name == "tile.parallel" or isinstance(loop, scf.ForOp)):
            continue
        calls, outer = _trips(loop), loop.parent_op()
        while outer is not None:
            if outer.name == "tile.parallel" or isinstance(outer, scf.ForOp):
                calls *= _trips(outer)
            outer = outer.parent_op()
        read = {}
        for op in loop.walk():
            if op is loop:
                continue
            for v in op.operands:
                owner = v.owner if isinstance(v.owner, Operation) else v.owner.parent_op()
                if isinstance(v.type, TensorType) and (owner is None or not loop.is_ancestor(owner)):
                    read[v] = tensor_bytes(v.type)
        inits = loop.inits if loop.name == "tile.parallel" else loop.iter_args
        read.update((v, tensor_bytes(v.type)) for v in inits)
        total += calls * sum(read.values())
    return total


def sim_child_upper_bytes(module: ModuleOp) -> int:
    """Upper bound of the pypto SIM child's peak RSS (the runner: numpy, torch, pypto, the program's compile, cost
    model and pass-verify interpreter, which holds its own copies of every tensor): a fixed base, plus
    SIM_CHILD_PER_BYTE times the f32 bytes of the inputs, outputs and every value of the IR (bf16 travels as f32),
    plus SIM_CHILD_PER_LOOP_BYTE times what the verifier captures of the loops' calls (`loop_call_bytes`, which
    grows with the square of the batch in a batch loop over a cache). Measured by benchmarks/memory_bound.py
    --target pypto-sim (benchmarks/memory_bound_sim.json); meant for the compiled module the child runs."""
    from attnc.ir.interpreter import entry_function

    def f32_bytes(t) -> int:
        return 4 * math.prod(shape_of(t)) if isinstance(t, TensorType) else 0

    fn = entry_function(module)
    arrays = sum(f32_bytes(t) for t in [*fn.function_type.inputs.data, *fn.function_type.outputs.data])
    values = sum(f32_bytes(r.type) for op in module.walk() for r in op.results)
    return (SIM_CHILD_BASE_BYTES + SIM_CHILD_PER_BYTE * (arrays + values)
            + SIM_CHILD_PER_LOOP_BYTE * loop_call_bytes(module))


def available_bytes() -> int:
    """MemAvailable of the machine, capped by the cgroup's limit when there is one."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            avail = 1 << 62
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(0, avail)


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB"


def inputs_bytes(module: ModuleOp, copies: int) -> int:
    """`copies` copies of the inputs at once (`attnc inputs`: the tensors, their numpy arrays, the .npz bytes)."""
    from attnc.ir.interpreter import entry_function

    return copies * sum(tensor_bytes(t) for t in entry_function(module).function_type.inputs.data)


def check_memory(module: ModuleOp, what: str, copies_of_inputs: int = 1, limit: int | None = None,
                 inputs_only: bool = False, sim_children: int = 0) -> int:
    """Refuse before allocating when the estimate exceeds what the machine has (`limit` or
    ATTNC_MEMORY_LIMIT_BYTES override the machine's figure: tests, the fuzzer). `inputs_only`: the command makes
    the inputs and runs nothing; `sim_children`: pypto SIM child processes running at once beside it."""
    need = (inputs_bytes(module, copies_of_inputs) if inputs_only
            else interpreter_upper_bytes(module, copies_of_inputs))
    need += sim_children * sim_child_upper_bytes(module)
    env = os.environ.get("ATTNC_MEMORY_LIMIT_BYTES")
    have = limit if limit is not None else int(env) if env and env.isdigit() else available_bytes()
    if need > have:
        raise MemoryLimitError(f"{what} may need up to {_gb(need)} of memory (an upper bound from the IR's tensor "
                               f"types, before allocating{', the pypto SIM child included' if sim_children else ''})"
                               f", the machine has {_gb(have)} available")
    return need
