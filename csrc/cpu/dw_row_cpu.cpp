// Depthwise output rows of mnv3::pointwise_dwconv (dw_row.h), on rows of
// 16-channel blocks.
//
// MobileNetV3's depthwise convs (3x3 and 5x5, stride 1 and 2 without
// horizontal dilation, or stride 1 with dilation 2: the dilated last stage of
// the segmentation backbones) run on tiles of kTile output pixels x 16
// channels with the kernel size, stride and dilation known at compile time:
// per tap row, the tile's (kTile - 1) * S + (K - 1) * D + 1 input pixels are
// loaded once and each feeds up to K
// multiply-adds (a 3x3 stride-1 tile: 10 loads for 24 FMAs, where reloading
// per tap is one load per FMA), and the block's taps are first copied next to
// each other so the tile reads them at fixed offsets too.  Any other geometry
// runs the generic tile (runtime kernel size, stride and dilation).
#include "dw_row.h"

#include "simd.h"

#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <string.h>

namespace mnv3 {
namespace {

constexpr int kLanes = kDwLanes;
constexpr int kTile = 8;         // output pixels per compile-time tile: 8 accumulators + up to 19 inputs in registers
constexpr int kGenericTile = 4;  // output pixels per generic tile
constexpr int kMaxFixedTaps = 25;

bool has_fixed_tile(const DwGeometry& g) {
  const bool stride_dilation = (g.dw == 1 && (g.sw == 1 || g.sw == 2)) || (g.dw == 2 && g.sw == 1);
  return g.kw == g.kh && (g.kw == 3 || g.kw == 5) && stride_dilation;
}

// Activates, stores and sums `count` pixels of a tile at output column ow,
// channels [c0, c0 + 16) (those below C stored).
template <Activation A>
MNV3_HD void dw_epilogue(const DwProblem& d, float* yrow, int64_t ow, int64_t c0, const vfloat<kLanes>* acc, int count,
                         vfloat<kLanes>& sum) {
  const int valid = static_cast<int>(std::min<int64_t>(kLanes, d.C - c0));
  for (int t = 0; t < count; ++t) {
    const vfloat<kLanes> v = activate<A>(acc[t]);
    sum += v;
    float* out = yrow + (ow + t) * d.C + c0;
    if (valid == kLanes) {
      vstore<kLanes>(out, v);
    } else {
      float tmp[kLanes];
      vstore<kLanes>(tmp, v);
      memcpy(out, tmp, sizeof(float) * valid);
    }
  }
}

// TW output pixels from column ow of the generic tile (runtime kernel size,
// stride and dilation) added to acc; TW a compile-time count, so that the
// accumulators stay in registers (indexed by a runtime pixel count they went
// to the stack: measured 960 channels at 14x14, 5x5, dilation 2, ~250 us).
template <int TW>
MNV3_HD void generic_tile(const DwProblem& d, const float* const* r, const float* taps, int64_t ow,
                          vfloat<kLanes>* acc) {
  for (int64_t kh = 0; kh < d.K; ++kh) {
    for (int64_t kw = 0; kw < d.K; ++kw) {
      const vfloat<kLanes> w = vload<kLanes>(taps + (kh * d.K + kw) * d.Cp);
      const float* px = r[kh] + (ow * d.sw + kw * d.dw) * kLanes;
      for (int t = 0; t < TW; ++t) acc[t] += vload<kLanes>(px + t * d.sw * kLanes) * w;
    }
  }
}

// Output row (n, oh), channel block c0: r[kh] its tap rows in this block, taps
// its K*K taps ([K*K][16] for a fixed tile; the [K*K][Cp] weight from c0 for
// the generic one, K == 0).
template <int K, int S, int D, Activation A>
MNV3_HD void block_row(const DwProblem& d, const float* const* r, const float* taps, int64_t n, int64_t oh,
                       int64_t c0) {
  float* yrow = d.y + ((n * d.OH + oh) * d.OW) * d.C;
  const vfloat<kLanes> bias = vload<kLanes>(d.bias + c0);
  vfloat<kLanes> sum = vzero<kLanes>();
  if constexpr (K > 0) {
    constexpr int kInputs = (kTile - 1) * S + (K - 1) * D + 1;
    for (int64_t ow = 0; ow < d.OW; ow += kTile) {
      vfloat<kLanes> acc[kTile];
      for (int t = 0; t < kTile; ++t) acc[t] = bias;
#pragma GCC unroll 5
      for (int kh = 0; kh < K; ++kh) {
        const float* px = r[kh] + ow * S * kLanes;
        vfloat<kLanes> in[kInputs];
#pragma GCC unroll 19
        for (int j = 0; j < kInputs; ++j) in[j] = vload<kLanes>(px + j * kLanes);
#pragma GCC unroll 5
        for (int kw = 0; kw < K; ++kw) {
          const vfloat<kLanes> w = vload<kLanes>(taps + (kh * K + kw) * kLanes);
#pragma GCC unroll 8
          for (int t = 0; t < kTile; ++t) acc[t] += in[t * S + kw * D] * w;
        }
      }
      dw_epilogue<A>(d, yrow, ow, c0, acc, static_cast<int>(std::min<int64_t>(kTile, d.OW - ow)), sum);
    }
  } else {
    for (int64_t ow = 0; ow < d.OW; ow += kGenericTile) {
      const int tw = static_cast<int>(std::min<int64_t>(kGenericTile, d.OW - ow));
      vfloat<kLanes> acc[kGenericTile];
      for (int t = 0; t < kGenericTile; ++t) acc[t] = bias;
      if (tw == kGenericTile) {
        generic_tile<kGenericTile>(d, r, taps, ow, acc);
      } else {
        for (int t = 0; t < tw; ++t) generic_tile<1>(d, r, taps, ow + t, acc + t);
      }
      dw_epilogue<A>(d, yrow, ow, c0, acc, tw, sum);
    }
  }
  if (d.row_sums != nullptr) vstore<kLanes>(d.row_sums + (n * d.OH + oh) * d.Cp + c0, sum);
}

// The taps block_row reads for channel block c0: copied to `local` ([K*K][16])
// for a fixed tile.
template <int K>
MNV3_HD const float* block_taps(const DwProblem& d, int64_t c0, float* local) {
  if constexpr (K == 0) {
    return d.w + c0;
  } else {
    for (int tap = 0; tap < K * K; ++tap) vstore<kLanes>(local + tap * kLanes, vload<kLanes>(d.w + tap * d.Cp + c0));
    return local;
  }
}

template <int K, int S, int D, Activation A>
MNV3_CPU_CLONES void ring_row(const DwProblem& d, const float* const* rows, int64_t n, int64_t oh) {
  alignas(64) float local[kMaxFixedTaps * kLanes];
  const float* r[16];
  for (int64_t b = 0; b * kLanes < d.Cp; ++b) {
    for (int64_t kh = 0; kh < d.K; ++kh) r[kh] = rows[kh] == d.zero ? d.zero : rows[kh] + b * d.block_stride;
    block_row<K, S, D, A>(d, r, block_taps<K>(d, b * kLanes, local), n, oh, b * kLanes);
  }
}

template <int K, int S, int D, Activation A>
MNV3_CPU_CLONES void image_rows(const DwProblem& d, const float* images, int64_t n_first, int64_t rows, int64_t begin,
                                int64_t end) {
  alignas(64) float local[kMaxFixedTaps * kLanes];
  const float* taps = nullptr;
  int64_t current = -1;
  const float* r[16];
  for (int64_t t = begin; t < end; ++t) {
    const int64_t b = t / rows, row = n_first * d.OH + t % rows;
    const int64_t n = row / d.OH, oh = row % d.OH;
    if (b != current) {
      taps = block_taps<K>(d, b * kLanes, local);
      current = b;
    }
    const float* block = images + b * d.block_stride + (n - n_first) * d.H * d.Wp * kLanes;
    for (int64_t kh = 0; kh < d.K; ++kh) {
      const int64_t ih = oh * d.sh - d.ph + kh * d.dh;
      r[kh] = ih < 0 || ih >= d.H ? d.zero : block + ih * d.Wp * kLanes;
    }
    block_row<K, S, D, A>(d, r, taps, n, oh, b * kLanes);
  }
}

template <int K_, int S_, int D_, Activation A_>
struct Tile {
  static constexpr int K = K_, S = S_, D = D_;
  static constexpr Activation A = A_;
};

// fn(Tile<K, S, A>{}) for d's geometry and activation (K = 0: the generic tile).
template <typename Fn>
void dispatch_tile(const DwProblem& d, Fn&& fn) {
  dispatch_activation(d.act, [&](auto act_tag) {
    constexpr Activation A = decltype(act_tag)::value;
    if (has_fixed_tile(d)) {
      switch (d.K * 100 + d.sw * 10 + d.dw) {
        case 311: return fn(Tile<3, 1, 1, A>{});
        case 321: return fn(Tile<3, 2, 1, A>{});
        case 511: return fn(Tile<5, 1, 1, A>{});
        case 521: return fn(Tile<5, 2, 1, A>{});
        case 312: return fn(Tile<3, 1, 2, A>{});
        case 512: return fn(Tile<5, 1, 2, A>{});
        default: break;
      }
    }
    fn(Tile<0, 0, 0, A>{});
  });
}

}  // namespace

bool dw_has_fixed_tile(const DwGeometry& g) { return has_fixed_tile(g); }

void dw_nhwc_blocked(const float* x, const float* w, const float* bias, float* y, float* row_sums,
                     const DwGeometry& g, Activation act) {
  DwProblem d{};
  static_cast<DwGeometry&>(d) = g;
  d.K = g.kh;
  d.act = act;
  d.Cp = (g.C + kLanes - 1) / kLanes * kLanes;
  d.Wp = std::max(g.W + 2 * g.pw, dw_row_width(g));
  d.zero = zero_floats(d.Wp * kLanes);
  d.y = y;
  d.row_sums = row_sums;
  AlignedFloats wd, bd;  // taps and bias padded to Cp channels, unless C is a multiple of 16
  if (d.Cp == g.C) {
    d.w = w;
    d.bias = bias;
  } else {
    const int64_t taps = g.kh * g.kw;
    wd.reset(taps * d.Cp, true);
    bd.reset(d.Cp, true);
    for (int64_t t = 0; t < taps; ++t) memcpy(wd.data() + t * d.Cp, w + t * g.C, sizeof(float) * g.C);
    memcpy(bd.data(), bias, sizeof(float) * g.C);
    d.w = wd.data();
    d.bias = bd.data();
  }
  const int64_t blocks = d.Cp / kLanes, plane = g.H * d.Wp;
  const int64_t group = std::max<int64_t>(1, std::min<int64_t>(g.N, kKeptScratchFloats / (plane * d.Cp)));
  const Scratch buffer(group * plane * d.Cp);
  float* images = buffer.data();
  for (int64_t n0 = 0; n0 < g.N; n0 += group) {
    const int64_t count = std::min(group, g.N - n0), rows = count * g.OH;
    d.block_stride = count * plane * kLanes;
    const int64_t block_work = count * (g.H * g.W * kLanes + g.OH * g.OW * kLanes * g.kh * g.kw);
    torch::stable::parallel_for(0, blocks, grain_for(block_work), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {  // block b of every input row, zero-padded left and right
        const int64_t c0 = b * kLanes, valid = std::min<int64_t>(kLanes, g.C - c0);
        for (int64_t r = 0; r < count * g.H; ++r) {
          float* dst = images + b * d.block_stride + r * d.Wp * kLanes;
          const float* src = x + ((n0 * g.H + r) * g.W) * g.C + c0;
          memset(dst, 0, sizeof(float) * kLanes * g.pw);
          for (int64_t i = 0; i < g.W; ++i)
            memcpy(dst + (g.pw + i) * kLanes, src + i * g.C, sizeof(float) * valid);
          memset(dst + (g.pw + g.W) * kLanes, 0, sizeof(float) * kLanes * (d.Wp - g.pw - g.W));
        }
      }
      dw_image_rows(d, images, n0, rows, begin * rows, end * rows);
    });
  }
}

int64_t dw_row_width(const DwGeometry& g) {
  if (has_fixed_tile(g)) return ((g.OW + kTile - 1) / kTile * kTile - 1) * g.sw + (g.kw - 1) * g.dw + 1;
  return (g.OW - 1) * g.sw + (g.kw - 1) * g.dw + 1;
}

void dw_row(const DwProblem& d, const float* const* rows, int64_t n, int64_t oh) {
  dispatch_tile(d, [&](auto tile) {
    using T = decltype(tile);
    ring_row<T::K, T::S, T::D, T::A>(d, rows, n, oh);
  });
}

void dw_image_rows(const DwProblem& d, const float* images, int64_t n_first, int64_t rows, int64_t begin,
                   int64_t end) {
  dispatch_tile(d, [&](auto tile) {
    using T = decltype(tile);
    image_rows<T::K, T::S, T::D, T::A>(d, images, n_first, rows, begin, end);
  });
}

}  // namespace mnv3
