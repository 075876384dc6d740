// pypto-legalize: a concat of casts that a loop assembles into a tensor another loop reads (another pypto
// root function per iteration) becomes one cast of the concat of their inputs (the same values), so that the loop writes whole
// rows: pypto 0.2.0 links each reader in another root function to each cell of the tensor, a cell the smallest
// tile the loop writes it in (decode_swa's q: [1, 32, 64] cells, 2048 links -> 256). Running the pass again
// changes nothing.
// RUN: attnc compile %s -p pypto-legalize --verify-each -o - | filecheck %s
// RUN: attnc compile %s -p pypto-legalize,pypto-legalize -o - | filecheck %s
// CHECK-LABEL: func.func @pieces
// CHECK: %[[E:.*]] = tile.exp %v2
// CHECK-NEXT: %[[J:.*]] = tile.concat %{{.*}}, %[[E]] {axis = 1 : i64} : (tensor<8x48xf32>, tensor<8x16xf32>) -> tensor<8x64xf32>
// CHECK-NEXT: %[[K:.*]] = tile.cast %[[J]] {rounding = "rint"} : (tensor<8x64xf32>) -> tensor<8x64xbf16>
// CHECK-NEXT: tile.assemble %[[K]] into
// CHECK-NOT: tile.concat
builtin.module {
  func.func @pieces(%x: tensor<20x64xf32>) -> tensor<20x64xf32> attributes {arg_names = ["x"], result_names = ["y"]} {
    %init = "tile.full"() <{value = 0.0 : f64}> {loc = "c.py:1"} : () -> tensor<20x64xbf16>
    %c0 = arith.constant 0 : index
    %c8 = arith.constant 8 : index
    %c16 = arith.constant 16 : index
    %c20 = arith.constant 20 : index
    %c48 = arith.constant 48 : index
    %c64 = arith.constant 64 : index
    %r = "tile.parallel"(%c0, %c20, %init) <{rows = 8 : i64}> ({
    ^bb0(%row: index, %acc: tensor<20x64xbf16>):
      %rem = arith.subi %c20, %row : index
      %n = arith.minsi %rem, %c8 : index
      %v1 = "tile.view"(%x, %row, %c0, %n, %c48) <{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 2>}> {loc = "c.py:2"} : (tensor<20x64xf32>, index, index, index, index) -> tensor<8x48xf32>
      %v2 = "tile.view"(%x, %row, %c48, %n, %c16) <{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 2>}> {loc = "c.py:3"} : (tensor<20x64xf32>, index, index, index, index) -> tensor<8x16xf32>
      %e2 = "tile.exp"(%v2) {loc = "c.py:4"} : (tensor<8x16xf32>) -> tensor<8x16xf32>
      %b1 = "tile.cast"(%v1) <{rounding = "rint"}> {loc = "c.py:5"} : (tensor<8x48xf32>) -> tensor<8x48xbf16>
      %b2 = "tile.cast"(%e2) <{rounding = "rint"}> {loc = "c.py:6"} : (tensor<8x16xf32>) -> tensor<8x16xbf16>
      %k = "tile.concat"(%b1, %b2) <{axis = 1 : i64}> {loc = "c.py:7"} : (tensor<8x48xbf16>, tensor<8x16xbf16>) -> tensor<8x64xbf16>
      %a = "tile.assemble"(%k, %acc, %row, %c0, %n, %c64) <{operandSegmentSizes = array<i32: 1, 1, 2, 2>}> {loc = "c.py:8"} : (tensor<8x64xbf16>, tensor<20x64xbf16>, index, index, index, index) -> tensor<20x64xbf16>
      "tile.yield"(%a) : (tensor<20x64xbf16>) -> ()
    }) {loc = "c.py:9"} : (index, index, tensor<20x64xbf16>) -> tensor<20x64xbf16>
    %init2 = "tile.full"() <{value = 0.0 : f64}> {loc = "c.py:10"} : () -> tensor<20x64xf32>
    %y = "tile.parallel"(%c0, %c20, %init2) <{rows = 8 : i64}> ({
    ^bb0(%row2: index, %acc2: tensor<20x64xf32>):
      %rem2 = arith.subi %c20, %row2 : index
      %n2 = arith.minsi %rem2, %c8 : index
      %w = "tile.view"(%r, %row2, %c0, %n2, %c64) <{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 2>}> {loc = "c.py:11"} : (tensor<20x64xbf16>, index, index, index, index) -> tensor<8x64xbf16>
      %f = "tile.cast"(%w) <{rounding = "rint"}> {loc = "c.py:12"} : (tensor<8x64xbf16>) -> tensor<8x64xf32>
      %a2 = "tile.assemble"(%f, %acc2, %row2, %c0, %n2, %c64) <{operandSegmentSizes = array<i32: 1, 1, 2, 2>}> {loc = "c.py:13"} : (tensor<8x64xf32>, tensor<20x64xf32>, index, index, index, index) -> tensor<20x64xf32>
      "tile.yield"(%a2) : (tensor<20x64xf32>) -> ()
    }) {loc = "c.py:14"} : (index, index, tensor<20x64xf32>) -> tensor<20x64xf32>
    func.return %y : tensor<20x64xf32>
  }
}
