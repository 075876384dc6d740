// tile-matmul: a matmul with contraction K > k -> first K chunk tile.matmul, the rest tile.matmul_acc in scf.for.
// RUN: attnc compile qkv_proj_rope --config flash -p 'cse,tile-matmul{k=512}' -o - | filecheck %s
// CHECK-LABEL: func.func @qkv_proj_rope
// CHECK: tile.view
// CHECK: tile.matmul
// CHECK: scf.for
// CHECK: tile.matmul_acc
// CHECK: func.return

// tasks=N: a matmul that would make fewer than N cube tasks (M tiles x N tiles x K chunks) states a narrower
// N tile (`n_tile`), unless a task would do less than task-macs of work: at tiny, only with task-macs=1.
// RUN: attnc compile qkv_proj_rope --config tiny -p 'quantize-w8a8,fuse-rmsnorm,rope-selector-matmul,tile-matmul{tasks=4 task-macs=1},lower-to-tiles' -o - | filecheck %s --check-prefix=TASKS
// TASKS: tile.matmul %{{[a-z_0-9]+}}, %wq_a {n_tile = 16 : i64
// RUN: attnc compile qkv_proj_rope --config tiny -p 'quantize-w8a8,fuse-rmsnorm,rope-selector-matmul,tile-matmul{tasks=4},lower-to-tiles' -o - | filecheck %s --check-prefix=SMALL
// SMALL-NOT: n_tile
