// schedule-compressor: compress_pool -> one pooling per batch row read from the state rings in place (row), or
// each token's window gathered from [ring | step] (token), or per batch row a loop over the blocks its step
// completes (a runtime count from start_pos) pooling views of the ring and the step rows (block, m = 128).
// RUN: attnc compile compressor --config tiny -p 'schedule-compressor{schedule=row}' -o - | filecheck %s --check-prefix=ROW
// RUN: attnc compile compressor --config tiny -p 'schedule-compressor{schedule=token}' -o - | filecheck %s --check-prefix=TOKEN
// RUN: attnc compile compressor --config tiny --set compress_ratio=128 --set max_pos=512 -p 'schedule-compressor{schedule=block}' -o - | filecheck %s --check-prefix=BLOCK
// ROW-LABEL: func.func @compressor
// ROW-NOT: attn.compress_pool
// ROW-NOT: attn.concat
// ROW-NOT: attn.transpose
// ROW: attn.slice
// ROW: attn.exp
// ROW: attn.div
// ROW-NOT: attn.compress_pool
// ROW: func.return
// TOKEN-LABEL: func.func @compressor
// TOKEN-NOT: attn.compress_pool
// TOKEN: attn.concat
// TOKEN: attn.gather_rows
// TOKEN: attn.exp
// TOKEN-NOT: attn.compress_pool
// TOKEN: func.return
// BLOCK-LABEL: func.func @compressor
// BLOCK-NOT: attn.compress_pool
// BLOCK: tile.parallel
// BLOCK: tile.read %start_pos
// BLOCK: scf.for
// BLOCK-NOT: attn.gather_rows
// BLOCK: tile.view %kv_state
// BLOCK: tile.view %score_state
// BLOCK: attn.exp
// BLOCK: tile.assemble
// BLOCK-NOT: attn.compress_pool
// BLOCK: func.return
