// CUDA kernels of mnv3::se_excite_scale, three launches:
//  1. se_hidden_kernel: hidden[N, Cr] fp32, a block per (sample, 8 hidden
//     units): pooled[n] staged in shared memory as fp32, then a warp per unit,
//     its lanes reading the weight row in 16-byte vectors (or elements where
//     the row is not 16-byte aligned) and a shuffle sum;
//  2. se_gate_kernel: gates[N, C] fp32 the same way over w2 rows, a block per
//     (sample, 8 channels), hidden[n] staged.  The arithmetic is
//     csrc/common/se.h.  (One block per sample ran both layers on 1 SM at
//     batch 1, ~80 us for the 960/240 layer, estimated; these spread over
//     N * (Cr + C) / 8 blocks.)  hidden and gates are torch-allocated buffers;
//  3. scale_*: y = x * gate, 16-byte vectors of x (8 fp16/bf16 or 4 fp32):
//     along C for channels-last x, along H*W for contiguous NCHW x; one
//     element per thread for any other strides.
// On torch's current stream, no host sync, no allocation outside torch.
#include "../common/se.h"
#include "cuda_utils.cuh"

#include <algorithm>
#include <type_traits>

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

// 16 bytes of T.
template <typename T>
struct alignas(16) Vec16 {
  static constexpr int kSize = 16 / sizeof(T);
  T e[kSize];
};

// A warp's dot of the weight row `row` (K elements) with s (fp32, shared
// memory, 16-byte aligned), summed over the warp: lanes take the row's 16-byte
// vectors in turn where Rows16 (K a multiple of the vector, the row 16-byte
// aligned), and the matching values of s as 16-byte vectors too (a lane's
// floats are contiguous, so a quarter warp's loads cover distinct banks; read
// one float at a time they would fall 4 or 8 lanes to a bank); else the row's
// elements.  Every lane of the warp must call it (the shuffle sum).
template <typename T, bool Rows16>
__device__ __forceinline__ float warp_row_dot(const T* __restrict__ row, const float* s, int lane, int64_t K) {
  float acc = 0.f;
  if constexpr (Rows16) {
    constexpr int V = Vec16<T>::kSize, F = Vec16<float>::kSize;
    const Vec16<T>* vectors = reinterpret_cast<const Vec16<T>*>(row);
    const Vec16<float>* s_vectors = reinterpret_cast<const Vec16<float>*>(s);
    for (int64_t i = lane; i < K / V; i += 32) {
      const Vec16<T> v = load_vector(vectors + i);
#pragma unroll
      for (int q = 0; q < V / F; ++q) {
        const Vec16<float> f = load_vector(s_vectors + i * (V / F) + q);
#pragma unroll
        for (int e = 0; e < F; ++e) acc += static_cast<float>(v.e[q * F + e]) * f.e[e];
      }
    }
  } else {
    acc = dot_strided(s, row, lane, K, 32);
  }
  return warp_sum(acc);
}

// n = blockIdx.x; stages `count` values of src[n] as fp32 in dynamic shared memory.
template <typename S>
__device__ __forceinline__ float* stage_sample(const S* __restrict__ src, int64_t count) {
  MNV3_DYNAMIC_SHARED(float, staged);
  const int64_t n = blockIdx.x;
  for (int64_t k = threadIdx.x; k < count; k += kThreads) staged[k] = static_cast<float>(src[n * count + k]);
  __syncthreads();
  return staged;
}

// hidden[n, j] for n = blockIdx.x and this block's kWarps units j, a warp a
// unit.  Dynamic shared memory: C floats.  pooled [N, C], w1 [Cr, C] contiguous.
template <typename T, typename P, bool Rows16>
__global__ void __launch_bounds__(kThreads)
se_hidden_kernel(const P* __restrict__ pooled, const T* __restrict__ w1, const T* __restrict__ b1,
                 float* __restrict__ hidden, int64_t C, int64_t Cr) {
  const float* pooled_s = stage_sample(pooled, C);
  const int64_t j = static_cast<int64_t>(blockIdx.y) * kWarps + threadIdx.x / 32;
  if (j >= Cr) return;  // a whole warp: j is the same for its lanes
  const float dot = warp_row_dot<T, Rows16>(w1 + j * C, pooled_s, threadIdx.x % 32, C);
  if (threadIdx.x % 32 == 0) hidden[blockIdx.x * Cr + j] = se_hidden_unit(dot, static_cast<float>(b1[j]));
}

// gates[n, c] for n = blockIdx.x and this block's kWarps channels c, a warp a
// channel.  Dynamic shared memory: Cr floats.  w2 [C, Cr] contiguous.
template <typename T, Gate G, bool Rows16>
__global__ void __launch_bounds__(kThreads)
se_gate_kernel(const float* __restrict__ hidden, const T* __restrict__ w2, const T* __restrict__ b2,
               float* __restrict__ gates, int64_t C, int64_t Cr) {
  const float* hidden_s = stage_sample(hidden, Cr);
  const int64_t c = static_cast<int64_t>(blockIdx.y) * kWarps + threadIdx.x / 32;
  if (c >= C) return;
  const float dot = warp_row_dot<T, Rows16>(w2 + c * Cr, hidden_s, threadIdx.x % 32, Cr);
  if (threadIdx.x % 32 == 0) gates[blockIdx.x * C + c] = se_gate_unit<G>(dot, static_cast<float>(b2[c]));
}

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
  STD_TORCH_CHECK(std::max(C, Cr) * static_cast<int64_t>(sizeof(float)) <= kMaxSharedBytes,
                  "mnv3::se_excite_scale (CUDA): C = ", C, " or Cr = ", Cr, " is too large (at most ",
                  kMaxSharedBytes / 4, ")");
  STD_TORCH_CHECK(N <= 0x7fffffffLL, "mnv3::se_excite_scale (CUDA): N = ", N, " is too large");
  // No copies when already contiguous (the usual case); else torch copies on this stream.
  const Tensor p = torch::stable::contiguous(pooled);
  const Tensor w1c = torch::stable::contiguous(w1), b1c = torch::stable::contiguous(b1);
  const Tensor w2c = torch::stable::contiguous(w2), b2c = torch::stable::contiguous(b2);
  Tensor hidden = empty_2d(N, Cr, ScalarType::Float, x);
  Tensor gates = empty_2d(N, C, ScalarType::Float, x);
  float* hidden_p = static_cast<float*>(hidden.mutable_data_ptr());
  float* gates_p = static_cast<float*>(gates.mutable_data_ptr());
  const cudaStream_t stream = current_stream(x);

  dispatch_float_types(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = Vec16<T>::kSize;
    const T* w1p = static_cast<const T*>(w1c.const_data_ptr());
    const T* w2p = static_cast<const T*>(w2c.const_data_ptr());
    const T* b1p = static_cast<const T*>(b1c.const_data_ptr());
    const T* b2p = static_cast<const T*>(b2c.const_data_ptr());
    // Rows in 16-byte vectors where every row starts 16-byte aligned.
    const bool rows1_16 = C % V == 0 && aligned16(w1p), rows2_16 = Cr % V == 0 && aligned16(w2p);
    const dim3 hidden_grid(static_cast<unsigned>(N), static_cast<unsigned>((Cr + kWarps - 1) / kWarps));
    const dim3 gate_grid(static_cast<unsigned>(N), static_cast<unsigned>((C + kWarps - 1) / kWarps));
    const auto launch_hidden = [&](auto pooled_tag, auto rows16) {
      using P = decltype(pooled_tag);
      launch(se_hidden_kernel<T, P, decltype(rows16)::value>, hidden_grid, kThreads, C * sizeof(float), stream,
             static_cast<const P*>(p.const_data_ptr()), w1p, b1p, hidden_p, C, Cr);
    };
    const auto launch_hidden_rows = [&](auto pooled_tag) {
      if (rows1_16) {
        launch_hidden(pooled_tag, std::true_type{});
      } else {
        launch_hidden(pooled_tag, std::false_type{});
      }
    };
    if (p.scalar_type() == ScalarType::Float) {
      launch_hidden_rows(float{});
    } else {
      launch_hidden_rows(T{});
    }
    check_launch(rows1_16 ? "se_hidden_kernel (16-byte rows)" : "se_hidden_kernel (scalar rows)");
    dispatch_gate(gate_kind, [&](auto gate_tag) {
      constexpr Gate G = decltype(gate_tag)::value;
      if (rows2_16) {
        launch(se_gate_kernel<T, G, true>, gate_grid, kThreads, Cr * sizeof(float), stream, hidden_p, w2p, b2p,
               gates_p, C, Cr);
      } else {
        launch(se_gate_kernel<T, G, false>, gate_grid, kThreads, Cr * sizeof(float), stream, hidden_p, w2p, b2p,
               gates_p, C, Cr);
      }
      check_launch(rows2_16 ? "se_gate_kernel (16-byte rows)" : "se_gate_kernel (scalar rows)");
    });


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
