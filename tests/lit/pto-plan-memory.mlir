// pto-plan-memory: with a forced row chunk, the token-loop body becomes an scf.for over chunks of 2 output rows.
// RUN: attnc compile sparse_attn_core --config tiny -p 'gather-keys,tile-softmax{kv-tile=16},parallelize-tokens{rows=1},tile-matmul{k=512},lower-to-tiles,canonicalize,cse,pto-legalize,canonicalize,cse,pto-plan-memory{rows=2}' -o - | filecheck %s
// CHECK-LABEL: func.func @sparse_attn_core
// CHECK: tile.parallel
// CHECK: scf.for {{.*}} -> (tensor<4x4x128xbf16>)
// CHECK: tile.view {{.*}} -> tensor<1x2x1xf32>
// CHECK: func.return

// Column chunks: qkv_proj_rope's q heads are a reshape of one projection row, so 2 heads take 256 of its 512
// columns: the weight's columns at the chunk's offset, the product reshaped into 2 heads.
// RUN: attnc compile qkv_proj_rope --config tiny -p 'fuse-rmsnorm,rope-selector-matmul,parallelize-tokens{rows=1},tile-matmul{k=512},lower-to-tiles,canonicalize,cse,pto-legalize,canonicalize,cse,pto-plan-memory{rows=2}' -o - | filecheck %s --check-prefix=COL
// COL: tile.parallel
// COL: scf.for {{.*}} -> (tensor<4x4x128xbf16>)
// COL: tile.view %wq_b[{{.*}}] {pad = "zero"} : tensor<32x512xbf16> -> tensor<32x256xbf16>
// COL: tile.matmul {{.*}} -> tensor<1x256xf32>
// COL-NEXT: tile.reshape {{.*}} : (tensor<1x256xf32>) -> tensor<1x2x128xf32>
