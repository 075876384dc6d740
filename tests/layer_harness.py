"""Drive a layer kind step by step like a serving loop: caches and states go out of one step and into the next.

History is built by the kernel itself, prefill-free, from position 0 (steps of up to `window` tokens; rows of
different start positions finish together). Tokens are the rows of
one fixed per-row sequence x_hist, so the reference can recompute everything from token rows.
"""
from __future__ import annotations

import copy
import functools

import torch

from attnc.ir.dsl import stage_config, stage_params
from attnc.ir.interpreter import run_module
from attnc.kernels_src import STAGES, build_stage, resolve_config
from attnc.kernels_src.inputs import make_inputs, rope_tables
from attnc.passes.verify import run_pipeline

# kernel parameter name -> reference weight name, where they differ
REF_NAMES = {"wic_kv": "ic_kv", "wic_gate": "ic_gate"}
STEP_INPUTS = ("x", "start_pos", "rope_cos", "rope_sin")


def layer_config(kind: str, batch: int, seq: int, config: str = "tiny", **overrides) -> dict:
    base = dict(max_pos=256) if config == "tiny" else {}  # room for HCA blocks of 128
    base.update(batch=batch, seq=seq, **overrides)
    return stage_config(STAGES[f"decode_{kind}"], resolve_config(config, base))


@functools.lru_cache(maxsize=None)
def layer_module(kind: str, batch: int, seq: int, overrides: tuple = (), pipeline: str | None = None,
                 config: str = "tiny"):
    """The layer's tensor IR, or its IR after `pipeline` (e.g. the default pipeline down to tiles)."""
    module = build_stage(STAGES[f"decode_{kind}"], layer_config(kind, batch, seq, config, **dict(overrides)))
    if pipeline:
        run_pipeline(module, pipeline)
    return module


class LayerDriver:
    def __init__(self, kind: str, batch: int = 2, length: int = 160, seed: int = 0, overrides: tuple = (),
                 pipeline: str | None = None, config: str = "tiny"):
        self.kind, self.batch, self.overrides, self.pipeline, self.config = kind, batch, overrides, pipeline, config
        self.stage = STAGES[f"decode_{kind}"]
        self.cfg = layer_config(kind, batch, 1, config, **dict(overrides))
        params = make_inputs(self.stage, self.cfg, seed)
        self.state_names = [n for n in self.stage.outputs if n in self.stage.params]
        self.weights = {n: v for n, v in params.items() if n not in STEP_INPUTS and n not in self.state_names}
        self.cos, self.sin = rope_tables(self.cfg)
        gen = torch.Generator().manual_seed(seed + 1)
        self.x_hist = torch.randn(batch, length, self.cfg["dim"], generator=gen).to(torch.bfloat16)

    def fresh_state(self) -> dict:
        shapes = {n: p.resolve(self.cfg) for n, p in self.stage.params.items()}
        dtypes = {n: p.dtype for n, p in self.stage.params.items()}
        from attnc.ir.types import torch_dtype

        return {n: torch.zeros(shapes[n], dtype=torch_dtype(dtypes[n])) for n in self.state_names}

    def step(self, start_pos, seq: int, state: dict) -> dict:
        """One decode step of `seq` tokens per row at positions start_pos[b] + s; returns every output."""
        sp = torch.tensor(start_pos, dtype=torch.int32)
        x = torch.stack([self.x_hist[b, int(p): int(p) + seq] for b, p in enumerate(start_pos)])
        args = dict(self.weights, **state, x=x, start_pos=sp, rope_cos=self.cos, rope_sin=self.sin)
        module = layer_module(self.kind, self.batch, seq, self.overrides, self.pipeline, self.config)
        # the config's parameters: quant=w8a8 adds a quantised weight's scales
        outs = run_module(module, [args[n] for n in stage_params(self.stage, self.cfg)])
        return dict(zip(self.stage.outputs, outs))

    def carry(self, outs: dict) -> dict:
        return {n: outs[n] for n in self.state_names}

    def history(self, start_pos, chunk: int | None = None) -> dict:
        """State after every position < start_pos[b] of every row has been processed."""
        chunk = chunk or self.cfg["window"]
        state = self.fresh_state()
        last = max(start_pos)
        begin = [last - p for p in start_pos]  # rows end together: row b starts at global time last - P_b
        cuts = sorted({0, last, *begin, *range(0, last, chunk)})
        for g, g_next in zip(cuts, cuts[1:]):
            # a row that has not begun runs at position 0: it rewrites positions 0.. properly when it begins,
            # and nothing before position 0 is ever read
            at = [g - b if g >= b else 0 for b in begin]
            state = self.carry(self.step(at, g_next - g, state))
        return state

    def reference_weights(self) -> dict:
        return {REF_NAMES.get(n, n): v for n, v in self.weights.items()}


class CompiledStepDriver(LayerDriver):
    """Steps run the layer after `pipeline`; the history before them is decoded by the tensor-level layer (the
    layer reference recomputes everything from token rows, so any correct history will do, and the tensor level
    is faster to interpret)."""

    def history(self, start_pos, chunk: int | None = None) -> dict:
        twin = copy.copy(self)
        twin.pipeline = None
        return LayerDriver.history(twin, start_pos, chunk)
