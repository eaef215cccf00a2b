// Host helpers of the CPU kernels: fp32 copies of small parameter tensors
// (any strides) and parallel_for grain sizing.
#pragma once

#include "../common/op_glue.h"

#include <algorithm>
#include <vector>

namespace mnv3 {

template <typename T>
std::vector<float> vector_to_float(const Tensor& v) {
  const T* p = static_cast<const T*>(v.const_data_ptr());
  const int64_t n = v.size(0), s = v.stride(0);
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(p[i * s]);
  return out;
}

template <typename T>
std::vector<float> matrix_to_float(const Tensor& m) {
  const T* p = static_cast<const T*>(m.const_data_ptr());
  const int64_t rows = m.size(0), cols = m.size(1), s0 = m.stride(0), s1 = m.stride(1);
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = static_cast<float>(p[r * s0 + c * s1]);
  return out;
}

// A parallel_for chunk should hold at least this much work (multiply-adds or
// elements) for the thread hand-off to pay.
constexpr int64_t kMinChunkWork = 1 << 15;

inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kMinChunkWork / std::max<int64_t>(1, work_per_item));
}

}  // namespace mnv3
