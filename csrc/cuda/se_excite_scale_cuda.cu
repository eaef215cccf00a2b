// CUDA kernel of mnv3::se_excite_scale: one block per sample computes the
// gates (csrc/common/se.h), then an elementwise pass scales x.
#include "../common/se.h"
#include "cuda_utils.cuh"

namespace mnv3 {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ float load_f(const T* p, int64_t i) {
  return static_cast<float>(p[i]);
}

// gates[n, :] for sample n = blockIdx.x.  Weights are converted to fp32 on the
// fly; hidden lives in shared memory (Cr floats, dynamic).
template <typename T, typename P, Gate G>
__global__ void se_gate_kernel(const P* __restrict__ pooled, const T* __restrict__ w1,
                               const T* __restrict__ b1, const T* __restrict__ w2,
                               const T* __restrict__ b2, float* __restrict__ gates, int64_t C,
                               int64_t Cr) {
  extern __shared__ float hidden[];
  const int64_t n = blockIdx.x;
  const P* pn = pooled + n * C;
  for (int64_t j = threadIdx.x; j < Cr; j += blockDim.x) {
    float acc = static_cast<float>(b1[j]);
    for (int64_t c = 0; c < C; ++c) acc += static_cast<float>(w1[j * C + c]) * static_cast<float>(pn[c]);
    hidden[j] = relu(acc);
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = static_cast<float>(b2[c]);
    for (int64_t j = 0; j < Cr; ++j) acc += static_cast<float>(w2[c * Cr + j]) * hidden[j];
    gates[n * C + c] = apply_gate<G>(acc);
  }
}

template <typename T>
__global__ void scale_kernel(const T* __restrict__ x, const float* __restrict__ gates,
                             T* __restrict__ y, int64_t N, int64_t C, int64_t H, int64_t W,
                             int64_t sN, int64_t sC, int64_t sH, int64_t sW, bool nhwc) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= N * C * H * W) return;
  int64_t n, c, h, w;
  if (nhwc) {
    c = idx % C;
    int64_t r = idx / C;
    w = r % W;
    r /= W;
    h = r % H;
    n = r / H;
  } else {
    w = idx % W;
    int64_t r = idx / W;
    h = r % H;
    r /= H;
    c = r % C;
    n = r / C;
  }
  y[idx] = static_cast<T>(static_cast<float>(x[n * sN + c * sC + h * sH + w * sW]) * gates[n * C + c]);
}

Tensor se_excite_scale_cuda(const Tensor& x, const Tensor& pooled, const Tensor& w1, const Tensor& b1,
                            const Tensor& w2, const Tensor& b2, const std::string& gate) {
  STD_TORCH_CHECK(x.is_cuda(), "mnv3::se_excite_scale (CUDA kernel): x must be a CUDA tensor");
  const int64_t Cr = check_se_args(x, pooled, w1, b1, w2, b2);
  const Gate gate_kind = parse_gate(gate);
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const bool nhwc = is_nhwc_dense(x);
  Tensor y = empty_4d(N, C, H, W, nhwc, x.scalar_type(), x);
  if (x.numel() == 0) return y;
  const Tensor p = torch::stable::contiguous(pooled);
  const Tensor w1c = torch::stable::contiguous(w1), b1c = torch::stable::contiguous(b1);
  const Tensor w2c = torch::stable::contiguous(w2), b2c = torch::stable::contiguous(b2);
  Tensor gates = empty_2d(N, C, ScalarType::Float, x);
  const cudaStream_t stream = current_stream(x);
  STD_TORCH_CHECK(Cr * sizeof(float) <= 48 * 1024, "se_excite_scale: Cr = ", Cr, " is too large");

  dispatch_float_types(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    dispatch_gate(gate_kind, [&](auto gate_tag) {
      constexpr Gate G = decltype(gate_tag)::value;
      const auto launch = [&](auto pooled_tag) {
        using P = decltype(pooled_tag);
        se_gate_kernel<T, P, G><<<static_cast<unsigned int>(N), kThreads, Cr * sizeof(float), stream>>>(
            static_cast<const P*>(p.const_data_ptr()), static_cast<const T*>(w1c.const_data_ptr()),
            static_cast<const T*>(b1c.const_data_ptr()), static_cast<const T*>(w2c.const_data_ptr()),
            static_cast<const T*>(b2c.const_data_ptr()), static_cast<float*>(gates.mutable_data_ptr()),
            C, Cr);
      };
      if (p.scalar_type() == ScalarType::Float) {
        launch(float{});
      } else {
        launch(T{});
      }
      check_launch("se_gate_kernel");
    });
    scale_kernel<T><<<blocks_for(x.numel(), kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(x.const_data_ptr()), static_cast<const float*>(gates.const_data_ptr()),
        static_cast<T*>(y.mutable_data_ptr()), N, C, H, W, x.stride(0), x.stride(1), x.stride(2),
        x.stride(3), nhwc);
    check_launch("scale_kernel");
  });
  return y;
}

}  // namespace
}  // namespace mnv3

STABLE_TORCH_LIBRARY_IMPL(mnv3, CUDA, m) {
  m.impl("se_excite_scale", TORCH_BOX(&mnv3::se_excite_scale_cuda));
}
