// pypto-legalize: the buffers the program's values name, as facts the emitter prints from.
// `inplace` on a reshape of a kernel parameter's buffer (here through a view of all of %x): pypto reshapes it as
// a view, no copy (a copy is one task per tile, and pypto 0.2.0 links each data-dependent gather task from it
// to each copy task: 2048 x 2048 links for the indexer's idx_cmp at B=64, F74001 "Slab alloc null, type=9").
// A reshape of a computed tensor is a copy. `copy_out` per result: stored into its output parameter as a clone
// (pypto 0.2.0 may leave the output untouched for `out[:] = t`), unless a loop wrote it in place;
// `copy_out_tile_elems` the vector tile budget of the loop that made it (0: the kernel's).
// RUN: attnc compile %s -p pypto-legalize --verify-each -o - | filecheck %s
// RUN: attnc compile %s -p pypto-legalize,pypto-legalize -o - | filecheck %s
// CHECK-LABEL: func.func @bufs
// CHECK-SAME: copy_out = [true, true], copy_out_tile_elems = [0 : i64, 0 : i64]
// CHECK: %r = tile.reshape %whole {inplace = true, padded_out = 4 : i64}
// CHECK: %f = tile.reshape %e :

// The HCA core: its output is the output parameter its token loop writes in place (no copy out), and no piece
// of its packed key concat is all of a kernel parameter's buffer (such a piece's assemble is `clone`: pypto 0.2.0
// fails to compile the assemble otherwise, SrcDstBufferMerge).
// RUN: attnc compile hca_attn_core --config tiny -p 'tile-softmax{kv-tile=128},parallelize-tokens{rows=32},schedule-attention,tile-matmul{k=512},lower-to-tiles,canonicalize,cse,update-in-place,pypto-legalize' -o - | filecheck %s --check-prefix=HCA
// HCA-LABEL: func.func @hca_attn_core
// HCA-SAME: copy_out = [false], copy_out_tile_elems = [16384 : i64]
// HCA: tile.reshape %q {inplace = true}
// HCA: tile.full {buffer = "local"
// HCA-NOT: clone = true
// HCA: func.return
builtin.module {
  func.func @bufs(%x: tensor<4x8xf32>, %n: tensor<2xi32>) -> (tensor<8x4xf32>, tensor<32xf32>) attributes {arg_names = ["x", "n"], result_names = ["y", "z"]} {
    %c0 = arith.constant 0 : index
    %whole = "tile.view"(%x, %c0, %c0) <{pad = "none", operandSegmentSizes = array<i32: 1, 2, 0>}> {loc = "b.py:1"} : (tensor<4x8xf32>, index, index) -> tensor<4x8xf32>
    %r = "tile.reshape"(%whole) {loc = "b.py:2"} : (tensor<4x8xf32>) -> tensor<8x4xf32>
    %e = "tile.exp"(%x) {loc = "b.py:3"} : (tensor<4x8xf32>) -> tensor<4x8xf32>
    %f = "tile.reshape"(%e) {loc = "b.py:4"} : (tensor<4x8xf32>) -> tensor<32xf32>
    func.return %r, %f : tensor<8x4xf32>, tensor<32xf32>
  }
}
