// What every <kernel>_isa.cpp shares: the instruction set of its build (CMake compiles each once per
// ISA with -DHFORGE_ISA=<name> -DHFORGE_VECTOR_BYTES=<n> -DHFORGE_V_TILE=<n> and that ISA's flags),
// the vectors of that width, and the exported names (suffixed by the ISA).  Everything lives in the
// ISA's namespace and nothing uses the C++ library, so that no inline function built with wider
// instructions can be picked by the linker for another ISA.
#pragma once

#ifndef HFORGE_ISA
#error "HFORGE_ISA must name the instruction set of this build"
#endif
#ifndef HFORGE_VECTOR_BYTES
#error "HFORGE_VECTOR_BYTES must give the vector width of this build"
#endif

#define HFORGE_CAT2(a, b) a##b
#define HFORGE_CAT(a, b) HFORGE_CAT2(a, b)
#define HFORGE_ISA_SYMBOL(name) HFORGE_CAT(name, HFORGE_ISA)

namespace HFORGE_ISA {

// GCC vector extensions of the build's width (aligned to it); T float or double.
template <typename T>
struct Vector {
  typedef T type __attribute__((vector_size(HFORGE_VECTOR_BYTES)));
  static constexpr int lanes = HFORGE_VECTOR_BYTES / sizeof(T);
};

// Loads and stores at any address (channel rows need not be aligned).
template <typename T>
static inline typename Vector<T>::type load(const T* p) {
  typename Vector<T>::type v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
static inline void store(T* p, typename Vector<T>::type v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

}  // namespace HFORGE_ISA
