// CSR row pointer from per-row counts: row_ptr[0] = 0, row_ptr[r + 1] = row_ptr[r] + counts[r].
//
// A three-pass chunked scan with independent threads (no shared memory, no barriers):
//   1. hf_chunk_totals:      thread t sums counts[t*chunk, (t+1)*chunk) into totals[t];
//   2. hf_exclusive_scan:    one thread turns totals into exclusive offsets, in place;
//   3. hf_write_row_pointer: thread t writes row_ptr over its chunk from its offset.
// Python launcher: hforge/ops/row_pointer/cupy.py; host test: kernels/host/test_row_pointer.cpp.
#include "hforge_cuda.h"

extern "C" __global__ void hf_chunk_totals(const hf_index* __restrict__ counts, hf_index n_rows, hf_index chunk,
                                           hf_index n_chunks, hf_index* __restrict__ totals) {
  const hf_index t = HF_GLOBAL_THREAD_ID;
  if (t >= n_chunks) return;
  const hf_index begin = t * chunk;
  const hf_index end = begin + chunk < n_rows ? begin + chunk : n_rows;
  hf_index sum = 0;
  for (hf_index r = begin; r < end; ++r) sum += counts[r];
  totals[t] = sum;
}

extern "C" __global__ void hf_exclusive_scan(hf_index* __restrict__ values, hf_index n) {
  if (HF_GLOBAL_THREAD_ID != 0) return;
  hf_index running = 0;
  for (hf_index k = 0; k < n; ++k) {
    const hf_index v = values[k];
    values[k] = running;
    running += v;
  }
}

extern "C" __global__ void hf_write_row_pointer(const hf_index* __restrict__ counts, hf_index n_rows, hf_index chunk,
                                                hf_index n_chunks, const hf_index* __restrict__ offsets,
                                                hf_index* __restrict__ row_ptr) {
  const hf_index t = HF_GLOBAL_THREAD_ID;
  if (t >= n_chunks) return;
  if (t == 0) row_ptr[0] = 0;
  const hf_index begin = t * chunk;
  const hf_index end = begin + chunk < n_rows ? begin + chunk : n_rows;
  hf_index running = offsets[t];
  for (hf_index r = begin; r < end; ++r) {
    running += counts[r];
    row_ptr[r + 1] = running;
  }
}
