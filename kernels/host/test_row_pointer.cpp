// ctest: the host build of kernels/row_pointer.cu against the shared test vectors
// (tests/data/row_pointer_cases.txt) and against a sequential scan on random counts,
// for several launch shapes (threads per block, rows per thread).
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "../row_pointer.cu"

namespace {

std::vector<hf_index> run_kernel(const std::vector<hf_index>& counts, hf_index chunk, unsigned threads_per_block) {
  const hf_index n = static_cast<hf_index>(counts.size());
  const hf_index n_chunks = n == 0 ? 1 : (n + chunk - 1) / chunk;
  const unsigned blocks = static_cast<unsigned>((n_chunks + threads_per_block - 1) / threads_per_block);
  std::vector<hf_index> totals(n_chunks, 0), row_ptr(n + 1, -1);
  hf_host::launch({blocks}, {threads_per_block}, hf_chunk_totals, counts.data(), n, chunk, n_chunks, totals.data());
  hf_host::launch({1}, {1}, hf_exclusive_scan, totals.data(), n_chunks);
  hf_host::launch({blocks}, {threads_per_block}, hf_write_row_pointer, counts.data(), n, chunk, n_chunks,
                  static_cast<const hf_index*>(totals.data()), row_ptr.data());
  return row_ptr;
}

std::vector<hf_index> read_values(std::istringstream& line, const char* tag) {
  std::string name;
  hf_index n = 0;
  line >> name >> n;
  if (name != tag) throw std::runtime_error(std::string("expected ") + tag + ", got " + name);
  std::vector<hf_index> values(n);
  for (auto& v : values) line >> v;
  return values;
}

int failures = 0;

void check(const std::vector<hf_index>& got, const std::vector<hf_index>& want, const std::string& what) {
  if (got != want) {
    ++failures;
    std::fprintf(stderr, "FAIL %s\n", what.c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s tests/data/row_pointer_cases.txt\n", argv[0]);
    return 2;
  }
  std::ifstream file(argv[1]);
  if (!file) {
    std::fprintf(stderr, "cannot open %s\n", argv[1]);
    return 2;
  }
  std::string counts_line, ptr_line;
  int n_cases = 0;
  while (std::getline(file, counts_line)) {
    if (counts_line.empty() || counts_line[0] == '#') continue;
    std::getline(file, ptr_line);
    std::istringstream cl(counts_line), pl(ptr_line);
    const auto counts = read_values(cl, "counts");
    const auto want = read_values(pl, "row_ptr");
    for (hf_index chunk : {1, 2, 3, 64})
      for (unsigned tpb : {1u, 4u, 128u})
        check(run_kernel(counts, chunk, tpb), want, "case " + std::to_string(n_cases) + " chunk " + std::to_string(chunk));
    ++n_cases;
  }
  std::mt19937_64 rng(1234);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<hf_index> counts(rng() % 3000);
    for (auto& c : counts) c = static_cast<hf_index>(rng() % 200);
    std::vector<hf_index> want(counts.size() + 1, 0);
    for (size_t r = 0; r < counts.size(); ++r) want[r + 1] = want[r] + counts[r];
    check(run_kernel(counts, 1 + static_cast<hf_index>(rng() % 100), 1u + static_cast<unsigned>(rng() % 256)), want,
          "random trial " + std::to_string(trial));
  }
  std::printf("row_pointer host kernel: %d shared cases, 50 random cases, %d failures\n", n_cases, failures);
  return failures == 0 ? 0 : 1;
}
