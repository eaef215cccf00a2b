// CPU kernel of mnv3::conv_bias_act.  fp32 only (see pointwise_bias_act_cpu.cpp).
#include "cpu_isa.h"
#include "cpu_ops.h"
#include "cpu_utils.h"

#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <vector>

namespace mnv3 {

// mnv3::conv_bias_act: a dense convolution (groups 1) with bias and activation,
// for layers with few input channels (MobileNetV3's 3x3 stem, 3 -> 16 channels)
// on the GEMM register tiles (kernels/gemm.cpp): tile row i is output pixel (n, oh, ow0 + i), its
// inputs the window's (c, kh, kw) taps, read from x in place through a table of
// per-tap offsets, whatever x's layout (the model's NCHW input needs no
// channels-last copy first).  Pixels whose windows cross the border gather their
// taps, zeros outside, into a small buffer first.

Tensor conv_bias_act_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias, const std::vector<int64_t>& stride,
                         const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation,
                         const std::string& activation) {
  STD_TORCH_CHECK(x.is_cpu(), "mnv3::conv_bias_act: x must be a CPU tensor");
  STD_TORCH_CHECK(x.scalar_type() == ScalarType::Float && x.dim() == 4,
                  "mnv3::conv_bias_act: x must be a float32 4-d tensor [N, C, H, W]");
  const int64_t C = x.size(1);
  STD_TORCH_CHECK(weight.scalar_type() == ScalarType::Float && weight.dim() == 4 && weight.size(1) == C,
                  "weight must be a float32 [Cout, Cin, kh, kw] tensor with Cin = ", C);
  const int64_t Cout = weight.size(0);
  STD_TORCH_CHECK(bias.scalar_type() == ScalarType::Float && bias.dim() == 1 && bias.size(0) == Cout,
                  "bias must be a float32 [Cout] vector with Cout = ", Cout);
  check_same_device(x, "x", weight, "weight");
  check_same_device(x, "x", bias, "bias");
  ConvProblem p{};
  static_cast<DwGeometry&>(p) = conv_geometry(x.size(0), C, x.size(2), x.size(3), weight.size(2), weight.size(3),
                                              stride, padding, dilation);
  p.Cout = Cout;
  const Activation act = parse_activation(activation);
  Tensor y = empty_4d(p.N, p.Cout, p.OH, p.OW, true, ScalarType::Float, x);
  if (p.N == 0 || p.Cout == 0) return y;

  // The weight as panels, taps k = (c * kh + i) * kw + j (weight.flatten(1)'s order),
  // and each tap's offset in x.  (Strides read once: each accessor is a call through
  // the stable ABI.)
  p.Kc = p.C * p.kh * p.kw;
  const int64_t panels = (p.Cout + kPanel - 1) / kPanel;
  std::vector<float> w(static_cast<size_t>(panels * p.Kc * kPanel), 0.f), b_storage;
  std::vector<int64_t> off(static_cast<size_t>(p.Kc));
  const float* wsrc = static_cast<const float*>(weight.const_data_ptr());
  const int64_t w0 = weight.stride(0), w1 = weight.stride(1), w2 = weight.stride(2), w3 = weight.stride(3);
  p.xn = x.stride(0);
  p.xc = x.stride(1);
  p.xh = x.stride(2);
  p.xw = x.stride(3);
  for (int64_t c = 0, k = 0; c < p.C; ++c)
    for (int64_t i = 0; i < p.kh; ++i)
      for (int64_t j = 0; j < p.kw; ++j, ++k) {
        off[k] = c * p.xc + i * p.dh * p.xh + j * p.dw * p.xw;
        for (int64_t o = 0; o < p.Cout; ++o)
          w[(o / kPanel * p.Kc + k) * kPanel + o % kPanel] = wsrc[o * w0 + c * w1 + i * w2 + j * w3];
      }
  p.x = static_cast<const float*>(x.const_data_ptr());
  p.w = w.data();
  p.bias = vector_as_float<float>(bias, b_storage);
  p.y = static_cast<float*>(y.mutable_data_ptr());
  p.off = off.data();
  p.ow_lo = std::min(p.OW, (p.pw + p.sw - 1) / p.sw);
  const int64_t last = p.W - 1 + p.pw - (p.kw - 1) * p.dw;  // the last window start inside x, padded coordinates
  p.ow_hi = std::max(p.ow_lo, last < 0 ? int64_t{0} : std::min(p.OW, last / p.sw + 1));
  const int64_t tasks = p.N * p.OH * panels;
  const CpuKernels& k = cpu_kernels();
  torch::stable::parallel_for(0, tasks, grain_for(p.OW * kPanel * p.Kc), [&](int64_t begin, int64_t end) {
    std::vector<float> gathered(static_cast<size_t>(kGemmBlockRows * p.Kc));
    k.conv_rows(p, act, gathered.data(), begin, end);
  });
  return y;
}

}  // namespace mnv3

STABLE_TORCH_LIBRARY_IMPL(mnv3, CPU, m) {
  m.impl("conv_bias_act", TORCH_BOX(&mnv3::conv_bias_act_cpu));
}
