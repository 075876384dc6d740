// pypto-legalize: a zero-padded view (n valid rows of 8) read by a concat that is not packed (a column concat) is
// read through tile.fill_padding, all of the tile valid (printed as a reshape with the whole valid shape): pypto
// 0.2.0 concatenates the valid parts only, so the padding rows would be dropped, not read as zeros. Running the
// pass again changes nothing.
// RUN: attnc compile %s -p pypto-legalize --verify-each -o - | filecheck %s
// RUN: attnc compile %s -p pypto-legalize,pypto-legalize -o - | filecheck %s
// CHECK-LABEL: func.func @zf
// CHECK: %[[V:.*]] = tile.view %x[%c0, %c0] valid[%{{.*}}, %c64]
// CHECK-NEXT: %[[F:.*]] = tile.fill_padding %[[V]] : (tensor<8x64xf32>) -> tensor<8x64xf32>
// CHECK-NEXT: %[[K:.*]] = tile.concat %[[F]], %[[F]] {axis = 1 : i64}
// CHECK-NOT: tile.fill_padding
builtin.module {
  func.func @zf(%x: tensor<8x64xf32>, %n: tensor<1xi32>) -> tensor<8x128xf32> attributes {arg_names = ["x", "n"], result_names = ["y"]} {
    %c0 = arith.constant 0 : index
    %c64 = arith.constant 64 : index
    %n0 = "tile.read"(%n, %c0) {loc = "z.py:1"} : (tensor<1xi32>, index) -> index
    %v = "tile.view"(%x, %c0, %c0, %n0, %c64) <{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 2>}> {loc = "z.py:2"} : (tensor<8x64xf32>, index, index, index, index) -> tensor<8x64xf32>
    %k = "tile.concat"(%v, %v) <{axis = 1 : i64}> {loc = "z.py:3"} : (tensor<8x64xf32>, tensor<8x64xf32>) -> tensor<8x128xf32>
    func.return %k : tensor<8x128xf32>
  }
}
