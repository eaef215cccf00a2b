// CPU kernel of mnv3::dwconv_bias_act: depthwise conv + bias + activation in
// one pass over the output, with the per-(n, c) mean of the activated output
// (the SE squeeze) accumulated in the same pass when asked for.
//
// Two walks over the same arithmetic (csrc/common/dwconv.h):
//  - channels-last dense input: rows (n, oh) in parallel, tiles of a few
//    output pixels x a vector of channels (dw_tile, the CUDA kernel's tile),
//    filter packed tap-major so channel loads are contiguous;
//  - any other strides (NCHW, views): planes (n, c) in parallel, one channel
//    at a time, output contiguous NCHW.
// The squeeze is deterministic: per-row fp32 partial sums, reduced in row order.
#include "cpu_utils.h"

#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <vector>

namespace mnv3 {
namespace {

// Channels per vector step in the NHWC walk.  16, not 8: GCC -O3 completely
// unrolls an 8-trip channel loop before its loop vectorizer runs and the tile
// then compiles to scalar code (measured 2-4x slower in fp32).
constexpr int kChannelBlock = 16;
constexpr int kHalfBlock = kChannelBlock / 2;

// dw_tile for a tile whose every tap is inside the input (no padding): fixed
// trip counts and no branches, so GCC vectorizes the channel loop (it does
// not in dw_tile's column-reuse loop nest, whose skips it cannot see
// through).  Same sums in the same order as dw_tile (rows, then taps left to
// right, per output); on the CPU the L1 cache gives the column reuse that
// registers give on the GPU.  Tiles touching the border use dw_tile.
template <int K, int S, int TW, int V, typename T>
MNV3_HD void dw_tile_interior(const T* x, int64_t x_sh, int64_t x_sw, const float* w,
                             int64_t w_tap_stride, int64_t ih0, int64_t iw0, float (&acc)[TW][V]) {
  for (int t = 0; t < TW; ++t)
    for (int v = 0; v < V; ++v) acc[t][v] = 0.f;
  for (int i = 0; i < K; ++i) {
    const T* row = x + (ih0 + i) * x_sh + iw0 * x_sw;
    for (int j = 0; j < K; ++j) {
      const float* wt = w + (i * K + j) * w_tap_stride;
      for (int t = 0; t < TW; ++t) {
        const T* px = row + (t * S + j) * x_sw;
        for (int v = 0; v < V; ++v) acc[t][v] += static_cast<float>(px[v]) * wt[v];
      }
    }
  }
}

// One output tile of the NHWC walk: TW pixels of row oh from ow0 (`valid` of
// them inside OW) x V channels from c; the same arithmetic as the CUDA kernel
// (dw_tile / dw_point_channels, dw_tile_epilogue).
template <int K, int S, int V, typename T>
MNV3_HD void nhwc_tile(const T* xn, const float* w_packed, const float* bias, T* yrow,
                      float* sums, const DwGeometry& g, Activation act, int64_t oh, int64_t ow0,
                      int valid, int64_t c) {
  constexpr int TW = dw_tile_width<K>();
  const int64_t C = g.C;
  float acc[TW][V];
  if constexpr (K > 0) {
    const int64_t ih0 = oh * S - g.ph, iw0 = ow0 * S - g.pw;
    const bool interior = valid == TW && ih0 >= 0 && ih0 + K <= g.H && iw0 >= 0 &&
                          iw0 + (TW - 1) * S + K <= g.W;
    if (interior) {
      dw_tile_interior<K, S, TW, V>(xn + c, g.W * C, C, w_packed + c, C, ih0, iw0, acc);
    } else {
      dw_tile<K, S, TW, V>(xn + c, g.W * C, C, w_packed + c, C, g, oh, ow0, ConvertLoad<V>{}, acc);
    }
  } else {
    dw_point_channels<V>(xn + c, g.W * C, C, w_packed + c, C, g, oh, ow0, acc[0]);
  }
  float b[V], s[V];
  for (int v = 0; v < V; ++v) {
    b[v] = bias[c + v];
    s[v] = 0.f;
  }
  dw_tile_epilogue(act, acc, b, valid, s);
  for (int t = 0; t < valid; ++t) {
    T* yp = yrow + (ow0 + t) * C + c;
    for (int v = 0; v < V; ++v) yp[v] = static_cast<T>(acc[t][v]);
  }
  if (sums) {
    for (int v = 0; v < V; ++v) sums[c + v] += s[v];
  }
}

// Rows [begin, end) of (n, oh) of the NHWC walk: the hot loop, cloned per
// vector ISA (MNV3_CPU_CLONES).
template <typename T, int K, int S>
MNV3_CPU_CLONES void dwconv_nhwc_rows(const T* x, const float* w_packed, const float* bias, T* y,
                                      float* row_sums, const DwGeometry& g, Activation act,
                                      int64_t begin, int64_t end) {
  constexpr int TW = dw_tile_width<K>();
  const int64_t C = g.C;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / g.OH, oh = r % g.OH;
    const T* xn = x + n * g.H * g.W * C;
    T* yrow = y + r * g.OW * C;
    float* sums = row_sums ? row_sums + r * C : nullptr;
    if (sums) std::fill(sums, sums + C, 0.f);
    for (int64_t ow0 = 0; ow0 < g.OW; ow0 += TW) {
      const int valid = static_cast<int>(std::min<int64_t>(TW, g.OW - ow0));
      int64_t c = 0;
      for (; c + kChannelBlock <= C; c += kChannelBlock) {
        nhwc_tile<K, S, kChannelBlock>(xn, w_packed, bias, yrow, sums, g, act, oh, ow0, valid, c);
      }
      if (c + kHalfBlock <= C) {  // MobileNetV3's 72, 120, 184 and 200 channels end in 8
        nhwc_tile<K, S, kHalfBlock>(xn, w_packed, bias, yrow, sums, g, act, oh, ow0, valid, c);
        c += kHalfBlock;
      }
      for (; c < C; ++c) {
        nhwc_tile<K, S, 1>(xn, w_packed, bias, yrow, sums, g, act, oh, ow0, valid, c);
      }
    }
  }
}

template <typename T, int K, int S>
void dwconv_nhwc(const T* x, const float* w_packed, const float* bias, T* y, float* row_sums,
                 const DwGeometry& g, Activation act) {
  const int64_t work = g.OW * g.C * g.kh * g.kw;
  torch::stable::parallel_for(0, g.N * g.OH, grain_for(work), [&](int64_t begin, int64_t end) {
    dwconv_nhwc_rows<T, K, S>(x, w_packed, bias, y, row_sums, g, act, begin, end);
  });
}

template <typename T, Activation A>
void dwconv_strided(const T* x, const int64_t* xs, const float* w_packed, const float* bias, T* y,
                    float* mean, const DwGeometry& g) {
  const int64_t taps = g.kh * g.kw;
  const int64_t plane = g.OH * g.OW;
  torch::stable::parallel_for(0, g.N * g.C, grain_for(plane * taps), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / g.C, c = p % g.C;
      const T* xp = x + n * xs[0] + c * xs[1];
      const float* w = w_packed + c * taps;
      T* yp = y + p * plane;
      float sum = 0.f;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const float out = dw_epilogue<A>(dw_point(xp, xs[2], xs[3], w, g, oh, ow), bias[c]);
          yp[oh * g.OW + ow] = static_cast<T>(out);
          sum += out;
        }
      }
      if (mean) mean[p] = sum / static_cast<float>(plane);
    }
  });
}

// Filter [C, 1, kh, kw] (any strides) -> fp32, tap-major [kh*kw][C] for the
// NHWC walk or channel-major [C][kh*kw] for the strided walk.
template <typename T>
std::vector<float> pack_filter(const Tensor& weight, const DwGeometry& g, bool tap_major) {
  const T* w = static_cast<const T*>(weight.const_data_ptr());
  const int64_t s0 = weight.stride(0), s2 = weight.stride(2), s3 = weight.stride(3);
  const int64_t taps = g.kh * g.kw;
  std::vector<float> packed(static_cast<size_t>(g.C * taps));
  for (int64_t c = 0; c < g.C; ++c) {
    for (int64_t i = 0; i < g.kh; ++i) {
      for (int64_t j = 0; j < g.kw; ++j) {
        const float v = static_cast<float>(w[c * s0 + i * s2 + j * s3]);
        const int64_t t = i * g.kw + j;
        packed[tap_major ? t * g.C + c : c * taps + t] = v;
      }
    }
  }
  return packed;
}

std::tuple<Tensor, Tensor> dwconv_bias_act_cpu(const Tensor& x, const Tensor& weight,
                                               const Tensor& bias,
                                               const std::vector<int64_t>& stride,
                                               const std::vector<int64_t>& padding,
                                               const std::vector<int64_t>& dilation,
                                               const std::string& activation, bool with_mean) {
  STD_TORCH_CHECK(x.is_cpu(), "mnv3::dwconv_bias_act (CPU kernel): x must be a CPU tensor");
  const DwGeometry g = check_dwconv_args(x, weight, bias, stride, padding, dilation);
  const Activation act = parse_activation(activation);
  const bool nhwc = is_nhwc_dense(x);
  Tensor y = empty_4d(g.N, g.C, g.OH, g.OW, nhwc, x.scalar_type(), x);
  Tensor mean = with_mean ? empty_2d(g.N, g.C, ScalarType::Float, x)
                          : torch::stable::empty({0}, ScalarType::Float, std::nullopt, x.device());
  if (g.N == 0 || g.C == 0) return {y, mean};

  dispatch_float_types(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const std::vector<float> w = pack_filter<T>(weight, g, /*tap_major=*/nhwc);
    const std::vector<float> b = vector_to_float<T>(bias);
    const T* xp = static_cast<const T*>(x.const_data_ptr());
    T* yp = static_cast<T*>(y.mutable_data_ptr());
    float* mp = with_mean ? static_cast<float*>(mean.mutable_data_ptr()) : nullptr;
    if (nhwc) {
      std::vector<float> row_sums(with_mean ? static_cast<size_t>(g.N * g.OH * g.C) : 0);
      dispatch_dw_tile(g, [&](auto k_tag, auto s_tag) {
        dwconv_nhwc<T, decltype(k_tag)::value, decltype(s_tag)::value>(
            xp, w.data(), b.data(), yp, with_mean ? row_sums.data() : nullptr, g, act);
      });
      if (with_mean) {
        const float inv = 1.f / static_cast<float>(g.OH * g.OW);
        torch::stable::parallel_for(0, g.N * g.C, grain_for(g.OH), [&](int64_t begin, int64_t end) {
          for (int64_t p = begin; p < end; ++p) {
            const int64_t n = p / g.C, c = p % g.C;
            float s = 0.f;
            for (int64_t oh = 0; oh < g.OH; ++oh) s += row_sums[(n * g.OH + oh) * g.C + c];
            mp[p] = s * inv;
          }
        });
      }
    } else {
      const int64_t xs[4] = {x.stride(0), x.stride(1), x.stride(2), x.stride(3)};
      dispatch_activation(act, [&](auto act_tag) {
        dwconv_strided<T, decltype(act_tag)::value>(xp, xs, w.data(), b.data(), yp, mp, g);
      });
    }
  });
  return {y, mean};
}

}  // namespace
}  // namespace mnv3

STABLE_TORCH_LIBRARY_IMPL(mnv3, CPU, m) {
  m.impl("dwconv_bias_act", TORCH_BOX(&mnv3::dwconv_bias_act_cpu));
}
