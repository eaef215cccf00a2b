// CUDA kernels of mnv3::se_excite_scale, two launches:
//  1. se_gate_kernel: one block per sample; pooled[n] staged in shared memory
//     as fp32, then a warp per hidden unit and a warp per channel, lanes
//     striding over the dot product (coalesced weight rows) and a shuffle
//     sum; the arithmetic is csrc/common/se.h.  gates [N, C] fp32 is a
//     torch-allocated buffer.
//  2. scale_*: y = x * gate, 16-byte vectors of x (8 fp16/bf16 or 4 fp32):
//     along C for channels-last x, along H*W for contiguous NCHW x; one
//     element per thread for any other strides.
// On torch's current stream, no host sync, no allocation outside torch.
#include "../common/se.h"
#include "cuda_utils.cuh"

namespace mnv3 {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxSharedBytes = 48 * 1024;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// gates[n, :] for n = blockIdx.x.  Dynamic shared memory: C + Cr floats.
// Weights are contiguous [Cr, C] / [C, Cr]; pooled is contiguous [N, C].
template <typename T, typename P, Gate G>
__global__ void __launch_bounds__(kThreads)
se_gate_kernel(const P* __restrict__ pooled, const T* __restrict__ w1, const T* __restrict__ b1,
               const T* __restrict__ w2, const T* __restrict__ b2, float* __restrict__ gates,
               int64_t C, int64_t Cr) {
  MNV3_DYNAMIC_SHARED(float, smem);
  float* pooled_s = smem;
  float* hidden_s = smem + C;
  const int64_t n = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) pooled_s[c] = static_cast<float>(pooled[n * C + c]);
  __syncthreads();
  for (int64_t j = warp; j < Cr; j += kWarps) {
    const float dot = warp_sum(dot_strided(pooled_s, w1 + j * C, lane, C, 32));
    if (lane == 0) hidden_s[j] = se_hidden_unit(dot, static_cast<float>(b1[j]));
  }
  __syncthreads();
  for (int64_t c = warp; c < C; c += kWarps) {
    const float dot = warp_sum(dot_strided(hidden_s, w2 + c * Cr, lane, Cr, 32));
    if (lane == 0) gates[n * C + c] = se_gate_unit<G>(dot, static_cast<float>(b2[c]));
  }
}

// 16 bytes of T.
template <typename T>
struct alignas(16) Vec16 {
  static constexpr int kSize = 16 / sizeof(T);
  T e[kSize];
};

// Channels-last dense x: a thread scales V channels of one pixel, one 16-byte
// vector when V = Vec16<T>::kSize (C % V == 0, x 16-byte aligned), else V = 1.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
scale_nhwc_kernel(const T* __restrict__ x, const float* __restrict__ gates, T* __restrict__ y,
                  int64_t C, int64_t HW, int64_t vectors) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= vectors) return;
  const int64_t per_pixel = C / V;
  const int64_t n = i / (HW * per_pixel);
  const int64_t c0 = (i % per_pixel) * V;
  const float* g = gates + n * C + c0;
  if constexpr (V == Vec16<T>::kSize) {
    Vec16<T> v = load_vector(reinterpret_cast<const Vec16<T>*>(x) + i);
#pragma unroll
    for (int k = 0; k < V; ++k) v.e[k] = static_cast<T>(static_cast<float>(v.e[k]) * __ldg(g + k));
    store_vector(reinterpret_cast<Vec16<T>*>(y) + i, v);
  } else {
    static_assert(V == 1, "scale_nhwc_kernel: V is a 16-byte vector or 1");
    y[i] = static_cast<T>(static_cast<float>(x[i]) * g[0]);
  }
}

// Contiguous NCHW x, (H*W) % V == 0, x 16-byte aligned: a thread scales V
// pixels of one (n, c) plane.
template <typename T>
__global__ void __launch_bounds__(kThreads)
scale_planes_kernel(const T* __restrict__ x, const float* __restrict__ gates, T* __restrict__ y,
                    int64_t HW, int64_t vectors) {
  constexpr int V = Vec16<T>::kSize;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= vectors) return;
  const float g = __ldg(gates + i / (HW / V));
  Vec16<T> v = load_vector(reinterpret_cast<const Vec16<T>*>(x) + i);
#pragma unroll
  for (int k = 0; k < V; ++k) v.e[k] = static_cast<T>(static_cast<float>(v.e[k]) * g);
  store_vector(reinterpret_cast<Vec16<T>*>(y) + i, v);
}

// Any strides: one element per thread; y contiguous NCHW.
template <typename T>
__global__ void __launch_bounds__(kThreads)
scale_strided_kernel(const T* __restrict__ x, const float* __restrict__ gates, T* __restrict__ y,
                     int64_t C, int64_t H, int64_t W, int64_t sN, int64_t sC, int64_t sH,
                     int64_t sW, int64_t numel) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= numel) return;
  const int64_t w = i % W;
  int64_t r = i / W;
  const int64_t h = r % H;
  r /= H;  // n * C + c
  const int64_t c = r % C, n = r / C;
  y[i] = static_cast<T>(static_cast<float>(x[n * sN + c * sC + h * sH + w * sW]) * gates[r]);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

bool is_nchw_contiguous(const Tensor& t) {
  const int64_t C = t.size(1), H = t.size(2), W = t.size(3);
  return t.stride(3) == 1 && t.stride(2) == W && t.stride(1) == H * W && t.stride(0) == C * H * W;
}

Tensor se_excite_scale_cuda(const Tensor& x, const Tensor& pooled, const Tensor& w1, const Tensor& b1,
                            const Tensor& w2, const Tensor& b2, const std::string& gate) {
  check_kernel_device(x, "mnv3::se_excite_scale");
  const int64_t Cr = check_se_args(x, pooled, w1, b1, w2, b2);
  const Gate gate_kind = parse_gate(gate);
  KernelDeviceGuard guard(x);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const bool nhwc = is_nhwc_dense(x);
  Tensor y = empty_4d(N, C, H, W, nhwc, x.scalar_type(), x);
  if (x.numel() == 0) return y;
  const int64_t smem = (C + Cr) * static_cast<int64_t>(sizeof(float));
  STD_TORCH_CHECK(smem <= kMaxSharedBytes, "mnv3::se_excite_scale (CUDA): C + Cr = ", C + Cr,
                  " is too large (at most ", kMaxSharedBytes / 4, ")");
  STD_TORCH_CHECK(N <= 0x7fffffffLL, "mnv3::se_excite_scale (CUDA): N = ", N, " is too large");
  // No copies when already contiguous (the usual case); else torch copies on this stream.
  const Tensor p = torch::stable::contiguous(pooled);
  const Tensor w1c = torch::stable::contiguous(w1), b1c = torch::stable::contiguous(b1);
  const Tensor w2c = torch::stable::contiguous(w2), b2c = torch::stable::contiguous(b2);
  Tensor gates = empty_2d(N, C, ScalarType::Float, x);
  float* gates_p = static_cast<float*>(gates.mutable_data_ptr());
  const cudaStream_t stream = current_stream(x);

  dispatch_float_types(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    dispatch_gate(gate_kind, [&](auto gate_tag) {
      constexpr Gate G = decltype(gate_tag)::value;
      const auto launch_gate = [&](auto pooled_tag) {
        using P = decltype(pooled_tag);
        launch(se_gate_kernel<T, P, G>, static_cast<unsigned>(N), kThreads, smem, stream,
            static_cast<const P*>(p.const_data_ptr()), static_cast<const T*>(w1c.const_data_ptr()),
            static_cast<const T*>(b1c.const_data_ptr()), static_cast<const T*>(w2c.const_data_ptr()),
            static_cast<const T*>(b2c.const_data_ptr()), gates_p, C, Cr);
      };
      if (p.scalar_type() == ScalarType::Float) {
        launch_gate(float{});
      } else {
        launch_gate(T{});
      }
      check_launch("se_gate_kernel");
    });

    constexpr int V = Vec16<T>::kSize;
    const T* xp = static_cast<const T*>(x.const_data_ptr());
    T* yp = static_cast<T*>(y.mutable_data_ptr());
    const int64_t HW = H * W;
    if (nhwc && C % V == 0 && aligned16(xp)) {
      const int64_t vectors = x.numel() / V;
      launch(scale_nhwc_kernel<T, V>, blocks_for(vectors, kThreads), kThreads, 0, stream, xp, gates_p, yp, C, HW,
             vectors);
      check_launch("scale_nhwc_kernel (16-byte vectors)");
    } else if (nhwc) {
      launch(scale_nhwc_kernel<T, 1>, blocks_for(x.numel(), kThreads), kThreads, 0, stream, xp, gates_p, yp, C,
             HW, x.numel());
      check_launch("scale_nhwc_kernel (scalar)");
    } else if (is_nchw_contiguous(x) && HW % V == 0 && aligned16(xp)) {
      const int64_t vectors = x.numel() / V;
      launch(scale_planes_kernel<T>, blocks_for(vectors, kThreads), kThreads, 0, stream, xp, gates_p, yp, HW,
             vectors);
      check_launch("scale_planes_kernel");
    } else {
      launch(scale_strided_kernel<T>, blocks_for(x.numel(), kThreads), kThreads, 0, stream, xp, gates_p, yp, C, H,
             W, x.stride(0), x.stride(1), x.stride(2), x.stride(3), x.numel());
      check_launch("scale_strided_kernel");
    }
  });
  return y;
}

}  // namespace
}  // namespace mnv3

MNV3_CUDA_LIBRARY_IMPL(m) {
  m.impl("se_excite_scale", TORCH_BOX(&mnv3::se_excite_scale_cuda));
}
