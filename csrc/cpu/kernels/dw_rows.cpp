// Depthwise conv + bias + activation rows on rows of 16-channel blocks
// (DwProblem, kernels.h): pointwise_dwconv's expanded rows and
// dw_nhwc_blocked's copies, zero-padded left and right, so a tile's inputs
// and taps sit at compile-time offsets from one pointer (with channels-last
// rows, every pixel and tap of a 5x5 tile needed an address register of its
// own: measured 85 vector spills in the fully unrolled tile).  Compiled once
// per vector ISA level (level.h).
//
// MobileNetV3's depthwise convs (3x3 and 5x5, stride 1 and 2 without
// horizontal dilation, or stride 1 with dilation 2: the dilated last stage of
// the segmentation backbones) run on tiles of kDwTile output pixels x one
// vector of a block's channels (a 16-channel block is 16 / kVecLanes such
// vectors) with the kernel size, stride and dilation known at compile time.
// Per tap row, the row's K taps stay in registers and each of the tile's
// (kDwTile - 1) * S + (K - 1) * D + 1 input pixels is loaded once and feeds
// every output it overlaps (a 3x3 stride-1 tile: 10 input loads for 24
// FMAs): 8 accumulators + 5 taps + 1 input fit AVX2's and SSE's 16 registers.
// The block's taps are first copied next to each other so the tile reads
// them at fixed offsets too.  Any other geometry runs the generic tile
// (runtime kernel size, stride and dilation).
#include "kernels.h"
#include "vec.h"

namespace mnv3 {
namespace MNV3_LEVEL_NS {
namespace {

constexpr int VL = lanes_for<kDwBlock>();  // lanes per vector of a block
constexpr int kParts = kDwBlock / VL;      // vectors per block
constexpr int kGenericTile = 4;            // output pixels per generic tile
constexpr int kMaxFixedTaps = 25;
using V = vfloat<VL>;

// Activates, stores and sums the first `count` of a tile's TW pixels at
// output column ow, channels [c, c + VL) (those below C stored).  The loop
// runs over all TW pixels, unrolled, and skips the rest: indexed by a
// runtime count, the accumulators went to the stack for the whole tile
// (measured: every AVX2 FMA of the 3x3 tile loaded and stored its accumulator).
template <Activation A, int TW>
MNV3_HD void tile_epilogue(const DwProblem& d, float* yrow, int64_t ow, int64_t c, const V (&acc)[TW], int count,
                           V& sum) {
  const int valid = static_cast<int>(min64(VL, d.C - c));
#pragma GCC unroll 8
  for (int t = 0; t < TW; ++t) {
    if (t >= count) break;
    const V v = activate<A>(acc[t]);
    sum += v;
    float* out = yrow + (ow + t) * d.C + c;
    if (valid == VL) {
      vstore<VL>(out, v);
    } else {
      vstore_partial<VL>(out, v, valid);
    }
  }
}

// TW output pixels from column ow of the generic tile (runtime kernel size,
// stride and dilation) added to acc; TW a compile-time count, so that the
// accumulators stay in registers (indexed by a runtime pixel count they went
// to the stack: measured 960 channels at 14x14, 5x5, dilation 2, ~250 us).
// r[kh] and taps point at the vector's first channel.
template <int TW>
MNV3_HD void generic_tile(const DwProblem& d, const float* const* r, const float* taps, int64_t ow, V* acc) {
  for (int64_t kh = 0; kh < d.K; ++kh) {
    for (int64_t kw = 0; kw < d.K; ++kw) {
      const V w = vload<VL>(taps + (kh * d.K + kw) * d.Cp);
      const float* px = r[kh] + (ow * d.sw + kw * d.dw) * kDwBlock;
      for (int t = 0; t < TW; ++t) acc[t] += vload<VL>(px + t * d.sw * kDwBlock) * w;
    }
  }
}

// Output row (n, oh), channels [c, c + VL) of the block at c0: r[kh] its tap
// rows in this block, taps its K*K taps ([K*K][16] for a fixed tile; the
// [K*K][Cp] weight from c0 for the generic one, K == 0).  The sums run over
// kernel rows, then taps left to right, per output.
template <int K, int S, int D, Activation A>
MNV3_HD void vector_row(const DwProblem& d, const float* const* r, const float* taps, int64_t n, int64_t oh,
                        int64_t c0, int part) {
  const int64_t c = c0 + part * VL;
  float* yrow = d.y + ((n * d.OH + oh) * d.OW) * d.C;
  const V bias = vload<VL>(d.bias + c);
  V sum = vzero<VL>();
  if constexpr (K > 0) {
    constexpr int kInputs = (kDwTile - 1) * S + (K - 1) * D + 1;
    for (int64_t ow = 0; ow < d.OW; ow += kDwTile) {
      V acc[kDwTile];
#pragma GCC unroll 8
      for (int t = 0; t < kDwTile; ++t) acc[t] = bias;
      // One kernel row at a time (not unrolled: unrolled, GCC loaded every
      // row's inputs first, spilled them, and summed each output's taps as
      // one dependent chain).
#pragma GCC unroll 1
      for (int kh = 0; kh < K; ++kh) {
        const float* px = r[kh] + ow * S * kDwBlock + part * VL;
        V w[K];
#pragma GCC unroll 5
        for (int kw = 0; kw < K; ++kw) w[kw] = vload<VL>(taps + (kh * K + kw) * kDwBlock + part * VL);
#pragma GCC unroll 19
        for (int q = 0; q < kInputs; ++q) {
          const V in = vload<VL>(px + q * kDwBlock);
#pragma GCC unroll 8
          for (int t = 0; t < kDwTile; ++t) {
            const int j = q - t * S;  // the input column's offset in output t's window
            if (j >= 0 && j % D == 0 && j / D < K) acc[t] += in * w[j / D];
          }
        }
      }
      tile_epilogue<A>(d, yrow, ow, c, acc, static_cast<int>(min64(kDwTile, d.OW - ow)), sum);
    }
  } else {
    const float* rp[kMaxDwSpan];
    for (int64_t kh = 0; kh < d.K; ++kh) rp[kh] = r[kh] + part * VL;
    const float* tp = taps + part * VL;
    for (int64_t ow = 0; ow < d.OW; ow += kGenericTile) {
      const int tw = static_cast<int>(min64(kGenericTile, d.OW - ow));
      V acc[kGenericTile];
      for (int t = 0; t < kGenericTile; ++t) acc[t] = bias;
      if (tw == kGenericTile) {
        generic_tile<kGenericTile>(d, rp, tp, ow, acc);
      } else {
#pragma GCC unroll 4
        for (int t = 0; t < kGenericTile; ++t)
          if (t < tw) generic_tile<1>(d, rp, tp, ow + t, acc + t);
      }
      tile_epilogue<A>(d, yrow, ow, c, acc, tw, sum);
    }
  }
  if (d.row_sums != nullptr) vstore<VL>(d.row_sums + (n * d.OH + oh) * d.Cp + c, sum);
}

// Output row (n, oh), the block at c0: its vectors that hold channels below C
// (the row sums of lanes past C are left unset: they are never read).
template <int K, int S, int D, Activation A>
MNV3_HD void block_row(const DwProblem& d, const float* const* r, const float* taps, int64_t n, int64_t oh,
                       int64_t c0) {
  for (int part = 0; part < kParts && c0 + part * VL < d.C; ++part) vector_row<K, S, D, A>(d, r, taps, n, oh, c0, part);
}

// The taps block_row reads for channel block c0: copied to `local` ([K*K][16])
// for a fixed tile.
template <int K>
MNV3_HD const float* block_taps(const DwProblem& d, int64_t c0, float* local) {
  if constexpr (K == 0) {
    return d.w + c0;
  } else {
    for (int tap = 0; tap < K * K; ++tap) memcpy(local + tap * kDwBlock, d.w + tap * d.Cp + c0, sizeof(float) * kDwBlock);
    return local;
  }
}

template <int K, int S, int D, Activation A>
void ring_row(const DwProblem& d, const float* const* rows, int64_t n, int64_t oh) {
  alignas(64) float local[kMaxFixedTaps * kDwBlock];
  const float* r[kMaxDwSpan];
  for (int64_t b = 0; b * kDwBlock < d.Cp; ++b) {
    for (int64_t kh = 0; kh < d.K; ++kh) r[kh] = rows[kh] == d.zero ? d.zero : rows[kh] + b * d.block_stride;
    block_row<K, S, D, A>(d, r, block_taps<K>(d, b * kDwBlock, local), n, oh, b * kDwBlock);
  }
}

template <int K, int S, int D, Activation A>
void image_rows(const DwProblem& d, const float* images, int64_t n_first, int64_t rows, int64_t begin, int64_t end) {
  alignas(64) float local[kMaxFixedTaps * kDwBlock];
  const float* taps = nullptr;
  int64_t current = -1;
  const float* r[kMaxDwSpan];
  for (int64_t t = begin; t < end; ++t) {
    const int64_t b = t / rows, row = n_first * d.OH + t % rows;
    const int64_t n = row / d.OH, oh = row % d.OH;
    if (b != current) {
      taps = block_taps<K>(d, b * kDwBlock, local);
      current = b;
    }
    const float* block = images + b * d.block_stride + (n - n_first) * d.H * d.Wp * kDwBlock;
    for (int64_t kh = 0; kh < d.K; ++kh) {
      const int64_t ih = oh * d.sh - d.ph + kh * d.dh;
      r[kh] = ih < 0 || ih >= d.H ? d.zero : block + ih * d.Wp * kDwBlock;
    }
    block_row<K, S, D, A>(d, r, taps, n, oh, b * kDwBlock);
  }
}

template <int K_, int S_, int D_, Activation A_>
struct Tile {
  static constexpr int K = K_, S = S_, D = D_;
  static constexpr Activation A = A_;
};

// fn(Tile<K, S, D, A>{}) for d's geometry and activation (K = 0: the generic tile).
template <typename Fn>
void dispatch_tile(const DwProblem& d, Fn&& fn) {
  dispatch_activation(d.act, [&](auto act_tag) {
    constexpr Activation A = decltype(act_tag)::value;
    if (dw_has_fixed_tile(d)) {
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

void dw_ring_row(const DwProblem& d, const float* const* rows, int64_t n, int64_t oh) {
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

}  // namespace MNV3_LEVEL_NS
}  // namespace mnv3
