// The channels-last depthwise walk on the CUDA kernels' tile arithmetic
// (csrc/common/dwconv.h: dw_tile, dw_point_channels, dw_tile_epilogue), for
// fp16 and bf16 inputs and for fp32 geometries that no vector walk has a tile
// for (non-square kernels): rows (n, oh), tiles of a few output pixels x a
// block of channels, the filter tap-major so channel loads are contiguous.
// On a machine without a GPU this is what runs the CUDA arithmetic.  The
// channel loops are float arrays left to the level's auto-vectorizer.
// Compiled once per vector ISA level (level.h).
#include "kernels.h"
#include "lowp.h"
#include "vec.h"

namespace mnv3 {
namespace MNV3_LEVEL_NS {
namespace {

// Channels per vector step.  16, not 8: GCC -O3 completely unrolls an 8-trip
// channel loop before its loop vectorizer runs and the tile then compiles to
// scalar code (measured 2-4x slower in fp32).
constexpr int kChannelBlock = 16;
constexpr int kHalfBlock = kChannelBlock / 2;

// dw_tile for a tile whose every tap is inside the input (no padding): fixed
// trip counts and no branches, so GCC vectorizes the channel loop (it does
// not in dw_tile's column-reuse loop nest, whose skips it cannot see
// through).  Same sums in the same order as dw_tile (rows, then taps left to
// right, per output); on the CPU the L1 cache gives the column reuse that
// registers give on the GPU.  Tiles touching the border use dw_tile.
template <int K, int S, int TW, int V, typename T>
MNV3_HD void dw_tile_interior(const T* x, int64_t x_sh, int64_t x_sw, const float* w, int64_t w_tap_stride,
                              int64_t ih0, int64_t iw0, float (&acc)[TW][V]) {
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

// One output tile: TW pixels of row oh from ow0 (`valid` of them inside OW) x
// V channels from c; the same arithmetic as the CUDA kernel.
template <int K, int S, int V, typename T>
MNV3_HD void nhwc_tile(const DwTileProblem& p, const T* xn, T* yrow, float* sums, int64_t oh, int64_t ow0, int valid,
                       int64_t c) {
  constexpr int TW = dw_tile_width<K>();
  const DwGeometry& g = p.g;
  const int64_t C = g.C;
  float acc[TW][V];
  if constexpr (K > 0) {
    const int64_t ih0 = oh * S - g.ph, iw0 = ow0 * S - g.pw;
    const bool interior = valid == TW && ih0 >= 0 && ih0 + K <= g.H && iw0 >= 0 && iw0 + (TW - 1) * S + K <= g.W;
    if (interior) {
      dw_tile_interior<K, S, TW, V>(xn + c, g.W * C, C, p.w + c, C, ih0, iw0, acc);
    } else {
      dw_tile<K, S, TW, V>(xn + c, g.W * C, C, p.w + c, C, g, oh, ow0, ConvertLoad<V>{}, acc);
    }
  } else {
    dw_point_channels<V>(xn + c, g.W * C, C, p.w + c, C, g, oh, ow0, acc[0]);
  }
  float b[V], s[V];
  for (int v = 0; v < V; ++v) {
    b[v] = p.bias[c + v];
    s[v] = 0.f;
  }
  dw_tile_epilogue(p.act, acc, b, valid, s);
  for (int t = 0; t < valid; ++t) {
    T* yp = yrow + (ow0 + t) * C + c;
    for (int v = 0; v < V; ++v) yp[v] = to_storage<T>(acc[t][v]);
  }
  if (sums) {
    for (int v = 0; v < V; ++v) sums[c + v] += s[v];
  }
}

template <typename T, int K, int S>
void tile_rows(const DwTileProblem& p, int64_t begin, int64_t end) {
  constexpr int TW = dw_tile_width<K>();
  const DwGeometry& g = p.g;
  const int64_t C = g.C;
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / g.OH, oh = r % g.OH;
    const T* xn = x + n * g.H * g.W * C;
    T* yrow = y + r * g.OW * C;
    float* sums = p.row_sums ? p.row_sums + r * C : nullptr;
    if (sums)
      for (int64_t c = 0; c < C; ++c) sums[c] = 0.f;
    for (int64_t ow0 = 0; ow0 < g.OW; ow0 += TW) {
      const int valid = static_cast<int>(min64(TW, g.OW - ow0));
      int64_t c = 0;
      for (; c + kChannelBlock <= C; c += kChannelBlock)
        nhwc_tile<K, S, kChannelBlock>(p, xn, yrow, sums, oh, ow0, valid, c);
      if (c + kHalfBlock <= C) {  // MobileNetV3's 72, 120, 184 and 200 channels end in 8
        nhwc_tile<K, S, kHalfBlock>(p, xn, yrow, sums, oh, ow0, valid, c);
        c += kHalfBlock;
      }
      for (; c < C; ++c) nhwc_tile<K, S, 1>(p, xn, yrow, sums, oh, ow0, valid, c);
    }
  }
}

}  // namespace

void dw_tile_rows(const DwTileProblem& p, int64_t begin, int64_t end) {
  dispatch_dw_tile(p.g, [&](auto k_tag, auto s_tag) {
    constexpr int K = decltype(k_tag)::value, S = decltype(s_tag)::value;
    switch (p.dtype) {
      case Storage::Float16: return tile_rows<Half, K, S>(p, begin, end);
      case Storage::BFloat16: return tile_rows<BFloat16, K, S>(p, begin, end);
      default: return tile_rows<float, K, S>(p, begin, end);
    }
  });
}

}  // namespace MNV3_LEVEL_NS
}  // namespace mnv3
