// pypto-legalize: the per-op vector tile rule (codegen/pypto/tiles.py). The chain relu -> mul -> row_sum over
// [64, 2048, 64] f32 (linked by values of that shape) states one tile, [1, 256, 64]: 16384 elements, where the mul
// holds 3 x 64 KiB in UB (32768 would need 384 KiB of the 192); the emitter prints it before each op. An exp whose
// result another vector op tiled by the budget reads (here the function's return: a copy out) keeps the budget's
// tile and states none (ops that read one value are one chain, so the exp reads its own input here). With vec-tile-max=0 no op states one. Running the pass again changes nothing.
// RUN: attnc compile %s -p pypto-legalize --verify-each -o - | filecheck %s
// RUN: attnc compile %s -p pypto-legalize,pypto-legalize -o - | filecheck %s
// RUN: attnc compile %s -p pypto-legalize --emit pypto -o - | filecheck %s --check-prefix=EMIT
// RUN: attnc compile %s -p "pypto-legalize{vec-tile-max=0}" -o - | filecheck %s --check-prefix=OFF
// CHECK-LABEL: func.func @chain
// CHECK: tile.relu %x {vec_tile = [1 : i64, 256 : i64, 64 : i64]}
// CHECK: tile.mul %r, %w {vec_tile = [1 : i64, 256 : i64, 64 : i64]}
// CHECK: tile.row_sum %m {vec_tile = [1 : i64, 256 : i64, 64 : i64]}
// CHECK: tile.exp %z
// CHECK-NOT: vec_tile
// CHECK: func.return
// EMIT: pypto.set_vec_tile_shapes(1, 256, 64)
// EMIT-NEXT: = pypto.relu(x)
// EMIT: pypto.set_vec_tile_shapes(1, 256, 64)
// EMIT-NEXT: = pypto.mul(
// EMIT: pypto.set_vec_tile_shapes(1, 256, 64)
// EMIT-NEXT: = pypto.sum(
// EMIT: pypto.set_vec_tile_shapes(1, 128, 64)
// EMIT-NEXT: = pypto.exp(z)
// OFF-NOT: vec_tile
builtin.module {
  func.func @chain(%x: tensor<64x2048x64xf32>, %w: tensor<64x2048x64xf32>, %z: tensor<64x2048x64xf32>) -> (tensor<64x2048x1xf32>, tensor<64x2048x64xf32>) attributes {arg_names = ["x", "w", "z"], result_names = ["s", "e"]} {
    %r = "tile.relu"(%x) {loc = "v.py:1"} : (tensor<64x2048x64xf32>) -> tensor<64x2048x64xf32>
    %m = "tile.mul"(%r, %w) {loc = "v.py:2"} : (tensor<64x2048x64xf32>, tensor<64x2048x64xf32>) -> tensor<64x2048x64xf32>
    %s = "tile.row_sum"(%m) {loc = "v.py:3"} : (tensor<64x2048x64xf32>) -> tensor<64x2048x1xf32>
    %e = "tile.exp"(%z) {loc = "v.py:4"} : (tensor<64x2048x64xf32>) -> tensor<64x2048x64xf32>
    func.return %s, %e : tensor<64x2048x1xf32>, tensor<64x2048x64xf32>
  }
}
