// pypto-legalize: a broadcast over several axes becomes one broadcast per axis (in axis order), and an iota
// whose ramp expands over several axes an iota over the first of them and such broadcasts: pypto 0.2.0's
// expand_clone expands one axis. Running the pass again changes nothing.
// RUN: attnc compile %s -p pypto-legalize --verify-each -o - | filecheck %s
// RUN: attnc compile %s -p pypto-legalize,pypto-legalize -o - | filecheck %s
// CHECK-LABEL: func.func @bc
// CHECK: %[[B0:.*]] = tile.broadcast %x : (tensor<1x1x8xf32>) -> tensor<2x1x8xf32>
// CHECK-NEXT: %[[B1:.*]] = tile.broadcast %[[B0]] : (tensor<2x1x8xf32>) -> tensor<2x3x8xf32>
// CHECK-NEXT: %[[I0:.*]] = tile.iota {axis = 1 : i64} : tensor<2x4x1xi32>
// CHECK-NEXT: %[[I1:.*]] = tile.broadcast %[[I0]] : (tensor<2x4x1xi32>) -> tensor<2x4x8xi32>
// CHECK-NEXT: %[[I2:.*]] = tile.iota {axis = 1 : i64} : tensor<1x4x8xi32>
// CHECK-NEXT: func.return %[[B1]], %[[I1]], %[[I2]]
builtin.module {
  func.func @bc(%x: tensor<1x1x8xf32>) -> (tensor<2x3x8xf32>, tensor<2x4x8xi32>, tensor<1x4x8xi32>) attributes {arg_names = ["x"], result_names = ["b", "i", "j"]} {
    %b = "tile.broadcast"(%x) {loc = "b.py:1"} : (tensor<1x1x8xf32>) -> tensor<2x3x8xf32>
    %i = "tile.iota"() <{axis = 1 : i64}> {loc = "b.py:2"} : () -> tensor<2x4x8xi32>
    %j = "tile.iota"() <{axis = 1 : i64}> {loc = "b.py:3"} : () -> tensor<1x4x8xi32>
    func.return %b, %i, %j : tensor<2x3x8xf32>, tensor<2x4x8xi32>, tensor<1x4x8xi32>
  }
}
