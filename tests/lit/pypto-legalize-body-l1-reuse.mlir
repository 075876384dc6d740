// pypto-legalize: a loop whose body's matmuls all state one `l1_reuse` (tile-matmul) states it as `body_l1_reuse`:
// pypto 0.2.0 reads cube_l1_reuse_setting per loop body, not per op (set around the matmul alone it changes
// nothing), so the emitter sets it in the body and restores the program's after the loop. A body whose matmuls
// differ states nothing. `body_nbuffer` likewise from the matmuls' `nbuffer` (tile-matmul states 1 with
// `l1_reuse = 1`: each N tile its own task), the body's cube_nbuffer_setting. Running the pass again changes nothing.
// RUN: attnc compile %s -p pypto-legalize --verify-each -o - | filecheck %s
// RUN: attnc compile %s -p pypto-legalize,pypto-legalize -o - | filecheck %s
// CHECK-LABEL: func.func @mm
// CHECK: tile.parallel %c0 to %c32 {{.*}}attributes {body_l1_reuse = 4 : i64, rows = 16 : i64}
// CHECK: tile.parallel %c0 to %c32 {{.*}}attributes {rows = 16 : i64}
// CHECK: tile.parallel %c0 to %c32 {{.*}}attributes {body_l1_reuse = 1 : i64, body_nbuffer = 1 : i64, rows = 16 : i64}
// The emitter prints each stated setting in the loop's body and the program's after the loop.
// RUN: attnc compile %s -p pypto-legalize --emit pypto -o - | filecheck %s --check-prefix=EMIT
// EMIT: pypto.set_pass_options(cube_l1_reuse_setting={-1: 4})
// EMIT: pypto.set_pass_options(cube_l1_reuse_setting={0: 4})
// EMIT-NEXT: for r2 in pypto.loop(
// EMIT-NOT: set_pass_options
// EMIT: for r3 in pypto.loop(
// EMIT-NEXT: pypto.set_pass_options(cube_l1_reuse_setting={-1: 1}, cube_nbuffer_setting={-1: 1})
// EMIT: pypto.set_pass_options(cube_l1_reuse_setting={0: 4}, cube_nbuffer_setting={-1: 2})
// RUN: sed 's/l1_reuse = 4 : i64}/l1_reuse = 4 : i64, nbuffer = 0 : i64}/' %s | not attnc compile - -o - 2>&1 | filecheck %s --check-prefix=VERIFY
// VERIFY: nbuffer must be a positive integer, on a matmul
// VERIFY-NOT: Traceback
builtin.module {
  func.func @mm(%x: tensor<32x64xbf16>, %w: tensor<64x32xbf16>) -> (tensor<32x32xf32>, tensor<32x32xf32>, tensor<32x32xf32>) attributes {arg_names = ["x", "w"], result_names = ["a", "b", "c"]} {
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
    %i3 = "tile.full"() <{value = 0.0 : f64}> {loc = "m.py:13"} : () -> tensor<32x32xf32>
    %r3 = "tile.parallel"(%c0, %c32, %i3) <{rows = 16 : i64}> ({
    ^bb0(%row: index, %acc: tensor<32x32xf32>):
      %v = "tile.view"(%x, %row, %c0) <{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 0>}> {loc = "m.py:14"} : (tensor<32x64xbf16>, index, index) -> tensor<16x64xbf16>
      %m = "tile.matmul"(%v, %w) <{transpose_b = false}> {loc = "m.py:15", l1_reuse = 1 : i64, nbuffer = 1 : i64} : (tensor<16x64xbf16>, tensor<64x32xbf16>) -> tensor<16x32xf32>
      %a = "tile.assemble"(%m, %acc, %row, %c0) <{operandSegmentSizes = array<i32: 1, 1, 2, 0>}> {loc = "m.py:16"} : (tensor<16x32xf32>, tensor<32x32xf32>, index, index) -> tensor<32x32xf32>
      "tile.yield"(%a) : (tensor<32x32xf32>) -> ()
    }) {loc = "m.py:17"} : (index, index, tensor<32x32xf32>) -> tensor<32x32xf32>
    func.return %r1, %r2, %r3 : tensor<32x32xf32>, tensor<32x32xf32>, tensor<32x32xf32>
  }
}
