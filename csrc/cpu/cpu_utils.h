// Host helpers of the CPU kernels: fp32 copies of small parameter tensors
// (any strides) and parallel_for grain sizing.
#pragma once

#include "../common/op_glue.h"
#include "kernels/kernels.h"

#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <memory>
#include <new>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace mnv3 {

// The kernels' name for a tensor dtype (fp32, fp16 or bf16: check_* validated it).
inline Storage storage_of(ScalarType t) {
  return t == ScalarType::Half ? Storage::Float16 : t == ScalarType::BFloat16 ? Storage::BFloat16 : Storage::Float32;
}

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

// The vector v as fp32: v's own memory when it already is (contiguous fp32), else a copy in `storage`.
template <typename T>
const float* vector_as_float(const Tensor& v, std::vector<float>& storage) {
  if constexpr (std::is_same_v<T, float>) {
    if (v.stride(0) == 1) return static_cast<const float*>(v.const_data_ptr());
  }
  storage = vector_to_float<T>(v);
  return storage.data();
}

// The [rows, cols] matrix m as row-major fp32: m's own memory when it already
// is (no copy on the hot path of fp32 models), else a converted copy in `storage`.
template <typename T>
const float* matrix_as_float(const Tensor& m, std::vector<float>& storage) {
  if constexpr (std::is_same_v<T, float>) {
    if (m.stride(1) == 1 && m.stride(0) == m.size(1)) return static_cast<const float*>(m.const_data_ptr());
  }
  storage = matrix_to_float<T>(m);
  return storage.data();
}

// A float buffer on a 64-byte boundary, so that no 16-float vector of a
// buffer laid out in 16-float rows straddles two cache lines (std::vector's
// memory is 16-byte aligned: every vector load of such a row then split).
class AlignedFloats {
 public:
  AlignedFloats() = default;
  explicit AlignedFloats(int64_t n, bool zeroed = false) { reset(n, zeroed); }
  // Room for n floats (contents unspecified, or zeros); earlier contents are lost.
  void reset(int64_t n, bool zeroed = false) {
    const size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float) + 63) / 64 * 64;
    data_.reset(static_cast<float*>(aligned_alloc(64, bytes)));
    if (data_ == nullptr) throw std::bad_alloc();
    if (zeroed) memset(data_.get(), 0, bytes);
    size_ = n;
  }
  float* data() const { return data_.get(); }
  int64_t size() const { return size_; }

 private:
  struct Free {
    void operator()(float* p) const { free(p); }
  };
  std::unique_ptr<float, Free> data_;
  int64_t size_ = 0;
};

// At least n floats of zeros, kept per calling thread (never written after
// they are zeroed: the padding rows that the depthwise walks read).
inline const float* zero_floats(int64_t n) {
  thread_local AlignedFloats zeros;
  if (zeros.size() < n) zeros.reset(n, true);
  return zeros.data();
}

// Up to this many floats (4 MB) of scratch stay allocated per calling thread
// between calls (no allocation, no page faults on the hot path); a larger
// request gets a buffer of its own, freed with the Scratch.
constexpr int64_t kKeptScratchFloats = int64_t{1} << 20;

class Scratch {
 public:
  explicit Scratch(int64_t n) {
    thread_local AlignedFloats kept;
    if (n <= kKeptScratchFloats) {
      if (kept.size() < n) kept.reset(n);
      data_ = kept.data();
    } else {
      own_.reset(n);
      data_ = own_.data();
    }
  }
  float* data() const { return data_; }  // contents unspecified; 64-byte aligned

 private:
  AlignedFloats own_;
  float* data_ = nullptr;
};

// A parallel_for chunk should hold at least this much work (multiply-adds or
// elements) for the thread hand-off to pay.
constexpr int64_t kMinChunkWork = 1 << 15;

inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kMinChunkWork / std::max<int64_t>(1, work_per_item));
}

// The SE squeeze from per-output-row sums of a depthwise conv's output:
// mean[n, c] = sum over oh of row_sums[(n * OH + oh) * stride + c] / (OH * OW),
// each sum in row order (deterministic, whatever the thread count).
inline void mean_from_row_sums(const float* row_sums, int64_t N, int64_t OH, int64_t OW, int64_t C, int64_t stride,
                               float* mean) {
  const float inv = 1.f / static_cast<float>(OH * OW);
  torch::stable::parallel_for(0, N * C, grain_for(OH), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / C, c = p % C;
      float s = 0.f;
      for (int64_t oh = 0; oh < OH; ++oh) s += row_sums[(n * OH + oh) * stride + c];
      mean[p] = s * inv;
    }
  });
}

}  // namespace mnv3
