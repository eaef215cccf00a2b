// Portability macros for arithmetic shared by the CPU (C++) and CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define MNV3_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Tiles keep their accumulators in registers only once inlined into the loop.
#define MNV3_HD inline __attribute__((always_inline))
#else
#define MNV3_HD inline
#endif

// Full unrolling of a loop with a compile-time trip count on the GPU, where
// the tile's arrays must become registers.  On the CPU the compiler decides:
// forced complete unrolling of the tile loops defeated GCC's loop vectorizer
// (scalar code, 4-8x slower).
#if defined(__CUDACC__)
#define MNV3_UNROLL _Pragma("unroll")
#else
#define MNV3_UNROLL
#endif

// A loop over the V channels of a vector: unrolled on the GPU (registers);
// left to the loop vectorizer on the CPU (complete unrolling first would
// leave GCC only the weaker SLP vectorizer).
#if defined(__CUDACC__)
#define MNV3_CHANNEL_LOOP _Pragma("unroll")
#elif defined(__GNUC__) && !defined(__clang__)
#define MNV3_CHANNEL_LOOP _Pragma("GCC ivdep")
#else
#define MNV3_CHANNEL_LOOP
#endif
