// HForge's compiled CPU kernels: MACE's channel-wise convolution summed into receivers
// (hforge.ops.conv_messages; the program's tables as ConvProgram holds them, all int64 row-major).
//
//   x (senders, dim_in1) and out (receivers, dim_out): channel-last inside every irrep
//   ([offset + m * channels + u]); Y (E, dim_in2), w (E, weight_numel): per edge;
//   order (E,): the edges sorted by receiver, edge_receiver[q] the receiver row of edge order[q],
//   sender_rows[e] the row of x edge e sends from;
//   chunk_ptr (n_chunks + 1,): ranges of `order` that never split a receiver (one writer per row);
//   per instruction: l1, l2, l3, in1_offset, in2_offset, out_offset, weight_offset, path_weight (T), and
//   its CG coefficients dense at cg_dense + cg_offset[i] (T): for j < 2 l2 + 1 a row of cg_row_stride[i]
//   elements (a whole number of 64-byte lines) holding C[a, j, b] at a * (2 l3 + 1) + b, zero beyond.
#pragma once
#include <cstdint>

extern "C" {
struct HForgeConvArgs {
  int64_t channels, n_instructions, dim_in1, dim_in2, dim_out, weight_numel, n_chunks;
  const int64_t *chunk_ptr, *order, *edge_receiver, *sender_rows;
  const int64_t *l1, *l2, *l3, *in1_offset, *in2_offset, *out_offset, *weight_offset, *cg_offset, *cg_row_stride;
  const void *path_weight, *cg_dense, *x, *Y, *w;  // float or double, as the function's name says
  void* out;
};
}
