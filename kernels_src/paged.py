"""Paged caches (issue 8 §3): a cache of `length` slots per batch row lives in a pool of fixed-size blocks,
`pool[num_blocks, block_size, d]`, and a block table `block_table[B, ceil(length / block_size)]` (i32) maps row
b's logical block j to a physical block. Slot `slot` of row b is pool row
`block_table[b, slot // block_size] * block_size + slot % block_size` of the flattened pool — the same global row
ids the dense layout has (`b * length + slot`), one more indirection. Writes are `scatter_rows` at those ids
(rings.ring_store / store_completed with `rows_of`). Reads never copy a logical table: the attention hands the
pools and tables to cache_attention (read in place by schedule-attention: one view per block), the indexer and the
packed layout's per-token gathers map their row ids through `rows_of` and gather straight from the pool.

The block table is the caller's: every (row, logical block) must map to a block of the pool, and no physical
block may be mapped twice (two rows writing one block would race). Both are checked on the host
(kernels_src/inputs.py INDEX_INPUTS / DISTINCT_INPUTS); the kernel itself trusts the table.
"""
from attnc.ir.dsl import paged_rows_of


def paged_rows(cfg, block_table):
    """rows_of for rings.ring_store/store_completed: slots [B, ...] of each row -> pool row ids."""
    def rows_of(slot, row=None):  # row: each slot's batch row when it is not the leading index (packed layout)
        return paged_rows_of(block_table, cfg["block_size"], slot, row)

    return rows_of

