// rope-pair-swap: interleaved RoPE -> x * [c, c, ..] + (x @ pair swap) * [-s, s, ..]: one 0/1 matmul per rotated
// tensor (q and kv), plus the cos and sin rows repeated per pair once (shared): 2 + 2 matmuls after wq_a/wq_b/wkv.
// RUN: attnc compile qkv_proj_rope --config tiny -p 'fuse-rmsnorm,rope-pair-swap' -o - | filecheck %s
// CHECK-LABEL: func.func @qkv_proj_rope
// CHECK-NOT: attn.rope
// CHECK-COUNT-2: attn.gather_rows
// CHECK-NOT: attn.gather_rows
// CHECK: func.return
// RUN: attnc compile qkv_proj_rope --config tiny -p 'fuse-rmsnorm,rope-pair-swap' -o - | grep -c attn.matmul | filecheck %s --check-prefix=COUNT
// COUNT: 7
