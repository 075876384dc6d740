// schedule-compressor: compress_pool -> one pooling per batch row read from the state rings in place (row), or
// each token's window gathered from [ring | step] (token), or per batch row a loop over the blocks its step
// completes (a runtime count from start_pos) pooling views of the ring and the step rows (block, m = 128; with
// overlap, m = 4: block w-1's and block w's ring slots, [4, 128]-slot views of the [8, 256] rings, and the step rows).
// RUN: attnc compile compressor --config tiny -p 'schedule-compressor{schedule=row}' -o - | filecheck %s --check-prefix=ROW
// RUN: attnc compile compressor --config tiny -p 'schedule-compressor{schedule=token}' -o - | filecheck %s --check-prefix=TOKEN
// RUN: attnc compile compressor --config tiny --set compress_ratio=128 --set max_pos=512 -p 'schedule-compressor{schedule=block}' -o - | filecheck %s --check-prefix=BLOCK
// RUN: attnc compile compressor --config tiny -p 'schedule-compressor' -o - | filecheck %s --check-prefix=PAIR
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
// PAIR-LABEL: func.func @compressor
// PAIR-NOT: attn.compress_pool
// PAIR-NOT: attn.gather_rows %{{.*}}state
// PAIR: tile.parallel
// PAIR: tile.read %start_pos
// PAIR: scf.for
// PAIR: tile.view %kv_state[{{.*}}] {pad = "zero"} : tensor<2x8x256xf32> -> tensor<1x4x128xf32>
// PAIR: tile.view %score_state[{{.*}}] {pad = "zero"} : tensor<2x8x256xf32> -> tensor<1x4x128xf32>
// PAIR: tile.view %kv_state[{{.*}}] {pad = "zero"} : tensor<2x8x256xf32> -> tensor<1x2x128xf32>
// PAIR: attn.exp
// PAIR: tile.assemble
// PAIR: {merge_scope = 1 : i64, max_trips = 1 : i64}
// PAIR-NOT: attn.compress_pool
// PAIR: func.return
