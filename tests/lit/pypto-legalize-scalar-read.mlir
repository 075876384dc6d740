// pypto-legalize refuses a scalar read of a computed tensor: pypto 0.2.0 reads a scalar only from a kernel
// parameter (GetTensorData of any other tensor fails at run time, F3FFFF). One line, its location, exit 2.
// RUN: not attnc compile %s -p pypto-legalize -o - 2>&1 | filecheck %s
// CHECK: k.py:6: tile.read of a computed tensor has no pypto 0.2.0 lowering: pypto reads scalars only from kernel parameters
// CHECK-NOT: Traceback
builtin.module {
  func.func @f(%x: tensor<4xi32>) -> tensor<4xi32> attributes {arg_names = ["x"], result_names = ["y"]} {
    %t = "tile.add"(%x, %x) {loc = "k.py:5"} : (tensor<4xi32>, tensor<4xi32>) -> tensor<4xi32>
    %c = arith.constant 1 : index
    %s = "tile.read"(%t, %c) {loc = "k.py:6"} : (tensor<4xi32>, index) -> index
    %v = "tile.view"(%x, %s) <{pad = "zero", operandSegmentSizes = array<i32: 1, 1, 0>}> {loc = "k.py:7"} : (tensor<4xi32>, index) -> tensor<4xi32>
    func.return %v : tensor<4xi32>
  }
}
