// HForge's compiled CPU kernels: the separable operator's contraction on packed projections.
//
// Layout of the arguments (hforge.ops.two_centre.reference.operator_contract; all int64, row-major):
//   pairs (2, E), shifts (E, 3), swap (E,) uint8: pair e's owner is pairs[swap[e]][e], its other atom
//   pairs[1 - swap[e]][e], the other's image shift +-shifts[e] (negated when swapped);
//   species (N,); proj_ptr (N + 1,): atom i's projector entries a in [proj_ptr[i], proj_ptr[i + 1]),
//   entry a being projector atom proj_atoms[a] in image m = proj_shifts[a], sorted by
//   proj_keys[a] = ((k * 4096 + m_x + 2048) * 4096 + m_y + 2048) * 4096 + m_z + 2048 (the order of
//   (k, m); |m + pair shift| < 2048 and k < 2^27, checked by the caller, so that moving an entry by
//   an image shift n adds (n_x * 4096 + n_y) * 4096 + n_z to its key); entry a's projections are rows
//   entry_row[a] .. entry_row[a] + entry_rows[a] of packed (rows, width), zero beyond entry_cols[a];
//   operators (N, n_op, n_op): D_k of projector atom k; energies (S, energy_stride): the diagonal of
//   the other width - n_op columns, per species of k; order (S, rows_pad): the orbital of each
//   reach-ordered row (-1: padding); n_orb (S,); block_ptr (E + 1,): the flat output blocks.
#pragma once
#include <cstdint>

#define HFORGE_CPU_ABI_VERSION 3

extern "C" {
struct HForgeContractArgs {
  int64_t n_pairs, n_atoms, width, n_op, rows_pad, energy_stride, max_entries;
  const int64_t *pairs, *shifts;
  const uint8_t *swap;
  const int64_t *species, *proj_atoms, *proj_keys, *proj_ptr, *entry_row, *entry_rows, *entry_cols;
  const void *packed, *operators, *energies;  // float or double, as the function's name says
  const int64_t *order, *n_orb, *block_ptr;
  void *out;
};
}

// One thread's scratch, 64-byte aligned (u_alloc = hforge_u_stride(rows_pad, element bytes)): the owner's
// rows [P D_k, P_KB E_k] transposed (left: max_entries x width x u_alloc), one entry's packed rows
// transposed (transposed: width x u_alloc), one block transposed (block: rows_pad x u_alloc) and the
// common entries of a pair (matches: 2 x (max_entries + 1), the merge's last store included).
struct HForgeContractScratch {
  void *left, *transposed, *block;
  int64_t* matches;
};

// u_alloc: rows_pad rounded up to 64 bytes of elements (a whole number of vectors of any ISA).
inline int64_t hforge_u_stride(int64_t rows_pad, int64_t elem_bytes) {
  int64_t per_line = 64 / elem_bytes;
  return (rows_pad + per_line - 1) / per_line * per_line;
}
