// gather-keys: cache_attention -> each token's keys gathered from [ring | step | cache], then sparse_attention.
// RUN: attnc compile sparse_attn --config tiny -p 'cse,gather-keys' -o - | filecheck %s
// CHECK-LABEL: func.func @sparse_attn
// CHECK-NOT: attn.cache_attention
// CHECK: attn.concat
// CHECK: attn.gather_rows
// CHECK: attn.sparse_attention
// CHECK-NOT: attn.cache_attention
// CHECK: func.return
