// The SE gate (fc1 -> relu -> fc2 -> hardsigmoid | sigmoid, csrc/common/se.h)
// from the pooled means, and the channel scale of a channels-last x, for
// se_excite_scale on fp32.  Compiled once per vector ISA level (level.h).
#include "kernels.h"
#include "lowp.h"
#include "vec.h"

#include "../../common/se.h"

namespace mnv3 {
namespace MNV3_LEVEL_NS {
namespace {

// dot(a, b) over n floats: kParts partial sums of one register each (so the
// FMAs pipeline instead of waiting on one accumulator), then their lanes,
// then the tail.  The order differs from the CUDA kernel's warp split and
// between levels; all are fp32 sums within the tolerance table's fp32 rule.
MNV3_HD float dot_f32(const float* a, const float* b, int64_t n) {
  constexpr int VL = kVecLanes, kParts = 4;
  using V = vfloat<VL>;
  V s[kParts];
  for (int u = 0; u < kParts; ++u) s[u] = vzero<VL>();
  int64_t k = 0;
  for (; k + kParts * VL <= n; k += kParts * VL)
#pragma GCC unroll 4
    for (int u = 0; u < kParts; ++u) s[u] += vload<VL>(a + k + u * VL) * vload<VL>(b + k + u * VL);
  for (; k + VL <= n; k += VL) s[0] += vload<VL>(a + k) * vload<VL>(b + k);
  const V total = (s[0] + s[1]) + (s[2] + s[3]);
  float acc = 0.f;
  for (int v = 0; v < VL; ++v) acc += total[v];
  for (; k < n; ++k) acc += a[k] * b[k];
  return acc;
}

}  // namespace

void se_hidden(const float* pooled, const float* w1, const float* b1, float* hidden, int64_t C, int64_t Cr,
               int64_t begin, int64_t end) {
  for (int64_t p = begin; p < end; ++p) {
    const int64_t n = p / Cr, j = p % Cr;
    hidden[p] = se_hidden_unit(dot_f32(pooled + n * C, w1 + j * C, C), b1[j]);
  }
}

void se_gates(Gate gate, const float* hidden, const float* w2, const float* b2, float* gates, int64_t C, int64_t Cr,
              int64_t begin, int64_t end) {
  dispatch_gate(gate, [&](auto gate_tag) {
    constexpr Gate G = decltype(gate_tag)::value;
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / C, c = p % C;
      gates[p] = se_gate_unit<G>(dot_f32(hidden + n * Cr, w2 + c * Cr, Cr), b2[c]);
    }
  });
}

namespace {

template <typename T>
void scale_rows(const T* x, const float* gates, T* y, int64_t HW, int64_t C, int64_t begin, int64_t end) {
  for (int64_t p = begin; p < end; ++p) {
    const float* g = gates + (p / HW) * C;
    const T* xs = x + p * C;
    T* ys = y + p * C;
    int64_t c = 0;
    if constexpr (sizeof(T) == sizeof(float)) {
      for (; c + kVecLanes <= C; c += kVecLanes)
        vstore<kVecLanes>(ys + c, vload<kVecLanes>(xs + c) * vload<kVecLanes>(g + c));
    }
    for (; c < C; ++c) ys[c] = to_storage<T>(static_cast<float>(xs[c]) * g[c]);
  }
}

}  // namespace

void scale_nhwc(Storage dtype, const void* x, const float* gates, void* y, int64_t HW, int64_t C, int64_t begin,
                int64_t end) {
  switch (dtype) {
    case Storage::Float16:
      return scale_rows(static_cast<const Half*>(x), gates, static_cast<Half*>(y), HW, C, begin, end);
    case Storage::BFloat16:
      return scale_rows(static_cast<const BFloat16*>(x), gates, static_cast<BFloat16*>(y), HW, C, begin, end);
    default:
      return scale_rows(static_cast<const float*>(x), gates, static_cast<float*>(y), HW, C, begin, end);
  }
}

}  // namespace MNV3_LEVEL_NS
}  // namespace mnv3
