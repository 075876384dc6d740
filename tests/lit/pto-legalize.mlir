// pto-legalize: a token-loop gather whose table and ids come from before the loop is hoisted to the host side.
// RUN: attnc compile sparse_attn_core --config tiny -p 'gather-keys,tile-softmax{kv-tile=16},parallelize-tokens{rows=1},tile-matmul{k=512},lower-to-tiles,canonicalize,cse,pto-legalize' -o - | filecheck %s
// CHECK-LABEL: func.func @sparse_attn_core
// CHECK: tile.gather_rows {{.*}} -> tensor<4x12x128xbf16>
// CHECK: tile.parallel
// CHECK-NOT: tile.gather_rows
// CHECK: func.return
