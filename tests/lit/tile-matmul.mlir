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

// rule=cost: K chunks and N tile per matmul from the cost estimate. At flash B=64 (one 128-row chunk): wq_a
// [128, 4096] x [4096, 1024] keeps K whole with N tiles of 64; wq_b (K = 1024, N = 32768) keeps K whole and the
// target's own N tile (no n_tile): no f32 accumulation add, no A re-read per narrow N tile.
// RUN: attnc compile qkv_proj_rope --config flash -p 'quantize-w8a8,fuse-rmsnorm,rope-selector-matmul,parallelize-tokens{rows=32 weight-rows=128},tile-matmul{rule=cost tasks=24},lower-to-tiles' -o - | filecheck %s --check-prefix=COST
// COST-NOT: tile.matmul_acc
// COST: tile.matmul %{{[a-z_0-9]+}}, %wq_a {n_tile = 64 : i64
// COST: tile.matmul %{{[a-z_0-9]+}}, %wq_b {transpose_b = false}
// COST-NOT: tile.matmul_acc
// A matmul in a loop whose iterations alone fill the cube (the attention core's 64 batch rows) keeps the target's
// tiles: no n_tile anywhere in sparse_attn_core.
// RUN: attnc compile sparse_attn_core --config flash -p 'tile-softmax{kv-tile=128},parallelize-tokens{rows=32},schedule-attention,tile-matmul{rule=cost tasks=24}' -o - | filecheck %s --check-prefix=LOOP
// LOOP-NOT: n_tile
// LOOP: func.return
// A grouped projection states how many of its matmuls run side by side (`side_by_side`, sparse_attn's 8 wo_a
// groups): each gets 24/8 cube cores, N tiles of 176 (6 tasks, two whole waves of 3) instead of 64; wo_b alone
// takes 24 N tiles of 176 (one whole wave of 24) instead of 16 of 256.
// RUN: attnc compile sparse_attn --config flash --set compress_ratio=0 -p 'rope-selector-matmul,parallelize-tokens{rows=32 weight-rows=128},schedule-attention,tile-matmul{rule=cost tasks=24}' -o - | filecheck %s --check-prefix=GROUPS
// GROUPS-COUNT-8: attn.matmul %{{[a-z_0-9]+}}, %{{[a-z_0-9]+}} {side_by_side = 8 : i64, n_tile = 176 : i64
// GROUPS: attn.matmul %{{[a-z_0-9]+}}, %wo_b {n_tile = 176 : i64
// K whole, each N tile its own task where that estimates faster than the target's L1 reuse merging 4 (the flash
// m = 4 compressor's a = xn @ W_kv and z = xn @ W_gate): `l1_reuse = 1`, and `nbuffer = 1` (the estimate merges
// them by n-buffering neither). pypto-legalize states both on the loop around the matmuls.
// RUN: attnc compile compressor --config flash --set compress_ratio=4 -p 'schedule-compressor,parallelize-tokens{rows=32 weight-rows=128},tile-matmul{rule=cost tasks=24}' -o - | filecheck %s --check-prefix=REUSE
// REUSE: attn.matmul %{{[a-z_0-9]+}}, %wc_kv {{{.*}}l1_reuse = 1 : i64, nbuffer = 1 : i64
// REUSE: attn.matmul %{{[a-z_0-9]+}}, %wc_gate {{{.*}}l1_reuse = 1 : i64, nbuffer = 1 : i64
