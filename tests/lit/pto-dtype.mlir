// pto-dtype: bf16 -> f16 inside the function, casts at the bf16 interface (the signature keeps bf16).
// RUN: attnc compile qkv_proj_rope --config tiny -p 'fuse-rmsnorm,rope-selector-matmul,parallelize-tokens{rows=1},lower-to-tiles,pto-dtype{dtype=f16}' -o - | filecheck %s
// CHECK-LABEL: func.func @qkv_proj_rope
// CHECK-SAME: xbf16>
// CHECK: tile.cast %x {{.*}}xbf16>) -> tensor<{{.*}}xf16>
// CHECK: tile.parallel
// CHECK: xf16>
// CHECK: func.return {{.*}}xbf16>
