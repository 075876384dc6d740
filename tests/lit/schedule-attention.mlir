// schedule-attention: cache_attention -> a tile.parallel over batch rows reading the ring in place (no gather).
// RUN: attnc compile sparse_attn_core --config tiny --set compress_ratio=0 -p 'parallelize-tokens{rows=32},schedule-attention' -o - | filecheck %s
// CHECK-LABEL: func.func @sparse_attn_core
// CHECK-NOT: attn.cache_attention
// CHECK: tile.parallel
// CHECK-NOT: attn.gather_rows
// CHECK: attn.matmul
// CHECK-NOT: attn.cache_attention
// CHECK: func.return
