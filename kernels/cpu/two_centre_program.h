// HForge's compiled CPU kernels: a two-centre block program (hforge.ops.two_centre.tables.BlockProgram)
// evaluated for many pairs, one pair per vector lane (hforge.ops.two_centre.reference.program_blocks
// and program_packed; all int64 row-major, lengths in Bohr, values double unless said).
//
//   pair_type (E,), vectors (E, 3): pair e's type t and vector R;
//   order (E,): the pairs sorted by type, so that the lanes of a vector share the type's terms;
//   the program: lmax, slot_ptr (T + 1,), slot_table, entry_ptr (T + 1,), term_ptr, term_slot,
//   term_lm, term_coef (double), cols (T,): entry q of a type-t block (flat, row-major, cols[t]
//   columns) is sum_k term_coef[k] I_{slot_table[slot_ptr[t] + term_slot[k]]}(|R|) Y_{term_lm[k]}(R^)
//   over k in term_ptr[entry_ptr[t] + q] .. term_ptr[entry_ptr[t] + q + 1];
//   the radial tables: values (n_tables, n_knots, 2) (value, derivative at knot * step), reach
//   (n_tables,): cubic Hermite interpolation below the reach, zero at and beyond it;
//   flat output (mode 0): out double, pair e's block at block_ptr[e], written or added (accumulate);
//   packed output (mode 1): out float (out_double 0) or double, row `orbital` of pair e's block into
//   out[(entry_row[e] + rank[s * rank_stride + orbital]) * out_stride + col0 + c] for the orbitals
//   whose rank is below entry_rows[e] (s = entry_species[e]; the other rows are not written).
#pragma once
#include <cstdint>

extern "C" {
struct HForgeProgramArgs {
  int64_t n_pairs, lmax, n_knots, max_slots, max_entries, mode, accumulate, out_double, out_stride, col0, rank_stride;
  double step;
  const int64_t *pair_type, *order, *slot_ptr, *slot_table, *entry_ptr, *term_ptr, *term_slot, *term_lm, *cols;
  const double *vectors, *term_coef, *values, *reach;
  const int64_t *block_ptr, *entry_species, *rank, *entry_row, *entry_rows;
  void* out;
};
}

// Lanes of one pair group in the threads' scratch (the widest ISA's doubles, 64 bytes): every ISA
// uses the first Vector<double>::lanes of them.
constexpr int64_t kHForgeProgramLanes = 8;
constexpr int64_t kHForgeProgramMaxDegree = 12;

// One thread's scratch (doubles, 64-byte aligned): harmonics ((lmax + 1)^2 rows), slot values
// (max_slots rows) and one block (max_entries rows), each row kHForgeProgramLanes wide.
inline int64_t hforge_program_scratch(int64_t lmax, int64_t max_slots, int64_t max_entries) {
  return ((lmax + 1) * (lmax + 1) + max_slots + max_entries) * kHForgeProgramLanes;
}
