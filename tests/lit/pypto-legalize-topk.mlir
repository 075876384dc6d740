// pypto-legalize: a tile.topk becomes pypto 0.2.0's top-k and a pick through f32: the scores where valid, else the
// lowest f32 (a splat: pypto.where takes the number); tile.topk_pairs (pypto.topk: values and ids, descending);
// a pick whose value is the sentinel is -1, selected in f32 (ids cast to f32, a -1.0 splat) and cast back (rint):
// pypto.topk has no validity operand and pypto 0.2.0 selects between int32 tensors poorly. The top-k states
// `sort_rows = 1` (its tile's rows: pypto sorts them one after another, 4 tiles to a task). Running the pass again
// changes nothing; --verify-each interprets the module before and after (bit-exact).
// RUN: attnc compile %s -p pypto-legalize --verify-each -o - | filecheck %s
// RUN: attnc compile %s -p pypto-legalize,pypto-legalize -o - | filecheck %s
// CHECK-LABEL: func.func @pick
// CHECK: %[[LOW:.*]] = tile.full {splat = true, value = -3.4028234663852886e+38 : f64} : tensor<2x8xf32>
// CHECK-NEXT: %[[M:.*]] = tile.select %valid, %s, %[[LOW]] {{.*}}-> tensor<2x8xf32>
// CHECK-NEXT: %[[V:.*]], %[[I:.*]] = tile.topk_pairs %[[M]] {{.*}}sort_rows = 1 : i64{{.*}}k = 3 : i64{{.*}} : (tensor<2x8xf32>) -> (tensor<2x3xf32>, tensor<2x3xi32>)
// CHECK-NEXT: %[[LOW3:.*]] = tile.full {splat = true, value = -3.4028234663852886e+38 : f64} : tensor<2x3xf32>
// CHECK-NEXT: %[[LIVE:.*]] = tile.cmp %[[V]], %[[LOW3]] {{.*}}predicate = "gt"{{.*}} -> tensor<2x3xi1>
// CHECK-NEXT: %[[F:.*]] = tile.cast %[[I]] {{.*}}rounding = "rint"{{.*}} -> tensor<2x3xf32>
// CHECK-NEXT: %[[NEG:.*]] = tile.full {splat = true, value = -1.000000e+00 : f64} : tensor<2x3xf32>
// CHECK-NEXT: %[[P:.*]] = tile.select %[[LIVE]], %[[F]], %[[NEG]]
// CHECK-NEXT: %[[OUT:.*]] = tile.cast %[[P]] {{.*}}rounding = "rint"{{.*}} -> tensor<2x3xi32>
// CHECK-NEXT: func.return %[[OUT]]
// CHECK-NOT: tile.topk
builtin.module {
  func.func @pick(%s: tensor<2x8xf32>, %valid: tensor<2x8xi1>) -> tensor<2x3xi32> attributes {arg_names = ["s", "valid"], result_names = ["picks"]} {
    %p = "tile.topk"(%s, %valid) <{k = 3 : i64}> {loc = "p.py:1"} : (tensor<2x8xf32>, tensor<2x8xi1>) -> tensor<2x3xi32>
    func.return %p : tensor<2x3xi32>
  }
}
