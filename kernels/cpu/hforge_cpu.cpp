// The C entry points of libhforge_cpu (loaded by hforge/ops/_cpu.py with ctypes): the instruction
// set chosen at run time from what the CPU supports (builds of operator_contract_isa.cpp for each
// ISA CMake compiled), the pairs split into chunks taken by n_threads threads (the caller's thread
// count, chunks given by the caller: whole runs of pairs with the same owner, so that no owner's
// rows are computed twice at a chunk boundary; each pair is computed by one thread in a fixed order, so the result's bits do not depend
// on the number of threads or on which thread takes which chunk).
#include <atomic>
#include <memory>
#include <cstdlib>
#include <new>
#include <thread>
#include <vector>

#include "conv_messages.h"
#include "operator_contract.h"
#include "two_centre_program.h"

#define HFORGE_DECLARE_ISA(isa)                                                                                 \
  extern "C" void hforge_contract_f32_##isa(const HForgeContractArgs*, int64_t, int64_t, const HForgeContractScratch*); \
  extern "C" void hforge_contract_f64_##isa(const HForgeContractArgs*, int64_t, int64_t, const HForgeContractScratch*); \
  extern "C" void hforge_conv_f32_##isa(const HForgeConvArgs*, int64_t);                                                \
  extern "C" void hforge_conv_f64_##isa(const HForgeConvArgs*, int64_t);                                                \
  extern "C" void hforge_program_##isa(const HForgeProgramArgs*, int64_t, int64_t, double*);

HFORGE_DECLARE_ISA(generic)
#ifdef HFORGE_HAVE_AVX2
HFORGE_DECLARE_ISA(avx2)
#endif
#ifdef HFORGE_HAVE_AVX512
HFORGE_DECLARE_ISA(avx512)
#endif

namespace {

enum Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

bool supported(int isa) {
  switch (isa) {
    case kGeneric: return true;
#ifdef HFORGE_HAVE_AVX2
    case kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
#ifdef HFORGE_HAVE_AVX512
    case kAvx512: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
#endif
    default: return false;
  }
}

int best_isa() {
  for (int isa = kAvx512; isa > kGeneric; --isa)
    if (supported(isa)) return isa;
  return kGeneric;
}

using RangeFunction = void (*)(const HForgeContractArgs*, int64_t, int64_t, const HForgeContractScratch*);

template <typename T>
RangeFunction range_function(int isa);

template <>
RangeFunction range_function<float>(int isa) {
  switch (isa) {
#ifdef HFORGE_HAVE_AVX2
    case kAvx2: return hforge_contract_f32_avx2;
#endif
#ifdef HFORGE_HAVE_AVX512
    case kAvx512: return hforge_contract_f32_avx512;
#endif
    default: return hforge_contract_f32_generic;
  }
}

template <>
RangeFunction range_function<double>(int isa) {
  switch (isa) {
#ifdef HFORGE_HAVE_AVX2
    case kAvx2: return hforge_contract_f64_avx2;
#endif
#ifdef HFORGE_HAVE_AVX512
    case kAvx512: return hforge_contract_f64_avx512;
#endif
    default: return hforge_contract_f64_generic;
  }
}

struct AlignedBuffer {
  void* data = nullptr;
  explicit AlignedBuffer(size_t bytes) {
    data = std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
    if (data == nullptr) throw std::bad_alloc();
  }
  ~AlignedBuffer() { std::free(data); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
};

// Runs work(next chunk) on n_threads threads (this one included) until the n_chunks chunks are
// taken; make_worker() builds each thread's worker (its scratch), which may throw std::bad_alloc.
// Status codes: 0 done, 1 out of memory, 2 instruction set not supported here, 3 bad sizes.
template <typename MakeWorker>
int run_chunks(int64_t n_threads, int64_t n_chunks, MakeWorker make_worker) {
  if (n_threads < 1) n_threads = 1;
  if (n_threads > n_chunks) n_threads = n_chunks;
  std::atomic<int64_t> next{0};
  std::atomic<int> status{0};
  auto work = [&]() {
    try {
      auto worker = make_worker();
      for (int64_t c = next++; c < n_chunks; c = next++) worker(c);
    } catch (const std::bad_alloc&) {
      status = 1;
      next = n_chunks;
    }
  };
  std::vector<std::thread> threads;
  try {
    for (int64_t t = 1; t < n_threads; ++t) threads.emplace_back(work);
  } catch (...) {  // fewer threads than asked: the ones started (and this one) take every chunk
  }
  work();
  for (auto& thread : threads) thread.join();
  return status;
}

template <typename T>
int contract(const HForgeContractArgs* A, int isa, int64_t n_threads, int64_t n_chunks, const int64_t* chunk_ptr) {
  if (isa < 0) isa = best_isa();
  if (!supported(isa)) return 2;
  if (A->width < 1 || A->width > 256 || A->rows_pad < 1 || A->n_op > A->width || A->max_entries < 1 || n_chunks < 1) return 3;
  const RangeFunction run = range_function<T>(isa);
  const int64_t u_alloc = hforge_u_stride(A->rows_pad, sizeof(T));
  return run_chunks(n_threads, n_chunks, [&]() {
    auto left = std::make_shared<AlignedBuffer>(sizeof(T) * A->max_entries * A->width * u_alloc);
    auto transposed = std::make_shared<AlignedBuffer>(sizeof(T) * A->width * u_alloc);
    auto block = std::make_shared<AlignedBuffer>(sizeof(T) * A->rows_pad * u_alloc);
    auto matches = std::make_shared<AlignedBuffer>(sizeof(int64_t) * 2 * (A->max_entries + 1));
    return [=](int64_t c) {
      const HForgeContractScratch scratch{left->data, transposed->data, block->data, static_cast<int64_t*>(matches->data)};
      run(A, chunk_ptr[c], chunk_ptr[c + 1], &scratch);
    };
  });
}

using ConvFunction = void (*)(const HForgeConvArgs*, int64_t);

template <typename T>
ConvFunction conv_function(int isa) {
  const bool single = sizeof(T) == sizeof(float);
  switch (isa) {
#ifdef HFORGE_HAVE_AVX2
    case kAvx2: return single ? hforge_conv_f32_avx2 : hforge_conv_f64_avx2;
#endif
#ifdef HFORGE_HAVE_AVX512
    case kAvx512: return single ? hforge_conv_f32_avx512 : hforge_conv_f64_avx512;
#endif
    default: return single ? hforge_conv_f32_generic : hforge_conv_f64_generic;
  }
}

template <typename T>
int conv(const HForgeConvArgs* P, int isa, int64_t n_threads) {
  if (isa < 0) isa = best_isa();
  if (!supported(isa)) return 2;
  if (P->channels < 1 || P->n_chunks < 1) return 3;
  for (int64_t i = 0; i < P->n_instructions; ++i)
    if (P->l1[i] < 0 || P->l1[i] > 7 || P->l3[i] < 0 || P->l3[i] > 7 || P->l2[i] < 0) return 3;
  const ConvFunction run = conv_function<T>(isa);
  return run_chunks(n_threads, P->n_chunks, [&]() { return [=](int64_t c) { run(P, c); }; });
}

using ProgramFunction = void (*)(const HForgeProgramArgs*, int64_t, int64_t, double*);

ProgramFunction program_function(int isa) {
  switch (isa) {
#ifdef HFORGE_HAVE_AVX2
    case kAvx2: return hforge_program_avx2;
#endif
#ifdef HFORGE_HAVE_AVX512
    case kAvx512: return hforge_program_avx512;
#endif
    default: return hforge_program_generic;
  }
}

// The pairs (in A->order) in n_chunks equal ranges; each pair is one lane's own arithmetic.
int program(const HForgeProgramArgs* A, int isa, int64_t n_threads, int64_t n_chunks) {
  if (isa < 0) isa = best_isa();
  if (!supported(isa)) return 2;
  if (A->lmax < 0 || A->lmax > kHForgeProgramMaxDegree || A->n_knots < 2 || A->max_slots < 0 || A->max_entries < 1 ||
      A->mode < 0 || A->mode > 1 || n_chunks < 1)
    return 3;
  const ProgramFunction run = program_function(isa);
  const int64_t n = A->n_pairs;
  return run_chunks(n_threads, n_chunks, [&]() {
    auto scratch = std::make_shared<AlignedBuffer>(sizeof(double) * hforge_program_scratch(A->lmax, A->max_slots, A->max_entries));
    return [=](int64_t c) { run(A, c * n / n_chunks, (c + 1) * n / n_chunks, static_cast<double*>(scratch->data)); };
  });
}

}  // namespace

extern "C" {
int hforge_cpu_abi_version() { return HFORGE_CPU_ABI_VERSION; }

// The instruction set `isa` (-1: the best one here) as 0 generic, 1 AVX2, 2 AVX-512, or -1 when
// this library was built without it or the CPU lacks it.
int hforge_cpu_isa(int isa) {
  if (isa < 0) return best_isa();
  return supported(isa) ? isa : -1;
}

int hforge_operator_contract_f32(const HForgeContractArgs* args, int isa, int64_t n_threads, int64_t n_chunks,
                                 const int64_t* chunk_ptr) {
  return contract<float>(args, isa, n_threads, n_chunks, chunk_ptr);
}

int hforge_operator_contract_f64(const HForgeContractArgs* args, int isa, int64_t n_threads, int64_t n_chunks,
                                 const int64_t* chunk_ptr) {
  return contract<double>(args, isa, n_threads, n_chunks, chunk_ptr);
}

int hforge_conv_messages_f32(const HForgeConvArgs* args, int isa, int64_t n_threads) { return conv<float>(args, isa, n_threads); }

int hforge_conv_messages_f64(const HForgeConvArgs* args, int isa, int64_t n_threads) { return conv<double>(args, isa, n_threads); }

int hforge_two_centre_program(const HForgeProgramArgs* args, int isa, int64_t n_threads, int64_t n_chunks) {
  return program(args, isa, n_threads, n_chunks);
}
}
