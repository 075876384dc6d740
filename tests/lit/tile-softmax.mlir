// tile-softmax: sparse_attention -> online softmax over KV tiles (row max, exp, row sum, P·V) with key views.
// RUN: attnc compile sparse_attn --config tiny -p 'gather-keys,tile-softmax{kv-tile=32}' -o - | filecheck %s
// CHECK-LABEL: func.func @sparse_attn
// CHECK-NOT: attn.sparse_attention
// CHECK: tile.view
// CHECK: attn.exp
// CHECK: attn.reduce
// CHECK-NOT: attn.sparse_attention
// CHECK: func.return
