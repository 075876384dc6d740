// pypto-legalize: an integer floordiv/rem read as a tensor becomes f32 arithmetic (casts, div, floor; rem:
// a - b * floor; a cast back): pypto 0.2.0 has no int32 division. The uses computing scatter_rows ids keep the
// op (printed as scalar expressions, `scalar_id`): %q stays for the scatter and is rewritten for the result.
// (host-constants=0: these values are computed from no input, which would make them host constants)
// RUN: attnc compile %s -p 'pypto-legalize{host-constants=0}' -o - | filecheck %s
// RUN: attnc compile %s -p 'pypto-legalize{host-constants=0},pypto-legalize{host-constants=0}' -o - | filecheck %s
// CHECK-LABEL: func.func @div
// CHECK: %[[K:.*]] = tile.mul %i, %b
// CHECK-NEXT: %[[KF:.*]] = tile.cast %[[K]] {rounding = "rint"} : (tensor<4xi32>) -> tensor<4xf32>
// CHECK-NEXT: %[[BF:.*]] = tile.cast %b {rounding = "rint"} : (tensor<4xi32>) -> tensor<4xf32>
// CHECK-NEXT: %[[D:.*]] = tile.div %[[KF]], %[[BF]] : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
// CHECK-NEXT: %[[F:.*]] = tile.floor %[[D]] : (tensor<4xf32>) -> tensor<4xf32>
// CHECK-NEXT: %[[Q2:.*]] = tile.cast %[[F]] {rounding = "rint"} : (tensor<4xf32>) -> tensor<4xi32>
// CHECK-NEXT: %[[Q:.*]] = tile.floordiv %[[K]], %b {scalar_ids = true}
// CHECK-NEXT: %[[A:.*]] = tile.cast %a {rounding = "rint"} : (tensor<4xi32>) -> tensor<4xf32>
// CHECK-NEXT: %[[B:.*]] = tile.cast %b {rounding = "rint"} : (tensor<4xi32>) -> tensor<4xf32>
// CHECK-NEXT: %[[D2:.*]] = tile.div %[[A]], %[[B]]
// CHECK-NEXT: %[[F2:.*]] = tile.floor %[[D2]]
// CHECK-NEXT: %[[M:.*]] = tile.mul %[[B]], %[[F2]]
// CHECK-NEXT: %[[S:.*]] = tile.sub %[[A]], %[[M]]
// CHECK-NEXT: %[[R:.*]] = tile.cast %[[S]] {rounding = "rint"} : (tensor<4xf32>) -> tensor<4xi32>
// CHECK-NEXT: %[[T:.*]] = tile.scatter_rows %t, %r, %[[Q]] {in_place = true, scalar_id = ["({m} * 3)", "({s0} // 3)", "{s1}"], rows_per_trip = 2 : i64, together_rows = 2 : i64, rows_together = {{.*}}}
// CHECK-NEXT: func.return %[[T]], %[[R]], %[[Q2]]
builtin.module {
  func.func @div(%a: tensor<4xi32>, %t: tensor<8x2xf32>, %r: tensor<4x2xf32>) -> (tensor<8x2xf32>, tensor<4xi32>, tensor<4xi32>) attributes {arg_names = ["a", "t", "r"], result_names = ["t", "s", "q"]} {
    %i = "tile.iota"() <{axis = 0 : i64}> {loc = "d.py:1"} : () -> tensor<4xi32>
    %b = "tile.full"() <{value = 3.0 : f64}> {loc = "d.py:2"} : () -> tensor<4xi32>
    %k = "tile.mul"(%i, %b) {loc = "d.py:3"} : (tensor<4xi32>, tensor<4xi32>) -> tensor<4xi32>
    %q = "tile.floordiv"(%k, %b) {loc = "d.py:4"} : (tensor<4xi32>, tensor<4xi32>) -> tensor<4xi32>
    %s = "tile.rem"(%a, %b) {loc = "d.py:5"} : (tensor<4xi32>, tensor<4xi32>) -> tensor<4xi32>
    %n = "tile.scatter_rows"(%t, %r, %q) {loc = "d.py:6", in_place = true} : (tensor<8x2xf32>, tensor<4x2xf32>, tensor<4xi32>) -> tensor<8x2xf32>
    func.return %n, %s, %q : tensor<8x2xf32>, tensor<4xi32>, tensor<4xi32>
  }
}
