// pypto-legalize: a packed row concat's zero-padded piece (the ring's n valid rows of 8) is followed by its zeros as
// IR: `scf.if n < 8` around a zero tile.fill of valid rows 8 - n assembled as it is (`valid_tile`) at row 1 + n
// (a view of a whole zero tile with that valid shape gives FB200F COPY_OUT verify records; pypto 0.2.0 assembles a
// tile's valid rows only, so the padding rows would keep whatever the local buffer held; the branch skips a piece
// without padding rows). The local buffer lists the pieces [rows, row offset, zero-padded] for the program's
// AssembleChecker excuse. Running the pass again changes nothing.
// RUN: attnc compile %s -p pypto-legalize --verify-each -o - | filecheck %s
// RUN: attnc compile %s -p pypto-legalize,pypto-legalize -o - | filecheck %s
// CHECK-LABEL: func.func @whole
// CHECK: %[[N:.*]] = tile.read %n
// CHECK: %[[V:.*]] = tile.view %ring[%c0, %c0] valid[%[[N]], %c128]
// CHECK: %[[K:.*]] = tile.full {{.*}}buffer = "local", pieces = {{\[}}[1 : i64, 0 : i64, false], [8 : i64, 1 : i64, true], [1 : i64, 9 : i64, false]]{{.*}} : tensor<10x128xbf16>
// CHECK: %[[P0:.*]] = tile.assemble %z into %[[K]]
// CHECK: %[[P1:.*]] = tile.assemble %[[V]] into %[[P0]][%{{.*}}, %{{.*}}] : tensor<8x128xbf16>
// CHECK-NEXT: %[[ROWS:.*]] = arith.constant {{.*}}8 : index
// CHECK-NEXT: %[[HAS:.*]] = arith.cmpi slt, %[[N]], %[[ROWS]] : index
// CHECK-NEXT: %[[PAD:.*]] = arith.subi %[[ROWS]], %[[N]]
// CHECK-NEXT: %[[ONE:.*]] = arith.constant {{.*}}1 : index
// CHECK-NEXT: %[[AT:.*]] = arith.addi %[[ONE]], %[[N]]
// CHECK-NEXT: %[[Z:.*]] = scf.if %[[HAS]] -> (tensor<10x128xbf16>) {
// CHECK: %[[ZEROS:.*]] = tile.fill valid[%[[PAD]], %{{.*}}] {value = 0.000000e+00 : f64} : tensor<8x128xbf16>
// CHECK: %[[FILLED:.*]] = tile.assemble %[[ZEROS]] into %[[P1]][%[[AT]], %{{.*}}] valid[%[[PAD]], %{{.*}}] {valid_tile = true} : tensor<8x128xbf16>
// CHECK-NEXT: scf.yield %[[FILLED]]
// CHECK-NEXT: } else {
// CHECK-NEXT: scf.yield %[[P1]]
// CHECK-NEXT: }
// CHECK: tile.assemble %sv into %[[Z]]{{.*}}clone = true
// CHECK-NOT: scf.if
// CHECK: func.return
builtin.module {
  func.func @whole(%q: tensor<4x128xbf16>, %ring: tensor<8x128xbf16>, %step: tensor<1x128xbf16>, %n: tensor<1xi32>) -> tensor<1x4x10xf32> attributes {arg_names = ["q", "ring", "step", "n"], result_names = ["s"]} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c128 = arith.constant 128 : index
    %z = "tile.full"() <{value = 0.0 : f64}> {loc = "w.py:1"} : () -> tensor<1x128xbf16>
    %init = "tile.full"() <{value = 0.0 : f64}> {loc = "w.py:1"} : () -> tensor<1x4x10xf32>
    %r = "tile.parallel"(%c0, %c1, %init) <{rows = 1 : i64}> ({
    ^bb0(%row: index, %acc: tensor<1x4x10xf32>):
      %n0 = "tile.read"(%n, %row) {loc = "w.py:2"} : (tensor<1xi32>, index) -> index
      %v = "tile.view"(%ring, %c0, %c0, %n0, %c128) <{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 2>}> {loc = "w.py:3"} : (tensor<8x128xbf16>, index, index, index, index) -> tensor<8x128xbf16>
      %sv = "tile.view"(%step, %row, %c0) <{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 0>}> {loc = "w.py:4"} : (tensor<1x128xbf16>, index, index) -> tensor<1x128xbf16>
      %k = "tile.concat"(%z, %v, %sv) <{axis = 0 : i64}> {loc = "w.py:5"} : (tensor<1x128xbf16>, tensor<8x128xbf16>, tensor<1x128xbf16>) -> tensor<10x128xbf16>
      %s = "tile.matmul"(%q, %k) <{transpose_b = true}> {loc = "w.py:6"} : (tensor<4x128xbf16>, tensor<10x128xbf16>) -> tensor<4x10xf32>
      %s3 = "tile.reshape"(%s) {loc = "w.py:7"} : (tensor<4x10xf32>) -> tensor<1x4x10xf32>
      %a = "tile.assemble"(%s3, %acc, %row, %c0, %c0) <{operandSegmentSizes = array<i32: 1, 1, 3, 0>}> {loc = "w.py:8"} : (tensor<1x4x10xf32>, tensor<1x4x10xf32>, index, index, index) -> tensor<1x4x10xf32>
      "tile.yield"(%a) : (tensor<1x4x10xf32>) -> ()
    }) {loc = "w.py:9"} : (index, index, tensor<1x4x10xf32>) -> tensor<1x4x10xf32>
    func.return %r : tensor<1x4x10xf32>
  }
}
