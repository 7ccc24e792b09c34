// One instruction set's build of the contraction (isa.h).
//
// Per pair: the owner's rows L = [P D_k, P_KB E_k] are computed once per run of pairs with the same
// owner and kept transposed (L^T: width x u, u contiguous, zero-padded to whole vectors); the block
// accumulates, for each common projector entry (merge of the two sorted entry lists), the outer
// products of the other atom's packed row elements (broadcast) with L^T's rows: up to V_TILE
// vector accumulators (one per row of the other atom) stay in registers over the entry's columns.
#include "isa.h"
#include "operator_contract.h"

namespace HFORGE_ISA {

// Matches ahead whose packed rows are prefetched: they come from anywhere in `packed` (the other
// atoms' entries), and waiting for them cost more than the arithmetic (1000-atom batch: 85 -> 56 ms).
constexpr int64_t kPrefetchAhead = 4;
// proj_keys: (k, m) as one integer, 12 bits per image component (operator_contract.h).
constexpr int64_t kKeyBase = 4096;


// out[v] += sum_p R[v, p] * L^T[p] for VT rows v of the other atom (one vector of owner rows);
// R[v, p] at right[v * stride + p], or at right[v + p * stride] with ByColumn (R stored transposed).
template <typename T, int VT, bool ByColumn>
static inline void outer_tile(const T* lt, int64_t u_stride, const T* right, int64_t stride, int64_t cols, T* out) {
  typedef typename Vector<T>::type V;
  V acc[VT];
#pragma GCC unroll 32
  for (int v = 0; v < VT; ++v) acc[v] = V{};
  for (int64_t p = 0; p < cols; ++p) {
    const V l = *reinterpret_cast<const V*>(lt + p * u_stride);
#pragma GCC unroll 32
    for (int v = 0; v < VT; ++v) acc[v] += (ByColumn ? right[v + p * stride] : right[v * stride + p]) * l;
  }
#pragma GCC unroll 32
  for (int v = 0; v < VT; ++v) *reinterpret_cast<V*>(out + v * u_stride) += acc[v];
}

template <typename T, bool ByColumn = false>
static void outer_rows(int64_t n_rows, const T* lt, int64_t u_stride, const T* right, int64_t stride, int64_t cols, T* out) {
  for (int64_t v0 = 0; v0 < n_rows; v0 += HFORGE_V_TILE) {
    const int64_t n = n_rows - v0 < HFORGE_V_TILE ? n_rows - v0 : HFORGE_V_TILE;
    const T* r = right + (ByColumn ? v0 : v0 * stride);
    T* o = out + v0 * u_stride;
    switch (n) {
#define HFORGE_TILE_CASE(N) \
  case N: outer_tile<T, N, ByColumn>(lt, u_stride, r, stride, cols, o); break;
      HFORGE_TILE_CASE(1) HFORGE_TILE_CASE(2) HFORGE_TILE_CASE(3) HFORGE_TILE_CASE(4) HFORGE_TILE_CASE(5)
      HFORGE_TILE_CASE(6) HFORGE_TILE_CASE(7) HFORGE_TILE_CASE(8) HFORGE_TILE_CASE(9) HFORGE_TILE_CASE(10)
      HFORGE_TILE_CASE(11) HFORGE_TILE_CASE(12)
#if HFORGE_V_TILE > 12
      HFORGE_TILE_CASE(13) HFORGE_TILE_CASE(14) HFORGE_TILE_CASE(15) HFORGE_TILE_CASE(16)
#endif
#undef HFORGE_TILE_CASE
      default: break;
    }
  }
}

// L^T of every entry of `owner` (entry slot a - proj_ptr[owner] at lt + slot * width * u_stride):
// the entry's packed rows transposed into P^T (width x u_stride), then L^T[q] = sum_p D_k[p, q] P^T[p]
// for q < n_op (the outer-product tiles, D_k read by columns, each element broadcast) and E_q P^T[q]
// for the others.
template <typename T>
static void owner_left(const HForgeContractArgs& A, int64_t owner, int64_t u_stride, const HForgeContractScratch& scratch) {
  const T* packed = static_cast<const T*>(A.packed);
  const T* operators = static_cast<const T*>(A.operators);
  const T* energies = static_cast<const T*>(A.energies);
  T* lt = static_cast<T*>(scratch.left);
  T* pt = static_cast<T*>(scratch.transposed);
  const int64_t width = A.width, n_op = A.n_op, p0 = A.proj_ptr[owner], lanes = Vector<T>::lanes;
  for (int64_t a = p0; a < A.proj_ptr[owner + 1]; ++a) {
    const int64_t k = A.proj_atoms[a], s = A.species[k], rows = A.entry_rows[a];
    T* L = lt + (a - p0) * width * u_stride;
    for (int64_t i = 0; i < width * u_stride; ++i) L[i] = T(0), pt[i] = T(0);
    for (int64_t u = 0; u < rows; ++u) {
      const T* row = packed + (A.entry_row[a] + u) * width;
      for (int64_t p = 0; p < width; ++p) pt[p * u_stride + u] = row[p];
    }
    const T* d = operators + k * n_op * n_op;
    for (int64_t u0 = 0; u0 < rows; u0 += lanes) outer_rows<T, true>(n_op, pt + u0, u_stride, d, n_op, n_op, L + u0);
    for (int64_t q = n_op; q < width; ++q) {
      const T energy = energies[s * A.energy_stride + q - n_op];
      for (int64_t u = 0; u < u_stride; ++u) L[q * u_stride + u] = energy * pt[q * u_stride + u];
    }
  }
}

// Prefetch the packed rows of entry b (the other atom's side of a later match) into the caches.
template <typename T>
static inline void prefetch_entry(const HForgeContractArgs& A, int64_t b) {
  const char* first = reinterpret_cast<const char*>(static_cast<const T*>(A.packed) + A.entry_row[b] * A.width);
  const int64_t bytes = A.entry_rows[b] * A.width * static_cast<int64_t>(sizeof(T));
  for (int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(first + offset);
}

// Pairs e_begin .. e_end, with one thread's scratch (operator_contract.h).
template <typename T>
static void contract_range(const HForgeContractArgs& A, int64_t e_begin, int64_t e_end, const HForgeContractScratch& scratch) {
  const int64_t lanes = Vector<T>::lanes;
  const int64_t u_stride = (A.rows_pad + lanes - 1) / lanes * lanes;
  const int64_t width = A.width, n_pairs = A.n_pairs;
  const T* packed = static_cast<const T*>(A.packed);
  const T* lt = static_cast<const T*>(scratch.left);
  T* block = static_cast<T*>(scratch.block);
  int64_t* matches = scratch.matches;
  T* out = static_cast<T*>(A.out);
  int64_t current = -1, shift[3];
  for (int64_t e = e_begin; e < e_end; ++e) {
    const bool flip = A.swap[e] != 0;
    const int64_t owner = flip ? A.pairs[n_pairs + e] : A.pairs[e], other = flip ? A.pairs[e] : A.pairs[n_pairs + e];
    for (int d = 0; d < 3; ++d) shift[d] = flip ? -A.shifts[3 * e + d] : A.shifts[3 * e + d];
    if (owner != current) {
      owner_left<T>(A, owner, u_stride, scratch);
      current = owner;
    }
    const int64_t p0 = A.proj_ptr[owner];
    if (e + 1 < e_end) {  // the next pair's other atom: its keys, for the next merge
      const int64_t next = A.swap[e + 1] ? A.pairs[e + 1] : A.pairs[n_pairs + e + 1];
      const char* first = reinterpret_cast<const char*>(A.proj_keys + A.proj_ptr[next]);
      for (int64_t offset = 0; offset < 8 * (A.proj_ptr[next + 1] - A.proj_ptr[next]); offset += 64) __builtin_prefetch(first + offset);
    }
    // The common entries: a branch-free merge of the two sorted key lists (the other's keys moved by
    // the pair's image shift), each step a compare, two conditional increments and a store.
    const int64_t key_shift = (shift[0] * kKeyBase + shift[1]) * kKeyBase + shift[2];
    int64_t n_matches = 0, a = p0, b = A.proj_ptr[other];
    const int64_t a_end = A.proj_ptr[owner + 1], b_end = A.proj_ptr[other + 1];
    while (a < a_end && b < b_end) {
      const int64_t ka = A.proj_keys[a], kb = A.proj_keys[b] + key_shift;
      matches[2 * n_matches] = a;
      matches[2 * n_matches + 1] = b;
      n_matches += ka == kb;
      a += ka <= kb;
      b += kb <= ka;
    }
    for (int64_t i = 0; i < A.rows_pad * u_stride; ++i) block[i] = T(0);
    for (int64_t m = 0; m < kPrefetchAhead && m < n_matches; ++m) prefetch_entry<T>(A, matches[2 * m + 1]);
    for (int64_t m = 0; m < n_matches; ++m) {
      if (m + kPrefetchAhead < n_matches) prefetch_entry<T>(A, matches[2 * (m + kPrefetchAhead) + 1]);
      const int64_t ma = matches[2 * m], mb = matches[2 * m + 1];
      const int64_t cols = A.entry_cols[ma] < A.entry_cols[mb] ? A.entry_cols[ma] : A.entry_cols[mb];
      const T* lt_a = lt + (ma - p0) * width * u_stride;
      const T* right = packed + A.entry_row[mb] * width;
      for (int64_t u0 = 0; u0 < A.entry_rows[ma]; u0 += lanes)
        outer_rows<T>(A.entry_rows[mb], lt_a + u0, u_stride, right, width, cols, block + u0);
    }
    const int64_t s_own = A.species[owner], s_oth = A.species[other];
    const int64_t n_own = A.n_orb[s_own], n_oth = A.n_orb[s_oth], base = A.block_ptr[e];
    for (int64_t v = 0; v < n_oth; ++v) {  // reach order -> the orbitals' order; the canonical orientation
      const int64_t ov = A.order[s_oth * A.rows_pad + v];
      if (ov < 0) continue;
      for (int64_t u = 0; u < n_own; ++u) {
        const int64_t ou = A.order[s_own * A.rows_pad + u];
        if (ou < 0) continue;
        out[flip ? base + ov * n_own + ou : base + ou * n_oth + ov] = block[v * u_stride + u];
      }
    }
  }
}

}  // namespace HFORGE_ISA

extern "C" {
void HFORGE_ISA_SYMBOL(hforge_contract_f32_)(const HForgeContractArgs* A, int64_t e_begin, int64_t e_end,
                                                  const HForgeContractScratch* scratch) {
  HFORGE_ISA::contract_range<float>(*A, e_begin, e_end, *scratch);
}
void HFORGE_ISA_SYMBOL(hforge_contract_f64_)(const HForgeContractArgs* A, int64_t e_begin, int64_t e_end,
                                                  const HForgeContractScratch* scratch) {
  HFORGE_ISA::contract_range<double>(*A, e_begin, e_end, *scratch);
}
}
