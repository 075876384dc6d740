"""The independent FP32 references of `tests/reference/` as functions of a stage's inputs, for `attnc plot errors`.

They live beside the packages in a source checkout (written from the spec, sharing no code with attnc, so they are
not part of the installed packages); without a checkout, or for a stage they do not cover, there is none and the
caller says so. A layer step's reference recomputes everything from token rows, so it needs the step's history:
it is given only for a step at position 0 of every row (nothing before it exists)."""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

# kernel parameter name -> the layer reference's weight name, where they differ
_REFERENCE_WEIGHT_NAMES = {"wic_kv": "ic_kv", "wic_gate": "ic_gate"}
_STEP_PARAMS = ("x", "start_pos", "rope_cos", "rope_sin")


def _checkout_root() -> str | None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # api/ sits in the checkout's root
    return root if os.path.isfile(os.path.join(root, "tests", "reference", "dsv4_reference.py")) else None


def _module(name: str):
    root = _checkout_root()
    if root is None:
        return None
    if root not in sys.path:
        sys.path.append(root)  # after the installed packages: `tests.reference` only
    return importlib.import_module(f"tests.reference.{name}")


def dequantized(inputs: dict) -> dict:
    """A quantised checkpoint's inputs as the FP32 references take them: each i8 weight `w` times its per-channel
    `w_scale` in f32 (exactly the weight the kernel multiplies by), the scales themselves dropped."""
    return {n: v.float() * inputs[f"{n}_scale"] if f"{n}_scale" in inputs else v
            for n, v in inputs.items() if not (n.endswith("_scale") and n[:-6] in inputs)}


def fp32_reference(stage_name: str, cfg: dict, state_names: list[str], start_pos) -> tuple[Callable | None, str]:
    """(reference(inputs) -> FP32 outputs by name, or None; why there is none)."""
    layer_kind = stage_name.removeprefix("decode_") if stage_name.startswith("decode_") else None
    if stage_name not in ("qkv_proj_rope", "sparse_attn_core", "sparse_attn") and layer_kind is None:
        return None, f"tests/reference has no FP32 reference of {stage_name} alone (it is checked in its layer)"
    if layer_kind is not None and start_pos is not None and any(int(p) for p in start_pos.reshape(-1).tolist()):
        return None, (f"the FP32 reference of a {stage_name} step recomputes its history from token rows: "
                      f"only a step at position 0 has one (--start-pos 0)")
    stages = _module("dsv4_reference")
    if stages is None:
        return None, "no FP32 reference here (tests/reference/ is in a source checkout, not installed)"
    if stage_name == "qkv_proj_rope":
        return (lambda inputs: stages.qkv_proj_rope_reference(dequantized(inputs), cfg)), ""
    if stage_name == "sparse_attn_core":
        return (lambda inputs: {"core": stages.sparse_attn_reference(inputs, cfg)["core"]}), ""
    if stage_name == "sparse_attn":
        return (lambda inputs: {"out": stages.sparse_attn_reference(inputs, cfg)["out"]}), ""
    layers = _module("dsv4_layer_reference")

    def layer(inputs: dict) -> dict:
        weights = {_REFERENCE_WEIGHT_NAMES.get(n, n): v for n, v in dequantized(inputs).items()
                   if n not in _STEP_PARAMS and n not in state_names}
        x = inputs["x"]
        y = layers.layer_reference(layer_kind, cfg, weights, x.float(), inputs["start_pos"].tolist(), x.shape[1])
        return {"out": y["y"]}

    return layer, ""
