// pypto-legalize: the facts the pypto 0.2.0 program needs, as attributes the emitter prints from.
// The HCA core's output is written whole by its token loop (the output parameter is carried, no fill), and its
// key concat has zero-padded pieces (assembled into one scratch tensor, padding rows zeroed).
// RUN: attnc compile hca_attn_core --config tiny -p 'tile-softmax{kv-tile=128},parallelize-tokens{rows=32},schedule-attention,tile-matmul{k=512},lower-to-tiles,canonicalize,cse,update-in-place,pypto-legalize' -o - | filecheck %s
// CHECK-LABEL: func.func @hca_attn_core
// CHECK-SAME: in_out = []
// CHECK-SAME: pypto_legalized
// CHECK: %[[INIT:.*]] = tile.full {buffer = "output", output = 0 : i64
// CHECK: tile.parallel {{.*}} inits(%[[INIT]] :
// CHECK: tile.concat {{.*}} {packed = true, padded = [false, true, false, true]
// CHECK: func.return

// A stage that updates its caches in place: one in/out parameter per cache.
// RUN: attnc compile decode_swa --config tiny -p 'fuse-rmsnorm,rope-selector-matmul,tile-softmax{kv-tile=128},parallelize-tokens{rows=32},schedule-attention,tile-matmul{k=512},lower-to-tiles,canonicalize,cse,update-in-place,pypto-legalize' -o - | filecheck %s --check-prefix=SWA
// SWA-LABEL: func.func @decode_swa
// SWA-SAME: in_out = ["kv_ring"]
