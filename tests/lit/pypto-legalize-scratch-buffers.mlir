// pypto-legalize: a tensor a loop writes in parts must be a kernel parameter (pypto 0.2.0's runtime gives an
// assembled op result no buffer: F74007 "Missing RUNTIME_SlotMarkNeedAlloc for assemble slot", then F7A008 and a
// double free). A loop whose init is not one (here: read twice) gets a scratch buffer (`tile.full` with
// `buffer = "scratch"`: a scratch kernel parameter, never filled): a copy of the init assembled into it when the
// loop leaves rows unwritten (%part: 16 of 20), the buffer alone when it writes every element (%whole).
// Running the pass again changes nothing.
// RUN: attnc compile %s -p pypto-legalize --verify-each -o - | filecheck %s
// RUN: attnc compile %s -p pypto-legalize,pypto-legalize -o - | filecheck %s
// CHECK-LABEL: func.func @carry
// CHECK: %init = tile.full {value = 0.000000e+00 : f64}
// CHECK: %[[BUF:.*]] = tile.full {buffer = "scratch", value = 0.000000e+00 : f64} : tensor<20x64xf32>
// CHECK-NEXT: %[[Z0:.*]] = arith.constant 0 : index
// CHECK-NEXT: %[[Z1:.*]] = arith.constant 0 : index
// CHECK-NEXT: %[[COPY:.*]] = tile.assemble %init into %[[BUF]][%[[Z0]], %[[Z1]]]
// CHECK-NEXT: %part = tile.parallel %c0 to %c16 inits(%[[COPY]] : tensor<20x64xf32>)
// CHECK-NOT: tile.assemble %init
// CHECK: %[[BUF2:.*]] = tile.full {buffer = "scratch", value = 0.000000e+00 : f64} : tensor<20x64xf32>
// CHECK-NEXT: %whole = tile.parallel %c0 to %c20 inits(%[[BUF2]] : tensor<20x64xf32>)
// CHECK: func.return
builtin.module {
  func.func @carry(%x: tensor<20x64xf32>) -> tensor<20x64xf32> attributes {arg_names = ["x"], result_names = ["y"]} {
    %init = "tile.full"() <{value = 0.0 : f64}> {loc = "c.py:1"} : () -> tensor<20x64xf32>
    %c0 = arith.constant 0 : index
    %c16 = arith.constant 16 : index
    %c20 = arith.constant 20 : index
    %part = "tile.parallel"(%c0, %c16, %init) <{rows = 4 : i64}> ({
    ^bb0(%row: index, %acc: tensor<20x64xf32>):
      %v = "tile.view"(%x, %row, %c0) <{pad = "none", operandSegmentSizes = array<i32: 1, 2, 0>}> {loc = "c.py:2"} : (tensor<20x64xf32>, index, index) -> tensor<4x64xf32>
      %a = "tile.assemble"(%v, %acc, %row, %c0) <{operandSegmentSizes = array<i32: 1, 1, 2, 0>}> {loc = "c.py:3"} : (tensor<4x64xf32>, tensor<20x64xf32>, index, index) -> tensor<20x64xf32>
      "tile.yield"(%a) : (tensor<20x64xf32>) -> ()
    }) {loc = "c.py:4"} : (index, index, tensor<20x64xf32>) -> tensor<20x64xf32>
    %whole = "tile.parallel"(%c0, %c20, %init) <{rows = 4 : i64}> ({
    ^bb0(%row: index, %acc: tensor<20x64xf32>):
      %v = "tile.view"(%x, %row, %c0) <{pad = "none", operandSegmentSizes = array<i32: 1, 2, 0>}> {loc = "c.py:5"} : (tensor<20x64xf32>, index, index) -> tensor<4x64xf32>
      %e = "tile.exp"(%v) {loc = "c.py:6"} : (tensor<4x64xf32>) -> tensor<4x64xf32>
      %a = "tile.assemble"(%e, %acc, %row, %c0) <{operandSegmentSizes = array<i32: 1, 1, 2, 0>}> {loc = "c.py:7"} : (tensor<4x64xf32>, tensor<20x64xf32>, index, index) -> tensor<20x64xf32>
      "tile.yield"(%a) : (tensor<20x64xf32>) -> ()
    }) {loc = "c.py:8"} : (index, index, tensor<20x64xf32>) -> tensor<20x64xf32>
    %y = "tile.add"(%part, %whole) {loc = "c.py:9"} : (tensor<20x64xf32>, tensor<20x64xf32>) -> tensor<20x64xf32>
    func.return %y : tensor<20x64xf32>
  }
}
