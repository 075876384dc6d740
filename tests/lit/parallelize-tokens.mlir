// parallelize-tokens: per-token work -> one tile.parallel over token rows in chunks of `rows`.
// RUN: attnc compile sparse_attn --config tiny -p 'gather-keys,tile-softmax{kv-tile=32},parallelize-tokens{rows=2}' -o - | filecheck %s
// CHECK-LABEL: func.func @sparse_attn
// CHECK: tile.parallel
// CHECK-SAME: rows = 2
// CHECK: tile.assemble
// CHECK: tile.yield
// CHECK-NOT: tile.parallel
// CHECK: func.return

// A loop that multiplies token rows by a weight (qkv_proj_rope's projections) takes weight-rows and weight-vec-tile;
// the attention core's loop (sparse_attn_core: no weight) keeps rows and the target's vector budget.
// RUN: attnc compile qkv_proj_rope --config tiny -p 'parallelize-tokens{rows=2 weight-rows=4 weight-vec-tile=16384}' -o - | filecheck %s --check-prefix=WEIGHT
// WEIGHT: tile.parallel
// WEIGHT-SAME: vec_tile_elems = 16384
// WEIGHT-SAME: rows = 4
// RUN: attnc compile sparse_attn_core --config tiny -p 'gather-keys,tile-softmax{kv-tile=32},parallelize-tokens{rows=2 weight-rows=4 weight-vec-tile=16384}' -o - | filecheck %s --check-prefix=NOWEIGHT
// NOWEIGHT: tile.parallel
// NOWEIGHT-NOT: vec_tile_elems
// NOWEIGHT-SAME: rows = 2

// A slice of a kernel parameter reshaped whole (sparse_attn's wo_a groups) is made inside the loop that reads it
// (pypto 0.2.0 copies a view made outside the loop using it); the reshape of the parameter stays outside.
// RUN: attnc compile sparse_attn --config tiny -p 'parallelize-tokens{rows=2}' -o - | filecheck %s --check-prefix=PVIEW
// PVIEW: %[[W:[a-z_0-9]+]] = attn.reshape %wo_a
// PVIEW: tile.parallel
// PVIEW: attn.slice %[[W]]
// PVIEW: attn.slice %[[W]]
// PVIEW: tile.yield
