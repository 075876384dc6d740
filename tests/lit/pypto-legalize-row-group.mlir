// pypto-legalize: the ops of one `row_group` (fuse-rmsnorm's, rope-selector-matmul's per-row chains) in one block
// state the group's result types of rank >= 2 (`row_group_types`) and its smallest `tile_rows` (`row_group_cap`):
// the emitter tiles every vector result of the group with one row count from these facts alone (pypto 0.2.0
// starts a new task where a chain's row tiling changes). Another group, or the same id in another block, states
// its own members. The emitted program gives the [32, 4096] f32 member's row count (2 under the default 8192
// budget) to the [32, 64] member too (alone: all 32 rows), and the cap of 2 to the capped group. Running the pass again changes nothing.
// RUN: attnc compile %s -p pypto-legalize --verify-each -o - | filecheck %s
// RUN: attnc compile %s -p pypto-legalize,pypto-legalize -o - | filecheck %s
// RUN: attnc compile %s -p pypto-legalize --emit pypto -o - | filecheck %s --check-prefix=EMIT
// CHECK-LABEL: func.func @groups
// CHECK: tile.exp %x {row_group = 0 : i64, row_group_types = [tensor<32x4096xf32>, tensor<32x64xf32>]}
// CHECK: tile.exp %y {row_group = 0 : i64, row_group_types = [tensor<32x4096xf32>, tensor<32x64xf32>]}
// CHECK: tile.exp %y {row_group = 1 : i64, tile_rows = 2 : i64, row_group_types = [tensor<32x64xf32>], row_group_cap = 2 : i64}
// CHECK: tile.exp %y {row_group = 1 : i64, row_group_types = [tensor<32x64xf32>], row_group_cap = 2 : i64}
// EMIT: pypto.set_vec_tile_shapes(2, 4096)
// EMIT-NEXT: = pypto.exp(x)
// EMIT: pypto.set_vec_tile_shapes(2, 64)
// EMIT-NEXT: = pypto.exp(y)
// EMIT: pypto.set_vec_tile_shapes(2, 64)
// EMIT-NEXT: = pypto.exp(y)
// EMIT: pypto.set_vec_tile_shapes(2, 64)
// EMIT-NEXT: = pypto.exp(y)
builtin.module {
  func.func @groups(%x: tensor<32x4096xf32>, %y: tensor<32x64xf32>) -> (tensor<32x4096xf32>, tensor<32x64xf32>, tensor<32x64xf32>, tensor<32x64xf32>) attributes {arg_names = ["x", "y"], result_names = ["a", "b", "c", "d"]} {
    %a = "tile.exp"(%x) {loc = "g.py:1", row_group = 0 : i64} : (tensor<32x4096xf32>) -> tensor<32x4096xf32>
    %b = "tile.exp"(%y) {loc = "g.py:2", row_group = 0 : i64} : (tensor<32x64xf32>) -> tensor<32x64xf32>
    %c = "tile.exp"(%y) {loc = "g.py:3", row_group = 1 : i64, tile_rows = 2 : i64} : (tensor<32x64xf32>) -> tensor<32x64xf32>
    %d = "tile.exp"(%y) {loc = "g.py:4", row_group = 1 : i64} : (tensor<32x64xf32>) -> tensor<32x64xf32>
    func.return %a, %b, %c, %d : tensor<32x4096xf32>, tensor<32x64xf32>, tensor<32x64xf32>, tensor<32x64xf32>
  }
}
