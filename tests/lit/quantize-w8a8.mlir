// quantize-w8a8: wq_b's projection becomes a per-row int8 activation (saturating cast), an int8 x int8 -> int32
// matmul and the dequantisation in f32; with targets=none the activation stays bf16.
// RUN: attnc compile qkv_proj_rope --config tiny --set quant=w8a8 -p 'quantize-w8a8' -o - | filecheck %s
// RUN: attnc compile qkv_proj_rope --config tiny --set quant=w8a8 -p 'quantize-w8a8{targets=none}' -o - | filecheck %s --check-prefix=NONE
// CHECK-LABEL: func.func @qkv_proj_rope
// CHECK: attn.cast {{.*}} {rounding = "rint", saturate = true} : (tensor<4x32xf32>) -> tensor<4x32xi8>
// CHECK: attn.matmul {{.*}} : (tensor<4x32xi8>, tensor<32x512xi8>) -> tensor<4x512xi32>
// CHECK: func.return
// NONE-LABEL: func.func @qkv_proj_rope
// NONE-NOT: -> tensor<4x32xi8>
// NONE: func.return
