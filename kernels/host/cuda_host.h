// Host emulation of the subset of CUDA that kernels/*.cu use.
//
// hf_host::launch(grid, block, kernel, args...) runs kernel(args...) once for every
// (block, thread) of the grid, sequentially, with blockIdx/threadIdx/blockDim/gridDim
// set as on the GPU.  It is exact for kernels whose threads do not cooperate (no
// shared memory, no barriers), which is the contract of hforge_cuda.h.
#pragma once

#include <cstdint>

typedef long long hf_index;

struct hf_dim3 {
  unsigned x = 1, y = 1, z = 1;
};

inline thread_local hf_dim3 blockIdx, threadIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__

namespace hf_host {

template <class Kernel, class... Args>
void launch(hf_dim3 grid, hf_dim3 block, Kernel kernel, Args... args) {
  gridDim = grid;
  blockDim = block;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx)
        for (unsigned tz = 0; tz < block.z; ++tz)
          for (unsigned ty = 0; ty < block.y; ++ty)
            for (unsigned tx = 0; tx < block.x; ++tx) {
              blockIdx = {bx, by, bz};
              threadIdx = {tx, ty, tz};
              kernel(args...);
            }
}

}  // namespace hf_host
