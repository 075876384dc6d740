"""Paged caches (issue 8 §3): a cache of `length` slots per batch row lives in a pool of fixed-size blocks,
`pool[num_blocks, block_size, d]`, and a block table `block_table[B, ceil(length / block_size)]` (i32) maps row
b's logical block j to a physical block. Slot `slot` of row b is pool row
`block_table[b, slot // block_size] * block_size + slot % block_size` of the flattened pool — the same global row
ids the dense layout has (`b * length + slot`), one more indirection. Writes are `scatter_rows` at those ids
(rings.ring_store / store_completed with `rows_of`). The attention reads hand the pools and tables to
cache_attention, which reads them in place; `read_paged` (a gather of every row's logical table) is left for the
indexer's read of idx_cmp.

The block table is the caller's: every (row, logical block) must map to a block of the pool, and no physical
block may be mapped twice (two rows writing one block would race). Both are checked on the host
(kernels_src/inputs.py INDEX_INPUTS / DISTINCT_INPUTS); the kernel itself trusts the table.
"""
from attnc.ir.dsl import paged_rows_of, paged_table


def paged_rows(cfg, block_table):
    """rows_of for rings.ring_store/store_completed: slots [B, ...] of each row -> pool row ids."""
    def rows_of(slot, row=None):  # row: each slot's batch row when it is not the leading index (packed layout)
        return paged_rows_of(block_table, cfg["block_size"], slot, row)

    return rows_of


def read_paged(cfg, pool, block_table, length: int):
    """The logical table [B, length, d] of a paged cache, its rows gathered from the pool through the block
    table (what the dense layout holds as [B, length, d])."""
    return paged_table(pool, block_table, length)
