// Common prelude of every HForge CUDA source in kernels/.
//
// Under nvcc or NVRTC (__CUDACC__ defined) it only defines the index type.  Under a
// host C++ compiler it maps the CUDA keywords away and emulates the launch grid
// (kernels/host/cuda_host.h), so that the very same kernel source is compiled for the
// host and tested with ctest on machines without a GPU.  Kernels written for this
// file use no shared memory, no __syncthreads and no warp intrinsics: every thread
// is independent, which is what makes the sequential host emulation exact.
#pragma once

#ifdef __CUDACC__
typedef long long hf_index;
#else
#include "host/cuda_host.h"
#endif

// Global index of this thread in a 1-D grid.
#define HF_GLOBAL_THREAD_ID ((hf_index)blockIdx.x * (hf_index)blockDim.x + (hf_index)threadIdx.x)
// Total number of threads of a 1-D grid.
#define HF_GRID_THREADS ((hf_index)gridDim.x * (hf_index)blockDim.x)
