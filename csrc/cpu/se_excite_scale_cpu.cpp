// CPU kernel of mnv3::se_excite_scale: the SE gate from the pooled means
// (fc1 -> relu -> fc2 -> hardsigmoid | sigmoid, csrc/common/se.h) and the
// channel scale y = x * gate, one pass over x.  The gate (fp32 whatever the
// dtype) and the fp32 channels-last scale run on the vector ISA level's
// kernels (kernels/se.cpp), as does the channels-last scale in every dtype;
// other layouts scale here.
#include "cpu_isa.h"
#include "cpu_ops.h"
#include "cpu_utils.h"

#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <vector>

namespace mnv3 {
namespace {

// gates[n, c] for every sample: the hidden units, then the gates, each phase
// parallel over (sample, unit) so batch 1 uses every thread too.
std::vector<float> se_gates(Gate gate, const float* pooled, const float* w1, const std::vector<float>& b1,
                            const float* w2, const std::vector<float>& b2, int64_t N, int64_t C, int64_t Cr) {
  const CpuKernels& k = cpu_kernels();
  std::vector<float> hidden(static_cast<size_t>(N * Cr));
  torch::stable::parallel_for(0, N * Cr, grain_for(C), [&](int64_t begin, int64_t end) {
    k.se_hidden(pooled, w1, b1.data(), hidden.data(), C, Cr, begin, end);
  });
  std::vector<float> gates(static_cast<size_t>(N * C));
  torch::stable::parallel_for(0, N * C, grain_for(Cr), [&](int64_t begin, int64_t end) {
    k.se_gates(gate, hidden.data(), w2, b2.data(), gates.data(), C, Cr, begin, end);
  });
  return gates;
}

template <typename T>
void scale_channels(const Tensor& x, const float* gates, Tensor& y, bool nhwc) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const T* xp = static_cast<const T*>(x.const_data_ptr());
  T* yp = static_cast<T*>(y.mutable_data_ptr());
  if (nhwc) {
    const int64_t HW = H * W;
    const CpuKernels& k = cpu_kernels();
    const Storage dtype = storage_of(x.scalar_type());
    torch::stable::parallel_for(0, N * HW, grain_for(C), [&](int64_t begin, int64_t end) {
      k.scale_nhwc(dtype, xp, gates, yp, HW, C, begin, end);
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

}  // namespace

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
    const std::vector<float> gates = se_gates(gate_kind, pooled_f, w1f, b1f, w2f, b2f, N, C, Cr);
    scale_channels<T>(x, gates.data(), y, nhwc);
  });
  return y;
}

}  // namespace mnv3

STABLE_TORCH_LIBRARY_IMPL(mnv3, CPU, m) {
  m.impl("se_excite_scale", TORCH_BOX(&mnv3::se_excite_scale_cpu));
}
