// Staging of a matrix product's operand in shared memory, shared by the CUDA
// kernels that compute one (pointwise_bias_act's GEMM, pointwise_dwconv's
// expand).
#pragma once

#include "cuda_utils.cuh"

namespace mnv3 {

// Stages src[row0 .. row0+Rows-1, k0 .. k0+StepK-1] (row-major rows of length
// K, `rows` rows in all) into dst[k][r] as fp32, zero outside; each element
// times scale[(row0 + r) / rows_per_sample, k] when scale is given.  Vectors:
// 16-byte loads along k (K a multiple of the vector, src 16-byte aligned),
// else one element per thread, consecutive threads on consecutive k.  Every
// thread of the block calls it (blockDim.x threads, 1-d).
template <typename T, bool Vectors, int Rows, int StepK, int Ld>
__device__ __forceinline__ void stage_tile(const T* __restrict__ src, int64_t rows, int64_t K, int64_t row0,
                                           int64_t k0, const float* __restrict__ scale, int64_t rows_per_sample,
                                           float (*dst)[Ld]) {
  const int tid = threadIdx.x, threads = blockDim.x;
  if constexpr (Vectors) {
    constexpr int V = Vec16<T>::kSize, per_row = StepK / V;
    static_assert(StepK % V == 0, "stage_tile: StepK is a whole number of vectors");
#pragma unroll
    for (int i = tid; i < Rows * per_row; i += threads) {
      const int r = i / per_row, kk = (i % per_row) * V;
      const int64_t row = row0 + r, k = k0 + kk;
      float v[V];
      if (row < rows && k < K) {  // K % V == 0: the vector is all in or all out
        const Vec16<T> raw = load_vector(reinterpret_cast<const Vec16<T>*>(src + row * K + k));
#pragma unroll
        for (int e = 0; e < V; ++e) v[e] = static_cast<float>(raw.e[e]);
        if (scale != nullptr) {
          const float* s = scale + (row / rows_per_sample) * K + k;
#pragma unroll
          for (int e = 0; e < V; ++e) v[e] *= s[e];
        }
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) v[e] = 0.f;
      }
#pragma unroll
      for (int e = 0; e < V; ++e) dst[kk + e][r] = v[e];
    }
  } else {
#pragma unroll 4
    for (int i = tid; i < Rows * StepK; i += threads) {
      const int r = i / StepK, kk = i % StepK;
      const int64_t row = row0 + r, k = k0 + kk;
      float v = 0.f;
      if (row < rows && k < K) {
        v = static_cast<float>(src[row * K + k]);
        if (scale != nullptr) v *= scale[(row / rows_per_sample) * K + k];
      }
      dst[kk][r] = v;
    }
  }
}

}  // namespace mnv3
