// pto-plan-memory: with a forced row chunk, the token-loop body becomes an scf.for over chunks of 2 output rows.
// RUN: attnc compile sparse_attn_core --config tiny -p 'gather-keys,tile-softmax{kv-tile=16},parallelize-tokens{rows=1},tile-matmul{k=512},lower-to-tiles,canonicalize,cse,pto-legalize,canonicalize,cse,pto-plan-memory{rows=2}' -o - | filecheck %s
// CHECK-LABEL: func.func @sparse_attn_core
// CHECK: tile.parallel
// CHECK: scf.for {{.*}} -> (tensor<4x4x128xbf16>)
// CHECK: tile.view {{.*}} -> tensor<1x2x1xf32>
// CHECK: func.return
