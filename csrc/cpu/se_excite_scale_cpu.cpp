// CPU kernel of mnv3::se_excite_scale: the SE gate from the pooled means
// (fc1 -> relu -> fc2 -> hardsigmoid | sigmoid, csrc/common/se.h) and the
// channel scale y = x * gate, one pass over x.
#include "cpu_utils.h"
#include "simd.h"
#include "../common/se.h"

#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <vector>

namespace mnv3 {
namespace {

// dot(a, b) over n floats: two 16-lane partial sums (so the FMAs pipeline
// instead of waiting on one accumulator), then their lanes, then the tail.
// The order differs from the CUDA kernel's warp split; both are fp32 sums
// within the tolerance table's fp32 rule.
MNV3_HD float dot_f32(const float* a, const float* b, int64_t n) {
  vfloat<16> s0 = vzero<16>(), s1 = vzero<16>();
  int64_t k = 0;
  for (; k + 32 <= n; k += 32) {
    s0 += vload<16>(a + k) * vload<16>(b + k);
    s1 += vload<16>(a + k + 16) * vload<16>(b + k + 16);
  }
  if (k + 16 <= n) {
    s0 += vload<16>(a + k) * vload<16>(b + k);
    k += 16;
  }
  s0 += s1;
  float acc = 0.f;
  for (int v = 0; v < 16; ++v) acc += s0[v];
  for (; k < n; ++k) acc += a[k] * b[k];
  return acc;
}

// Units [begin, end) of (sample, hidden unit) and of (sample, channel): the
// two phases of the gate, cloned per vector ISA.
MNV3_CPU_CLONES void se_hidden_range(const float* pooled, const float* w1, const float* b1, float* hidden,
                                     int64_t C, int64_t Cr, int64_t begin, int64_t end) {
  for (int64_t p = begin; p < end; ++p) {
    const int64_t n = p / Cr, j = p % Cr;
    hidden[p] = se_hidden_unit(dot_f32(pooled + n * C, w1 + j * C, C), b1[j]);
  }
}

template <Gate G>
MNV3_CPU_CLONES void se_gate_range(const float* hidden, const float* w2, const float* b2, float* gates,
                                   int64_t C, int64_t Cr, int64_t begin, int64_t end) {
  for (int64_t p = begin; p < end; ++p) {
    const int64_t n = p / C, c = p % C;
    gates[p] = se_gate_unit<G>(dot_f32(hidden + n * Cr, w2 + c * Cr, Cr), b2[c]);
  }
}

// gates[n, c] for every sample: the hidden units, then the gates, each phase
// parallel over (sample, unit) so batch 1 uses every thread too.
template <Gate G>
std::vector<float> se_gates(const float* pooled, const float* w1, const std::vector<float>& b1,
                            const float* w2, const std::vector<float>& b2, int64_t N, int64_t C,
                            int64_t Cr) {
  std::vector<float> hidden(static_cast<size_t>(N * Cr));
  torch::stable::parallel_for(0, N * Cr, grain_for(C), [&](int64_t begin, int64_t end) {
    se_hidden_range(pooled, w1, b1.data(), hidden.data(), C, Cr, begin, end);
  });
  std::vector<float> gates(static_cast<size_t>(N * C));
  torch::stable::parallel_for(0, N * C, grain_for(Cr), [&](int64_t begin, int64_t end) {
    se_gate_range<G>(hidden.data(), w2, b2.data(), gates.data(), C, Cr, begin, end);
  });
  return gates;
}

// y = x * gate over pixels [begin, end) of a channels-last x.
template <typename T>
MNV3_CPU_CLONES void scale_nhwc_range(const T* xp, const float* gates, T* yp, int64_t HW, int64_t C,
                                      int64_t begin, int64_t end) {
  for (int64_t p = begin; p < end; ++p) {
    const float* g = gates + (p / HW) * C;
    const T* xs = xp + p * C;
    T* ys = yp + p * C;
    for (int64_t c = 0; c < C; ++c) ys[c] = static_cast<T>(static_cast<float>(xs[c]) * g[c]);
  }
}

template <typename T>
void scale_channels(const Tensor& x, const float* gates, Tensor& y, bool nhwc) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const T* xp = static_cast<const T*>(x.const_data_ptr());
  T* yp = static_cast<T*>(y.mutable_data_ptr());
  if (nhwc) {
    const int64_t HW = H * W;
    torch::stable::parallel_for(0, N * HW, grain_for(C), [&](int64_t begin, int64_t end) {
      scale_nhwc_range<T>(xp, gates, yp, HW, C, begin, end);
    });
  } else {
    const int64_t sN = x.stride(0), sC = x.stride(1), sH = x.stride(2), sW = x.stride(3);
    torch::stable::parallel_for(0, N * C, grain_for(H * W),
                                [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / C, c = p % C;
        const float g = gates[p];
        const T* xs = xp + n * sN + c * sC;
        T* ys = yp + p * H * W;
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w)
            ys[h * W + w] = static_cast<T>(static_cast<float>(xs[h * sH + w * sW]) * g);
      }
    });
  }
}

Tensor se_excite_scale_cpu(const Tensor& x, const Tensor& pooled, const Tensor& w1, const Tensor& b1,
                           const Tensor& w2, const Tensor& b2, const std::string& gate) {
  STD_TORCH_CHECK(x.is_cpu(), "mnv3::se_excite_scale (CPU kernel): x must be a CPU tensor");
  const int64_t Cr = check_se_args(x, pooled, w1, b1, w2, b2);
  const Gate gate_kind = parse_gate(gate);
  const int64_t N = x.size(0), C = x.size(1);
  const bool nhwc = is_nhwc_dense(x);
  Tensor y = empty_4d(N, C, x.size(2), x.size(3), nhwc, x.scalar_type(), x);
  if (x.numel() == 0) return y;

  dispatch_float_types(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    std::vector<float> pooled_storage, w1_storage, w2_storage;
    const float* pooled_f = pooled.scalar_type() == ScalarType::Float
                                ? matrix_as_float<float>(pooled, pooled_storage)
                                : matrix_as_float<T>(pooled, pooled_storage);
    const float* w1f = matrix_as_float<T>(w1, w1_storage);
    const float* w2f = matrix_as_float<T>(w2, w2_storage);
    const auto b1f = vector_to_float<T>(b1), b2f = vector_to_float<T>(b2);
    std::vector<float> gates;
    dispatch_gate(gate_kind, [&](auto gate_tag) {
      gates = se_gates<decltype(gate_tag)::value>(pooled_f, w1f, b1f, w2f, b2f, N, C, Cr);
    });
    scale_channels<T>(x, gates.data(), y, nhwc);
  });
  return y;
}

}  // namespace
}  // namespace mnv3

STABLE_TORCH_LIBRARY_IMPL(mnv3, CPU, m) {
  m.impl("se_excite_scale", TORCH_BOX(&mnv3::se_excite_scale_cpu));
}
