// CPU kernel of mnv3::dwconv_bias_act: depthwise conv + bias + activation in
// one pass over the output, with the per-(n, c) mean of the activated output
// (the SE squeeze) accumulated in the same pass when asked for.
//
// Two walks over the same arithmetic (csrc/common/dwconv.h):
//  - channels-last dense input: rows (n, oh) in parallel, tiles of a few
//    output pixels x a vector of channels (dw_tile, the CUDA kernel's tile),
//    filter packed tap-major so channel loads are contiguous;
//  - any other strides (NCHW, views): planes (n, c) in parallel, output
//    contiguous NCHW; fp32 as vectors along each output row over a padded
//    copy of the plane (dw_planes_f32), fp16/bf16 one output at a time.
// The squeeze is deterministic: per-row fp32 partial sums, reduced in row order.
#include "cpu_utils.h"
#include "dw_row.h"
#include "simd.h"

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

// ---- fp32 channels-last: the vector walk (simd.h) ----
// Per output row (n, oh) and block of V channels: the interior columns (all K
// taps inside the input along W) in tiles of TW pixels (7 where the width is a
// multiple of 7 but not of 4, as MobileNetV3's 7x7 and 14x14 planes at 224x224,
// else 4), then of one, with fixed tap counts; the border columns pixel by
// pixel over their valid taps.  Kernel rows outside the input are skipped for
// the whole row; planes narrower than kPadCopyMaxW run on a zero-padded copy
// (no border columns, see dwconv_nhwc_f32).  Same sums in the same order as
// dw_tile and dw_point (kernel rows, then taps left to right, per output), so
// all walks agree to rounding of the FMA contraction.  fp16/bf16 take the
// dw_tile walk above (the CUDA arithmetic).
template <int K, int S, int TW, int V>
MNV3_HD void f32_interior_tile(const float* xc, int64_t x_sh, int64_t C, const float* wc, int64_t i0,
                               int64_t i1, int64_t ih0, int64_t iw0, vfloat<V> (&acc)[TW]) {
  for (int t = 0; t < TW; ++t) acc[t] = vzero<V>();
  for (int64_t i = i0; i < i1; ++i) {
    const float* row = xc + (ih0 + i) * x_sh + iw0 * C;
    const float* wrow = wc + i * K * C;
    for (int j = 0; j < K; ++j) {
      const vfloat<V> wv = vload<V>(wrow + j * C);
      for (int t = 0; t < TW; ++t) acc[t] += vload<V>(row + (t * S + j) * C) * wv;
    }
  }
}

template <int K, int S, int V>
MNV3_HD vfloat<V> f32_border_point(const float* xc, int64_t x_sh, int64_t C, const float* wc,
                                   const DwGeometry& g, int64_t i0, int64_t i1, int64_t ih0, int64_t ow) {
  int64_t j0, j1;
  valid_taps(ow, S, g.pw, 1, K, g.W, &j0, &j1);
  const int64_t iw0 = ow * S - g.pw;
  vfloat<V> acc = vzero<V>();
  for (int64_t i = i0; i < i1; ++i) {
    const float* row = xc + (ih0 + i) * x_sh + iw0 * C;
    const float* wrow = wc + i * K * C;
    for (int64_t j = j0; j < j1; ++j) acc += vload<V>(row + j * C) * vload<V>(wrow + j * C);
  }
  return acc;
}

// Bias + activation, store, and the squeeze's running sum.
template <Activation A, int V>
MNV3_HD void f32_store(float* yp, vfloat<V> acc, vfloat<V> bias, bool with_sum, vfloat<V>& sum) {
  const vfloat<V> out = activate<A>(acc + bias);
  vstore<V>(yp, out);
  if (with_sum) sum += out;
}

// Channels [c, c + V) of output row oh; ow in [ow_lo, ow_hi) are the interior columns.
template <int K, int S, int TW, Activation A, int V>
MNV3_HD void f32_row_block(const float* xn, const float* w, const float* bias, float* yrow, float* sums,
                           const DwGeometry& g, int64_t oh, int64_t c, int64_t ow_lo, int64_t ow_hi) {
  const int64_t C = g.C, x_sh = g.W * C;
  int64_t i0, i1;
  valid_taps(oh, S, g.ph, 1, K, g.H, &i0, &i1);
  const int64_t ih0 = oh * S - g.ph;
  const float* xc = xn + c;
  const float* wc = w + c;
  const vfloat<V> b = vload<V>(bias + c);
  const bool with_sum = sums != nullptr;
  vfloat<V> sum = vzero<V>();
  int64_t ow = 0;
  for (; ow < ow_lo; ++ow) {
    f32_store<A, V>(yrow + ow * C + c, f32_border_point<K, S, V>(xc, x_sh, C, wc, g, i0, i1, ih0, ow), b,
                    with_sum, sum);
  }
  for (; ow + TW <= ow_hi; ow += TW) {
    vfloat<V> acc[TW];
    f32_interior_tile<K, S, TW, V>(xc, x_sh, C, wc, i0, i1, ih0, ow * S - g.pw, acc);
    for (int t = 0; t < TW; ++t) f32_store<A, V>(yrow + (ow + t) * C + c, acc[t], b, with_sum, sum);
  }
  for (; ow < ow_hi; ++ow) {
    vfloat<V> acc[1];
    f32_interior_tile<K, S, 1, V>(xc, x_sh, C, wc, i0, i1, ih0, ow * S - g.pw, acc);
    f32_store<A, V>(yrow + ow * C + c, acc[0], b, with_sum, sum);
  }
  for (; ow < g.OW; ++ow) {
    f32_store<A, V>(yrow + ow * C + c, f32_border_point<K, S, V>(xc, x_sh, C, wc, g, i0, i1, ih0, ow), b,
                    with_sum, sum);
  }
  if (with_sum) vstore<V>(sums + c, sum);
}

// Rows [begin, end) of (n, oh), cloned per vector ISA (MNV3_CPU_CLONES).
template <int K, int S, int TW, Activation A>
MNV3_CPU_CLONES void dwconv_nhwc_f32_rows(const float* x, const float* w, const float* bias, float* y,
                                          float* row_sums, const DwGeometry& g, int64_t begin, int64_t end) {
  const int64_t C = g.C;
  // Interior columns: ow * S - pw >= 0 and ow * S - pw + K <= W.
  const int64_t ow_lo = std::min<int64_t>(g.OW, (g.pw + S - 1) / S);
  const int64_t last = g.W - K + g.pw;
  const int64_t ow_hi = std::max<int64_t>(ow_lo, last < 0 ? 0 : std::min<int64_t>(g.OW, last / S + 1));
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / g.OH, oh = r % g.OH;
    const float* xn = x + n * g.H * g.W * C;
    float* yrow = y + r * g.OW * C;
    float* sums = row_sums ? row_sums + r * C : nullptr;
    int64_t c = 0;
    for (; c + 16 <= C; c += 16) f32_row_block<K, S, TW, A, 16>(xn, w, bias, yrow, sums, g, oh, c, ow_lo, ow_hi);
    if (c + 8 <= C) {
      f32_row_block<K, S, TW, A, 8>(xn, w, bias, yrow, sums, g, oh, c, ow_lo, ow_hi);
      c += 8;
    }
    if (c + 4 <= C) {
      f32_row_block<K, S, TW, A, 4>(xn, w, bias, yrow, sums, g, oh, c, ow_lo, ow_hi);
      c += 4;
    }
    for (; c < C; ++c) f32_row_block<K, S, TW, A, 1>(xn, w, bias, yrow, sums, g, oh, c, ow_lo, ow_hi);
  }
}

// fp32 channels-last images narrower than this (with a 3x3 / 5x5 kernel) run on
// the 16-channel-block tiles of pointwise_dwconv (dw_nhwc_blocked), after a
// copy of the input into that layout.  Measured on 2 threads (minimum of 20
// rounds), walk below -> blocked: 960 channels at 7x7 with a 5x5 kernel
// 81 -> 42 us, 672 at 14x14 5x5 stride 2 84 -> 50, 480 at 14x14 3x3 68 -> 48;
// at 28x28 the copy costs more than the tiles save (120 channels 5x5:
// 58 -> 66 us), so wider images keep the walk below, which reads x in place.
// Geometries the walk below has no tile for (dilation, strides other than 1
// and 2, kernels other than 3x3 / 5x5) run on the blocked tiles at any width:
// their tiles are vectors of 16 channels x 4 or 8 pixels, where the walk's
// fallback is one pixel at a time (measured on 2 threads: 960 channels at
// 14x14, 5x5, dilation 2, the dilated stage of the segmentation backbones,
// 290-520 -> ~140 us).
constexpr int64_t kBlockedMaxW = 28;

// Whether the vector walk below has a compile-time tile for g: dispatch_dw_tile
// (which picks the walk's tile) gives it a kernel size.
bool f32_walk_has_tile(const DwGeometry& g) {
  bool fixed = false;
  dispatch_dw_tile(g, [&](auto k_tag, auto) { fixed = decltype(k_tag)::value > 0; });
  return fixed;
}

// Whether g runs on the blocked tiles (dw_nhwc_blocked): a square kernel of at most 16 rows.
bool dw_blocked(const DwGeometry& g) {
  if (g.kh != g.kw || g.kh > 16) return false;
  return g.W < kBlockedMaxW ? true : !f32_walk_has_tile(g);
}

// Planes narrower than this run on a zero-padded copy of the input: their
// border columns (2 of 7 per side for a 5x5 kernel at 7x7) would otherwise
// take the per-pixel path, and the copy of such a small input is cheap.
constexpr int64_t kPadCopyMaxW = 16;

template <int K, int S>
void dwconv_nhwc_f32(const float* x, const float* w_packed, const float* bias, float* y, float* row_sums,
                     const DwGeometry& g, Activation act) {
  const int64_t work = g.OW * g.C * g.kh * g.kw;
  std::vector<float> padded;
  DwGeometry gp = g;
  if (g.W < kPadCopyMaxW && (g.ph > 0 || g.pw > 0)) {
    gp.H = g.H + 2 * g.ph;
    gp.W = g.W + 2 * g.pw;
    gp.ph = gp.pw = 0;
    padded.assign(static_cast<size_t>(g.N * gp.H * gp.W * g.C), 0.f);
    const int64_t row = g.W * g.C;
    torch::stable::parallel_for(0, g.N * g.H, grain_for(row), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / g.H, h = r % g.H;
        std::copy(x + r * row, x + (r + 1) * row,
                  padded.data() + ((n * gp.H + h + g.ph) * gp.W + g.pw) * g.C);
      }
    });
    x = padded.data();
  }
  const bool sevens = g.OW % 7 == 0 && g.OW % 4 != 0;
  dispatch_activation(act, [&](auto act_tag) {
    constexpr Activation A = decltype(act_tag)::value;
    torch::stable::parallel_for(0, g.N * g.OH, grain_for(work), [&](int64_t begin, int64_t end) {
      if (sevens) {
        dwconv_nhwc_f32_rows<K, S, 7, A>(x, w_packed, bias, y, row_sums, gp, begin, end);
      } else {
        dwconv_nhwc_f32_rows<K, S, 4, A>(x, w_packed, bias, y, row_sums, gp, begin, end);
      }
    });
  });
}

// ---- fp32, any other strides (NCHW, views): planes ----
// A thread takes planes (n, c).  Each is copied into a zero-padded scratch
// whose columns are split by their phase modulo the column stride sw: phase q
// holds padded columns q, q + sw, q + 2 sw, ...  Tap (i, j) of output column
// ow reads padded column ow * sw + j * dw, which is index ow + (j * dw) / sw of
// phase (j * dw) % sw: V consecutive outputs read V consecutive floats for
// every tap, so a row is walked in vectors of V outputs (R rows x U vectors at
// a time: independent FMA chains).  Every tap is summed in dw_point's order;
// the padding's taps add zeros, which leave a sum unchanged, so each output is
// dw_point's sum.  (The scalar walk, one output at a time with a bounds check
// per tap, made fuse()d NCHW models slower than eager: measured 22 ms of
// depthwise layers a forward in DeepLabV3-MobileNetV3 at 224x224.)
struct PlaneScratch {
  int64_t rows;   // padded input rows, H + 2 ph
  int64_t ld;     // floats per row of a phase: every index a vector reads
  int64_t phase;  // floats per phase, rows * ld
  // Per phase q: its first input column, first[q] = (q - pw) mod sw, and
  // that column's index, first[sw + q] = (first[q] + pw) / sw (integer
  // divisions once per call, not per row).
  const int64_t* first;
};

PlaneScratch plane_scratch(const DwGeometry& g, int V) {
  const int64_t vectors = (g.OW + V - 1) / V;
  const int64_t columns = (g.W + 2 * g.pw + g.sw - 1) / g.sw;  // of a phase
  const int64_t reach = vectors * V + (g.kw - 1) * g.dw / g.sw;  // one past the last index read
  PlaneScratch l{};
  l.rows = g.H + 2 * g.ph;
  l.ld = std::max(columns, reach);
  l.phase = l.rows * l.ld;
  return l;
}

// n floats from src to dst as vectors, the last one overlapping the one
// before it (a copy loop compiles to a libc memmove call per row: 11% of a
// 14x14 layer's time).
MNV3_HD void copy_floats(float* dst, const float* src, int64_t n) {
  if (n >= 16) {
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) vstore<16>(dst + k, vload<16>(src + k));
    if (k < n) vstore<16>(dst + n - 16, vload<16>(src + n - 16));
  } else if (n >= 8) {
    vstore<8>(dst, vload<8>(src));
    vstore<8>(dst + n - 8, vload<8>(src + n - 8));
  } else if (n >= 4) {
    vstore<4>(dst, vload<4>(src));
    vstore<4>(dst + n - 4, vload<4>(src + n - 4));
  } else {
    for (int64_t k = 0; k < n; ++k) dst[k] = src[k];
  }
}

// Plane (n, c) of x into the scratch's data positions (the padding positions
// are never written: they stay zero).  Padded column col = w + pw goes to
// index col / sw of phase col % sw; per phase, the columns step by sw and the
// indices by 1.
MNV3_HD void copy_plane(const float* x, const int64_t* xs, const DwGeometry& g, const PlaneScratch& l,
                        int64_t n, int64_t c, float* scratch) {
  const float* xp = x + n * xs[0] + c * xs[1];
  for (int64_t h = 0; h < g.H; ++h) {
    const float* src = xp + h * xs[2];
    float* dst = scratch + (h + g.ph) * l.ld;
    if (g.sw == 1 && xs[3] == 1) {
      copy_floats(dst + g.pw, src, g.W);
      continue;
    }
    for (int64_t q = 0; q < g.sw; ++q) {
      const int64_t w0 = l.first[q];
      float* out = dst + q * l.phase + l.first[g.sw + q];
      if (g.sw == 2 && xs[3] == 1) {  // a constant stride: the compiler vectorizes the split
        for (int64_t k = 0; w0 + 2 * k < g.W; ++k) out[k] = src[w0 + 2 * k];
      } else {
        for (int64_t k = 0; w0 + k * g.sw < g.W; ++k) out[k] = src[(w0 + k * g.sw) * xs[3]];
      }
    }
  }
}

// One plane's walk: its scratch, each tap's offset in it from a tile's base
// (off), the scratch floats between output rows (row_step), its filter
// (taps of them) and bias, its output (OH x OW, contiguous).
struct PlaneWalk {
  const float* scratch;
  const int64_t* off;
  int64_t taps, row_step;
  const float* w;
  float bias;
  float* y;
  int64_t OH, OW;
};

// v where lo <= lane < hi, else 0.
template <int V>
MNV3_HD vfloat<V> lanes_between(vfloat<V> v, int64_t lo, int64_t hi) {
  vint<V> lane;
  for (int i = 0; i < V; ++i) lane[i] = i;
  return (lane >= static_cast<int>(lo)) & (lane < static_cast<int>(hi)) ? v : vzero<V>();
}

// Output rows [oh, oh + R) x columns [o, o + U * V): bias, activation, store,
// and the squeeze's running sum of lanes [lo, hi) of each vector (the lanes of
// an overlapping last vector that the one before it counted, or the lanes past
// a row narrower than V, are left out).  A vector is stored whole where it
// ends inside the plane: lanes past its row land on the next rows, which are
// stored after it (rows go in order); else only lanes [0, hi).
template <int V, int R, int U, Activation A>
MNV3_HD void plane_tile(const PlaneWalk& p, int64_t oh, int64_t o, int64_t lo, int64_t hi, vfloat<V>& sum) {
  vfloat<V> acc[R][U];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < U; ++u) acc[r][u] = vzero<V>();
  const float* base = p.scratch + oh * p.row_step + o;
  for (int64_t t = 0; t < p.taps; ++t) {
    const float wv = p.w[t];
    const float* in = base + p.off[t];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < U; ++u) acc[r][u] += vload<V>(in + r * p.row_step + u * V) * wv;
  }
  for (int r = 0; r < R; ++r) {
    for (int u = 0; u < U; ++u) {
      const vfloat<V> out = activate<A>(acc[r][u] + p.bias);
      const int64_t at = (oh + r) * p.OW + o + u * V;
      if (at + V <= p.OH * p.OW) {
        vstore<V>(p.y + at, out);
      } else {
        for (int64_t v = 0; v < hi; ++v) p.y[at + v] = out[v];
      }
      sum += lanes_between<V>(out, lo, hi);
    }
  }
}

// Output rows [oh, oh + R): vectors of V columns (4 and 2 at a time for a
// single row), then the row's last columns as one vector ending at OW (or, for
// rows narrower than V, the row's OW columns).
template <int V, int R, Activation A>
MNV3_HD void plane_rows(const PlaneWalk& p, int64_t oh, vfloat<V>& sum) {
  int64_t o = 0;
  if constexpr (R == 1) {
    for (; o + 4 * V <= p.OW; o += 4 * V) plane_tile<V, 1, 4, A>(p, oh, o, 0, V, sum);
    for (; o + 2 * V <= p.OW; o += 2 * V) plane_tile<V, 1, 2, A>(p, oh, o, 0, V, sum);
  }
  for (; o + V <= p.OW; o += V) plane_tile<V, R, 1, A>(p, oh, o, 0, V, sum);
  if (o < p.OW) {
    if (p.OW >= V) {
      plane_tile<V, R, 1, A>(p, oh, p.OW - V, o - (p.OW - V), V, sum);
    } else {
      plane_tile<V, R, 1, A>(p, oh, 0, 0, p.OW, sum);
    }
  }
}

// Planes [begin, end) of (n, c), cloned per vector ISA (MNV3_CPU_CLONES).
// w: channel-major [C][kh * kw]; off: each tap's offset in the scratch;
// y: contiguous NCHW; mean: [N * C] or null.  Rows of 4 or more vectors go
// one at a time (4 vectors per tile), narrower ones 4 rows at a time
// (MobileNetV3's 7- to 28-wide planes), then 2 and 1.
template <int V, Activation A>
MNV3_CPU_CLONES void dw_planes_f32(const float* x, const int64_t* xs, const float* w, const float* bias, float* y,
                                   float* mean, const DwGeometry& g, const PlaneScratch& l, const int64_t* off,
                                   float* scratch, int64_t begin, int64_t end) {
  const int64_t taps = g.kh * g.kw;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t n = i / g.C, c = i % g.C;
    copy_plane(x, xs, g, l, n, c, scratch);
    const PlaneWalk p{scratch, off, taps, g.sh * l.ld, w + c * taps, bias[c], y + i * g.OH * g.OW, g.OH, g.OW};
    vfloat<V> sum = vzero<V>();
    int64_t oh = 0;
    if (g.OW < 4 * V) {
      for (; oh + 4 <= g.OH; oh += 4) plane_rows<V, 4, A>(p, oh, sum);
      for (; oh + 2 <= g.OH; oh += 2) plane_rows<V, 2, A>(p, oh, sum);
    }
    for (; oh < g.OH; ++oh) plane_rows<V, 1, A>(p, oh, sum);
    if (mean != nullptr) {
      float total = 0.f;
      for (int v = 0; v < V; ++v) total += sum[v];
      mean[i] = total / static_cast<float>(g.OH * g.OW);
    }
  }
}

template <Activation A>
void dwconv_planes_f32(const float* x, const int64_t* xs, const float* w, const float* bias, float* y, float* mean,
                       const DwGeometry& g) {
  const int V = g.OW <= 8 ? 8 : 16;
  PlaneScratch l = plane_scratch(g, V);
  std::vector<int64_t> first(static_cast<size_t>(2 * g.sw));
  for (int64_t q = 0; q < g.sw; ++q) {
    first[q] = ((q - g.pw) % g.sw + g.sw) % g.sw;
    first[g.sw + q] = (first[q] + g.pw) / g.sw;
  }
  l.first = first.data();
  std::vector<int64_t> off(static_cast<size_t>(g.kh * g.kw));
  for (int64_t i = 0; i < g.kh; ++i)
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t col = j * g.dw;
      off[i * g.kw + j] = (col % g.sw) * l.phase + i * g.dh * l.ld + col / g.sw;
    }
  torch::stable::parallel_for(0, g.N * g.C, grain_for(g.OH * g.OW * g.kh * g.kw), [&](int64_t begin, int64_t end) {
    const AlignedFloats scratch(l.phase * g.sw, true);
    if (V == 8) {
      dw_planes_f32<8, A>(x, xs, w, bias, y, mean, g, l, off.data(), scratch.data(), begin, end);
    } else {
      dw_planes_f32<16, A>(x, xs, w, bias, y, mean, g, l, off.data(), scratch.data(), begin, end);
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

// The filter as fp32 tap-major [kh*kw][C] (NHWC walk) or channel-major: the
// weight's own memory where it already is (fp32 with strides (1, -, kw*C, C),
// the layout the models' fold produces on CPU: no copy per call), else a
// packed copy in `storage`.
template <typename T>
const float* filter_as_float(const Tensor& weight, const DwGeometry& g, bool tap_major,
                             std::vector<float>& storage) {
  if constexpr (std::is_same_v<T, float>) {
    if (tap_major && weight.stride(0) == 1 && weight.stride(3) == g.C && weight.stride(2) == g.kw * g.C) {
      return static_cast<const float*>(weight.const_data_ptr());
    }
  }
  storage = pack_filter<T>(weight, g, tap_major);
  return storage.data();
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
                          : empty_none(ScalarType::Float, x);
  if (g.N == 0 || g.C == 0) return {y, mean};

  dispatch_float_types(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    std::vector<float> w_storage, b_storage;
    const float* w = filter_as_float<T>(weight, g, /*tap_major=*/nhwc, w_storage);
    const float* b = vector_as_float<T>(bias, b_storage);
    const T* xp = static_cast<const T*>(x.const_data_ptr());
    T* yp = static_cast<T*>(y.mutable_data_ptr());
    float* mp = with_mean ? static_cast<float*>(mean.mutable_data_ptr()) : nullptr;
    if (nhwc) {
      // fp32 on the blocked tiles of pointwise_dwconv (dw_row.h) where
      // dw_blocked says so; their row sums have a padded stride.
      const bool blocked = std::is_same_v<T, float> && dw_blocked(g);
      const int64_t rs_stride = blocked ? (g.C + kDwLanes - 1) / kDwLanes * kDwLanes : g.C;
      std::vector<float> row_sums(with_mean ? static_cast<size_t>(g.N * g.OH * rs_stride) : 0);
      float* rs = with_mean ? row_sums.data() : nullptr;
      if constexpr (std::is_same_v<T, float>) {
        if (blocked) dw_nhwc_blocked(xp, w, b, yp, rs, g, act);
      }
      if (!blocked) {
        dispatch_dw_tile(g, [&](auto k_tag, auto s_tag) {
          constexpr int K = decltype(k_tag)::value, S = decltype(s_tag)::value;
          if constexpr (std::is_same_v<T, float> && K > 0) {
            dwconv_nhwc_f32<K, S>(xp, w, b, yp, rs, g, act);
          } else {
            dwconv_nhwc<T, K, S>(xp, w, b, yp, rs, g, act);
          }
        });
      }
      if (with_mean) mean_from_row_sums(rs, g.N, g.OH, g.OW, g.C, rs_stride, mp);
    } else {
      const int64_t xs[4] = {x.stride(0), x.stride(1), x.stride(2), x.stride(3)};
      dispatch_activation(act, [&](auto act_tag) {
        constexpr Activation A = decltype(act_tag)::value;
        if constexpr (std::is_same_v<T, float>) {
          dwconv_planes_f32<A>(xp, xs, w, b, yp, mp, g);
        } else {
          dwconv_strided<T, A>(xp, xs, w, b, yp, mp, g);
        }
      });
    }
  });
  return {y, mean};
}

}  // namespace

std::tuple<Tensor, Tensor> dwconv_bias_act_cpu_kernel(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                                      const std::vector<int64_t>& stride,
                                                      const std::vector<int64_t>& padding,
                                                      const std::vector<int64_t>& dilation,
                                                      const std::string& activation, bool with_mean) {
  return dwconv_bias_act_cpu(x, weight, bias, stride, padding, dilation, activation, with_mean);
}

}  // namespace mnv3

STABLE_TORCH_LIBRARY_IMPL(mnv3, CPU, m) {
  m.impl("dwconv_bias_act", TORCH_BOX(&mnv3::dwconv_bias_act_cpu));
}
