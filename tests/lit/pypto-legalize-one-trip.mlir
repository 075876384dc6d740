// pypto-legalize: a loop with constant bounds and one iteration states its index (`one_trip = lower bound`): the
// emitter binds the index to that constant, so a view of a whole tensor at it is the tensor (no copy: the
// o-projection's single 128-row chunk read the attention output through a clone of all of it). A loop of two
// iterations, or with a runtime bound, states nothing. Running the pass again changes nothing.
// RUN: attnc compile %s -p pypto-legalize --verify-each -o - | filecheck %s
// RUN: attnc compile %s -p pypto-legalize,pypto-legalize -o - | filecheck %s
// CHECK-LABEL: func.func @trips
// CHECK: tile.parallel %c0 to %c4 {{.*}}attributes {one_trip = 0 : i64, rows = 4 : i64}
// CHECK: tile.parallel %c0 to %c4 {{.*}}attributes {rows = 2 : i64}
// CHECK: tile.parallel %c0 to %n {{.*}}attributes {rows = 4 : i64}
builtin.module {
  func.func @trips(%x: tensor<4x16xf32>, %m: tensor<1xi32>) -> (tensor<4x16xf32>, tensor<4x16xf32>, tensor<4x16xf32>) attributes {arg_names = ["x", "m"], result_names = ["a", "b", "c"]} {
    %c0 = arith.constant 0 : index
    %c4 = arith.constant 4 : index
    %n = "tile.read"(%m, %c0) {loc = "t.py:0"} : (tensor<1xi32>, index) -> index
    %i1 = "tile.full"() <{value = 0.0 : f64}> {loc = "t.py:1"} : () -> tensor<4x16xf32>
    %r1 = "tile.parallel"(%c0, %c4, %i1) <{rows = 4 : i64}> ({
    ^bb0(%row: index, %acc: tensor<4x16xf32>):
      %v = "tile.view"(%x, %row, %c0) <{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 0>}> {loc = "t.py:2"} : (tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
      %a = "tile.assemble"(%v, %acc, %row, %c0) <{operandSegmentSizes = array<i32: 1, 1, 2, 0>}> {loc = "t.py:2"} : (tensor<4x16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
      "tile.yield"(%a) : (tensor<4x16xf32>) -> ()
    }) {loc = "t.py:3"} : (index, index, tensor<4x16xf32>) -> tensor<4x16xf32>
    %i2 = "tile.full"() <{value = 0.0 : f64}> {loc = "t.py:4"} : () -> tensor<4x16xf32>
    %r2 = "tile.parallel"(%c0, %c4, %i2) <{rows = 2 : i64}> ({
    ^bb0(%row: index, %acc: tensor<4x16xf32>):
      %v = "tile.view"(%x, %row, %c0) <{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 0>}> {loc = "t.py:5"} : (tensor<4x16xf32>, index, index) -> tensor<2x16xf32>
      %a = "tile.assemble"(%v, %acc, %row, %c0) <{operandSegmentSizes = array<i32: 1, 1, 2, 0>}> {loc = "t.py:5"} : (tensor<2x16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
      "tile.yield"(%a) : (tensor<4x16xf32>) -> ()
    }) {loc = "t.py:6"} : (index, index, tensor<4x16xf32>) -> tensor<4x16xf32>
    %i3 = "tile.full"() <{value = 0.0 : f64}> {loc = "t.py:7"} : () -> tensor<4x16xf32>
    %r3 = "tile.parallel"(%c0, %n, %i3) <{rows = 4 : i64}> ({
    ^bb0(%row: index, %acc: tensor<4x16xf32>):
      %v = "tile.view"(%x, %row, %c0) <{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 0>}> {loc = "t.py:8"} : (tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
      %a = "tile.assemble"(%v, %acc, %row, %c0) <{operandSegmentSizes = array<i32: 1, 1, 2, 0>}> {loc = "t.py:8"} : (tensor<4x16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
      "tile.yield"(%a) : (tensor<4x16xf32>) -> ()
    }) {loc = "t.py:9"} : (index, index, tensor<4x16xf32>) -> tensor<4x16xf32>
    func.return %r1, %r2, %r3 : tensor<4x16xf32>, tensor<4x16xf32>, tensor<4x16xf32>
  }
}
