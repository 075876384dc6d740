// pypto-legalize: an i1 fill becomes an f32 fill of 1.0/0.0 and a compare with 1.0 (a splat: pypto.eq takes the
// number): pypto 0.2.0's codegen cannot fill a bool tensor. Running the pass again changes nothing.
// (host-constants=0: these values are computed from no input, which would make them host constants)
// RUN: attnc compile %s -p 'pypto-legalize{host-constants=0}' --verify-each -o - | filecheck %s
// RUN: attnc compile %s -p 'pypto-legalize{host-constants=0},pypto-legalize{host-constants=0}' -o - | filecheck %s
// CHECK-LABEL: func.func @mask
// CHECK: %[[F:.*]] = tile.full {value = 0.000000e+00 : f64} : tensor<2x8xf32>
// CHECK-NEXT: %[[ONE:.*]] = tile.full {splat = true, value = 1.000000e+00 : f64} : tensor<2x8xf32>
// CHECK-NEXT: %[[M:.*]] = tile.cmp %[[F]], %[[ONE]] {predicate = "eq"} : (tensor<2x8xf32>, tensor<2x8xf32>) -> tensor<2x8xi1>
// CHECK-NEXT: %[[A:.*]] = tile.or %a, %[[M]]
// CHECK-NOT: xi1> = tile.full
builtin.module {
  func.func @mask(%a: tensor<2x8xi1>) -> tensor<2x8xi1> attributes {arg_names = ["a"], result_names = ["m"]} {
    %f = "tile.full"() <{value = 0.0 : f64}> {loc = "m.py:1"} : () -> tensor<2x8xi1>
    %m = "tile.or"(%a, %f) {loc = "m.py:2"} : (tensor<2x8xi1>, tensor<2x8xi1>) -> tensor<2x8xi1>
    func.return %m : tensor<2x8xi1>
  }
}
