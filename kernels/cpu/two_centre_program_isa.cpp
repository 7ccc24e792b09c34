// One instruction set's build of the two-centre program (isa.h, two_centre_program.h).
//
// The pairs in type order, a vector's lanes being up to Vector<double>::lanes consecutive pairs of one
// type: per lane the real harmonics of R^ (the Cartesian recursion of
// hforge.basis.conventions.real_harmonics, as the numba kernel) and the Hermite interpolation of the
// type's slots at |R|, then every block entry as vectors over the lanes (sum of its terms
// coef * slot * harmonic, no gathers), kept in the scratch block and written lane by lane to each
// pair's output rows.  Every lane's arithmetic is its own: the bits do not depend on which pairs share
// a vector, the chunks or the thread count.
#include <cmath>

#include "isa.h"
#include "two_centre_program.h"

namespace HFORGE_ISA {
namespace program {  // apart from the other kernels' helpers

constexpr int64_t W = kHForgeProgramLanes;
constexpr int64_t kMaxL = kHForgeProgramMaxDegree;

struct Legendre {
  double norms[kMaxL + 1][kMaxL + 1];
  double dfact[kMaxL + 1];
};

// N_lm (times sqrt(2) (-1)^m for m > 0) and (2m-1)!! of the recursion (numba's _legendre_norms).
static void legendre(int64_t lmax, Legendre& L) {
  L.dfact[0] = 1.0;
  for (int64_t m = 1; m <= lmax; ++m) L.dfact[m] = L.dfact[m - 1] * (2 * m - 1);
  for (int64_t l = 0; l <= lmax; ++l)
    for (int64_t m = 0; m <= l; ++m) {
      double ratio = 1.0;
      for (int64_t q = l - m + 1; q <= l + m; ++q) ratio /= q;
      const double c = std::sqrt((2 * l + 1) / (4 * M_PI) * ratio);
      L.norms[l][m] = m == 0 ? c : c * std::sqrt(2.0) * (m % 2 ? -1.0 : 1.0);
    }
}

// SIESTA's real harmonics up to lmax of (x, y, z) (unit) into y[lm * W] (one lane).
static inline void harmonics(double x, double y, double z, int64_t lmax, const Legendre& L, double* out) {
  if (lmax > kMaxL) lmax = kMaxL;  // the caller's bound, for the compiler's view of the tables
  double re = 1.0, im = 0.0;
  for (int64_t m = 0; m <= lmax; ++m) {
    double p_prev = 0.0, p = L.dfact[m];
    for (int64_t l = m; l <= lmax; ++l) {
      if (l > m) {
        const double next = ((2 * l - 1) * z * p - (l + m - 1) * p_prev) / (l - m);
        p_prev = p;
        p = next;
      }
      const double c = L.norms[l][m] * p;
      if (m == 0) {
        out[(l * l + l) * W] = c;
      } else {
        out[(l * l + l + m) * W] = c * re;
        out[(l * l + l - m) * W] = c * im;
      }
    }
    const double re_next = re * x - im * y;
    im = re * y + im * x;
    re = re_next;
  }
}

// The harmonics and slot values of the lanes' pairs (type t) into y and radial (lane columns).
static void lane_terms(const HForgeProgramArgs& A, const int64_t* pair, int64_t t, const Legendre& L, double* y,
                       double* radial) {
  constexpr int lanes = Vector<double>::lanes;
  const int64_t n_lm = (A.lmax + 1) * (A.lmax + 1);
  const int64_t s0 = A.slot_ptr[t], n_slots = A.slot_ptr[t + 1] - s0;
  for (int l = 0; l < lanes; ++l) {
    const double* v = A.vectors + 3 * pair[l];
    const double r = std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
    if (r > 0.0) {
      harmonics(v[0] / r, v[1] / r, v[2] / r, A.lmax, L, y + l);
    } else {
      for (int64_t lm = 0; lm < n_lm; ++lm) y[lm * W + l] = 0.0;
      y[l] = 0.5 / std::sqrt(M_PI);
    }
    const double x = r / A.step;
    const int64_t k = x < static_cast<double>(A.n_knots - 2) ? static_cast<int64_t>(x) : A.n_knots - 2;
    const double u = x - k;
    const double h00 = (2.0 * u - 3.0) * u * u + 1.0, h10 = ((u - 2.0) * u + 1.0) * u * A.step;
    const double h01 = (3.0 - 2.0 * u) * u * u, h11 = (u - 1.0) * u * u * A.step;
    for (int64_t s = 0; s < n_slots; ++s) {
      const int64_t table = A.slot_table[s0 + s];
      const double* knot = A.values + (table * A.n_knots + k) * 2;
      radial[s * W + l] = r < A.reach[table] ? h00 * knot[0] + h10 * knot[1] + h01 * knot[2] + h11 * knot[3] : 0.0;
    }
  }
}

// Entries [q0, q1) of the type's block as vectors over the lanes into block[q * W].
static inline void block_entries(const HForgeProgramArgs& A, int64_t e0, int64_t q0, int64_t q1, const double* y,
                                 const double* radial, double* block) {
  typedef Vector<double>::type V;
  for (int64_t q = q0; q < q1; ++q) {
    V acc = V{};
    for (int64_t k = A.term_ptr[e0 + q]; k < A.term_ptr[e0 + q + 1]; ++k)
      acc += A.term_coef[k] * load(radial + A.term_slot[k] * W) * load(y + A.term_lm[k] * W);
    store(block + q * W, acc);
  }
}

template <typename Out>
static void write_packed(const HForgeProgramArgs& A, const int64_t* pair, int n, int64_t rows, int64_t cols,
                         const double* block) {
  Out* out = static_cast<Out*>(A.out);
  for (int l = 0; l < n; ++l) {
    const int64_t e = pair[l];
    const int64_t* rank = A.rank + A.entry_species[e] * A.rank_stride;
    for (int64_t orbital = 0; orbital < rows; ++orbital) {
      const int64_t row = rank[orbital];
      if (row < 0 || row >= A.entry_rows[e]) continue;
      Out* dst = out + (A.entry_row[e] + row) * A.out_stride + A.col0;
      const double* src = block + orbital * cols * W + l;
      for (int64_t c = 0; c < cols; ++c) dst[c] = static_cast<Out>(src[c * W]);
    }
  }
}

static void write_flat(const HForgeProgramArgs& A, const int64_t* pair, int n, int64_t size, const double* block) {
  double* out = static_cast<double*>(A.out);
  for (int l = 0; l < n; ++l) {
    double* dst = out + A.block_ptr[pair[l]];
    if (A.accumulate) {
      for (int64_t q = 0; q < size; ++q) dst[q] += block[q * W + l];
    } else {
      for (int64_t q = 0; q < size; ++q) dst[q] = block[q * W + l];
    }
  }
}

// The pairs order[begin:end], a vector of lanes of one type at a time.
static void program_range(const HForgeProgramArgs& A, int64_t begin, int64_t end, double* scratch) {
  constexpr int lanes = Vector<double>::lanes;
  Legendre L;
  legendre(A.lmax, L);
  double* y = scratch;
  double* radial = y + (A.lmax + 1) * (A.lmax + 1) * W;
  double* block = radial + A.max_slots * W;
  int64_t pair[lanes];
  for (int64_t pos = begin; pos < end;) {
    const int64_t t = A.pair_type[A.order[pos]];
    int n = 0;
    while (n < lanes && pos + n < end && A.pair_type[A.order[pos + n]] == t) {
      pair[n] = A.order[pos + n];
      ++n;
    }
    for (int l = n; l < lanes; ++l) pair[l] = pair[0];  // spare lanes: computed, not written
    pos += n;
    lane_terms(A, pair, t, L, y, radial);
    const int64_t e0 = A.entry_ptr[t], size = A.entry_ptr[t + 1] - e0, cols = A.cols[t], rows = size / cols;
    if (A.mode == 0) {
      block_entries(A, e0, 0, size, y, radial, block);
      write_flat(A, pair, n, size, block);
      continue;
    }
    int64_t kept = 0;  // the rows any lane keeps: rank below its entry_rows
    for (int l = 0; l < n; ++l) kept = A.entry_rows[pair[l]] > kept ? A.entry_rows[pair[l]] : kept;
    const int64_t* rank = A.rank + A.entry_species[pair[0]] * A.rank_stride;
    for (int64_t orbital = 0; orbital < rows; ++orbital)
      if (rank[orbital] >= 0 && rank[orbital] < kept)
        block_entries(A, e0, orbital * cols, (orbital + 1) * cols, y, radial, block);
    if (A.out_double)
      write_packed<double>(A, pair, n, rows, cols, block);
    else
      write_packed<float>(A, pair, n, rows, cols, block);
  }
}

}  // namespace program
}  // namespace HFORGE_ISA

extern "C" {
void HFORGE_ISA_SYMBOL(hforge_program_)(const HForgeProgramArgs* A, int64_t begin, int64_t end, double* scratch) {
  HFORGE_ISA::program::program_range(*A, begin, end, scratch);
}
}
