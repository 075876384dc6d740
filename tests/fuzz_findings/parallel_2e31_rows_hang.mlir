// interpret: hang: over 50 s
builtin.module {
  func.func @sparse_attn_core(%0: tensor<2x2x4x128xbf16>, %1: tensor<2x8x128xbf16>, %2: tensor<2x2x128xbf16>, %3: tensor<2x8x128xbf16>, %4: tensor<2x2x4xi32>, %5: tensor<2xi32>, %6: tensor<4xf32>) -> tensor<2x2x4x128xbf16> attributes {arg_names = ["q", "kv_ring", "kv_step", "kv_cmp", "cmp_idx", "start_pos", "attn_sink"], result_names = ["core"], token_dims = [2 : i64, 2 : i64]} {
    %7 = "tile.reshape"(%5) {loc = "kernels_src/rings.py:35"} : (tensor<2xi32>) -> tensor<2x1xi32>
    %8 = "tile.iota"() <{axis = 1 : i64}> {loc = "kernels_src/rings.py:35"} : () -> tensor<2x2xi32>
    %9 = "tile.row_expand_add"(%8, %7) {loc = "kernels_src/rings.py:35"} : (tensor<2x2xi32>, tensor<2x1xi32>) -> tensor<2x2xi32>
    %10 = "tile.reshape"(%9) {loc = "kernels_src/rings.py:35"} : (tensor<2x2xi32>) -> tensor<2x2x1xi32>
    %11 = "tile.reshape"(%5) {loc = "kernels_src/rings.py:36"} : (tensor<2xi32>) -> tensor<2x1x1xi32>
    %12 = "tile.full"() <{value = 7.000000e+00 : f64}> {loc = "kernels_src/rings.py:37"} : () -> tensor<2x2x1xi32>
    %13 = "tile.sub"(%10, %12) {loc = "kernels_src/rings.py:37"} : (tensor<2x2x1xi32>, tensor<2x2x1xi32>) -> tensor<2x2x1xi32>
    %14 = "tile.iota"() <{axis = 2 : i64}> {loc = "kernels_src/rings.py:37"} : () -> tensor<2x2x8xi32>
    %15 = "tile.row_expand_add"(%14, %13) {loc = "kernels_src/rings.py:37"} : (tensor<2x2x8xi32>, tensor<2x2x1xi32>) -> tensor<2x2x8xi32>
    %16 = "tile.broadcast"(%11) {loc = "kernels_src/rings.py:38"} : (tensor<2x1x1xi32>) -> tensor<2x2x8xi32>
    %17 = "tile.cmp"(%15, %16) <{predicate = "ge"}> {loc = "kernels_src/rings.py:38"} : (tensor<2x2x8xi32>, tensor<2x2x8xi32>) -> tensor<2x2x8xi1>
    %18 = "tile.sub"(%15, %16) {loc = "kernels_src/rings.py:38"} : (tensor<2x2x8xi32>, tensor<2x2x8xi32>) -> tensor<2x2x8xi32>
    %19 = "tile.full"() <{value = 8.000000e+00 : f64}> {loc = "kernels_src/rings.py:38"} : () -> tensor<2x2x8xi32>
    %20 = "tile.add"(%18, %19) {loc = "kernels_src/rings.py:38"} : (tensor<2x2x8xi32>, tensor<2x2x8xi32>) -> tensor<2x2x8xi32>
    %21 = "tile.full"() <{value = 0.000000e+00 : f64}> {loc = "kernels_src/rings.py:38"} : () -> tensor<2x2x8xi32>
    %22 = "tile.max"(%15, %21) {loc = "kernels_src/rings.py:38"} : (tensor<2x2x8xi32>, tensor<2x2x8xi32>) -> tensor<2x2x8xi32>
    %23 = "tile.rem"(%22, %19) {loc = "kernels_src/rings.py:38"} : (tensor<2x2x8xi32>, tensor<2x2x8xi32>) -> tensor<2x2x8xi32>
    %24 = "tile.select"(%17, %20, %23) {loc = "kernels_src/rings.py:38"} : (tensor<2x2x8xi1>, tensor<2x2x8xi32>, tensor<2x2x8xi32>) -> tensor<2x2x8xi32>
    %25 = "tile.full"() <{value = 0.000000e+00 : f64}> {loc = "kernels_src/rings.py:39"} : () -> tensor<2x2x8xi32>
    %26 = "tile.cmp"(%15, %25) <{predicate = "ge"}> {loc = "kernels_src/rings.py:39"} : (tensor<2x2x8xi32>, tensor<2x2x8xi32>) -> tensor<2x2x8xi1>
    %27 = "tile.reshape"(%5) {loc = "kernels_src/sparse_attn.py:31"} : (tensor<2xi32>) -> tensor<2x1xi32>
    %28 = "tile.iota"() <{axis = 1 : i64}> {loc = "kernels_src/sparse_attn.py:31"} : () -> tensor<2x2xi32>
    %29 = "tile.row_expand_add"(%28, %27) {loc = "kernels_src/sparse_attn.py:31"} : (tensor<2x2xi32>, tensor<2x1xi32>) -> tensor<2x2xi32>
    %30 = "tile.reshape"(%29) {loc = "kernels_src/sparse_attn.py:31"} : (tensor<2x2xi32>) -> tensor<2x2x1xi32>
    %31 = "tile.full"() <{value = 0.000000e+00 : f64}> {loc = "kernels_src/sparse_attn.py:32"} : () -> tensor<2x2x4xi32>
    %32 = "tile.cmp"(%4, %31) <{predicate = "ge"}> {loc = "kernels_src/sparse_attn.py:32"} : (tensor<2x2x4xi32>, tensor<2x2x4xi32>) -> tensor<2x2x4xi1>
    %33 = "tile.full"() <{value = 1.000000e+00 : f64}> {loc = "kernels_src/sparse_attn.py:32"} : () -> tensor<2x2x1xi32>
    %34 = "tile.add"(%30, %33) {loc = "kernels_src/sparse_attn.py:32"} : (tensor<2x2x1xi32>, tensor<2x2x1xi32>) -> tensor<2x2x1xi32>
    %35 = "tile.full"() <{value = 4.000000e+00 : f64}> {loc = "kernels_src/sparse_attn.py:32"} : () -> tensor<2x2x1xi32>
    %36 = "tile.floordiv"(%34, %35) {loc = "kernels_src/sparse_attn.py:32"} : (tensor<2x2x1xi32>, tensor<2x2x1xi32>) -> tensor<2x2x1xi32>
    %37 = "tile.full"() <{value = 8.000000e+00 : f64}> {loc = "kernels_src/sparse_attn.py:32"} : () -> tensor<2x2x1xi32>
    %38 = "tile.min"(%36, %37) {loc = "kernels_src/sparse_attn.py:32"} : (tensor<2x2x1xi32>, tensor<2x2x1xi32>) -> tensor<2x2x1xi32>
    %39 = "tile.broadcast"(%38) {loc = "kernels_src/sparse_attn.py:32"} : (tensor<2x2x1xi32>) -> tensor<2x2x4xi32>
    %40 = "tile.cmp"(%4, %39) <{predicate = "lt"}> {loc = "kernels_src/sparse_attn.py:32"} : (tensor<2x2x4xi32>, tensor<2x2x4xi32>) -> tensor<2x2x4xi1>
    %41 = "tile.and"(%32, %40) {loc = "kernels_src/sparse_attn.py:32"} : (tensor<2x2x4xi1>, tensor<2x2x4xi1>) -> tensor<2x2x4xi1>
    %42 = "tile.full"() <{value = 0.000000e+00 : f64}> {loc = "kernels_src/sparse_attn.py:33"} : () -> tensor<2x2x4xi32>
    %43 = "tile.select"(%41, %4, %42) {loc = "kernels_src/sparse_attn.py:33"} : (tensor<2x2x4xi1>, tensor<2x2x4xi32>, tensor<2x2x4xi32>) -> tensor<2x2x4xi32>
    %44 = "tile.full"() <{value = 1.000000e+01 : f64}> {loc = "kernels_src/sparse_attn.py:33"} : () -> tensor<2x2x4xi32>
    %45 = "tile.add"(%43, %44) {loc = "kernels_src/sparse_attn.py:33"} : (tensor<2x2x4xi32>, tensor<2x2x4xi32>) -> tensor<2x2x4xi32>
    %46 = "tile.concat"(%24, %45) <{axis = 2 : i64}> {loc = "kernels_src/sparse_attn.py:33"} : (tensor<2x2x8xi32>, tensor<2x2x4xi32>) -> tensor<2x2x12xi32>
    %47 = "tile.concat"(%26, %41) <{axis = 2 : i64}> {loc = "kernels_src/sparse_attn.py:34"} : (tensor<2x2x8xi1>, tensor<2x2x4xi1>) -> tensor<2x2x12xi1>
    %48 = "tile.concat"(%1, %2, %3) <{axis = 1 : i64}> {loc = "kernels_src/rings.py:25"} : (tensor<2x8x128xbf16>, tensor<2x2x128xbf16>, tensor<2x8x128xbf16>) -> tensor<2x18x128xbf16>
    %49 = "tile.reshape"(%48) {loc = "kernels_src/rings.py:26"} : (tensor<2x18x128xbf16>) -> tensor<36x128xbf16>
    %50 = "tile.iota"() <{axis = 0 : i64}> {loc = "kernels_src/rings.py:17"} : () -> tensor<2x1x1xi32>
    %51 = "tile.full"() <{value = 1.800000e+01 : f64}> {loc = "kernels_src/rings.py:17"} : () -> tensor<2x1x1xi32>
    %52 = "tile.mul"(%50, %51) {loc = "kernels_src/rings.py:17"} : (tensor<2x1x1xi32>, tensor<2x1x1xi32>) -> tensor<2x1x1xi32>
    %53 = "tile.broadcast"(%52) {loc = "kernels_src/rings.py:17"} : (tensor<2x1x1xi32>) -> tensor<2x2x12xi32>
    %54 = "tile.add"(%46, %53) {loc = "kernels_src/rings.py:17"} : (tensor<2x2x12xi32>, tensor<2x2x12xi32>) -> tensor<2x2x12xi32>
    %55 = arith.constant {loc = "kernels_src/sparse_attn.py:43"} 0 : index
    %56 = "tile.reshape"(%6) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4xf32>) -> tensor<1x4x1xf32>
    %57 = "tile.reshape"(%54) {loc = "kernels_src/rings.py:27"} : (tensor<2x2x12xi32>) -> tensor<4x12xi32>
    %58 = "tile.reshape"(%47) {loc = "kernels_src/sparse_attn.py:37"} : (tensor<2x2x12xi1>) -> tensor<4x12xi1>
    %59 = "tile.reshape"(%0) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<2x2x4x128xbf16>) -> tensor<4x4x128xbf16>
    %60 = "tile.full"() <{value = 0.000000e+00 : f64}> {loc = "kernels_src/sparse_attn.py:49"} : () -> tensor<4x4x128xbf16>
    %61 = arith.constant {loc = "kernels_src/sparse_attn.py:49"} 0 : index
    %62 = arith.constant {loc = "kernels_src/sparse_attn.py:49"} 2147483647 : index
    %63 = "tile.parallel"(%61, %62, %60) <{rows = 4 : i64}> ({
    ^bb0(%64: index, %65: tensor<4x4x128xbf16>):
      %66 = "tile.view"(%58, %64, %55) <{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 0>}> {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x12xi1>, index, index) -> tensor<4x12xi1>
      %67 = "tile.view"(%57, %64, %55) <{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 0>}> {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x12xi32>, index, index) -> tensor<4x12xi32>
      %68 = "tile.view"(%59, %64, %55, %55) <{pad = "zero", operandSegmentSizes = array<i32: 1, 3, 0>}> {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x128xbf16>, index, index, index) -> tensor<4x4x128xbf16>
      %69 = "tile.full"() <{value = 0.000000e+00 : f64}> {loc = "kernels_src/sparse_attn.py:43"} : () -> tensor<4x12x128xbf16>
      %70 = "tile.full"() <{value = -3.4028234663852886e+38 : f64}> {loc = "kernels_src/sparse_attn.py:43"} : () -> tensor<4x4x12xf32>
      %71 = "tile.full"() <{value = 0.000000e+00 : f64}> {loc = "kernels_src/sparse_attn.py:43"} : () -> tensor<4x4x12xf32>
      %72 = "tile.broadcast"(%56) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<1x4x1xf32>) -> tensor<4x4x1xf32>
      %73 = "tile.full"() <{value = 0.000000e+00 : f64}> {loc = "kernels_src/sparse_attn.py:43"} : () -> tensor<4x4x1xf32>
      %74 = "tile.full"() <{value = 1.000000e+00 : f64}> {loc = "kernels_src/sparse_attn.py:43"} : () -> tensor<4x4x1xf32>
      %75 = "tile.full"() <{value = 0.000000e+00 : f64}> {loc = "kernels_src/sparse_attn.py:43"} : () -> tensor<4x4x128xf32>
      %76 = "tile.view"(%66, %55, %55) <{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 0>}> {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x12xi1>, index, index) -> tensor<4x12xi1>
      %77 = "tile.view"(%67, %55, %55) <{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 0>}> {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x12xi32>, index, index) -> tensor<4x12xi32>
      %78 = "tile.gather_rows"(%49, %77) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<36x128xbf16>, tensor<4x12xi32>) -> tensor<4x12x128xbf16>
      %79 = "tile.reshape"(%76) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x12xi1>) -> tensor<4x12x1xi1>
      %80 = "tile.broadcast"(%79) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x12x1xi1>) -> tensor<4x12x128xi1>
      %81 = "tile.select"(%80, %78, %69) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x12x128xi1>, tensor<4x12x128xbf16>, tensor<4x12x128xbf16>) -> tensor<4x12x128xbf16>
      %82 = "tile.reshape"(%76) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x12xi1>) -> tensor<4x1x12xi1>
      %83 = "tile.broadcast"(%82) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x1x12xi1>) -> tensor<4x4x12xi1>
      %84 = "tile.matmul"(%68, %81) <{transpose_b = true}> {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x128xbf16>, tensor<4x12x128xbf16>) -> tensor<4x4x12xf32>
      %85 = "tile.muls"(%84) <{scalar = 0.088388346135616302 : f64}> {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x12xf32>) -> tensor<4x4x12xf32>
      %86 = "tile.select"(%83, %85, %70) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x12xi1>, tensor<4x4x12xf32>, tensor<4x4x12xf32>) -> tensor<4x4x12xf32>
      %87 = "tile.row_max"(%86) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x12xf32>) -> tensor<4x4x1xf32>
      %88 = "tile.row_expand_sub"(%86, %87) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x12xf32>, tensor<4x4x1xf32>) -> tensor<4x4x12xf32>
      %89 = "tile.exp"(%88) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x12xf32>) -> tensor<4x4x12xf32>
      %90 = "tile.select"(%83, %89, %71) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x12xi1>, tensor<4x4x12xf32>, tensor<4x4x12xf32>) -> tensor<4x4x12xf32>
      %91 = "tile.cast"(%90) <{rounding = "rint"}> {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x12xf32>) -> tensor<4x4x12xbf16>
      %92 = "tile.cast"(%91) <{rounding = "rint"}> {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x12xbf16>) -> tensor<4x4x12xf32>
      %93 = "tile.row_sum"(%92) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x12xf32>) -> tensor<4x4x1xf32>
      %94 = "tile.matmul"(%91, %81) <{transpose_b = false}> {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x12xbf16>, tensor<4x12x128xbf16>) -> tensor<4x4x128xf32>
      %95 = "tile.max"(%87, %72) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x1xf32>, tensor<4x4x1xf32>) -> tensor<4x4x1xf32>
      %96 = "tile.sub"(%87, %95) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x1xf32>, tensor<4x4x1xf32>) -> tensor<4x4x1xf32>
      %97 = "tile.exp"(%96) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x1xf32>) -> tensor<4x4x1xf32>
      %98 = "tile.mul"(%93, %97) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x1xf32>, tensor<4x4x1xf32>) -> tensor<4x4x1xf32>
      %99 = "tile.sub"(%72, %95) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x1xf32>, tensor<4x4x1xf32>) -> tensor<4x4x1xf32>
      %100 = "tile.exp"(%99) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x1xf32>) -> tensor<4x4x1xf32>
      %101 = "tile.add"(%98, %100) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x1xf32>, tensor<4x4x1xf32>) -> tensor<4x4x1xf32>
      %102 = "tile.cmp"(%101, %73) <{predicate = "gt"}> {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x1xf32>, tensor<4x4x1xf32>) -> tensor<4x4x1xi1>
      %103 = "tile.row_expand_mul"(%94, %97) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x128xf32>, tensor<4x4x1xf32>) -> tensor<4x4x128xf32>
      %104 = "tile.select"(%102, %101, %74) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x1xi1>, tensor<4x4x1xf32>, tensor<4x4x1xf32>) -> tensor<4x4x1xf32>
      %105 = "tile.row_expand_div"(%103, %104) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x128xf32>, tensor<4x4x1xf32>) -> tensor<4x4x128xf32>
      %106 = "tile.broadcast"(%102) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x1xi1>) -> tensor<4x4x128xi1>
      %107 = "tile.select"(%106, %105, %75) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x128xi1>, tensor<4x4x128xf32>, tensor<4x4x128xf32>) -> tensor<4x4x128xf32>
      %108 = "tile.cast"(%107) <{rounding = "rint"}> {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x128xf32>) -> tensor<4x4x128xbf16>
      %109 = "tile.assemble"(%108, %65, %64, %55, %55) <{operandSegmentSizes = array<i32: 1, 1, 3, 0>}> {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x128xbf16>, tensor<4x4x128xbf16>, index, index, index) -> tensor<4x4x128xbf16>
      "tile.yield"(%109) {loc = "kernels_src/sparse_attn.py:43"} : (tensor<4x4x128xbf16>) -> ()
    }) {loc = "kernels_src/sparse_attn.py:49"} : (index, index, tensor<4x4x128xbf16>) -> tensor<4x4x128xbf16>
    %110 = "tile.reshape"(%63) {loc = "kernels_src/sparse_attn.py:49"} : (tensor<4x4x128xbf16>) -> tensor<2x2x4x128xbf16>
    func.return %110 : tensor<2x2x4x128xbf16>
  }
}
