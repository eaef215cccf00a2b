// CPU kernel of mnv3::dwconv_bias_act: depthwise conv + bias + activation in
// one pass over the output, with the per-(n, c) mean of the activated output
// (the SE squeeze) accumulated in the same pass when asked for.
//
// Two walks over the same arithmetic (csrc/common/dwconv.h):
//  - channels-last dense input: rows (n, oh) in parallel, a vector of
//    channels per output pixel, filter packed tap-major so channel loads are
//    contiguous;
//  - any other strides (NCHW, views): planes (n, c) in parallel, one channel
//    at a time, output contiguous NCHW.
// The squeeze is deterministic: per-row fp32 partial sums, reduced in row order.
#include "cpu_utils.h"

#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <vector>

namespace mnv3 {
namespace {

constexpr int kChannelBlock = 16;  // channels per vector step in the NHWC walk

template <typename T, Activation A>
void dwconv_nhwc(const T* x, const float* w_packed, const float* bias, T* y, float* row_sums,
                 const DwGeometry& g) {
  const int64_t C = g.C;
  const int64_t x_sh = g.W * C, x_sw = C;
  const int64_t work = g.OW * C * g.kh * g.kw;
  torch::stable::parallel_for(0, g.N * g.OH, grain_for(work), [&](int64_t begin, int64_t end) {
    float acc[kChannelBlock];
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / g.OH, oh = r % g.OH;
      const T* xn = x + n * g.H * g.W * C;
      T* yrow = y + r * g.OW * C;
      float* sums = row_sums ? row_sums + r * C : nullptr;
      if (sums) std::fill(sums, sums + C, 0.f);
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        T* yp = yrow + ow * C;
        int64_t c = 0;
        for (; c + kChannelBlock <= C; c += kChannelBlock) {
          dw_point_channels<kChannelBlock>(xn + c, x_sh, x_sw, w_packed + c, C, g, oh, ow, acc);
          for (int v = 0; v < kChannelBlock; ++v) {
            const float out = dw_epilogue<A>(acc[v], bias[c + v]);
            yp[c + v] = static_cast<T>(out);
            if (sums) sums[c + v] += out;
          }
        }
        for (; c < C; ++c) {
          dw_point_channels<1>(xn + c, x_sh, x_sw, w_packed + c, C, g, oh, ow, acc);
          const float out = dw_epilogue<A>(acc[0], bias[c]);
          yp[c] = static_cast<T>(out);
          if (sums) sums[c] += out;
        }
      }
    }
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
    dispatch_activation(act, [&](auto act_tag) {
      constexpr Activation A = decltype(act_tag)::value;
      if (nhwc) {
        std::vector<float> row_sums(with_mean ? static_cast<size_t>(g.N * g.OH * g.C) : 0);
        dwconv_nhwc<T, A>(xp, w.data(), b.data(), yp, with_mean ? row_sums.data() : nullptr, g);
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
        dwconv_strided<T, A>(xp, xs, w.data(), b.data(), yp, mp, g);
      }
    });
  });
  return {y, mean};
}

}  // namespace
}  // namespace mnv3

STABLE_TORCH_LIBRARY_IMPL(mnv3, CPU, m) {
  m.impl("dwconv_bias_act", TORCH_BOX(&mnv3::dwconv_bias_act_cpu));
}
