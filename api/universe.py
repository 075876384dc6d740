"""attnc's dialects and passes for xDSL's own tools (`xdsl-opt`, `xdsl-gui`): registered through the
`xdsl.universe` entry point in pyproject.toml, so `xdsl-opt file.mlir -p fuse-rmsnorm` reads attnc IR."""
from xdsl.universe import Universe


def _attn():
    from attnc.ir.tensor_dialect import Attn

    return Attn


def _tile():
    from attnc.ir.tile_dialect import Tile

    return Tile


def _pass(name: str):
    def load():
        from attnc.passes import pass_class

        return pass_class(name)

    return load


def _attnc_passes() -> dict:
    from attnc.passes import _XDSL_PASSES, pass_names  # attnc's and its targets' passes (not xDSL's own)

    return {name: _pass(name) for name in pass_names() if name not in _XDSL_PASSES}


ATTNC_UNIVERSE = Universe(all_dialects={"attn": _attn, "tile": _tile}, all_passes=_attnc_passes())
