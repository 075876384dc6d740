// fuse-rmsnorm: each attn.rmsnorm becomes one row pass: sum of squares, recip(sqrt(mean + eps)), scale, gamma.
// RUN: attnc compile qkv_proj_rope --config tiny -p 'cse,fuse-rmsnorm' -o - | filecheck %s
// CHECK-LABEL: func.func @qkv_proj_rope
// CHECK-NOT: attn.rmsnorm
// CHECK: attn.reduce
// CHECK: attn.sqrt
// CHECK: attn.recip
// CHECK-NOT: attn.rmsnorm
// CHECK: func.return
