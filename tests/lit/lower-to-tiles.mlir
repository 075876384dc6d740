// lower-to-tiles: the remaining attn ops -> tile ops (row reductions, row/col expands, scalar ops, views).
// RUN: attnc compile qkv_proj_rope --config tiny -p 'fuse-rmsnorm,rope-selector-matmul,parallelize-tokens{rows=16},lower-to-tiles' -o - | filecheck %s
// CHECK-LABEL: func.func @qkv_proj_rope
// CHECK-NOT: attn.
// CHECK: tile.row_sum
// CHECK: tile.row_expand_mul
// CHECK-NOT: attn.
// CHECK: func.return
