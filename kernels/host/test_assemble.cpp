// ctest: the host build of kernels/assemble.cu against the shared test vectors
// (tests/data/assemble_cases.txt, written from the reference backend and also checked by pytest).
// It replays the launch sequence of hforge/ops/assemble/cupy.py, with std::sort in place of
// cupy.argsort, for several launch shapes, both value types and both index types.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "../assemble.cu"

namespace {

using Case = std::map<std::string, std::vector<std::string>>;

std::vector<Case> read_cases(const char* path) {
  std::ifstream file(path);
  if (!file) throw std::runtime_error(std::string("cannot open ") + path);
  std::vector<Case> cases;
  Case current;
  std::string line;
  while (std::getline(file, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream in(line);
    std::string tag;
    size_t count = 0;
    in >> tag >> count;
    std::vector<std::string> values(count);
    for (auto& v : values) in >> v;
    if (!in) throw std::runtime_error("truncated line: " + tag);
    if (tag == "case") {
      current.clear();
    } else if (tag == "end") {
      cases.push_back(current);
    } else {
      current[tag] = values;
    }
  }
  return cases;
}

std::vector<hf_index> ints(const Case& c, const std::string& tag) {
  std::vector<hf_index> out;
  for (const auto& v : c.at(tag)) out.push_back(std::stoll(v));
  return out;
}

template <class Value>
std::vector<Value> reals(const Case& c, const std::string& tag) {
  std::vector<Value> out;
  for (const auto& v : c.at(tag)) out.push_back(static_cast<Value>(std::strtod(v.c_str(), nullptr)));
  return out;
}

unsigned blocks_for(hf_index threads, unsigned threads_per_block, hf_index max_blocks) {
  const hf_index blocks = std::max<hf_index>(1, (threads + threads_per_block - 1) / threads_per_block);
  return static_cast<unsigned>(std::min(blocks, max_blocks));
}

struct Result {
  std::vector<hf_index> indptr;
  std::vector<long long> indices;
  std::vector<double> data;
};

// The launch sequence of cupy.py on the host.  groups > 0 (unmasked cases): step 5 by pairs
// instead, hf_assemble_fill_pairs over `groups` interleaved groups of pairs (e % groups), each
// group's blocks copied out in the group's order, as streamed inference hands them over.
template <class Value, class Index, class Fill, class FillPairs>
Result assemble(const Case& c, Fill fill_kernel, FillPairs fill_pairs_kernel, unsigned tpb, hf_index max_fill_blocks,
                hf_index groups) {
  const auto orbitals = ints(c, "orbitals"), nsc = ints(c, "nsc"), sc_lookup = ints(c, "sc_lookup");
  const auto atoms = ints(c, "atoms"), edge_index = ints(c, "edge_index"), cell_shift = ints(c, "cell_shift");
  const auto block_ptr = ints(c, "block_ptr"), mask_values = ints(c, "mask");
  const hf_index n_matrices = ints(c, "matrices")[0];
  const auto all_blocks = reals<Value>(c, "blocks");
  const hf_index n_atoms = static_cast<hf_index>(orbitals.size()), n_pairs = static_cast<hf_index>(cell_shift.size() / 3);
  const hf_index n_values = block_ptr.back(), atom_begin = atoms[0], atom_end = atoms[1];
  const hf_index n_range = atom_end - atom_begin, n_sc = nsc[0] * nsc[1] * nsc[2];
  std::vector<hf_index> orbital_offset(n_atoms + 1, 0);
  std::partial_sum(orbitals.begin(), orbitals.end(), orbital_offset.begin() + 1);
  const hf_index max_orbitals = n_atoms ? *std::max_element(orbitals.begin(), orbitals.end()) : 0;
  std::vector<unsigned char> mask(mask_values.begin(), mask_values.end());
  const unsigned char* mask_ptr = mask.empty() ? nullptr : mask.data();

  // 1. keys of the 2E directed pairs
  std::vector<hf_index> keys(2 * n_pairs);
  hf_host::launch({blocks_for(n_pairs, tpb, 1 << 20)}, {tpb}, hf_assemble_pair_keys, edge_index.data(),
                  cell_shift.data(), n_pairs, sc_lookup.data(), nsc[0], nsc[1], nsc[2], n_atoms, atom_begin, atom_end,
                  keys.data());
  // 2. argsort, drop HF_NO_PAIR, atom_pair_ptr
  std::vector<hf_index> order(keys.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](hf_index a, hf_index b) { return keys[a] < keys[b]; });
  std::vector<hf_index> sorted_keys, slots;
  for (hf_index slot : order)
    if (keys[slot] != HF_NO_PAIR) {
      sorted_keys.push_back(keys[slot]);
      slots.push_back(slot);
    }
  if (std::adjacent_find(sorted_keys.begin(), sorted_keys.end()) != sorted_keys.end())
    throw std::runtime_error("duplicate pair in a shared case");
  const hf_index n_directed = static_cast<hf_index>(sorted_keys.size());
  std::vector<hf_index> atom_pair_ptr(n_range + 1);
  for (hf_index a = 0; a <= n_range; ++a)
    atom_pair_ptr[a] = std::lower_bound(sorted_keys.begin(), sorted_keys.end(), a * n_atoms * n_sc) - sorted_keys.begin();
  // 3. row counts and block offsets
  const hf_index n_rows = orbital_offset[atom_end] - orbital_offset[atom_begin];
  std::vector<hf_index> row_counts(n_rows, 0), pair_offsets(n_directed * (mask_ptr ? max_orbitals : 1) + 1);
  hf_host::launch({blocks_for(n_range * max_orbitals, tpb, 1 << 20)}, {tpb}, hf_assemble_row_counts,
                  sorted_keys.data(), slots.data(), atom_pair_ptr.data(), n_range, max_orbitals, orbitals.data(),
                  orbital_offset.data(), atom_begin, n_atoms, n_pairs, block_ptr.data(), mask_ptr, row_counts.data(),
                  pair_offsets.data());
  // 4. row pointer (cupy.cumsum on the device)
  std::vector<hf_index> indptr(n_rows + 1, 0);
  std::partial_sum(row_counts.begin(), row_counts.end(), indptr.begin() + 1);
  // 5. fill
  const hf_index nnz = indptr.back();
  std::vector<const Value*> block_pointers;
  for (hf_index k = 0; k < n_matrices; ++k) block_pointers.push_back(all_blocks.data() + k * n_values);
  std::vector<Index> indices(nnz, -1);
  std::vector<Value> data(nnz * n_matrices, Value(-12345));
  if (groups > 0) {
    std::vector<hf_index> slot_offset(2 * n_pairs, -1);
    for (hf_index p = 0; p < n_directed; ++p) slot_offset[slots[p]] = pair_offsets[p];
    for (hf_index g = 0; g < groups; ++g) {
      std::vector<hf_index> pairs, local_ptr(1, 0);
      for (hf_index e = g; e < n_pairs; e += groups) {
        pairs.push_back(e);
        local_ptr.push_back(local_ptr.back() + block_ptr[e + 1] - block_ptr[e]);
      }
      std::vector<Value> local(local_ptr.back() * n_matrices);
      std::vector<const Value*> local_pointers;
      for (hf_index k = 0; k < n_matrices; ++k) {
        for (size_t b = 0; b < pairs.size(); ++b)
          std::copy(all_blocks.begin() + k * n_values + block_ptr[pairs[b]],
                    all_blocks.begin() + k * n_values + block_ptr[pairs[b] + 1],
                    local.begin() + k * local_ptr.back() + local_ptr[b]);
        local_pointers.push_back(local.data() + k * local_ptr.back());
      }
      const hf_index n_given = static_cast<hf_index>(pairs.size());
      hf_host::launch({blocks_for(n_given * max_orbitals * max_orbitals, tpb, max_fill_blocks)}, {tpb},
                      fill_pairs_kernel, static_cast<const hf_index*>(pairs.data()), n_given,
                      static_cast<const hf_index*>(local_ptr.data()), edge_index.data(), cell_shift.data(), n_pairs,
                      sc_lookup.data(), nsc[0], nsc[1], nsc[2], max_orbitals, orbitals.data(), orbital_offset.data(),
                      n_atoms, atom_begin, atom_end, static_cast<const hf_index*>(slot_offset.data()),
                      local_pointers.data(), n_matrices, static_cast<const hf_index*>(indptr.data()), indices.data(),
                      data.data());
    }
    return {indptr, std::vector<long long>(indices.begin(), indices.end()), std::vector<double>(data.begin(), data.end())};
  }
  hf_host::launch({blocks_for(n_directed * max_orbitals * max_orbitals, tpb, max_fill_blocks)}, {tpb}, fill_kernel,
                  sorted_keys.data(), slots.data(), n_directed, max_orbitals, orbitals.data(), orbital_offset.data(),
                  atom_begin, n_atoms, n_sc, n_pairs, block_ptr.data(), mask_ptr,
                  static_cast<const hf_index*>(pair_offsets.data()), block_pointers.data(), n_matrices,
                  static_cast<const hf_index*>(indptr.data()), indices.data(), data.data());
  return {indptr, std::vector<long long>(indices.begin(), indices.end()), std::vector<double>(data.begin(), data.end())};
}

int failures = 0;
int pair_fills = 0;

template <class Value, class Index, class Fill, class FillPairs>
void check_case(const Case& c, int number, const char* variant, Fill fill_kernel, FillPairs fill_pairs_kernel) {
  const auto want_indptr = ints(c, "indptr"), want_indices = ints(c, "indices");
  const auto want_data_typed = reals<Value>(c, "data");  // the expected values at this precision
  const std::vector<double> want_data(want_data_typed.begin(), want_data_typed.end());
  const std::vector<long long> want_idx(want_indices.begin(), want_indices.end());
  const bool masked = !c.at("mask").empty();
  for (hf_index groups : {hf_index(0), hf_index(1), hf_index(3)}) {
    if (groups > 0 && masked) continue;  // filling by pairs: unmasked plans only
    if (groups > 0) ++pair_fills;
    for (unsigned tpb : {1u, 3u, 64u})
      for (hf_index max_fill_blocks : {hf_index(1), hf_index(5), hf_index(1) << 20}) {
        const Result got = assemble<Value, Index>(c, fill_kernel, fill_pairs_kernel, tpb, max_fill_blocks, groups);
        if (got.indptr != want_indptr || got.indices != want_idx || got.data != want_data) {
          ++failures;
          std::fprintf(stderr,
                       "FAIL case %d %s (pair groups %lld, threads/block %u, fill blocks %lld): indptr %s indices %s "
                       "data %s\n",
                       number, variant, groups, tpb, max_fill_blocks, got.indptr == want_indptr ? "ok" : "DIFFER",
                       got.indices == want_idx ? "ok" : "DIFFER", got.data == want_data ? "ok" : "DIFFER");
        }
      }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s tests/data/assemble_cases.txt\n", argv[0]);
    return 2;
  }
  std::vector<Case> cases;
  try {
    cases = read_cases(argv[1]);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s\n", error.what());
    return 2;
  }
  int number = 0;
  for (const auto& c : cases) {
    check_case<double, long long>(c, number, "f64/i64", hf_assemble_fill_f64_i64, hf_assemble_fill_pairs_f64_i64);
    check_case<double, int>(c, number, "f64/i32", hf_assemble_fill_f64_i32, hf_assemble_fill_pairs_f64_i32);
    check_case<float, long long>(c, number, "f32/i64", hf_assemble_fill_f32_i64, hf_assemble_fill_pairs_f32_i64);
    check_case<float, int>(c, number, "f32/i32", hf_assemble_fill_f32_i32, hf_assemble_fill_pairs_f32_i32);
    ++number;
  }
  std::printf(
      "assemble host kernels: %d shared cases x 4 dtypes x 9 launch shapes, %d filled by pairs too, %d failures\n",
      number, pair_fills / 4 / 2, failures);
  return failures == 0 && number >= 8 && pair_fills > 0 ? 0 : 1;
}
