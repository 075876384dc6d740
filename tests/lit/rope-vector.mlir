// rope-vector: interleaved RoPE on the vector unit: pairs transposed to [even ; odd] planes, f32 rotation, transposed back.
// RUN: attnc compile qkv_proj_rope --config tiny -p 'cse,rope-vector' -o - | filecheck %s
// CHECK-LABEL: func.func @qkv_proj_rope
// CHECK-NOT: attn.rope
// CHECK: attn.transpose
// CHECK: attn.cast
// CHECK: attn.transpose
// CHECK-NOT: attn.rope
// CHECK: func.return
// no cube work: the only matmuls are the projections (wq_a, wq_b, wkv)
// RUN: attnc compile qkv_proj_rope --config tiny -p 'rope-vector' -o - | filecheck %s --check-prefix=CUBE
// CUBE-COUNT-3: attn.matmul
// CUBE-NOT: attn.matmul
// q and kv rotate at the same positions: one cos and one sin gather shared by both
// RUN: attnc compile qkv_proj_rope --config tiny -p 'rope-vector' -o - | filecheck %s --check-prefix=SHARED
// SHARED-COUNT-2: attn.gather_rows
// SHARED-NOT: attn.gather_rows
