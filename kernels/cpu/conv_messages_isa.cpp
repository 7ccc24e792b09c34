// One instruction set's build of the fused convolution (isa.h).
//
// Per edge (receivers in order, so each output row has one writer and a fixed order of sums) and
// instruction: A[i, k] = sum_j C[i, j, k] Y[e, j] (vectors over the flat (i, k), the CG dense), then for whole
// vectors of channels part[k] = sum_i A[i, k] x[s, i] with the 2 l3 + 1 accumulators (times the
// vectors of channels) in registers, and out[r, k] += path_weight w[e] part[k].  Channel counts that
// are not 1, 2, 4 or 8 vectors, and degrees above 7, take the same loops on scalars.
#include "conv_messages.h"
#include "isa.h"

namespace HFORGE_ISA {
namespace conv {  // apart from operator_contract_isa.cpp's helpers

constexpr int kMaxDegree = 7;  // 2 l + 1 <= 15 rows and columns of A held per instruction
constexpr int kMaxDim = 2 * kMaxDegree + 1;
constexpr int kMaxA = 256;  // kMaxDim^2 rounded up to 64 bytes of doubles

// One instruction on NV vectors of channels with D3 = 2 l3 + 1 outputs.
template <typename T, int NV, int D3>
static inline void instruction_vectors(const T* A, int64_t d1, const T* x, int64_t channels, T path_weight, const T* w, T* out) {
  typedef typename Vector<T>::type V;
  constexpr int lanes = Vector<T>::lanes;
  V part[D3][NV];
#pragma GCC unroll 16
  for (int b = 0; b < D3; ++b)
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) part[b][n] = V{};
  for (int64_t a = 0; a < d1; ++a) {
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) {
      const V xa = load(x + a * channels + n * lanes);
#pragma GCC unroll 16
      for (int b = 0; b < D3; ++b) part[b][n] += A[a * D3 + b] * xa;
    }
  }
#pragma GCC unroll 8
  for (int n = 0; n < NV; ++n) {
    const V scale = path_weight * load(w + n * lanes);
#pragma GCC unroll 16
    for (int b = 0; b < D3; ++b) {
      T* o = out + b * channels + n * lanes;
      store(o, load(o) + scale * part[b][n]);
    }
  }
}

template <typename T>
static void instruction_scalars(const T* A, int64_t d1, int64_t d3, const T* x, int64_t channels, T path_weight, const T* w, T* out) {
  for (int64_t b = 0; b < d3; ++b)
    for (int64_t u = 0; u < channels; ++u) {
      T sum = T(0);
      for (int64_t a = 0; a < d1; ++a) sum += A[a * d3 + b] * x[a * channels + u];
      out[b * channels + u] += path_weight * w[u] * sum;
    }
}

template <typename T, int NV>
static void instruction(const T* A, int64_t d1, int64_t d3, const T* x, int64_t channels, T path_weight, const T* w, T* out) {
  if (NV > 0) {
    switch (d3) {
#define HFORGE_D3_CASE(D) \
  case D: instruction_vectors<T, (NV > 0 ? NV : 1), D>(A, d1, x, channels, path_weight, w, out); return;
      HFORGE_D3_CASE(1) HFORGE_D3_CASE(3) HFORGE_D3_CASE(5) HFORGE_D3_CASE(7)
      HFORGE_D3_CASE(9) HFORGE_D3_CASE(11) HFORGE_D3_CASE(13) HFORGE_D3_CASE(15)
#undef HFORGE_D3_CASE
      default: break;
    }
  }
  instruction_scalars<T>(A, d1, d3, x, channels, path_weight, w, out);
}

// The edges order[q] for q in chunk c's range; NV: channels as NV whole vectors (0: scalars).
template <typename T, int NV>
static void conv_chunk(const HForgeConvArgs& P, int64_t c) {
  const T* x = static_cast<const T*>(P.x);
  const T* Y = static_cast<const T*>(P.Y);
  const T* w = static_cast<const T*>(P.w);
  const T* path_weight = static_cast<const T*>(P.path_weight);
  const T* cg_dense = static_cast<const T*>(P.cg_dense);
  T* out = static_cast<T*>(P.out);
  typedef typename Vector<T>::type V;
  constexpr int lanes = Vector<T>::lanes;
  alignas(64) T A[kMaxA];
  for (int64_t q = P.chunk_ptr[c]; q < P.chunk_ptr[c + 1]; ++q) {
    const int64_t e = P.order[q];
    const T* xs = x + P.sender_rows[e] * P.dim_in1;
    const T* ye = Y + e * P.dim_in2;
    const T* we = w + e * P.weight_numel;
    T* o = out + P.edge_receiver[q] * P.dim_out;
    for (int64_t i = 0; i < P.n_instructions; ++i) {
      const int64_t d1 = 2 * P.l1[i] + 1, d2 = 2 * P.l2[i] + 1, d3 = 2 * P.l3[i] + 1, stride = P.cg_row_stride[i];
      const T* cg = cg_dense + P.cg_offset[i];
      const T* y = ye + P.in2_offset[i];
      for (int64_t c = 0; c < stride; c += lanes) {
        V sum = y[0] * load(cg + c);
        for (int64_t j = 1; j < d2; ++j) sum += y[j] * load(cg + j * stride + c);
        store(A + c, sum);
      }
      instruction<T, NV>(A, d1, d3, xs + P.in1_offset[i], P.channels, path_weight[i], we + P.weight_offset[i], o + P.out_offset[i]);
    }
  }
}

template <typename T>
static void conv_chunk_any(const HForgeConvArgs& P, int64_t c) {
  constexpr int lanes = Vector<T>::lanes;
  const int64_t nv = P.channels % lanes == 0 ? P.channels / lanes : 0;
  switch (nv) {
    case 1: conv_chunk<T, 1>(P, c); break;
    case 2: conv_chunk<T, 2>(P, c); break;
    case 4: conv_chunk<T, 4>(P, c); break;
    case 8: conv_chunk<T, 8>(P, c); break;
    default: conv_chunk<T, 0>(P, c); break;
  }
}

}  // namespace conv
}  // namespace HFORGE_ISA

extern "C" {
void HFORGE_ISA_SYMBOL(hforge_conv_f32_)(const HForgeConvArgs* P, int64_t chunk) {
  HFORGE_ISA::conv::conv_chunk_any<float>(*P, chunk);
}
void HFORGE_ISA_SYMBOL(hforge_conv_f64_)(const HForgeConvArgs* P, int64_t chunk) {
  HFORGE_ISA::conv::conv_chunk_any<double>(*P, chunk);
}
}
