// pypto-legalize: a tile.scatter_rows states the rows its loop writes per iteration (`rows_per_trip`), the option
// scatter-rows (default 2) where it divides the scatter's rows, else their greatest common divisor: pypto 0.2.0
// stitches at most 128 loop iterations into one group, so 2 rows per iteration halve a 128-row scatter's groups
// (flash index_compressor 135.0 -> 127.6 us). The emitter prints that many rows per iteration. The op verifier
// refuses a count that does not divide the rows. Running the pass again changes nothing. A trip of more than one row
// states `rows_together`: the condition (over the trip's row ids) under which its rows land at consecutive ids of one
// table block and one assemble writes them (pypto 0.2.0 compiles it only up to 100 condition nodes: legalize.py).
// RUN: attnc compile %s -p 'pypto-legalize{host-constants=0}' -o - | filecheck %s
// RUN: attnc compile %s -p 'pypto-legalize{host-constants=0},pypto-legalize{host-constants=0}' -o - | filecheck %s
// CHECK-LABEL: func.func @scatter
// CHECK: tile.scatter_rows %t, %rows_a, %ids_a {in_place = true, scalar_id = {{.*}}, rows_per_trip = 2 : i64, together_rows = 2 : i64, rows_together = "({r0} >= 0) * ({r0} % 8 < 7) * ({r1} == {r0} + 1)"}
// CHECK: tile.scatter_rows {{.*}}, %rows_b, %ids_b {in_place = true, scalar_id = {{.*}}, rows_per_trip = 1 : i64}
// RUN: attnc compile %s -p 'pypto-legalize{host-constants=0 scatter-rows=4}' -o - | filecheck %s --check-prefix=FOUR
// FOUR: tile.scatter_rows %t, %rows_a, %ids_a {{.*}}rows_per_trip = 2 : i64, together_rows = 2 : i64, rows_together = {{.*}}}
// FOUR: tile.scatter_rows {{.*}}, %rows_b, %ids_b {{.*}}rows_per_trip = 1 : i64}
// RUN: attnc compile %s -p 'pypto-legalize{host-constants=0 scatter-rows=3}' -o - | filecheck %s --check-prefix=THREE
// THREE: tile.scatter_rows %t, %rows_a, %ids_a {{.*}}rows_per_trip = 3 : i64, together_rows = 3 : i64, rows_together = "({r0} >= 0) * ({r0} % 8 < 6) * ({r1} == {r0} + 1) * ({r2} == {r0} + 2)"}
// THREE: tile.scatter_rows {{.*}}, %rows_b, %ids_b {{.*}}rows_per_trip = 3 : i64, together_rows = 3 : i64, rows_together = {{.*}}}
// The emitted program: a loop of 3 iterations writing rows (w + 0) and (w + 1) as one [2, 2] assemble where the
// condition holds, else each on its own, then one of 3 writing one each.
// RUN: attnc compile %s -p 'pypto-legalize{host-constants=0}' --emit pypto -o - | filecheck %s --check-prefix=EMIT
// EMIT: for [[W:w[0-9]+]] in pypto.loop(0, 6, 2,
// EMIT: [[P:s[0-9]+]] = ([[R0:s[0-9]+]] >= 0) * ([[R0]] % 8 < 7) * ([[R1:s[0-9]+]] == [[R0]] + 1)
// EMIT-NEXT: if [[P]] > 0:
// EMIT: pypto.view(rows_a, [2, 2], [([[W]] + 0), 0])
// EMIT: else:
// EMIT: pypto.view(rows_a, [1, 2], [([[W]] + 0), 0])
// EMIT: pypto.view(rows_a, [1, 2], [([[W]] + 1), 0])
// EMIT: for [[V:w[0-9]+]] in pypto.loop(0, 3, 1,
// EMIT: pypto.view(rows_b, [1, 2], {{\[}}[[V]], 0])
// RUN: not attnc compile %s -p 'pypto-legalize{scatter-rows=0}' -o - 2>&1 | filecheck %s --check-prefix=RANGE
// RANGE: pypto-legalize: scatter-rows must be in [1, 128], got 0
// RANGE-NOT: Traceback
// RUN: sed 's/in_place = true}/in_place = true, rows_per_trip = 4 : i64}/' %s | not attnc compile - -o - 2>&1 | filecheck %s --check-prefix=VERIFY
// VERIFY: rows_per_trip must be a positive integer dividing the rows, on a tile.scatter_rows
// VERIFY-NOT: Traceback
builtin.module {
  func.func @scatter(%t: tensor<8x2xf32>, %rows_a: tensor<6x2xf32>, %ids_a: tensor<6xi32>, %rows_b: tensor<3x2xf32>, %ids_b: tensor<3xi32>) -> tensor<8x2xf32> attributes {arg_names = ["t", "rows_a", "ids_a", "rows_b", "ids_b"], result_names = ["t"]} {
    %a = "tile.scatter_rows"(%t, %rows_a, %ids_a) {loc = "s.py:1", in_place = true} : (tensor<8x2xf32>, tensor<6x2xf32>, tensor<6xi32>) -> tensor<8x2xf32>
    %b = "tile.scatter_rows"(%a, %rows_b, %ids_b) {loc = "s.py:2", in_place = true} : (tensor<8x2xf32>, tensor<3x2xf32>, tensor<3xi32>) -> tensor<8x2xf32>
    func.return %b : tensor<8x2xf32>
  }
}
