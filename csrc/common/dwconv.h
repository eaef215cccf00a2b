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

namespace mnv3 {

struct DwGeometry {
  int64_t N, C, H, W;    // input sizes
  int64_t OH, OW;        // output sizes
  int64_t kh, kw;        // kernel size
  int64_t sh, sw;        // stride
  int64_t ph, pw;        // padding
  int64_t dh, dw;        // dilation
};

// Output length of a convolution along one dimension (PyTorch's formula).
MNV3_HD int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  return (in + 2 * p - d * (k - 1) - 1) / s + 1;
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

}  // namespace mnv3
