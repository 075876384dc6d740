// pypto-legalize: a reshape of an in-place reshape of a kernel buffer (here an input) becomes one reshape of the
// buffer, in place (pypto 0.2.0 copies a reshape of a reshape: decode_swa's q, 63 copy tasks); a chain back to the
// buffer's own shape stays (its copy, one tile, hands decode_swa's kv step rows to a loop's iterations). Running
// the pass again changes nothing.
// RUN: attnc compile %s -p pypto-legalize --verify-each -o - | filecheck %s
// RUN: attnc compile %s -p pypto-legalize,pypto-legalize -o - | filecheck %s
// CHECK-LABEL: func.func @chains
// CHECK: %[[A:.*]] = tile.reshape %x {inplace = true} : (tensor<20x64xf32>) -> tensor<4x5x64xf32>
// CHECK-NEXT: %[[B:.*]] = tile.reshape %x {inplace = true} : (tensor<20x64xf32>) -> tensor<10x128xf32>
// CHECK-NEXT: %[[C:.*]] = tile.reshape %[[A]] : (tensor<4x5x64xf32>) -> tensor<20x64xf32>
// CHECK-NEXT: func.return %[[B]], %[[C]]
builtin.module {
  func.func @chains(%x: tensor<20x64xf32>) -> (tensor<10x128xf32>, tensor<20x64xf32>) attributes {arg_names = ["x"], result_names = ["b", "c"]} {
    %a = "tile.reshape"(%x) {loc = "r.py:1"} : (tensor<20x64xf32>) -> tensor<4x5x64xf32>
    %b = "tile.reshape"(%a) {loc = "r.py:2"} : (tensor<4x5x64xf32>) -> tensor<10x128xf32>
    %c = "tile.reshape"(%a) {loc = "r.py:3"} : (tensor<4x5x64xf32>) -> tensor<20x64xf32>
    func.return %b, %c : tensor<10x128xf32>, tensor<20x64xf32>
  }
}
