// pypto-legalize: the facts the pypto 0.2.0 program needs, as attributes the emitter prints from.
// The HCA core's output is written whole by its token loop (the output parameter is carried, no fill), and its
// key concat has zero-padded pieces: rewritten into assembles at the pieces' row offsets into a local buffer
// (a pypto.tensor: no copy task per piece, which a pypto.concat costs) that lists them (`pieces`), a zero-padded
// piece followed by an scf.if assembling zeros at its padding rows (pypto assembles the valid rows only).
// RUN: attnc compile hca_attn_core --config tiny -p 'tile-softmax{kv-tile=128},parallelize-tokens{rows=32},schedule-attention,tile-matmul{k=512},lower-to-tiles,canonicalize,cse,update-in-place,pypto-legalize' -o - | filecheck %s
// RUN: attnc compile hca_attn_core --config tiny -p 'tile-softmax{kv-tile=128},parallelize-tokens{rows=32},schedule-attention,tile-matmul{k=512},lower-to-tiles,canonicalize,cse,update-in-place,pypto-legalize,pypto-legalize' -o - | filecheck %s
// CHECK-LABEL: func.func @hca_attn_core
// CHECK-SAME: in_out = []
// CHECK-SAME: pypto_legalized
// CHECK: %[[INIT:.*]] = tile.full {buffer = "output", output = 0 : i64
// CHECK: tile.parallel {{.*}} inits(%[[INIT]] :
// CHECK: %[[K:.*]] = tile.full {buffer = "local", pieces = {{\[}}[1 : i64, 0 : i64, false], [8 : i64, 1 : i64, true], [2 : i64, 9 : i64, false], [2 : i64, 11 : i64, true]], value = 0.000000e+00 : f64} : tensor<13x128xbf16>
// CHECK: %[[P0:.*]] = tile.assemble %{{.*}} into %[[K]][%{{.*}}, %{{.*}}] : tensor<1x128xbf16>, tensor<13x128xbf16>
// CHECK: %[[P1:.*]] = tile.assemble %{{.*}} into %[[P0]][%{{.*}}, %{{.*}}] : tensor<8x128xbf16>
// CHECK: %[[Z1:.*]] = scf.if
// CHECK: tile.assemble %{{.*}} into %[[P1]][%{{.*}}, %{{.*}}] valid[%{{.*}}, %{{.*}}] {valid_tile = true} : tensor<8x128xbf16>
// CHECK: %[[P2:.*]] = tile.assemble %{{.*}} into %[[Z1]][%{{.*}}, %{{.*}}] : tensor<2x128xbf16>
// CHECK: %[[P3:.*]] = tile.assemble %{{.*}} into %[[P2]][%{{.*}}, %{{.*}}] : tensor<2x128xbf16>
// CHECK: %[[Z3:.*]] = scf.if
// CHECK: tile.assemble %{{.*}} into %[[P3]][%{{.*}}, %{{.*}}] valid[%{{.*}}, %{{.*}}] {valid_tile = true} : tensor<2x128xbf16>
// CHECK: scf.yield %[[P3]]
// CHECK-NEXT: }
// CHECK-NEXT: tile.matmul %{{.*}}, %[[Z3]]
// CHECK: func.return

// A stage that updates its caches in place: one in/out parameter per cache.
// RUN: attnc compile decode_swa --config tiny -p 'fuse-rmsnorm,rope-selector-matmul,tile-softmax{kv-tile=128},parallelize-tokens{rows=32},schedule-attention,tile-matmul{k=512},lower-to-tiles,canonicalize,cse,update-in-place,pypto-legalize' -o - | filecheck %s --check-prefix=SWA
// SWA-LABEL: func.func @decode_swa
// SWA-SAME: in_out = ["kv_ring"]
