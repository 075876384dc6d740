// pypto-legalize: a value computed from no kernel input (ramps, fills and what is made of them only) that a kernel
// op reads is a kernel parameter the host computes from these same ops (`host_constant`, codegen/pypto/host.py);
// the ops that only feed it are `host_only` (not emitted). A lone ramp or fill stays kernel work (one task either
// way), and so does a constant a loop carries or a result returns. `pypto-legalize{host-constants=0}`: none.
// The emitted program carries the value (after the kernel, with its decoder): it runs on the stage's inputs alone.
// RUN: attnc compile %s -p pypto-legalize --emit pypto -o - | filecheck %s --check-prefix=EMIT
// EMIT: HOST_CONSTANT_NAMES = ["hc0"]
// EMIT: hc0: pypto.Tensor([8, 8], pypto.DT_FP32),
// EMIT: pypto.matmul(x, hc0,
// EMIT: HOST_CONSTANT_VALUES = {
// EMIT-NEXT: "hc0": (
// EMIT: def host_constant_values():
// RUN: attnc compile %s -p pypto-legalize -o - | filecheck %s
// RUN: attnc compile %s -p pypto-legalize,pypto-legalize -o - | filecheck %s
// RUN: attnc compile %s -p 'pypto-legalize{host-constants=0}' -o - | filecheck %s --check-prefix=OFF
// CHECK-LABEL: func.func @consts
// CHECK: %i = tile.iota {host_only = true
// CHECK: %c = tile.cast %i {host_only = true
// CHECK: %m = tile.mul %c, %c {host_constant = "hc0"}
// CHECK: %lone = tile.full
// CHECK-NOT: host
// CHECK: %y = tile.matmul %x, %m
// CHECK: %z = tile.add %x, %lone
// OFF-NOT: host_
builtin.module {
  func.func @consts(%x: tensor<8x8xf32>) -> (tensor<8x8xf32>, tensor<8x8xf32>) attributes {arg_names = ["x"], result_names = ["y", "z"]} {
    %i = tile.iota {loc = "c.py:1", axis = 1 : i64} : tensor<8x8xi32>
    %c = tile.cast %i {loc = "c.py:2", rounding = "rint"} : (tensor<8x8xi32>) -> tensor<8x8xf32>
    %m = tile.mul %c, %c {loc = "c.py:3"} : (tensor<8x8xf32>, tensor<8x8xf32>) -> tensor<8x8xf32>
    %lone = tile.full {loc = "c.py:4", value = 2.000000e+00 : f64} : tensor<8x8xf32>
    %y = tile.matmul %x, %m {loc = "c.py:5", transpose_b = false} : (tensor<8x8xf32>, tensor<8x8xf32>) -> tensor<8x8xf32>
    %z = tile.add %x, %lone {loc = "c.py:6"} : (tensor<8x8xf32>, tensor<8x8xf32>) -> tensor<8x8xf32>
    func.return %y, %z : tensor<8x8xf32>, tensor<8x8xf32>
  }
}
