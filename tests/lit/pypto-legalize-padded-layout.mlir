// pypto-legalize: a reshape or transpose across a trailing dim narrower than the vector tile's alignment states
// the padding factor pypto 0.2.0's layout costs (the emitter reads only that): a reshape into the RoPE pairs'
// [.., 32, 2] f32 `padded_out = 8` (2 -> 16 lanes), a transpose out of them `padded_in = 8`, a reshape folding a
// keepdim reduction's [.., 1] away `padded_in = 8` (1 f32 -> the 32-byte block's 8); a reshape keeping its
// trailing dim, or into one that fills its blocks (64 f32, 16 bf16), states nothing. Running the pass again changes nothing.
// RUN: attnc compile %s -p pypto-legalize --verify-each -o - | filecheck %s
// RUN: attnc compile %s -p pypto-legalize,pypto-legalize -o - | filecheck %s
// CHECK-LABEL: func.func @padded
// CHECK: %pairs = tile.reshape %x {inplace = true, padded_out = 8 : i64} : (tensor<4x64xf32>) -> tensor<4x32x2xf32>
// CHECK: %swap = tile.transpose %pairs {padded_in = 8 : i64, perm = [0 : i64, 2 : i64, 1 : i64]}
// CHECK: %flat = tile.reshape %swap : (tensor<4x2x32xf32>) -> tensor<4x64xf32>
// CHECK: %pooled = tile.reshape %s {padded_in = 8 : i64} : (tensor<4x64x1xf32>) -> tensor<4x64xf32>
// CHECK: %rows = tile.reshape %h {inplace = true} : (tensor<4x64x16xbf16>) -> tensor<256x16xbf16>
builtin.module {
  func.func @padded(%x: tensor<4x64xf32>, %y: tensor<4x64x8xf32>, %h: tensor<4x64x16xbf16>) -> (tensor<4x64xf32>, tensor<4x64xf32>, tensor<256x16xbf16>) attributes {arg_names = ["x", "y", "h"], result_names = ["a", "b", "c"]} {
    %pairs = "tile.reshape"(%x) {loc = "t.py:1"} : (tensor<4x64xf32>) -> tensor<4x32x2xf32>
    %swap = "tile.transpose"(%pairs) <{perm = [0 : i64, 2 : i64, 1 : i64]}> {loc = "t.py:2"} : (tensor<4x32x2xf32>) -> tensor<4x2x32xf32>
    %flat = "tile.reshape"(%swap) {loc = "t.py:3"} : (tensor<4x2x32xf32>) -> tensor<4x64xf32>
    %s = "tile.row_sum"(%y) {loc = "t.py:4"} : (tensor<4x64x8xf32>) -> tensor<4x64x1xf32>
    %pooled = "tile.reshape"(%s) {loc = "t.py:5"} : (tensor<4x64x1xf32>) -> tensor<4x64xf32>
    %rows = "tile.reshape"(%h) {loc = "t.py:6"} : (tensor<4x64x16xbf16>) -> tensor<256x16xbf16>
    func.return %flat, %pooled, %rows : tensor<4x64xf32>, tensor<4x64xf32>, tensor<256x16xbf16>
  }
}
