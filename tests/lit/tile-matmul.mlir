// tile-matmul: a matmul with contraction K > k -> first K chunk tile.matmul, the rest tile.matmul_acc in scf.for.
// RUN: attnc compile qkv_proj_rope --config flash -p 'cse,tile-matmul{k=512}' -o - | filecheck %s
// CHECK-LABEL: func.func @qkv_proj_rope
// CHECK: tile.view
// CHECK: tile.matmul
// CHECK: scf.for
// CHECK: tile.matmul_acc
// CHECK: func.return
