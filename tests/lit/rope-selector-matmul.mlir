// rope-selector-matmul: interleaved RoPE -> 0/1 selector matmuls (de-interleave), f32 rotation, re-interleave.
// RUN: attnc compile qkv_proj_rope --config tiny -p 'cse,rope-selector-matmul' -o - | filecheck %s
// CHECK-LABEL: func.func @qkv_proj_rope
// CHECK-NOT: attn.rope
// CHECK: attn.matmul
// CHECK: attn.cast
// CHECK-NOT: attn.rope
// CHECK: func.return
// q and kv rotate at the same positions: one cos and one sin gather shared by both (no CSE before the pass)
// RUN: attnc compile qkv_proj_rope --config tiny -p 'rope-selector-matmul' -o - | filecheck %s --check-prefix=SHARED
// SHARED-COUNT-2: attn.gather_rows
// SHARED-NOT: attn.gather_rows
