// Portability macros for arithmetic shared by the CPU (C++) and CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define MNV3_HD __host__ __device__ __forceinline__
#else
#define MNV3_HD inline
#endif
