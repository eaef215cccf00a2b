// CUDA kernel of mnv3::conv_bias_act: a dense convolution (groups 1) with bias
// and activation, for the stem (3x3 stride 2, 3 -> 16 channels in MobileNetV3),
// one launch.  x in any layout (the model's NCHW input is read in place, its
// strides passed in); y channels-last, as the CPU kernel gives it.
//
// conv_direct_kernel: a thread computes kOutVec consecutive output channels of
// one output pixel, tap by tap (i, j, c): one x value, kOutVec weights (the
// weights of a block's pixels are the same few hundred values: cache hits),
// fp32 accumulation; consecutive threads take consecutive
// channel groups, then pixels, so a warp's stores are contiguous in y.  Direct,
// no shared memory: the stem has 27 taps, and the op refuses nothing a larger
// conv needs (it is only slower there).  Not measured on a GPU.
#include "cuda_utils.cuh"

#include <vector>

namespace mnv3 {
namespace {

constexpr int kThreads = 256;
constexpr int kOutVec = 8;  // output channels a thread computes

struct ConvStrides {
  int64_t xn, xc, xh, xw;  // x's strides
  int64_t w0, w1, w2, w3;  // weight's strides
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
conv_direct_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
                   ConvStrides s, DwGeometry g, int64_t Cout, Activation act, int64_t items) {
  const int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= items) return;
  const int64_t groups = (Cout + kOutVec - 1) / kOutVec;
  const int64_t oc0 = (item % groups) * kOutVec;
  const int64_t pixel = item / groups;  // (n * OH + oh) * OW + ow
  const int64_t ow = pixel % g.OW;
  const int64_t oh = (pixel / g.OW) % g.OH;
  const int64_t n = pixel / (g.OW * g.OH);
  const int valid = static_cast<int>(Cout - oc0 < kOutVec ? Cout - oc0 : kOutVec);

  float acc[kOutVec];
#pragma unroll
  for (int o = 0; o < kOutVec; ++o) acc[o] = 0.f;
  const T* xn = x + n * s.xn;
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t ih = oh * g.sh - g.ph + i * g.dh;
    if (ih < 0 || ih >= g.H) continue;
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t iw = ow * g.sw - g.pw + j * g.dw;
      if (iw < 0 || iw >= g.W) continue;
      for (int64_t c = 0; c < g.C; ++c) {
        const float xv = static_cast<float>(xn[c * s.xc + ih * s.xh + iw * s.xw]);
        const T* wt = w + c * s.w1 + i * s.w2 + j * s.w3 + oc0 * s.w0;
#pragma unroll
        for (int o = 0; o < kOutVec; ++o) {
          if (o < valid) acc[o] += xv * static_cast<float>(wt[o * s.w0]);
        }
      }
    }
  }
  T* yp = y + pixel * Cout + oc0;
#pragma unroll
  for (int o = 0; o < kOutVec; ++o) {
    if (o < valid) yp[o] = static_cast<T>(activate(act, acc[o] + static_cast<float>(bias[oc0 + o])));
  }
}

Tensor conv_bias_act_cuda(const Tensor& x, const Tensor& weight, const Tensor& bias, const std::vector<int64_t>& stride,
                          const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation,
                          const std::string& activation) {
  check_kernel_device(x, "mnv3::conv_bias_act");
  STD_TORCH_CHECK(x.dim() == 4 && is_supported_dtype(x.scalar_type()),
                  "mnv3::conv_bias_act: x must be a float32, float16 or bfloat16 4-d tensor [N, C, H, W]");
  const int64_t C = x.size(1);
  STD_TORCH_CHECK(weight.scalar_type() == x.scalar_type() && weight.dim() == 4 && weight.size(1) == C,
                  "weight must be a [Cout, Cin, kh, kw] tensor of x's dtype with Cin = ", C);
  const int64_t Cout = weight.size(0);
  STD_TORCH_CHECK(bias.scalar_type() == x.scalar_type() && bias.dim() == 1 && bias.size(0) == Cout,
                  "bias must be a [Cout] vector of x's dtype with Cout = ", Cout);
  check_same_device(x, "x", weight, "weight");
  check_same_device(x, "x", bias, "bias");
  const DwGeometry g = conv_geometry(x.size(0), C, x.size(2), x.size(3), weight.size(2), weight.size(3), stride,
                                     padding, dilation);
  const Activation act = parse_activation(activation);
  KernelDeviceGuard guard(x);
  Tensor y = empty_4d(g.N, Cout, g.OH, g.OW, true, x.scalar_type(), x);
  if (g.N == 0 || Cout == 0) return y;
  const int64_t items = g.N * g.OH * g.OW * ((Cout + kOutVec - 1) / kOutVec);
  const ConvStrides s{x.stride(0), x.stride(1), x.stride(2), x.stride(3),
                      weight.stride(0), weight.stride(1), weight.stride(2), weight.stride(3)};
  const cudaStream_t stream = current_stream(x);
  dispatch_float_types(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    launch(conv_direct_kernel<T>, blocks_for(items, kThreads), kThreads, 0, stream,
           static_cast<const T*>(x.const_data_ptr()), static_cast<const T*>(weight.const_data_ptr()),
           static_cast<const T*>(bias.const_data_ptr()), static_cast<T*>(y.mutable_data_ptr()), s, g, Cout, act,
           items);
    check_launch("conv_direct_kernel");
  });
  return y;
}

}  // namespace
}  // namespace mnv3

MNV3_CUDA_LIBRARY_IMPL(m) {
  m.impl("conv_bias_act", TORCH_BOX(&mnv3::conv_bias_act_cuda));
}
