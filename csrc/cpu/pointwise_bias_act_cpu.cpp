// CPU kernel of mnv3::pointwise_bias_act: a 1x1 conv or Linear with bias,
// activation, SE scale and residual fused, on the GEMM register tiles
// (kernels/gemm.cpp), and the helpers the other ops on those tiles share
// (pointwise_common.h: se_gate_cpu.cpp, pointwise_dwconv_cpu.cpp).  Here:
// argument checks, weight packing, allocation and the split between threads;
// the arithmetic runs on the vector ISA level's kernels (cpu_isa.h).  fp32
// only, as every op on the GEMM tiles: these ops back the fp32 CPU fast path;
// other dtypes run the reference.
#include "cpu_isa.h"
#include "cpu_ops.h"
#include "pointwise_common.h"

#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <optional>
#include <vector>

namespace mnv3 {

void run_pointwise(const PwProblem& problem, Activation act) {
  PwProblem p = problem;
  p.prefetch = weight_prefetch_steps(p.K, p.Nc);
  const CpuKernels& k = cpu_kernels();
  const int64_t panels = (p.Nc + kPanel - 1) / kPanel, K = std::max<int64_t>(p.K, 1);
  if (p.M == 1) {  // a matrix-vector product: stream the weight panels
    const int64_t blocks = (p.Nc + k.gemv_columns - 1) / k.gemv_columns;
    torch::stable::parallel_for(0, blocks, grain_for(k.gemv_columns * K),
                                [&](int64_t begin, int64_t end) { k.pointwise_gemv(p, act, begin, end); });
    return;
  }
  const int64_t tasks = RowBlocks(p.M).count * panels;
  torch::stable::parallel_for(0, tasks, grain_for(kGemmBlockRows * kPanel * K), [&](int64_t begin, int64_t end) {
    std::vector<float> scaled(p.scale != nullptr ? kGemmBlockRows * p.K : 0);
    k.pointwise_tiles(p, act, scaled.data(), begin, end);
  });
}

int64_t check_pointwise_weights(const Tensor& x, const Tensor& weight, const Tensor& bias, const char* wname,
                                const char* bname) {
  return check_pointwise_weights(x, x.size(1), weight, bias, wname, bname);
}

int64_t check_pointwise_weights(const Tensor& x, int64_t K, const Tensor& weight, const Tensor& bias,
                                const char* wname, const char* bname) {
  STD_TORCH_CHECK(weight.scalar_type() == ScalarType::Float && bias.scalar_type() == ScalarType::Float, wname,
                  " and ", bname, " must be float32");
  STD_TORCH_CHECK(bias.dim() == 1, bname, " must be a [Cout] vector");
  const bool panels = weight.dim() == 3;
  const int64_t Nc = panels ? bias.size(0) : weight.size(0);
  if (panels) {
    STD_TORCH_CHECK(weight.size(0) == (Nc + kPanel - 1) / kPanel && weight.size(1) == K &&
                        weight.size(2) == kPanel &&
                        (weight.size(0) * K == 0 ||  // no elements: any strides (torch calls that contiguous)
                         ((weight.size(0) == 1 || weight.stride(0) == K * kPanel) &&
                          (K == 1 || weight.stride(1) == kPanel) && weight.stride(2) == 1)),
                    wname, " given as panels must be a contiguous [ceil(Cout/16), Cin, 16] = [",
                    (Nc + kPanel - 1) / kPanel, ", ", K, ", 16] tensor (layout.pack_pointwise_weight)");
  } else {
    STD_TORCH_CHECK(weight.dim() == 2 && weight.size(1) == K, wname,
                    " must be a float32 [Cout, Cin] matrix with Cin = ", K, " (or its [ceil(Cout/16), Cin, 16] panels)");
    STD_TORCH_CHECK(bias.size(0) == Nc, bname, " must be a float32 [Cout] vector with Cout = ", Nc);
  }
  check_same_device(x, "x", weight, wname);
  check_same_device(x, "x", bias, bname);
  return Nc;
}

const float* weight_panels(const Tensor& weight, int64_t K, int64_t Nc, std::vector<float>& storage) {
  const float* w = static_cast<const float*>(weight.const_data_ptr());
  if (weight.dim() == 3) return w;
  storage.assign(static_cast<size_t>((Nc + kPanel - 1) / kPanel * K * kPanel), 0.f);
  const int64_t s0 = weight.stride(0), s1 = weight.stride(1);
  for (int64_t n = 0; n < Nc; ++n)
    for (int64_t k = 0; k < K; ++k) storage[(n / kPanel * K + k) * kPanel + n % kPanel] = w[n * s0 + k * s1];
  return storage.data();
}

Tensor pointwise_bias_act_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias,
                              const std::string& activation, std::optional<Tensor> scale,
                              std::optional<Tensor> residual) {
  STD_TORCH_CHECK(x.is_cpu(), "mnv3::pointwise_bias_act: x must be a CPU tensor");
  STD_TORCH_CHECK(x.scalar_type() == ScalarType::Float, "mnv3::pointwise_bias_act: x must be float32");
  check_pointwise_x(x);
  const Activation act = parse_activation(activation);
  const int64_t K = x.size(1);
  const int64_t Nc = check_pointwise_weights(x, weight, bias);
  const int64_t samples = x.size(0);
  const int64_t rows_per_sample = x.dim() == 4 ? x.size(2) * x.size(3) : 1;
  const int64_t M = samples * rows_per_sample;
  if (scale.has_value()) check_pointwise_scale(x, *scale);
  Tensor y = x.dim() == 4 ? empty_4d(samples, Nc, x.size(2), x.size(3), true, ScalarType::Float, x)
                          : empty_2d(M, Nc, ScalarType::Float, x);
  if (residual.has_value()) check_pointwise_residual(x, y, *residual);
  if (M == 0 || Nc == 0) return y;

  std::vector<float> w_storage, b_storage;
  PwProblem p{};
  p.x = static_cast<const float*>(x.const_data_ptr());
  p.w = weight_panels(weight, K, Nc, w_storage);
  p.bias = vector_as_float<float>(bias, b_storage);
  p.scale = scale.has_value() ? static_cast<const float*>(scale->const_data_ptr()) : nullptr;
  p.res = residual.has_value() ? static_cast<const float*>(residual->const_data_ptr()) : nullptr;
  p.y = static_cast<float*>(y.mutable_data_ptr());
  p.ldy = Nc;
  p.M = M;
  p.K = K;
  p.Nc = Nc;
  p.rows_per_sample = rows_per_sample;

  run_pointwise(p, act);
  return y;
}

}  // namespace mnv3

STABLE_TORCH_LIBRARY_IMPL(mnv3, CPU, m) {
  m.impl("pointwise_bias_act", TORCH_BOX(&mnv3::pointwise_bias_act_cpu));
}
