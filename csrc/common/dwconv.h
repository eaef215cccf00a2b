// Depthwise convolution arithmetic shared by the CPU and CUDA kernels.
//
// A depthwise conv computes, for every (n, c, oh, ow),
//   y = act(bias[c] + sum_{i,j} x[n, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw] * w[c, i, j])
// with out-of-range input taps treated as zero (zero padding).  The kernels
// differ only in how they walk (n, c, oh, ow); the arithmetic is here.
#pragma once

#include "activation.h"
#include "macros.h"

#include <stdint.h>

#include <type_traits>

namespace mnv3 {

struct DwGeometry {
  int64_t N, C, H, W;    // input sizes
  int64_t OH, OW;        // output sizes
  int64_t kh, kw;        // kernel size
  int64_t sh, sw;        // stride
  int64_t ph, pw;        // padding
  int64_t dh, dw;        // dilation
};

// Output length of a convolution along one dimension (PyTorch's formula, with
// floor division: 0 where the padded input is shorter than the dilated kernel,
// whatever the stride; C++'s truncating division gave 1 there for stride > 1).
MNV3_HD int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  const int64_t span = in + 2 * p - d * (k - 1) - 1;
  return span < 0 ? 0 : span / s + 1;
}

// Taps [*first, *last) of a kernel of size k whose input index
// o*s - p + t*d lies inside [0, in).  Lets the inner loops run without a
// bounds check per tap.
MNV3_HD void valid_taps(int64_t o, int64_t s, int64_t p, int64_t d, int64_t k, int64_t in,
                        int64_t* first, int64_t* last) {
  const int64_t start = o * s - p;  // input index of tap 0
  int64_t f = 0;
  if (start < 0) f = (-start + d - 1) / d;  // ceil(-start / d)
  int64_t l = k;
  const int64_t end_excl = in - start;      // taps need t*d < end_excl
  if (end_excl <= 0) {
    l = 0;
  } else {
    const int64_t max_taps = (end_excl + d - 1) / d;  // ceil(end_excl / d)
    if (max_taps < l) l = max_taps;
  }
  if (f > l) f = l;
  *first = f;
  *last = l;
}

// One output value of one channel, any strides.  `x` points at x[n, c, 0, 0];
// `w` at the channel's kh*kw taps, row-major.  Returns the pre-activation sum
// without the bias, accumulated in fp32 whatever T and WT are.
template <typename T, typename WT>
MNV3_HD float dw_point(const T* x, int64_t x_sh, int64_t x_sw, const WT* w, const DwGeometry& g,
                       int64_t oh, int64_t ow) {
  int64_t i0, i1, j0, j1;
  valid_taps(oh, g.sh, g.ph, g.dh, g.kh, g.H, &i0, &i1);
  valid_taps(ow, g.sw, g.pw, g.dw, g.kw, g.W, &j0, &j1);
  const int64_t ih0 = oh * g.sh - g.ph;
  const int64_t iw0 = ow * g.sw - g.pw;
  float acc = 0.f;
  for (int64_t i = i0; i < i1; ++i) {
    const T* row = x + (ih0 + i * g.dh) * x_sh;
    const WT* wrow = w + i * g.kw;
    for (int64_t j = j0; j < j1; ++j) {
      acc += static_cast<float>(row[(iw0 + j * g.dw) * x_sw]) * static_cast<float>(wrow[j]);
    }
  }
  return acc;
}

// V consecutive channels of one output pixel in channels-last memory.  `x`
// points at x[n, 0, 0, c0] (NHWC, so the channel stride is 1); `w` at tap
// (0, 0) of channel c0 in the tap-major packed layout w[i][j][C].  Writes the
// pre-activation sums without bias into acc[0..V).
template <int V, typename T, typename WT>
MNV3_HD void dw_point_channels(const T* x, int64_t x_sh, int64_t x_sw, const WT* w,
                               int64_t w_tap_stride, const DwGeometry& g, int64_t oh, int64_t ow,
                               float* acc) {
  int64_t i0, i1, j0, j1;
  valid_taps(oh, g.sh, g.ph, g.dh, g.kh, g.H, &i0, &i1);
  valid_taps(ow, g.sw, g.pw, g.dw, g.kw, g.W, &j0, &j1);
  const int64_t ih0 = oh * g.sh - g.ph;
  const int64_t iw0 = ow * g.sw - g.pw;
  for (int v = 0; v < V; ++v) acc[v] = 0.f;
  for (int64_t i = i0; i < i1; ++i) {
    const T* row = x + (ih0 + i * g.dh) * x_sh;
    for (int64_t j = j0; j < j1; ++j) {
      const T* px = row + (iw0 + j * g.dw) * x_sw;
      const WT* wt = w + (i * g.kw + j) * w_tap_stride;
      for (int v = 0; v < V; ++v) acc[v] += static_cast<float>(px[v]) * static_cast<float>(wt[v]);
    }
  }
}

// Bias + activation: the epilogue of every depthwise kernel.
template <Activation A>
MNV3_HD float dw_epilogue(float acc, float bias) {
  return activate<A>(acc + bias);
}

// Loads V consecutive elements as fp32, one at a time.  The CPU kernels use it
// for every load (the compiler vectorizes); the CUDA kernels where a 16-byte
// vector load is not possible (V = 1).
template <int V>
struct ConvertLoad {
  template <typename T>
  MNV3_HD void operator()(const T* p, float (&out)[V]) const {
    MNV3_CHANNEL_LOOP
    for (int v = 0; v < V; ++v) out[v] = static_cast<float>(p[v]);
  }
};

// An output tile: TW consecutive output pixels (oh, ow0 .. ow0+TW-1) x V
// channels, for a K x K kernel with stride S and dilation 1.  `x` points at
// x[n, c0] (element (0, 0) of the channel; channel stride 1 when V > 1), `w`
// at tap (0, 0) of channel c0 in a tap-major layout w[(i*K + j)*w_tap_stride + v].
// `load(p, out)` reads V input channels at p as fp32.
//
// Per kernel row, the K taps of the row stay in registers and each of the
// (TW-1)*S + K input columns the tile touches is loaded once and feeds every
// output that overlaps it (TW*K loads become (TW-1)*S + K).  Out-of-range
// rows and columns are zero padding; outputs past OW read only in-range
// input, so the caller may compute a full tile and store the valid part.
// Writes the pre-activation sums without bias into acc.
template <int K, int S, int TW, int V, typename T, typename WT, typename Load>
MNV3_HD void dw_tile(const T* x, int64_t x_sh, int64_t x_sw, const WT* w, int64_t w_tap_stride,
                     const DwGeometry& g, int64_t oh, int64_t ow0, const Load& load,
                     float (&acc)[TW][V]) {
  constexpr int kSpan = (TW - 1) * S + K;
  MNV3_UNROLL
  for (int t = 0; t < TW; ++t) {
    MNV3_CHANNEL_LOOP
    for (int v = 0; v < V; ++v) acc[t][v] = 0.f;
  }
  int64_t i0, i1;
  valid_taps(oh, S, g.ph, 1, K, g.H, &i0, &i1);
  const int64_t ih0 = oh * S - g.ph;
  const int64_t iw0 = ow0 * S - g.pw;
  for (int64_t i = i0; i < i1; ++i) {
    const T* row = x + (ih0 + i) * x_sh;
    float wr[K][V];
    MNV3_UNROLL
    for (int j = 0; j < K; ++j) {
      MNV3_CHANNEL_LOOP
      for (int v = 0; v < V; ++v) wr[j][v] = static_cast<float>(w[(i * K + j) * w_tap_stride + v]);
    }
    MNV3_UNROLL
    for (int q = 0; q < kSpan; ++q) {
      const int64_t iw = iw0 + q;
      if (iw < 0 || iw >= g.W) continue;
      float xv[V];
      load(row + iw * x_sw, xv);
      MNV3_UNROLL
      for (int t = 0; t < TW; ++t) {
        const int j = q - t * S;  // the tap of output t that reads column q
        if (j < 0 || j >= K) continue;
        MNV3_CHANNEL_LOOP
        for (int v = 0; v < V; ++v) acc[t][v] += xv[v] * wr[j][v];
      }
    }
  }
}

// Bias + activation over a tile, in place, and the squeeze's running sum:
// sum[v] += the first `valid` outputs of channel v (the ones inside OW).
template <Activation A, int TW, int V>
MNV3_HD void dw_tile_epilogue(float (&acc)[TW][V], const float (&bias)[V], int valid,
                              float (&sum)[V]) {
  MNV3_UNROLL
  for (int t = 0; t < TW; ++t) {
    MNV3_CHANNEL_LOOP
    for (int v = 0; v < V; ++v) {
      acc[t][v] = dw_epilogue<A>(acc[t][v], bias[v]);
      if (t < valid) sum[v] += acc[t][v];
    }
  }
}

// dw_tile_epilogue for a runtime activation: a branch per tile instead of a
// kernel per activation (4x fewer instantiations, and compile time, for both
// the CPU and the CUDA tile kernels).
template <int TW, int V>
MNV3_HD void dw_tile_epilogue(Activation act, float (&acc)[TW][V], const float (&bias)[V],
                              int valid, float (&sum)[V]) {
  switch (act) {
    case Activation::ReLU:
      dw_tile_epilogue<Activation::ReLU>(acc, bias, valid, sum);
      break;
    case Activation::ReLU6:
      dw_tile_epilogue<Activation::ReLU6>(acc, bias, valid, sum);
      break;
    case Activation::HardSwish:
      dw_tile_epilogue<Activation::HardSwish>(acc, bias, valid, sum);
      break;
    default:
      dw_tile_epilogue<Activation::Identity>(acc, bias, valid, sum);
  }
}

// Output pixels per tile along W: the unrolled tiles (K > 0) compute a few
// pixels to reuse input columns; the any-geometry path (K = 0) one pixel.
template <int K>
constexpr int dw_tile_width() {
  return K > 0 ? 4 : 1;
}

// Calls fn(std::integral_constant<int, K>{}, std::integral_constant<int, S>{})
// with the kernel size and stride of an unrolled dw_tile when the geometry has
// one (square 3x3 or 5x5, equal strides 1 or 2, dilation 1: every depthwise
// conv of MobileNetV3), else with K = S = 0: the caller then uses the
// any-geometry dw_point / dw_point_channels.
template <typename Fn>
void dispatch_dw_tile(const DwGeometry& g, Fn&& fn) {
  using std::integral_constant;
  const bool square = g.kh == g.kw && g.sh == g.sw && g.dh == 1 && g.dw == 1;
  const int64_t k = square ? g.kh : 0, s = square ? g.sh : 0;
  if (k == 3 && s == 1) {
    fn(integral_constant<int, 3>{}, integral_constant<int, 1>{});
  } else if (k == 3 && s == 2) {
    fn(integral_constant<int, 3>{}, integral_constant<int, 2>{});
  } else if (k == 5 && s == 1) {
    fn(integral_constant<int, 5>{}, integral_constant<int, 1>{});
  } else if (k == 5 && s == 2) {
    fn(integral_constant<int, 5>{}, integral_constant<int, 2>{});
  } else {
    fn(integral_constant<int, 0>{}, integral_constant<int, 0>{});
  }
}

}  // namespace mnv3
