// pypto-legalize: a scratch buffer a loop writes ([tokens, heads, d]) and a later loop reads only through an
// in-place reshape merging its leading axes ([tokens * heads, d]) is declared in the reshape's shape; the loop
// assembles its piece reshaped, cut into the rows each reader views (4 here: two tokens), so that pypto 0.2.0
// links each reader to its rows' writers, with no sync task (decode_swa's q). Running the pass again changes nothing.
// RUN: attnc compile %s -p pypto-legalize --verify-each -o - | filecheck %s
// RUN: attnc compile %s -p pypto-legalize,pypto-legalize -o - | filecheck %s
// CHECK-LABEL: func.func @heads
// CHECK: %init = tile.full {buffer = "scratch", {{.*}}} : tensor<8x8xf32>
// CHECK: %r = tile.parallel %c0 to %c4 inits(%init : tensor<8x8xf32>)
// CHECK: %[[ROW:.*]] = arith.muli %row, %{{.*}} : index
// CHECK: %[[V0:.*]] = tile.view %e[{{.*}}] {pad = "none"} : tensor<4x2x8xf32> -> tensor<2x2x8xf32>
// CHECK-NEXT: %[[R0:.*]] = tile.reshape %[[V0]] {{.*}}: (tensor<2x2x8xf32>) -> tensor<4x8xf32>
// CHECK-NEXT: %[[A0:.*]] = tile.assemble %[[R0]] into %acc[%[[ROW]], {{.*}}] : tensor<4x8xf32>, tensor<8x8xf32> -> tensor<8x8xf32>
// CHECK: %[[V1:.*]] = tile.view %e[{{.*}}] {pad = "none"} : tensor<4x2x8xf32> -> tensor<2x2x8xf32>
// CHECK-NEXT: %[[R1:.*]] = tile.reshape %[[V1]] {{.*}}: (tensor<2x2x8xf32>) -> tensor<4x8xf32>
// CHECK: %[[AT:.*]] = arith.addi %[[ROW]], %{{.*}} : index
// CHECK-NEXT: %a = tile.assemble %[[R1]] into %[[A0]][%[[AT]], {{.*}}] : tensor<4x8xf32>, tensor<8x8xf32> -> tensor<8x8xf32>
// CHECK: } -> tensor<8x8xf32>
// CHECK-NOT: tile.reshape %r
// CHECK: %w = tile.view %r[%row2, %c0] {pad = "zero"} : tensor<8x8xf32> -> tensor<4x8xf32>
builtin.module {
  func.func @heads(%x: tensor<4x2x8xf32>) -> tensor<8x8xf32> attributes {arg_names = ["x"], result_names = ["y"]} {
    %init = "tile.full"() <{value = 0.0 : f64}> {loc = "h.py:1"} : () -> tensor<4x2x8xf32>
    %c0 = arith.constant 0 : index
    %c4 = arith.constant 4 : index
    %c8 = arith.constant 8 : index
    %r = "tile.parallel"(%c0, %c4, %init) <{rows = 4 : i64}> ({
    ^bb0(%row: index, %acc: tensor<4x2x8xf32>):
      %v = "tile.view"(%x, %row, %c0, %c0) <{pad = "zero", operandSegmentSizes = array<i32: 1, 3, 0>}> {loc = "h.py:2"} : (tensor<4x2x8xf32>, index, index, index) -> tensor<4x2x8xf32>
      %e = "tile.exp"(%v) {loc = "h.py:3"} : (tensor<4x2x8xf32>) -> tensor<4x2x8xf32>
      %a = "tile.assemble"(%e, %acc, %row, %c0, %c0) <{operandSegmentSizes = array<i32: 1, 1, 3, 0>}> {loc = "h.py:4"} : (tensor<4x2x8xf32>, tensor<4x2x8xf32>, index, index, index) -> tensor<4x2x8xf32>
      "tile.yield"(%a) : (tensor<4x2x8xf32>) -> ()
    }) {loc = "h.py:5"} : (index, index, tensor<4x2x8xf32>) -> tensor<4x2x8xf32>
    %q = "tile.reshape"(%r) {loc = "h.py:6"} : (tensor<4x2x8xf32>) -> tensor<8x8xf32>
    %init2 = "tile.full"() <{value = 0.0 : f64}> {loc = "h.py:7"} : () -> tensor<8x8xf32>
    %y = "tile.parallel"(%c0, %c8, %init2) <{rows = 4 : i64}> ({
    ^bb0(%row2: index, %acc2: tensor<8x8xf32>):
      %w = "tile.view"(%q, %row2, %c0) <{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 0>}> {loc = "h.py:8"} : (tensor<8x8xf32>, index, index) -> tensor<4x8xf32>
      %m = "tile.muls"(%w) <{scalar = 2.0 : f64}> {loc = "h.py:9"} : (tensor<4x8xf32>) -> tensor<4x8xf32>
      %a2 = "tile.assemble"(%m, %acc2, %row2, %c0) <{operandSegmentSizes = array<i32: 1, 1, 2, 0>}> {loc = "h.py:10"} : (tensor<4x8xf32>, tensor<8x8xf32>, index, index) -> tensor<8x8xf32>
      "tile.yield"(%a2) : (tensor<8x8xf32>) -> ()
    }) {loc = "h.py:11"} : (index, index, tensor<8x8xf32>) -> tensor<8x8xf32>
    func.return %y : tensor<8x8xf32>
  }
}
