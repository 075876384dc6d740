"""DeepSeek-V4 decode attention stages written in the attnc DSL. Importing this package registers them."""
from attnc.ir.dsl import STAGES, build_stage

from . import compressor, indexer, layers, qkv_proj_rope, sparse_attn  # noqa: F401  (registration)
from .configs import CONFIGS, ConfigError, resolve_config

__all__ = ["STAGES", "CONFIGS", "ConfigError", "resolve_config", "build_stage"]
