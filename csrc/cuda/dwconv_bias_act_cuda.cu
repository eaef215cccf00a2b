// CUDA kernel of mnv3::dwconv_bias_act (first version: one thread per output
// element over csrc/common/dwconv.h, any input strides; the squeeze is a
// second, deterministic pass that re-reads y).
#include "cuda_utils.cuh"

namespace mnv3 {
namespace {

constexpr int kThreads = 256;

template <typename T, Activation A>
__global__ void dwconv_kernel(const T* __restrict__ x, const T* __restrict__ w,
                              const T* __restrict__ bias, T* __restrict__ y, DwGeometry g,
                              int64_t sN, int64_t sC, int64_t sH, int64_t sW, bool nhwc) {
  const int64_t total = g.N * g.C * g.OH * g.OW;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  int64_t n, c, oh, ow;
  if (nhwc) {  // y is [N, OH, OW, C] in memory
    c = idx % g.C;
    int64_t r = idx / g.C;
    ow = r % g.OW;
    r /= g.OW;
    oh = r % g.OH;
    n = r / g.OH;
  } else {  // y is [N, C, OH, OW] in memory
    ow = idx % g.OW;
    int64_t r = idx / g.OW;
    oh = r % g.OH;
    r /= g.OH;
    c = r % g.C;
    n = r / g.C;
  }
  const float acc = dw_point(x + n * sN + c * sC, sH, sW, w + c * g.kh * g.kw, g, oh, ow);
  y[idx] = static_cast<T>(dw_epilogue<A>(acc, static_cast<float>(bias[c])));
}

// mean[n, c] = mean over (oh, ow) of y[n, c, oh, ow]; one thread per (n, c).
template <typename T>
__global__ void spatial_mean_kernel(const T* __restrict__ y, float* __restrict__ mean, DwGeometry g,
                                    bool nhwc) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= g.N * g.C) return;
  const int64_t n = p / g.C, c = p % g.C, plane = g.OH * g.OW;
  float s = 0.f;
  for (int64_t i = 0; i < plane; ++i) {
    s += static_cast<float>(nhwc ? y[(n * plane + i) * g.C + c] : y[p * plane + i]);
  }
  mean[p] = s / static_cast<float>(plane);
}

std::tuple<Tensor, Tensor> dwconv_bias_act_cuda(const Tensor& x, const Tensor& weight,
                                                const Tensor& bias,
                                                const std::vector<int64_t>& stride,
                                                const std::vector<int64_t>& padding,
                                                const std::vector<int64_t>& dilation,
                                                const std::string& activation, bool with_mean) {
  STD_TORCH_CHECK(x.is_cuda(), "mnv3::dwconv_bias_act (CUDA kernel): x must be a CUDA tensor");
  const DwGeometry g = check_dwconv_args(x, weight, bias, stride, padding, dilation);
  const Activation act = parse_activation(activation);
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  const bool nhwc = is_nhwc_dense(x);
  Tensor y = empty_4d(g.N, g.C, g.OH, g.OW, nhwc, x.scalar_type(), x);
  Tensor mean = with_mean ? empty_2d(g.N, g.C, ScalarType::Float, x)
                          : torch::stable::empty({0}, ScalarType::Float, std::nullopt, x.device());
  if (g.N == 0 || g.C == 0) return {y, mean};
  const Tensor w = torch::stable::contiguous(weight);
  const Tensor b = torch::stable::contiguous(bias);
  const cudaStream_t stream = current_stream(x);
  const int64_t total = g.N * g.C * g.OH * g.OW;

  dispatch_float_types(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    dispatch_activation(act, [&](auto act_tag) {
      constexpr Activation A = decltype(act_tag)::value;
      dwconv_kernel<T, A><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
          static_cast<const T*>(x.const_data_ptr()), static_cast<const T*>(w.const_data_ptr()),
          static_cast<const T*>(b.const_data_ptr()), static_cast<T*>(y.mutable_data_ptr()), g,
          x.stride(0), x.stride(1), x.stride(2), x.stride(3), nhwc);
      check_launch("dwconv_kernel");
    });
    if (with_mean) {
      spatial_mean_kernel<T><<<blocks_for(g.N * g.C, kThreads), kThreads, 0, stream>>>(
          static_cast<const T*>(y.const_data_ptr()), static_cast<float*>(mean.mutable_data_ptr()), g,
          nhwc);
      check_launch("spatial_mean_kernel");
    }
  });
  return {y, mean};
}

}  // namespace
}  // namespace mnv3

STABLE_TORCH_LIBRARY_IMPL(mnv3, CUDA, m) {
  m.impl("dwconv_bias_act", TORCH_BOX(&mnv3::dwconv_bias_act_cuda));
}
