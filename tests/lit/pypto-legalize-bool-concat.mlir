// pypto-legalize: a concat of i1 tensors becomes selects of 1.0/0.0 in f32 (splats: pypto.where takes the
// numbers), their concat and a compare with 1.0: pypto 0.2.0 cannot concat bool tensors. Running the pass
// again changes nothing (the splats stay numbers).
// RUN: attnc compile %s -p pypto-legalize -o - | filecheck %s
// RUN: attnc compile %s -p pypto-legalize,pypto-legalize -o - | filecheck %s
// CHECK-LABEL: func.func @mask
// CHECK: %[[ONE:.*]] = tile.full {splat = true, value = 1.000000e+00 : f64} : tensor<2x8xf32>
// CHECK-NEXT: %[[ZERO:.*]] = tile.full {splat = true, value = 0.000000e+00 : f64} : tensor<2x8xf32>
// CHECK-NEXT: %[[A:.*]] = tile.select %a, %[[ONE]], %[[ZERO]] : (tensor<2x8xi1>, tensor<2x8xf32>, tensor<2x8xf32>) -> tensor<2x8xf32>
// CHECK: %[[B:.*]] = tile.select %b, {{.*}} -> tensor<2x4xf32>
// CHECK-NEXT: %[[J:.*]] = tile.concat %[[A]], %[[B]] {axis = 1 : i64} : (tensor<2x8xf32>, tensor<2x4xf32>) -> tensor<2x12xf32>
// CHECK-NEXT: %[[ONE2:.*]] = tile.full {splat = true, value = 1.000000e+00 : f64} : tensor<2x12xf32>
// CHECK-NEXT: %[[M:.*]] = tile.cmp %[[J]], %[[ONE2]] {predicate = "eq"} : (tensor<2x12xf32>, tensor<2x12xf32>) -> tensor<2x12xi1>
// CHECK-NEXT: func.return %[[M]]
builtin.module {
  func.func @mask(%a: tensor<2x8xi1>, %b: tensor<2x4xi1>) -> tensor<2x12xi1> attributes {arg_names = ["a", "b"], result_names = ["m"]} {
    %m = "tile.concat"(%a, %b) <{axis = 1 : i64}> {loc = "m.py:1"} : (tensor<2x8xi1>, tensor<2x4xi1>) -> tensor<2x12xi1>
    func.return %m : tensor<2x12xi1>
  }
}
