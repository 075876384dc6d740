// pypto-legalize: a loop whose body's matmuls all state one `l1_reuse` (tile-matmul) states it as `body_l1_reuse`:
// pypto 0.2.0 reads cube_l1_reuse_setting per loop body, not per op (set around the matmul alone it changes
// nothing), so the emitter sets it in the body and restores the program's after the loop. A body whose matmuls
// differ states nothing. Running the pass again changes nothing.
// RUN: attnc compile %s -p pypto-legalize --verify-each -o - | filecheck %s
// RUN: attnc compile %s -p pypto-legalize,pypto-legalize -o - | filecheck %s
// CHECK-LABEL: func.func @mm
// CHECK: tile.parallel %c0 to %c32 {{.*}}attributes {body_l1_reuse = 4 : i64, rows = 16 : i64}
// CHECK: tile.parallel %c0 to %c32 {{.*}}attributes {rows = 16 : i64}
builtin.module {
  func.func @mm(%x: tensor<32x64xbf16>, %w: tensor<64x32xbf16>) -> (tensor<32x32xf32>, tensor<32x32xf32>) attributes {arg_names = ["x", "w"], result_names = ["a", "b"]} {
    %c0 = arith.constant 0 : index
    %c32 = arith.constant 32 : index
    %i1 = "tile.full"() <{value = 0.0 : f64}> {loc = "m.py:1"} : () -> tensor<32x32xf32>
    %r1 = "tile.parallel"(%c0, %c32, %i1) <{rows = 16 : i64}> ({
    ^bb0(%row: index, %acc: tensor<32x32xf32>):
      %v = "tile.view"(%x, %row, %c0) <{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 0>}> {loc = "m.py:2"} : (tensor<32x64xbf16>, index, index) -> tensor<16x64xbf16>
      %m = "tile.matmul"(%v, %w) <{transpose_b = false}> {loc = "m.py:3", l1_reuse = 4 : i64} : (tensor<16x64xbf16>, tensor<64x32xbf16>) -> tensor<16x32xf32>
      %a = "tile.assemble"(%m, %acc, %row, %c0) <{operandSegmentSizes = array<i32: 1, 1, 2, 0>}> {loc = "m.py:4"} : (tensor<16x32xf32>, tensor<32x32xf32>, index, index) -> tensor<32x32xf32>
      "tile.yield"(%a) : (tensor<32x32xf32>) -> ()
    }) {loc = "m.py:5"} : (index, index, tensor<32x32xf32>) -> tensor<32x32xf32>
    %i2 = "tile.full"() <{value = 0.0 : f64}> {loc = "m.py:6"} : () -> tensor<32x32xf32>
    %r2 = "tile.parallel"(%c0, %c32, %i2) <{rows = 16 : i64}> ({
    ^bb0(%row: index, %acc: tensor<32x32xf32>):
      %v = "tile.view"(%x, %row, %c0) <{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 0>}> {loc = "m.py:7"} : (tensor<32x64xbf16>, index, index) -> tensor<16x64xbf16>
      %m = "tile.matmul"(%v, %w) <{transpose_b = false}> {loc = "m.py:8", l1_reuse = 4 : i64} : (tensor<16x64xbf16>, tensor<64x32xbf16>) -> tensor<16x32xf32>
      %n = "tile.matmul"(%v, %w) <{transpose_b = false}> {loc = "m.py:9"} : (tensor<16x64xbf16>, tensor<64x32xbf16>) -> tensor<16x32xf32>
      %s = "tile.add"(%m, %n) {loc = "m.py:10"} : (tensor<16x32xf32>, tensor<16x32xf32>) -> tensor<16x32xf32>
      %a = "tile.assemble"(%s, %acc, %row, %c0) <{operandSegmentSizes = array<i32: 1, 1, 2, 0>}> {loc = "m.py:11"} : (tensor<16x32xf32>, tensor<32x32xf32>, index, index) -> tensor<32x32xf32>
      "tile.yield"(%a) : (tensor<32x32xf32>) -> ()
    }) {loc = "m.py:12"} : (index, index, tensor<32x32xf32>) -> tensor<32x32xf32>
    func.return %r1, %r2 : tensor<32x32xf32>, tensor<32x32xf32>
  }
}
