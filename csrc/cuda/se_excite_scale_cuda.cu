// CUDA kernels of mnv3::se_excite_scale, two launches (mnv3::se_gate: the
// first):
//  1. se_gate_kernel, the excite: gates[N, C] fp32 over N x ceil(Cr / 32)
//     blocks, each computing 32 hidden units of one sample (a warp a unit,
//     its lanes reading the w1 row in 16-byte vectors, or elements where the
//     row is not 16-byte aligned, and a shuffle sum) and their share of every
//     gate's dot product; the last block of a sample to finish adds the
//     shares in a fixed order and applies the gate.  The arithmetic is
//     csrc/common/se.h.  (One block per sample ran both layers on 1 SM at
//     batch 1, ~80 us for the 960/240 layer, estimated; two launches over
//     N * (Cr + C) / 8 blocks came next; this is one launch over N * Cr / 32.)
//  2. scale_*: y = x * gate, 16-byte vectors of x (8 fp16/bf16 or 4 fp32):
//     along C for channels-last x, along H*W for contiguous NCHW x; one
//     element per thread for any other strides.
// On torch's current stream, no host sync, no allocation outside torch.
#include "../common/se.h"
#include "cuda_utils.cuh"

#include <algorithm>
#include <optional>
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

// Hidden units a block of se_gate_kernel computes: 4 a warp.
constexpr int kUnits = 4 * kWarps;

// The SE excite in one launch, gates [N, C] fp32 = gate(w2 @ relu(w1 @ pooled + b1) + b2),
// over a grid of N x groups blocks, groups = ceil(Cr / kUnits).  Block (n, g):
//  1. stages pooled[n] (C floats) in dynamic shared memory, then computes the
//     hidden units r0 = g * kUnits .. r0 + kUnits (a warp a unit, 4 units a
//     warp, its lanes over w1's row: warp_row_dot);
//  2. the gate's pre-activation split along Cr: part[c] = w2[c, r0:r0 + units]
//     . hidden[r0:r0 + units] for every c (a thread a channel at a time,
//     16-byte vectors of w2's row slice where Rows16);
//  3. one group: the gate itself.  Many: part goes to partial[n, g, :], the
//     block counts its arrival on arrived[n] (an atomic add after a
//     __threadfence, the CUDA programming guide's "last block" pattern, as the
//     depthwise squeeze), and the block that arrives last adds the groups'
//     parts in group order (whichever block that is: the same fp32 sum every
//     run), adds b2 and applies the gate.
// No block recomputes another's hidden units: over the grid, each weight is
// read once a sample.  in [N, C] (fp32 or T), w1 [Cr, C], w2 [C, Cr]
// contiguous.  Rows16: C and Cr multiples of the vector, w1 and w2 16-byte
// aligned.
template <typename T, typename S, Gate G, bool Rows16>
__global__ void __launch_bounds__(kThreads)
se_gate_kernel(const S* __restrict__ in, const T* __restrict__ w1, const T* __restrict__ b1,
               const T* __restrict__ w2, const T* __restrict__ b2, float* __restrict__ partial,
               unsigned* __restrict__ arrived, float* __restrict__ gates, int64_t C, int64_t Cr) {
  MNV3_DYNAMIC_SHARED(float, in_s);
  __shared__ float hidden_s[kUnits];
  const int64_t n = blockIdx.x, groups = gridDim.y, r0 = static_cast<int64_t>(blockIdx.y) * kUnits;
  const int units = static_cast<int>(std::min<int64_t>(kUnits, Cr - r0));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t k = threadIdx.x; k < C; k += kThreads) in_s[k] = static_cast<float>(in[n * C + k]);
  __syncthreads();
  for (int u = warp; u < units; u += kWarps) {  // the same u for a warp's lanes: whole warps
    const float dot = warp_row_dot<T, Rows16>(w1 + (r0 + u) * C, in_s, lane, C);
    if (lane == 0) hidden_s[u] = se_hidden_unit(dot, static_cast<float>(b1[r0 + u]));
  }
  __syncthreads();

  float* part = groups == 1 ? nullptr : partial + (n * groups + blockIdx.y) * C;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    const T* row = w2 + c * Cr + r0;
    float acc = 0.f;
    if constexpr (Rows16) {
      constexpr int V = Vec16<T>::kSize;
      for (int u = 0; u < units; u += V) {  // units is a multiple of V here
        const Vec16<T> v = load_vector(reinterpret_cast<const Vec16<T>*>(row + u));
#pragma unroll
        for (int e = 0; e < V; ++e) acc += static_cast<float>(v.e[e]) * hidden_s[u + e];
      }
    } else {
      acc = dot_strided(hidden_s, row, 0, units, 1);
    }
    if (part != nullptr) {
      part[c] = acc;
    } else {
      gates[n * C + c] = se_gate_unit<G>(acc, static_cast<float>(b2[c]));
    }
  }
  if (part == nullptr) return;  // uniform over the grid

  if (!block_arrives_last(&arrived[n], static_cast<unsigned>(groups))) return;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    float s = 0.f;
    for (int64_t k = 0; k < groups; ++k) s += __ldcg(&partial[(n * groups + k) * C + c]);  // group order
    gates[n * C + c] = se_gate_unit<G>(s, static_cast<float>(b2[c]));
  }
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

bool is_nchw_contiguous(const Tensor& t) {
  const int64_t C = t.size(1), H = t.size(2), W = t.size(3);
  return t.stride(3) == 1 && t.stride(2) == W && t.stride(1) == H * W && t.stride(0) == C * H * W;
}

// The SE excite: gates [N, C] fp32 = gate(w2 @ relu(w1 @ pooled + b1) + b2),
// one se_gate_kernel launch (weights of type T, pooled fp32 or T); with many
// groups, the parts and the arrival counters in one torch allocation, the
// counters zeroed by a cudaMemsetAsync (a memset node in a CUDA graph, not a
// kernel).  Arguments checked by the caller.
template <typename T>
Tensor se_excite(const Tensor& pooled, const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2,
                 Gate gate_kind, cudaStream_t stream) {
  constexpr int V = Vec16<T>::kSize;
  const int64_t N = pooled.size(0), C = pooled.size(1), Cr = w1.size(0);
  Tensor gates = empty_2d(N, C, ScalarType::Float, pooled);
  if (N == 0 || C == 0) return gates;
  STD_TORCH_CHECK(C * static_cast<int64_t>(sizeof(float)) <= kMaxSharedBytes, "mnv3 SE (CUDA): C = ", C,
                  " is too large (at most ", kMaxSharedBytes / 4, ")");
  STD_TORCH_CHECK(N <= 0x7fffffffLL, "mnv3 SE (CUDA): N = ", N, " is too large");
  const int64_t groups = std::max<int64_t>(1, (Cr + kUnits - 1) / kUnits);
  STD_TORCH_CHECK(groups <= 65535, "mnv3 SE (CUDA): Cr = ", Cr, " is too large");
  // No copies when already contiguous (the usual case); else torch copies on this stream.
  const Tensor p = torch::stable::contiguous(pooled);
  const Tensor w1c = torch::stable::contiguous(w1), b1c = torch::stable::contiguous(b1);
  const Tensor w2c = torch::stable::contiguous(w2), b2c = torch::stable::contiguous(b2);
  const T* w1p = static_cast<const T*>(w1c.const_data_ptr());
  const T* w2p = static_cast<const T*>(w2c.const_data_ptr());
  LastBlockScratch scratch;  // the groups' shares, a counter per sample
  if (groups > 1) scratch = last_block_scratch(N * groups * C, N, pooled, stream, "mnv3::se_gate");
  const bool rows16 = C % V == 0 && Cr % V == 0 && aligned16(w1p) && aligned16(w2p);
  const dim3 grid(static_cast<unsigned>(N), static_cast<unsigned>(groups));
  const auto run = [&](const auto* in) {
    using S = std::remove_cv_t<std::remove_pointer_t<decltype(in)>>;
    dispatch_gate(gate_kind, [&](auto gate_tag) {
      constexpr Gate G = decltype(gate_tag)::value;
      const auto kernel = rows16 ? se_gate_kernel<T, S, G, true> : se_gate_kernel<T, S, G, false>;
      launch(kernel, grid, kThreads, C * sizeof(float), stream, in, w1p,
             static_cast<const T*>(b1c.const_data_ptr()), w2p, static_cast<const T*>(b2c.const_data_ptr()),
             scratch.partial, scratch.arrived, static_cast<float*>(gates.mutable_data_ptr()), C, Cr);
    });
  };
  if (p.scalar_type() == ScalarType::Float) {
    run(static_cast<const float*>(p.const_data_ptr()));
  } else {
    run(static_cast<const T*>(p.const_data_ptr()));
  }
  // The name says which launch branch ran (the emulated sweep checks it reached each).
  static constexpr const char* kNames[2][2] = {
      {"se_gate_kernel (scalar rows, one group)", "se_gate_kernel (scalar rows, groups, gate by the last block)"},
      {"se_gate_kernel (16-byte rows, one group)", "se_gate_kernel (16-byte rows, groups, gate by the last block)"}};
  check_launch(kNames[rows16][groups > 1]);
  return gates;
}

Tensor se_excite_scale_cuda(const Tensor& x, const Tensor& pooled, const Tensor& w1, const Tensor& b1,
                            const Tensor& w2, const Tensor& b2, const std::string& gate) {
  check_kernel_device(x, "mnv3::se_excite_scale");
  check_se_args(x, pooled, w1, b1, w2, b2);
  const Gate gate_kind = parse_gate(gate);
  KernelDeviceGuard guard(x);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const bool nhwc = is_nhwc_dense(x);
  Tensor y = empty_4d(N, C, H, W, nhwc, x.scalar_type(), x);
  if (x.numel() == 0) return y;
  const cudaStream_t stream = current_stream(x);

  dispatch_float_types(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = Vec16<T>::kSize;
    const Tensor gates = se_excite<T>(pooled, w1, b1, w2, b2, gate_kind, stream);
    const float* gates_p = static_cast<const float*>(gates.const_data_ptr());
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

// mnv3::se_gate: the excite alone, g [N, C] fp32: the input scale of the
// projection that follows (pointwise_bias_act's `scale`), so the scaled
// tensor is never written.  Weights fp32, fp16 or bf16 (plain matrices: the
// CPU kernel's panels are refused); pooled fp32 or the weights' dtype.
Tensor se_gate_cuda(const Tensor& pooled, const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2,
                    const std::string& gate) {
  check_kernel_device(pooled, "mnv3::se_gate");
  const Gate gate_kind = parse_gate(gate);
  STD_TORCH_CHECK(pooled.dim() == 2, "mnv3::se_gate: pooled must be an [N, C] matrix, got ", pooled.dim(), " dims");
  const ScalarType dtype = w1.scalar_type();
  STD_TORCH_CHECK(is_supported_dtype(dtype), "mnv3::se_gate: w1 must be float32, float16 or bfloat16");
  STD_TORCH_CHECK(pooled.scalar_type() == ScalarType::Float || pooled.scalar_type() == dtype,
                  "pooled must be float32 or have the dtype of w1");
  check_se_weights(pooled.size(1), dtype, "w1", pooled, "pooled", w1, b1, w2, b2);
  KernelDeviceGuard guard(pooled);
  const cudaStream_t stream = current_stream(pooled);
  std::optional<Tensor> gates;
  dispatch_float_types(dtype, [&](auto tag) {
    gates = se_excite<decltype(tag)>(pooled, w1, b1, w2, b2, gate_kind, stream);
  });
  return *gates;
}

}  // namespace
}  // namespace mnv3

MNV3_CUDA_LIBRARY_IMPL(m) {
  m.impl("se_excite_scale", TORCH_BOX(&mnv3::se_excite_scale_cuda));
  m.impl("se_gate", TORCH_BOX(&mnv3::se_gate_cuda));
}
