"""Seeded inputs for a stage: every parameter gets a value whose *meaning* is valid (positions inside the
RoPE table, compressed ids that exist, weights scaled like a trained layer), so that missing inputs of
`attnc run` and the tests exercise real code paths."""
from __future__ import annotations

import math

import torch

from attnc.errors import AttncError
from attnc.ir.dsl import StageDef, stage_config, stage_params
from attnc.ir.types import torch_dtype


def rope_profile(compress_ratio: int) -> dict:
    """The layer's RoPE profile (spec §1/§2): window-only layers use theta 10000 without YaRN; CSA and HCA layers
    use theta 160000 with YaRN (factor 16, original length 65536, beta_fast 32, beta_slow 1, no mscale) for every
    rotation of the layer."""
    if compress_ratio == 0:
        return dict(theta=10000.0, yarn=None)
    return dict(theta=160000.0, yarn=dict(factor=16.0, original_len=65536, beta_fast=32.0, beta_slow=1.0))


def yarn_correction_range(rope_dim: int, theta: float, original_len: int, beta_fast: float, beta_slow: float):
    """(low, high) pair indices of the YaRN ramp: cd(r) = rd * ln(L0 / (2 pi r)) / (2 ln theta)."""
    def cd(rotations):
        return rope_dim * math.log(original_len / (2 * math.pi * rotations)) / (2 * math.log(theta))

    low = max(math.floor(cd(beta_fast)), 0)
    high = min(math.ceil(cd(beta_slow)), rope_dim // 2 - 1)
    return low, high


def rope_frequencies(rope_dim: int, theta: float, yarn: dict | None) -> torch.Tensor:
    """float64 angular frequency of each interleaved pair i = 0 .. rope_dim/2 - 1."""
    half = rope_dim // 2
    freqs = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / rope_dim)
    if yarn is None:
        return freqs
    low, high = yarn_correction_range(rope_dim, theta, yarn["original_len"], yarn["beta_fast"], yarn["beta_slow"])
    ramp = ((torch.arange(half, dtype=torch.float64) - low) / max(high - low, 1e-3)).clamp(0, 1)
    return freqs * (1 - ramp) + freqs / yarn["factor"] * ramp


def rope_tables(cfg: dict, profile: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[max_pos, rope_dim/2] f32 cos/sin tables (column i = angle of pair i) for the config's layer profile."""
    profile = profile or rope_profile(cfg["compress_ratio"])
    freqs = rope_frequencies(cfg["rope_dim"], profile["theta"], profile["yarn"])
    ang = torch.arange(cfg["max_pos"], dtype=torch.float64)[:, None] * freqs[None, :]
    return torch.cos(ang).float(), torch.sin(ang).float()


def default_start_pos(cfg: dict, gen: torch.Generator) -> torch.Tensor:
    hi = cfg["max_pos"] - cfg["seq"]
    return torch.randint(0, hi + 1, (cfg["batch"],), generator=gen, dtype=torch.int32)


def compressed_ids(cfg: dict, start_pos: torch.Tensor, gen: torch.Generator,
                   positions: torch.Tensor | None = None) -> torch.Tensor:
    """Distinct ids per token: up to cmp_topk of the entries visible to it, then -1 padding. Tokens at
    start_pos[b] + s ([B, S, K]), or at `positions` [T] ([T, K], the packed layout)."""
    B, S, KC, NC, m = cfg["batch"], cfg["seq"], cfg["cmp_topk"], cfg["n_cmp"], cfg["compress_ratio"]
    if positions is None:
        positions = (start_pos.reshape(B, 1) + torch.arange(S)).reshape(-1)
    out = torch.full((len(positions), KC), -1, dtype=torch.int32)
    for i, t in enumerate(positions.tolist()):
        n_vis = min(NC, (t + 1) // m) if m else 0
        ids = torch.randperm(n_vis, generator=gen)[:KC] if n_vis else torch.empty(0, dtype=torch.long)
        out[i, : len(ids)] = ids.to(torch.int32)
    return out if cfg.get("layout") == "packed" else out.reshape(B, S, KC)


def seeded_packed_rows(cfg: dict, gen: torch.Generator, cu_seqlens: torch.Tensor | None = None,
                       starts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(position_ids [T], cu_seqlens [B+1]) of the packed layout: the given row split (else a random split of the
    T tokens over the B rows, empty rows allowed), each row's tokens at consecutive positions from its start
    (given per row, else random with the row inside the RoPE table)."""
    B, T = cfg["batch"], cfg["tokens"]
    if cu_seqlens is None:
        cuts = torch.sort(torch.randint(0, T + 1, (B - 1,), generator=gen)).values
        cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.long), cuts, torch.full((1,), T)]).to(torch.int32)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    if starts is None:
        room = (cfg["max_pos"] - lengths).clamp(min=0)
        starts = (torch.rand(B, generator=gen) * (room + 1).double()).long().clamp(max=room)
    positions = torch.cat([int(s) + torch.arange(int(n)) for s, n in zip(starts.tolist(), lengths.tolist())] +
                          [torch.empty(0, dtype=torch.long)])
    return positions.to(torch.int32), cu_seqlens.to(torch.int32)


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 of a weight [K, N]: scale[n] = absmax(w[:, n]) / 127 (f32; 1 for an
    all-zero column), w_i8 = round-half-even(w / scale) (within [-127, 127])."""
    wf = w.float()
    amax = wf.abs().amax(0)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    return torch.round(wf / scale).clamp(-127, 127).to(torch.int8), scale


def make_inputs(stage_def: StageDef, cfg: dict, seed: int = 0, given: dict | None = None) -> dict[str, torch.Tensor]:
    cfg = stage_config(stage_def, cfg)
    gen = torch.Generator().manual_seed(seed)
    given = dict(given or {})
    if cfg.get("layout") == "packed" and "start_pos" in given:  # packed: start_pos [B] remakes position_ids
        given.pop("position_ids", None)
    check_index_inputs(stage_def, cfg, given)  # the index-input rule below, for every caller
    out: dict[str, torch.Tensor] = {}
    params = stage_params(stage_def, cfg)
    shapes = {n: p.resolve(cfg) for n, p in params.items()}
    positions = None
    if "position_ids" in shapes:  # packed: a given start_pos [B] (each row's first position) makes position_ids
        starts, given_pos = given.pop("start_pos", None), given.pop("position_ids", None)
        cu_seqlens = given.pop("cu_seqlens", None)
        check_packed_rows(cfg, {"cu_seqlens": cu_seqlens} if cu_seqlens is not None else {})
        seeded_pos, out["cu_seqlens"] = seeded_packed_rows(cfg, gen, cu_seqlens, starts)
        out["position_ids"] = positions = seeded_pos if given_pos is None else given_pos
        check_index_inputs(stage_def, cfg, out)
    if "start_pos" in shapes:
        out["start_pos"] = given.pop("start_pos", None)
        if out["start_pos"] is None:
            out["start_pos"] = default_start_pos(cfg, gen)
    cos, sin = rope_tables(cfg)
    for name, p in params.items():
        if name in out:
            continue
        if name in given:
            out[name] = given[name]
            continue
        shape = shapes[name]
        if name == "rope_cos":
            t = cos
        elif name == "rope_sin":
            t = sin
        elif name == "cmp_idx":
            t = compressed_ids(cfg, out.get("start_pos"), gen, positions)
        elif name.endswith("_block_table"):  # a shuffled table: every pool block mapped once
            t = torch.randperm(math.prod(shape), generator=gen).reshape(shape)
        elif name == "attn_sink":
            t = torch.randn(shape, generator=gen)
        elif name.endswith("norm_w"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.startswith("w") and p.dtype == "i8":  # quant=w8a8: the seeded bf16 weight, quantised
            bf16 = (torch.randn(shape, generator=gen) / math.sqrt(shape[-2])).to(torch.bfloat16)
            t, out[f"{name}_scale"] = quantize_weight(bf16)
        elif name.startswith("w"):
            fan_in = shape[-2]
            t = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
        else:
            t = torch.randn(shape, generator=gen)
        out[name] = t.to(torch_dtype(p.dtype))
    return {n: out[n] for n in params}


# Host-checkable index inputs: arrays whose values index something of known size (the RoPE table, a cache).
# One rule for all of them: every value is checked on the host before anything runs, and a value outside the
# range is refused with the array, the element and the range; -1 is the only padding value, and only where the
# range says so. The kernels never clamp or silently skip. A new index array (e.g. a serving block table:
# [0, n_blocks) with -1 padding) gets its line here.
INDEX_INPUTS = {
    "start_pos": lambda cfg: (0, cfg["max_pos"] - cfg["seq"], "every token position start_pos + s < max_pos"),
    "cmp_idx": lambda cfg: (-1, cfg["n_cmp"] - 1, "a compressed entry id < n_cmp, or -1 for padding"),
    "ring_block_table": lambda cfg: (0, cfg["ring_pool"] - 1, "a block of the kv_ring pool"),
    "cmp_block_table": lambda cfg: (0, cfg["cmp_pool"] - 1, "a block of the kv_cmp/idx_cmp pools"),
    "position_ids": lambda cfg: (0, cfg["max_pos"] - 1, "a position inside the RoPE table, < max_pos"),
    "cu_seqlens": lambda cfg: (0, cfg["tokens"], "a token index of the packed step, <= tokens"),
}
# index inputs whose values must also be distinct: a physical block mapped twice would be written by two rows
DISTINCT_INPUTS = {"ring_block_table": "kv_ring", "cmp_block_table": "kv_cmp/idx_cmp"}
# index inputs whose ids >= 0 must be distinct within each row of the last axis (any order, -1 may repeat): the
# kernels attend every listed id, the spec's visible set counts an entry once
DISTINCT_PER_ROW = {"cmp_idx": "a token's listed entries are a set"}


class IndexInputError(AttncError, ValueError):
    """An index input outside its range; the message names the array, the element and the range."""


def check_index_inputs(stage_def: StageDef, cfg: dict, arrays: dict, where: str = "") -> None:
    cfg = stage_config(stage_def, cfg)
    params = stage_params(stage_def, cfg)
    for name, rule in INDEX_INPUTS.items():
        if name not in arrays or name not in params:
            continue
        lo, hi, meaning = rule(cfg)
        t = arrays[name]
        bad = ((t < lo) | (t > hi)).nonzero()
        if len(bad):
            at = [int(i) for i in bad[0]]
            raise IndexInputError(f"{where + ': ' if where else ''}array '{name}'{at}: value {int(t[tuple(at)])} "
                                  f"outside [{lo}, {hi}] ({meaning})")
        if name in DISTINCT_INPUTS:
            flat = t.reshape(-1)
            values, counts = torch.unique(flat, return_counts=True)
            if (counts > 1).any():
                block = int(values[counts > 1][0])
                at = [[int(i) for i in ix] for ix in (t == block).nonzero()[:2]]
                raise IndexInputError(f"{where + ': ' if where else ''}array '{name}'{at[0]} and {at[1]}: block "
                                      f"{block} mapped twice (two rows would write one block of {DISTINCT_INPUTS[name]})")
        if name in DISTINCT_PER_ROW:
            _check_distinct_per_row(name, t, where)
    if "position_ids" in params:
        check_packed_rows(cfg, arrays, where)


def _check_distinct_per_row(name: str, t: torch.Tensor, where: str) -> None:
    """Ids >= 0 listed twice in one row of the last axis: refused with the row and both positions."""
    ids, order = torch.sort(t.long(), dim=-1, stable=True)
    twice = (ids[..., 1:] == ids[..., :-1]) & (ids[..., 1:] >= 0)
    if twice.any():
        at = [int(i) for i in twice.nonzero()[0]]
        row, j = at[:-1], at[-1]
        first, second = sorted(int(order[(*row, k)]) for k in (j, j + 1))
        raise IndexInputError(f"{where + ': ' if where else ''}array '{name}'{[*row, second]}: id "
                              f"{int(ids[(*row, j)])} listed twice in row {row} (also at position {first}; "
                              f"{DISTINCT_PER_ROW[name]}: distinct ids in any order, -1 for none)")


def check_packed_rows(cfg: dict, arrays: dict, where: str = "") -> None:
    """The packed layout's row contract, on the host: cu_seqlens starts at 0, never decreases and ends at T;
    each row's tokens have consecutive positions (rows are contiguous and in position order)."""
    at = where + ": " if where else ""
    cu, pos = arrays.get("cu_seqlens"), arrays.get("position_ids")
    if cu is None:
        return
    cu = [int(v) for v in cu.tolist()]
    T = cfg["tokens"]
    if cu[0] != 0:
        raise IndexInputError(f"{at}array 'cu_seqlens'[0]: value {cu[0]}, expected 0 (prefix sums of the rows' "
                              "token counts start at 0)")
    for b in range(1, len(cu)):
        if cu[b] < cu[b - 1]:
            raise IndexInputError(f"{at}array 'cu_seqlens'[{b}]: value {cu[b]} < cu_seqlens[{b - 1}] = {cu[b - 1]} "
                                  "(prefix sums of token counts never decrease)")
    if cu[-1] != T:
        raise IndexInputError(f"{at}array 'cu_seqlens'[{len(cu) - 1}]: value {cu[-1]}, expected the token count "
                              f"{T} (every token belongs to a row)")
    if pos is None:
        return
    p = pos.tolist()
    for b in range(len(cu) - 1):
        for t in range(cu[b] + 1, cu[b + 1]):
            if p[t] != p[t - 1] + 1:
                raise IndexInputError(f"{at}array 'position_ids'[{t}]: value {p[t]}, expected {p[t - 1] + 1} (row {b}"
                                      f"'s tokens {cu[b]}..{cu[b + 1] - 1} have consecutive positions)")
