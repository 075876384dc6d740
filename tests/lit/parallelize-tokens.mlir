// parallelize-tokens: per-token work -> one tile.parallel over token rows in chunks of `rows`.
// RUN: attnc compile sparse_attn --config tiny -p 'gather-keys,tile-softmax{kv-tile=32},parallelize-tokens{rows=2}' -o - | filecheck %s
// CHECK-LABEL: func.func @sparse_attn
// CHECK: tile.parallel
// CHECK-SAME: rows = 2
// CHECK: tile.assemble
// CHECK: tile.yield
// CHECK-NOT: tile.parallel
// CHECK: func.return
