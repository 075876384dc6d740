// pypto-legalize: a cast to i8 becomes casts to i32 (by its mode), f16 (round) and i8 (trunc, saturated): pypto
// 0.2.0 casts to int8 only from f16. An integer source starts at f16; an f16 -> i8 trunc saturated cast stays.
// RUN: attnc compile %s -p pypto-legalize -o - | filecheck %s
// CHECK-LABEL: func.func @quant
// CHECK: %[[W:.*]] = tile.cast %x {rounding = "round"} : (tensor<4x32xf32>) -> tensor<4x32xi32>
// CHECK-NEXT: %[[H:.*]] = tile.cast %[[W]] {rounding = "round"} : (tensor<4x32xi32>) -> tensor<4x32xf16>
// CHECK-NEXT: %[[Q:.*]] = tile.cast %[[H]] {rounding = "trunc", saturate = true} : (tensor<4x32xf16>) -> tensor<4x32xi8>
// CHECK-NEXT: %[[H2:.*]] = tile.cast %n {rounding = "round"} : (tensor<4x32xi32>) -> tensor<4x32xf16>
// CHECK-NEXT: %[[M:.*]] = tile.cast %[[H2]] {rounding = "trunc", saturate = true} : (tensor<4x32xf16>) -> tensor<4x32xi8>
// CHECK-NEXT: %[[K:.*]] = tile.cast %h {rounding = "trunc", saturate = true} : (tensor<4x32xf16>) -> tensor<4x32xi8>
// CHECK-NEXT: func.return %[[Q]], %[[M]], %[[K]]
builtin.module {
  func.func @quant(%x: tensor<4x32xf32>, %n: tensor<4x32xi32>, %h: tensor<4x32xf16>) -> (tensor<4x32xi8>, tensor<4x32xi8>, tensor<4x32xi8>) attributes {arg_names = ["x", "n", "h"], result_names = ["q", "m", "k"]} {
    %q = "tile.cast"(%x) <{rounding = "round", saturate = true}> {loc = "q.py:1"} : (tensor<4x32xf32>) -> tensor<4x32xi8>
    %m = "tile.cast"(%n) <{rounding = "rint"}> {loc = "q.py:2"} : (tensor<4x32xi32>) -> tensor<4x32xi8>
    %k = "tile.cast"(%h) <{rounding = "trunc", saturate = true}> {loc = "q.py:3"} : (tensor<4x32xf16>) -> tensor<4x32xi8>
    func.return %q, %m, %k : tensor<4x32xi8>, tensor<4x32xi8>, tensor<4x32xi8>
  }
}
