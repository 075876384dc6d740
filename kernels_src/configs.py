"""Model + decode-shape configurations: `flash` and `pro` (DeepSeek-V4) and `tiny` (tests)."""
from __future__ import annotations

import math

from attnc.errors import AttncError, did_you_mean

CONFIG_KEYS = ("batch", "seq", "dim", "n_heads", "head_dim", "rope_dim", "q_lora_rank", "o_lora_rank",
               "o_groups", "window", "compress_ratio", "n_cmp", "cmp_topk", "index_heads", "index_dim", "max_pos",
               "norm_eps", "block_size", "layout", "tokens", "quant")
LAYOUTS = ("dense", "packed")
QUANTS = ("none", "w8a8")  # quant=w8a8: quantisable weights arrive as i8 + f32 per-channel scales
_CHOICES = {"layout": LAYOUTS, "quant": QUANTS}

_FLASH = dict(batch=64, seq=2, dim=4096, n_heads=64, head_dim=512, rope_dim=64, q_lora_rank=1024,
              o_lora_rank=1024, o_groups=8, window=128, compress_ratio=4, n_cmp=2048, cmp_topk=512,
              index_heads=64, index_dim=128, max_pos=8192, norm_eps=1e-6, block_size=64, layout="dense", tokens=0, quant="none")
CONFIGS: dict[str, dict] = {
    "flash": _FLASH,
    "pro": {**_FLASH, "dim": 7168, "n_heads": 128, "q_lora_rank": 1536, "o_groups": 16, "cmp_topk": 1024},
    "tiny": dict(batch=2, seq=2, dim=64, n_heads=4, head_dim=128, rope_dim=64, q_lora_rank=32, o_lora_rank=32,
                 o_groups=2, window=8, compress_ratio=4, n_cmp=8, cmp_topk=4, index_heads=8, index_dim=128,
                 max_pos=64, norm_eps=1e-6, block_size=4, layout="dense", tokens=0, quant="none"),
}


MAX_SIZE = 2**31 - 1  # largest config size (int32 index math on the device)


class ConfigError(AttncError):
    pass


def _coerce(key: str, text: str, current):
    if isinstance(current, str):
        if text not in _CHOICES[key]:
            raise ConfigError(f"config key {key}={text[:40]}: expected one of {', '.join(_CHOICES[key])}"
                              f"{did_you_mean(text, _CHOICES[key])}")
        return text
    try:
        return float(text) if isinstance(current, float) else int(text)
    except ValueError:
        raise ConfigError(f"config key {key}={text[:40]}: expected "
                          f"{'a number' if isinstance(current, float) else 'an integer'}") from None


def resolve_config(name: str, overrides: list[str] | dict | None = None) -> dict:
    """The named config with KEY=VALUE overrides applied, validated, plus derived sizes."""
    if name not in CONFIGS:
        raise ConfigError(f"unknown config '{name}'{did_you_mean(name, CONFIGS)} (known: {', '.join(CONFIGS)})")
    cfg = dict(CONFIGS[name])
    items = overrides.items() if isinstance(overrides, dict) else [
        tuple(o.split("=", 1)) if "=" in o else (o, None) for o in (overrides or [])]
    for key, value in items:
        if key not in cfg:
            raise ConfigError(f"unknown config key '{key}'{did_you_mean(key, CONFIG_KEYS)} (known: {', '.join(CONFIG_KEYS)})")
        if value is None:
            raise ConfigError(f"config key {key}: no value (KEY=VALUE)")
        cfg[key] = _coerce(key, value, cfg[key]) if isinstance(value, str) else (
            _coerce(key, value, cfg[key]) if isinstance(cfg[key], str) else type(cfg[key])(value))
    _validate(cfg)
    cfg.update(derived_sizes(cfg))
    cfg["name"] = name
    return cfg


def _validate(cfg: dict):
    def need(cond, msg):
        if not cond:
            raise ConfigError(msg)

    for k in CONFIG_KEYS:
        if k in _CHOICES:
            continue
        if k not in ("norm_eps", "compress_ratio", "tokens"):
            need(cfg[k] > 0, f"{k} must be positive, got {cfg[k]}")
        if k != "norm_eps":  # a tensor dim; what a command may allocate is checked against the machine later
            need(cfg[k] <= MAX_SIZE, f"{k} must be at most {MAX_SIZE}, got {str(cfg[k])[:24]}")
    need(math.isfinite(cfg["norm_eps"]), f"norm_eps must be finite, got {cfg['norm_eps']}")
    need(cfg["compress_ratio"] in (0, 4, 128), f"compress_ratio must be 0, 4 or 128, got {cfg['compress_ratio']}")
    need(cfg["rope_dim"] % 2 == 0 and cfg["rope_dim"] <= cfg["head_dim"], "rope_dim must be even and <= head_dim")
    need(cfg["n_heads"] % cfg["o_groups"] == 0, "n_heads must be a multiple of o_groups")
    need(cfg["norm_eps"] > 0, "norm_eps must be positive")
    need(cfg["index_dim"] >= cfg["rope_dim"] and cfg["index_dim"] & (cfg["index_dim"] - 1) == 0,
         "index_dim must be a power of two (Hadamard) and >= rope_dim")
    need(cfg["layout"] in LAYOUTS, f"layout must be one of {', '.join(LAYOUTS)}, got {cfg['layout']!r}")
    need(cfg["quant"] in QUANTS, f"quant must be one of {', '.join(QUANTS)}, got {cfg['quant']!r}")
    need(cfg["tokens"] >= 0, f"tokens must be >= 0 (0 = batch*seq), got {cfg['tokens']}")
    need(cfg["tokens"] in (0, cfg["batch"] * cfg["seq"]) or cfg["layout"] == "packed",
         "tokens is the token count of the packed layout (layout=packed); a dense step has batch*seq")


def derived_sizes(cfg: dict) -> dict:
    packed = cfg.get("layout") == "packed"
    return dict(
        # the step's token rows: batch*seq (dense), or the packed layout's `tokens` (0 = batch*seq)
        tokens=cfg["tokens"] if packed and cfg.get("tokens") else cfg["batch"] * cfg["seq"],
        cu_len=cfg["batch"] + 1,  # cu_seqlens of the packed layout: one prefix sum per row, and 0
        rope_half=cfg["rope_dim"] // 2,
        q_dim=cfg["n_heads"] * cfg["head_dim"],
        heads_per_group=cfg["n_heads"] // cfg["o_groups"],
        group_in=cfg["n_heads"] // cfg["o_groups"] * cfg["head_dim"],
        o_cat=cfg["o_groups"] * cfg["o_lora_rank"],
        softmax_scale=1.0 / math.sqrt(cfg["head_dim"]),
        # compressor state rows a|z per token: two halves (A, B) with overlap (m = 4), one without
        cmp_width=(2 if cfg["compress_ratio"] == 4 else 1) * cfg["head_dim"],
        cmp_rows=(2 if cfg["compress_ratio"] == 4 else 1) * cfg["compress_ratio"],
        index_width=2 * cfg["index_dim"],
        index_qdim=cfg["index_heads"] * cfg["index_dim"],
        # paged layer forms (decode_*_paged): logical blocks per row and pool blocks of the window ring and of the
        # compressed caches (a pool holds exactly every row's blocks)
        ring_blocks=-(-cfg["window"] // cfg["block_size"]),
        cmp_blocks=-(-cfg["n_cmp"] // cfg["block_size"]),
        ring_pool=cfg["batch"] * -(-cfg["window"] // cfg["block_size"]),
        cmp_pool=cfg["batch"] * -(-cfg["n_cmp"] // cfg["block_size"]),
    )


def with_compress_ratio(cfg: dict, ratio: int) -> dict:
    """`cfg` for a layer of compression ratio `ratio` (0 = window only): the compressed cache holds every entry
    up to max_pos (n_cmp = max_pos // ratio), and an HCA layer attends all of them (no top-k cap). A max_pos
    that holds no complete block (tiny's 64 for m = 128) becomes 2·ratio, so that every stage builds for every
    config as it is (the RoPE tables and positions follow it)."""
    out = dict(cfg, compress_ratio=ratio)
    if ratio:
        if out["max_pos"] < ratio:
            out["max_pos"] = 2 * ratio
        out["n_cmp"] = out["max_pos"] // ratio
    out.update(derived_sizes(out))
    return out


def public_view(cfg: dict) -> dict:
    """The config as shown by `attnc show-config`: the keys, then derived sizes."""
    return {k: cfg[k] for k in (*CONFIG_KEYS, *derived_sizes(cfg))}
