// pto-legalize: a token-loop gather whose table and ids come from before the loop is hoisted to the host side.
// RUN: attnc compile sparse_attn_core --config tiny -p 'gather-keys,tile-softmax{kv-tile=16},parallelize-tokens{rows=1},tile-matmul{k=512},lower-to-tiles,canonicalize,cse,pto-legalize' -o - | filecheck %s
// CHECK-LABEL: func.func @sparse_attn_core
// CHECK: tile.gather_rows {{.*}} -> tensor<4x12x128xbf16>
// CHECK: tile.parallel
// CHECK-NOT: tile.gather_rows
// CHECK: func.return

// Integer math on a token's row (the indexer's visible-entry count min((pos + 1) // 4, NC)) runs before the loop on
// every token's row; the loop views the token's row of the result (as f32, the mask's operand).
// RUN: attnc compile indexer --config tiny -p 'rope-selector-matmul,parallelize-tokens{rows=1},tile-matmul{k=512},lower-to-tiles,canonicalize,cse,pto-legalize' -o - | filecheck %s --check-prefix=INT
// INT-LABEL: func.func @indexer
// INT: tile.floordiv {{.*}} -> tensor<4x1xi32>
// INT: tile.cast {{.*}} : (tensor<4x16xi32>) -> tensor<4x16xf32>
// INT: tile.parallel
// INT-NOT: tile.floordiv
// INT: tile.view {{.*}} : tensor<4x16xf32> -> tensor<1x16xf32>
// INT: tile.yield
