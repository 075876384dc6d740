// update-in-place: the ring returned under its parameter's name is written in place (in_place = true).
// RUN: attnc compile decode_swa --config tiny -p 'fuse-rmsnorm,rope-selector-matmul,gather-keys,tile-softmax{kv-tile=32},parallelize-tokens{rows=16},lower-to-tiles,update-in-place' -o - | filecheck %s
// CHECK-LABEL: func.func @decode_swa
// CHECK: tile.scatter_rows %kv_ring, {{.*}} {in_place = true}
// CHECK: func.return
