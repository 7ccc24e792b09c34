// CSR scatter-assembly of H and S from flat-packed blocks (see hforge/ops/assemble/).
//
// Input: the canonical half of a pair list (i, j, n) plus onsite pairs, blocks row-major at
// block_ptr offsets, K value arrays on the same block_ptr, an optional byte mask of the entries
// to store.  The pair (j, i, -n) is written from the transpose of block (i, j, n).
// Output rows: the orbitals of the row atoms [atom_begin, atom_end); columns: orbital +
// n_orbitals * (sisl supercell index of n), sorted within each row.
//
// Launch sequence (hforge/ops/assemble/cupy.py; host replica in kernels/host/test_assemble.cpp):
//   1. hf_assemble_pair_keys:  one thread per canonical pair; writes the sort key of its forward
//      directed pair (slot e) and of its partner (slot E + e); HF_NO_PAIR where the row atom is
//      outside the range or the pair is onsite (no partner).
//   2. (host library) argsort of the 2E keys, drop HF_NO_PAIR, atom_pair_ptr by searchsorted.
//      The key (row atom - atom_begin, supercell, column atom) orders each row's columns.
//   3. hf_assemble_row_counts: one thread per (row atom, orbital row); nonzeros of its row and
//      the column offset of every block within it (per pair, or per (pair, row) with a mask).
//   4. (host library) cupy.cumsum of the row counts: indptr.
//   5. hf_assemble_fill_<values>_<indices>: one thread per (pair, block row, block column)
//      entry, grid-stride; writes its column index and K values at a precomputed offset.
// Or, pair by pair (streamed inference), after 1-4 and slot_offset[slots[p]] = pair_offsets[p]:
//   5'. hf_assemble_fill_pairs_<values>_<indices>: one thread per (given pair, block row, block
//      column) entry, grid-stride; writes it where its row atom's rows hold it and, unless
//      onsite, the transposed entry where its column atom's rows do (unmasked plans).
// Threads never cooperate and never write the same place: no atomics, no barriers.
#include "hforge_cuda.h"

#define HF_NO_PAIR 0x7fffffffffffffffLL

// sisl's supercell index of shift (n0, n1, n2): sc_lookup is Lattice.isc_off flattened.
__device__ __forceinline__ hf_index hf_supercell_index(const hf_index* __restrict__ sc_lookup, hf_index nsc0,
                                                       hf_index nsc1, hf_index nsc2, hf_index n0, hf_index n1,
                                                       hf_index n2) {
  const hf_index m0 = ((n0 % nsc0) + nsc0) % nsc0;
  const hf_index m1 = ((n1 % nsc1) + nsc1) % nsc1;
  const hf_index m2 = ((n2 % nsc2) + nsc2) % nsc2;
  return sc_lookup[(m0 * nsc1 + m1) * nsc2 + m2];
}

extern "C" __global__ void hf_assemble_pair_keys(const hf_index* __restrict__ edge_index,
                                                 const hf_index* __restrict__ cell_shift, hf_index n_pairs,
                                                 const hf_index* __restrict__ sc_lookup, hf_index nsc0, hf_index nsc1,
                                                 hf_index nsc2, hf_index n_atoms, hf_index atom_begin,
                                                 hf_index atom_end, hf_index* __restrict__ keys) {
  const hf_index e = HF_GLOBAL_THREAD_ID;
  if (e >= n_pairs) return;
  const hf_index i = edge_index[e], j = edge_index[n_pairs + e];
  const hf_index n0 = cell_shift[3 * e], n1 = cell_shift[3 * e + 1], n2 = cell_shift[3 * e + 2];
  const hf_index n_sc = nsc0 * nsc1 * nsc2;
  keys[e] = HF_NO_PAIR;
  keys[n_pairs + e] = HF_NO_PAIR;
  if (atom_begin <= i && i < atom_end) {
    const hf_index sc = hf_supercell_index(sc_lookup, nsc0, nsc1, nsc2, n0, n1, n2);
    keys[e] = ((i - atom_begin) * n_sc + sc) * n_atoms + j;
  }
  const bool onsite = i == j && n0 == 0 && n1 == 0 && n2 == 0;
  if (!onsite && atom_begin <= j && j < atom_end) {
    const hf_index sc = hf_supercell_index(sc_lookup, nsc0, nsc1, nsc2, -n0, -n1, -n2);
    keys[n_pairs + e] = ((j - atom_begin) * n_sc + sc) * n_atoms + i;
  }
}

// Flat position of entry (r, c) of a directed block: slot < n_pairs is block `slot` as it is
// (n_row x n_col, row-major); otherwise the transpose of block `slot - n_pairs` (n_col x n_row).
__device__ __forceinline__ hf_index hf_block_entry(const hf_index* __restrict__ block_ptr, hf_index slot,
                                                   hf_index n_pairs, hf_index n_row, hf_index n_col, hf_index r,
                                                   hf_index c) {
  return slot < n_pairs ? block_ptr[slot] + r * n_col + c : block_ptr[slot - n_pairs] + c * n_row + r;
}

// Thread t = (local row atom a) * max_orbitals + r.  Without a mask (mask == nullptr) the thread
// of r == 0 writes pair_offsets[p] (the same for every row of a); with a mask every thread writes
// pair_offsets[p * max_orbitals + r].
extern "C" __global__ void hf_assemble_row_counts(
    const hf_index* __restrict__ keys, const hf_index* __restrict__ slots, const hf_index* __restrict__ atom_pair_ptr,
    hf_index n_range_atoms, hf_index max_orbitals, const hf_index* __restrict__ orbitals_per_atom,
    const hf_index* __restrict__ orbital_offset, hf_index atom_begin, hf_index n_atoms, hf_index n_pairs,
    const hf_index* __restrict__ block_ptr, const unsigned char* __restrict__ mask, hf_index* __restrict__ row_counts,
    hf_index* __restrict__ pair_offsets) {
  const hf_index t = HF_GLOBAL_THREAD_ID;
  if (t >= n_range_atoms * max_orbitals) return;
  const hf_index a = t / max_orbitals, r = t % max_orbitals;
  const hf_index n_row = orbitals_per_atom[atom_begin + a];
  if (r >= n_row) return;
  hf_index running = 0;
  for (hf_index p = atom_pair_ptr[a]; p < atom_pair_ptr[a + 1]; ++p) {
    const hf_index n_col = orbitals_per_atom[keys[p] % n_atoms];
    if (mask == nullptr) {
      if (r == 0) pair_offsets[p] = running;
      running += n_col;
    } else {
      pair_offsets[p * max_orbitals + r] = running;
      for (hf_index c = 0; c < n_col; ++c)
        running += mask[hf_block_entry(block_ptr, slots[p], n_pairs, n_row, n_col, r, c)] != 0;
    }
  }
  row_counts[orbital_offset[atom_begin + a] - orbital_offset[atom_begin] + r] = running;
}

template <class Value, class Index>
__device__ void hf_assemble_fill(const hf_index* __restrict__ keys, const hf_index* __restrict__ slots,
                                 hf_index n_directed, hf_index max_orbitals,
                                 const hf_index* __restrict__ orbitals_per_atom,
                                 const hf_index* __restrict__ orbital_offset, hf_index atom_begin, hf_index n_atoms,
                                 hf_index n_supercells, hf_index n_pairs, const hf_index* __restrict__ block_ptr,
                                 const unsigned char* __restrict__ mask, const hf_index* __restrict__ pair_offsets,
                                 const Value* const* __restrict__ blocks, hf_index n_matrices,
                                 const hf_index* __restrict__ indptr, Index* __restrict__ indices,
                                 Value* __restrict__ data) {
  const hf_index per_pair = max_orbitals * max_orbitals;
  const hf_index total = n_directed * per_pair;
  const hf_index n_orbitals = orbital_offset[n_atoms];
  const hf_index row_begin = orbital_offset[atom_begin];
  for (hf_index t = HF_GLOBAL_THREAD_ID; t < total; t += HF_GRID_THREADS) {
    const hf_index p = t / per_pair, r = (t / max_orbitals) % max_orbitals, c = t % max_orbitals;
    const hf_index key = keys[p];
    const hf_index row_atom = atom_begin + key / (n_atoms * n_supercells);
    const hf_index col_atom = key % n_atoms;
    const hf_index n_row = orbitals_per_atom[row_atom], n_col = orbitals_per_atom[col_atom];
    if (r >= n_row || c >= n_col) continue;
    const hf_index slot = slots[p];
    const hf_index src = hf_block_entry(block_ptr, slot, n_pairs, n_row, n_col, r, c);
    const hf_index row = orbital_offset[row_atom] - row_begin + r;
    hf_index dst;
    if (mask == nullptr) {
      dst = indptr[row] + pair_offsets[p] + c;
    } else {
      if (!mask[src]) continue;
      hf_index rank = 0;
      for (hf_index c2 = 0; c2 < c; ++c2) rank += mask[hf_block_entry(block_ptr, slot, n_pairs, n_row, n_col, r, c2)] != 0;
      dst = indptr[row] + pair_offsets[p * max_orbitals + r] + rank;
    }
    indices[dst] = static_cast<Index>((key / n_atoms) % n_supercells * n_orbitals + orbital_offset[col_atom] + c);
    for (hf_index k = 0; k < n_matrices; ++k) data[dst * n_matrices + k] = blocks[k][src];
  }
}

#define HF_ASSEMBLE_FILL(NAME, VALUE, INDEX)                                                                         \
  extern "C" __global__ void NAME(                                                                                   \
      const hf_index* __restrict__ keys, const hf_index* __restrict__ slots, hf_index n_directed,                    \
      hf_index max_orbitals, const hf_index* __restrict__ orbitals_per_atom,                                         \
      const hf_index* __restrict__ orbital_offset, hf_index atom_begin, hf_index n_atoms, hf_index n_supercells,     \
      hf_index n_pairs, const hf_index* __restrict__ block_ptr, const unsigned char* __restrict__ mask,               \
      const hf_index* __restrict__ pair_offsets, const VALUE* const* __restrict__ blocks, hf_index n_matrices,       \
      const hf_index* __restrict__ indptr, INDEX* __restrict__ indices, VALUE* __restrict__ data) {                  \
    hf_assemble_fill<VALUE, INDEX>(keys, slots, n_directed, max_orbitals, orbitals_per_atom, orbital_offset,         \
                                   atom_begin, n_atoms, n_supercells, n_pairs, block_ptr, mask, pair_offsets,        \
                                   blocks, n_matrices, indptr, indices, data);                                       \
  }

HF_ASSEMBLE_FILL(hf_assemble_fill_f64_i32, double, int)
HF_ASSEMBLE_FILL(hf_assemble_fill_f64_i64, double, long long)
HF_ASSEMBLE_FILL(hf_assemble_fill_f32_i32, float, int)
HF_ASSEMBLE_FILL(hf_assemble_fill_f32_i64, float, long long)

// slot_offset[e] / slot_offset[n_pairs + e]: column offset of block e / of its transpose within
// the rows of its row atom (-1: not in the range).  The blocks of the given pairs are at local_ptr.
template <class Value, class Index>
__device__ void hf_assemble_fill_pairs(const hf_index* __restrict__ pairs, hf_index n_given,
                                       const hf_index* __restrict__ local_ptr, const hf_index* __restrict__ edge_index,
                                       const hf_index* __restrict__ cell_shift, hf_index n_pairs,
                                       const hf_index* __restrict__ sc_lookup, hf_index nsc0, hf_index nsc1,
                                       hf_index nsc2, hf_index max_orbitals,
                                       const hf_index* __restrict__ orbitals_per_atom,
                                       const hf_index* __restrict__ orbital_offset, hf_index n_atoms,
                                       hf_index atom_begin, hf_index atom_end,
                                       const hf_index* __restrict__ slot_offset, const Value* const* __restrict__ blocks,
                                       hf_index n_matrices, const hf_index* __restrict__ indptr,
                                       Index* __restrict__ indices, Value* __restrict__ data) {
  const hf_index per_pair = max_orbitals * max_orbitals;
  const hf_index total = n_given * per_pair;
  const hf_index n_orbitals = orbital_offset[n_atoms];
  const hf_index row_begin = orbital_offset[atom_begin];
  for (hf_index t = HF_GLOBAL_THREAD_ID; t < total; t += HF_GRID_THREADS) {
    const hf_index b = t / per_pair, r = (t / max_orbitals) % max_orbitals, c = t % max_orbitals;
    const hf_index e = pairs[b];
    const hf_index i = edge_index[e], j = edge_index[n_pairs + e];
    const hf_index n_i = orbitals_per_atom[i], n_j = orbitals_per_atom[j];
    if (r >= n_i || c >= n_j) continue;
    const hf_index n0 = cell_shift[3 * e], n1 = cell_shift[3 * e + 1], n2 = cell_shift[3 * e + 2];
    const hf_index src = local_ptr[b] + r * n_j + c;
    if (atom_begin <= i && i < atom_end) {
      const hf_index dst = indptr[orbital_offset[i] - row_begin + r] + slot_offset[e] + c;
      const hf_index sc = hf_supercell_index(sc_lookup, nsc0, nsc1, nsc2, n0, n1, n2);
      indices[dst] = static_cast<Index>(sc * n_orbitals + orbital_offset[j] + c);
      for (hf_index k = 0; k < n_matrices; ++k) data[dst * n_matrices + k] = blocks[k][src];
    }
    const bool onsite = i == j && n0 == 0 && n1 == 0 && n2 == 0;
    if (!onsite && atom_begin <= j && j < atom_end) {
      const hf_index dst = indptr[orbital_offset[j] - row_begin + c] + slot_offset[n_pairs + e] + r;
      const hf_index sc = hf_supercell_index(sc_lookup, nsc0, nsc1, nsc2, -n0, -n1, -n2);
      indices[dst] = static_cast<Index>(sc * n_orbitals + orbital_offset[i] + r);
      for (hf_index k = 0; k < n_matrices; ++k) data[dst * n_matrices + k] = blocks[k][src];
    }
  }
}

#define HF_ASSEMBLE_FILL_PAIRS(NAME, VALUE, INDEX)                                                                   \
  extern "C" __global__ void NAME(                                                                                   \
      const hf_index* __restrict__ pairs, hf_index n_given, const hf_index* __restrict__ local_ptr,                  \
      const hf_index* __restrict__ edge_index, const hf_index* __restrict__ cell_shift, hf_index n_pairs,            \
      const hf_index* __restrict__ sc_lookup, hf_index nsc0, hf_index nsc1, hf_index nsc2, hf_index max_orbitals,    \
      const hf_index* __restrict__ orbitals_per_atom, const hf_index* __restrict__ orbital_offset, hf_index n_atoms, \
      hf_index atom_begin, hf_index atom_end, const hf_index* __restrict__ slot_offset,                              \
      const VALUE* const* __restrict__ blocks, hf_index n_matrices, const hf_index* __restrict__ indptr,             \
      INDEX* __restrict__ indices, VALUE* __restrict__ data) {                                                       \
    hf_assemble_fill_pairs<VALUE, INDEX>(pairs, n_given, local_ptr, edge_index, cell_shift, n_pairs, sc_lookup,      \
                                         nsc0, nsc1, nsc2, max_orbitals, orbitals_per_atom, orbital_offset, n_atoms, \
                                         atom_begin, atom_end, slot_offset, blocks, n_matrices, indptr, indices,     \
                                         data);                                                                      \
  }

HF_ASSEMBLE_FILL_PAIRS(hf_assemble_fill_pairs_f64_i32, double, int)
HF_ASSEMBLE_FILL_PAIRS(hf_assemble_fill_pairs_f64_i64, double, long long)
HF_ASSEMBLE_FILL_PAIRS(hf_assemble_fill_pairs_f32_i32, float, int)
HF_ASSEMBLE_FILL_PAIRS(hf_assemble_fill_pairs_f32_i64, float, long long)
