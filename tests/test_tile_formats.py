"""Every tile op prints in a custom form (tile.view / tile.assemble / tile.parallel / tile.yield have formats of
their own), and each printed form parses back and prints again byte for byte."""
import pytest

import attnc


@pytest.mark.parametrize("stage", ["sparse_attn", "decode_csa", "decode_hca_paged", "compressor"])
@pytest.mark.parametrize("target", ["interp", "pypto"])
def test_tile_ops_print_custom_and_round_trip(stage, target):
    s = attnc.build(stage, config="tiny")
    attnc.compile(s, target=target)
    text = attnc.print_ir(s)
    assert '"tile.' not in text and "operandSegmentSizes" not in text
    assert "tile.parallel " in text and " inits(" in text and "tile.yield " in text and "tile.view " in text
    for kw in ({}, {"debuginfo": True}, {"generic": True}):
        printed = attnc.print_ir(s, **kw)
        assert attnc.print_ir(attnc.parse(printed), **kw) == printed
    assert attnc.print_ir(attnc.parse(attnc.print_ir(s, generic=True))) == text


def test_view_with_a_runtime_valid_shape():
    s = attnc.build("decode_csa", config="tiny")
    attnc.compile(s, target="pypto")
    views = [ln for ln in attnc.print_ir(s).splitlines() if "tile.view " in ln and " valid[" in ln]
    assert views and all('pad = "zero"' in ln for ln in views)
