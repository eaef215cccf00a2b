// The 1x1 convolution (or Linear) as a matrix product with its epilogue fused,
//   y[m, :] = act(W (x[m, :] * scale[sample(m), :]) + b) (+ residual[m, :]),
// on register tiles of rows x one 16-channel weight panel; the matrix-vector
// walk for one row; the dense stem conv on the same tiles; and the expand
// GEMM + depthwise ring of pointwise_dwconv.  Compiled once per vector ISA
// level (level.h).
//
// A tile of R rows x L lanes of a panel (L = 16, or 8 for a last panel of at
// most 8 channels) holds R x L / VL accumulators of VL = min(L, kVecLanes)
// lanes: with 12 accumulators, 12x16 on AVX-512 (one zmm per row), 6x16 on
// AVX2 (two ymm per row, + 2 weight vectors + 1 broadcast: 15 of 16
// registers), 3x16 on SSE.  Weights are read as panels of 16 output
// channels, [ceil(Cout/16)][Cin][16] with the last panel zero-padded
// (layout.pack_pointwise_weight): a tile reads its panel front to back, so
// the first pass over weights that are not in cache streams sequential
// memory (the hardware prefetcher runs ahead) instead of one cache line per
// weight row, a page apart for wide layers (measured: that first pass
// dominated the 7x7 layers' time in a whole forward).  The row blocks
// (RowBlocks, 12 rows) x panels are the unit of the parallel split (row
// blocks outer, panels inner, so a thread reuses its rows across panels).
#include "kernels.h"
#include "vec.h"

namespace mnv3 {
namespace MNV3_LEVEL_NS {
namespace {

// Rows of a register tile over L lanes of a panel: as many as the level's
// accumulators hold, at most a row block.
template <int L>
constexpr int tile_rows() {
  constexpr int per_row = L / lanes_for<L>();
  return kAccumulators / per_row < kGemmBlockRows ? kAccumulators / per_row : kGemmBlockRows;
}

// One tile: MR rows of a (row stride lda) x L lanes of one weight panel b
// ([K][16]; `valid` of its L lanes exist, the rest are zero).  Input k of
// row i is a[i * lda + k], or with Gather a[i * lda + off[k]] (conv_rows'
// taps); LDA > 0: lda known at compile time (the 12 loads of a step then
// address off one register, not 12 row pointers that no longer fit the
// integer registers).  Output row i goes to c[i] (rows may be anywhere: the
// padded layout of pointwise_dwconv); residual row i (if any) is res + i * ldr.
// prefetch > 0: each k step also prefetches the panel line that many steps
// ahead (PwProblem::prefetch).
template <int MR, Activation A, int L, bool Gather = false, int LDA = 0>
MNV3_HD void pw_tile(const float* a, int64_t lda, const float* b, int64_t K, int valid, const float* bias,
                     const float* res, int64_t ldr, float* const* c, const int64_t* off = nullptr,
                     int64_t prefetch = 0) {
  constexpr int VL = lanes_for<L>(), NV = L / VL;
  using V = vfloat<VL>;
  const int64_t step = LDA > 0 ? LDA : lda;
  const bool full = valid == L;
  // Every loop over the MR rows unrolled, the epilogue's cases outside them: the
  // accumulators then stay in registers (with runtime branches inside the row loop,
  // GCC kept acc[] on the stack: 12 stores before the k loop and 12 after, measured
  // ~20% of a K = 16 tile's time).
  V acc[MR][NV];
  V bv[NV];
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j)
    bv[j] = full ? vload<VL>(bias + j * VL) : vload_partial<VL>(bias + j * VL, lanes_left(valid, j * VL, VL));
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = bv[j];
  // Row i = 3 g + r is read at row[g] + r * step: one pointer per group of
  // three rows and one stride register (x86 scales it by 4 and 8), not one
  // register per row (12 row offsets do not fit the integer registers
  // beside the loop's pointers: measured spills in the 10-row AVX-512 tile).
  constexpr int G = (MR + 2) / 3;
  const float* row[G];
#pragma GCC unroll 4
  for (int g = 0; g < G; ++g) row[g] = a + 3 * g * step;
  for (int64_t k = 0; k < K; ++k) {
    // (The address may lie past the weights' end: computed as an integer, not a
    // pointer out of bounds; a prefetch never faults.)
    if (prefetch > 0)
      __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(b) +
                                                       static_cast<uintptr_t>((k + prefetch) * kPanel) * sizeof(float)),
                         0, 3);
    V w[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) w[j] = vload<VL>(b + k * kPanel + j * VL);
    const int64_t at = Gather ? off[k] : k;
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const float x = row[i / 3][at + (i % 3) * step];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] += x * w[j];
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = activate<A>(acc[i][j]);
  if (full && res == nullptr) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) vstore<VL>(c[i] + j * VL, acc[i][j]);
  } else if (full) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) vstore<VL>(c[i] + j * VL, acc[i][j] + vload<VL>(res + i * ldr + j * VL));
  } else {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) {
        const int n = lanes_left(valid, j * VL, VL);
        V y = acc[i][j];
        if (res != nullptr) y += vload_partial<VL>(res + i * ldr + j * VL, n);
        vstore_partial<VL>(c[i] + j * VL, y, n);
      }
    }
  }
}

MNV3_HD float* pw_out_row(const PwProblem& p, int64_t m) {
  if (p.out_w == 0) return p.y + m * p.ldy;
  return p.y + ((m / p.out_w) * p.Wp + m % p.out_w + p.pw) * p.ldy;
}

// The padding pixels of row-padded output rows [m0, m0 + mr), channels [n0, n0 + 16).
// (The column advances with the row: one division per tile, not per row; a
// 64-bit division per row measured ~15% of the expand GEMM at 28x28.)
MNV3_HD void pw_zero_padding(const PwProblem& p, int64_t m0, int64_t mr, float* const* out, int64_t n0) {
  const int64_t offset = n0 / kPanel * p.panel_stride;
  for (int64_t i = 0, col = m0 % p.out_w; i < mr; ++i, col = col + 1 == p.out_w ? 0 : col + 1) {
    float* px = out[i] + offset;
    if (col == 0)
      for (int64_t j = 1; j <= p.pw; ++j) memset(px - j * p.ldy, 0, sizeof(float) * kPanel);
    if (col == p.out_w - 1)
      for (int64_t j = 1; j < p.Wp - p.out_w - p.pw + 1; ++j) memset(px + j * p.ldy, 0, sizeof(float) * kPanel);
  }
}

// R rows from row m of the panel at channel n0 on L lanes (a: those rows'
// inputs; out: their output rows).
template <int R, Activation A, int L>
MNV3_HD void pw_tile_at(const PwProblem& p, const float* a, int64_t lda, int64_t m, float* const* out, int64_t n0,
                        int valid) {
  const float* res = p.res == nullptr ? nullptr : p.res + m * p.Nc + n0;
  float* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = out[i] + n0 / kPanel * p.panel_stride;
  pw_tile<R, A, L>(a, lda, p.w + n0 * p.K, p.K, valid, p.bias + n0, res, p.Nc, rows, nullptr, p.prefetch);
}

// Rows [m0, m0 + mr) (1 <= mr <= R) of one panel as one tile of mr rows (each
// tile size is its own instantiation: the accumulators stay in registers).
template <Activation A, int L, int R>
MNV3_HD void pw_tile_of(const PwProblem& p, const float* a, int64_t lda, int64_t m0, int64_t mr, float* const* out,
                        int64_t n0, int valid) {
  if (mr == R) {
    pw_tile_at<R, A, L>(p, a, lda, m0, out, n0, valid);
  } else if constexpr (R > 1) {
    pw_tile_of<A, L, R - 1>(p, a, lda, m0, mr, out, n0, valid);
  }
}

// Rows [m0, m0 + mr) (mr <= 12: a row block) of one panel as ceil(mr / T)
// tiles of near-equal height, T the level's tile rows (AVX2, T = 6: a 9-row
// block as 5 + 4 rows, not 6 + 3, whose 6 accumulators cannot hide the FMA
// latency: 4 cycles at 2 FMAs a cycle wants 8 chains).
template <Activation A, int L>
MNV3_HD void pw_block_lanes(const PwProblem& p, const float* a, int64_t lda, int64_t m0, int64_t mr,
                            float* const* out, int64_t n0, int valid) {
  constexpr int T = tile_rows<L>();
  const int64_t tiles = (mr + T - 1) / T, base = mr / tiles, extra = mr % tiles;
  for (int64_t t = 0, i = 0; t < tiles; ++t) {
    const int64_t rows = base + (t < extra ? 1 : 0);
    pw_tile_of<A, L, T>(p, a + i * lda, lda, m0 + i, rows, out + i, n0, valid);
    i += rows;
  }
}

// A last panel of at most 8 channels (24, 40, 72, 120, 184, 200 outputs) on
// 8 lanes: half the multiply-adds (an AVX-512 core issues two 8-lane FMAs
// where it issues one 16-lane FMA; AVX2 and SSE need half the registers).
template <Activation A>
MNV3_HD void pw_block(const PwProblem& p, const float* a, int64_t lda, int64_t m0, int64_t mr, float* const* out,
                      int64_t n0) {
  const int valid = static_cast<int>(min64(kPanel, p.Nc - n0));
  if (valid <= kPanel / 2)
    pw_block_lanes<A, kPanel / 2>(p, a, lda, m0, mr, out, n0, valid);
  else
    pw_block_lanes<A, kPanel>(p, a, lda, m0, mr, out, n0, valid);
}

// Rows [m0, m0 + mr) of one panel (any mr: pointwise_dwconv's rows of 56 or
// more pixels) as tiles of the level's tile rows, then of 8, 4, 2, 1 rows
// (short tails, and few tile sizes compiled into each of its 16 activation
// pairs).  conv_span walks its pixels the same way.  Written out, not as one
// helper taking the tile as a lambda: through the lambda, the AVX2 tiles ran
// 15% slower (measured on the 49 x 960 -> 160 projection).
template <Activation A, int L>
MNV3_HD void pw_rows_lanes(const PwProblem& p, const float* a, int64_t lda, int64_t m0, int64_t mr,
                           float* const* out, int64_t n0, int valid) {
  constexpr int T = tile_rows<L>();
  int64_t i = 0;
  for (; i + T <= mr; i += T) pw_tile_at<T, A, L>(p, a + i * lda, lda, m0 + i, out + i, n0, valid);
  if constexpr (T > 8) {
    if (i + 8 <= mr) { pw_tile_at<8, A, L>(p, a + i * lda, lda, m0 + i, out + i, n0, valid); i += 8; }
  }
  if constexpr (T > 4) {
    if (i + 4 <= mr) { pw_tile_at<4, A, L>(p, a + i * lda, lda, m0 + i, out + i, n0, valid); i += 4; }
  }
  if constexpr (T > 2) {
    if (i + 2 <= mr) { pw_tile_at<2, A, L>(p, a + i * lda, lda, m0 + i, out + i, n0, valid); i += 2; }
  }
  if constexpr (T > 1) {
    if (i + 1 <= mr) pw_tile_at<1, A, L>(p, a + i * lda, lda, m0 + i, out + i, n0, valid);
  }
}

template <Activation A>
MNV3_HD void pw_rows(const PwProblem& p, const float* a, int64_t lda, int64_t m0, int64_t mr, float* const* out,
                     int64_t n0) {
  const int valid = static_cast<int>(min64(kPanel, p.Nc - n0));
  if (valid <= kPanel / 2)
    pw_rows_lanes<A, kPanel / 2>(p, a, lda, m0, mr, out, n0, valid);
  else
    pw_rows_lanes<A, kPanel>(p, a, lda, m0, mr, out, n0, valid);
}

// Per row block, once: its output row addresses and, with a scale, its rows
// copied scaled into `scaled` (12 x K), which every panel then reads.
template <Activation A>
void tiles_range(const PwProblem& p, float* scaled, int64_t begin, int64_t end) {
  const int64_t panels = (p.Nc + kPanel - 1) / kPanel;
  const RowBlocks blocks(p.M);
  int64_t current = -1;
  float* out[kGemmBlockRows];
  for (int64_t t = begin; t < end; ++t) {
    const int64_t block = t / panels, panel = t % panels;
    const int64_t m0 = blocks.start(block), mr = blocks.size(block);
    const float* a = p.x + m0 * p.K;
    if (current != block) {
      for (int64_t i = 0; i < mr; ++i) out[i] = pw_out_row(p, m0 + i);
      if (p.scale != nullptr) {
        for (int64_t i = 0; i < mr; ++i) {
          const float* s = p.scale + ((m0 + i) / p.rows_per_sample) * p.K;
          const float* src = a + i * p.K;
          float* dst = scaled + i * p.K;
          for (int64_t k = 0; k < p.K; ++k) dst[k] = src[k] * s[k];
        }
      }
      current = block;
    }
    pw_block<A>(p, p.scale != nullptr ? scaled : a, p.K, m0, mr, out, panel * kPanel);
    if (p.out_w > 0) pw_zero_padding(p, m0, mr, out, panel * kPanel);
  }
}

// One row (M = 1: batch-1 Linears, SE fc layers): blocks of kGemvColumns
// output columns, kGemvVectors accumulators of one register each while the
// panels stream past side by side (k outer; each panel read front to back).
// A panel at a time would keep one accumulator busy: a chain of dependent FMAs.
// No software prefetch here (PwProblem::prefetch is for the tiles): its eight
// streams, each prefetched 128 steps ahead, made cold 1280 -> 1000 and
// 960 -> 1280 1.4-1.5x slower (measured one thread, Zen 5 avx512).

template <Activation A>
void gemv_range(const PwProblem& p, int64_t begin, int64_t end) {
  constexpr int VL = kVecLanes;
  using V = vfloat<VL>;
  for (int64_t blk = begin; blk < end; ++blk) {
    const int64_t n0 = blk * kGemvColumns;
    const int64_t width = min64(kGemvColumns, p.Nc - n0);
    const int nv = static_cast<int>((width + VL - 1) / VL);
    const int last = static_cast<int>(width - (nv - 1) * VL);  // valid lanes of the last vector
    // Vector v: columns n0 + v * VL .., in panel (n0 + v * VL) / 16 at lane (v * VL) % 16.
    const float* w[kGemvVectors];
    for (int v = 0; v < kGemvVectors; ++v) {
      const int64_t col = n0 + (v < nv ? v : 0) * VL;  // (vectors past the last column: never read)
      w[v] = p.w + (col / kPanel) * p.K * kPanel + col % kPanel;
    }
    V acc[kGemvVectors];
    for (int v = 0; v < kGemvVectors; ++v) acc[v] = vzero<VL>();
    if (nv == kGemvVectors) {
      for (int64_t k = 0; k < p.K; ++k) {
        const float a = p.scale == nullptr ? p.x[k] : p.x[k] * p.scale[k];
#pragma GCC unroll 8
        for (int v = 0; v < kGemvVectors; ++v) acc[v] += a * vload<VL>(w[v] + k * kPanel);
      }
    } else {
      for (int64_t k = 0; k < p.K; ++k) {
        const float a = p.scale == nullptr ? p.x[k] : p.x[k] * p.scale[k];
        for (int v = 0; v < nv; ++v) acc[v] += a * vload<VL>(w[v] + k * kPanel);
      }
    }
    for (int v = 0; v < nv; ++v) {
      const int valid = v + 1 < nv ? VL : last;
      const int64_t col = n0 + v * VL;
      V y = acc[v] + (valid == VL ? vload<VL>(p.bias + col) : vload_partial<VL>(p.bias + col, valid));
      y = activate<A>(y);
      if (valid == VL) {
        if (p.res != nullptr) y += vload<VL>(p.res + col);
        vstore<VL>(p.y + col, y);
      } else {
        if (p.res != nullptr) y += vload_partial<VL>(p.res + col, valid);
        vstore_partial<VL>(p.y + col, y, valid);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// The dense convolution (conv_bias_act: MobileNetV3's 3x3 stem, 3 -> 16
// channels) on the same register tiles: tile row i is output pixel
// (n, oh, ow0 + i), its inputs the window's (c, kh, kw) taps, read from x in
// place through a table of per-tap offsets, whatever x's layout (the model's
// NCHW input needs no channels-last copy first).  Pixels whose windows cross
// the border gather their taps, zeros outside, into a small buffer first.

// R output pixels (n, oh, ow0..ow0+R-1) x the panel at channel n0.  inside:
// their windows lie inside x (taps read in place), else the taps are gathered
// into `gathered` (room for 12 x Kc floats), zeros outside.
template <int R, Activation A>
MNV3_HD void conv_tile(const ConvProblem& p, int64_t n, int64_t oh, int64_t ow0, int64_t n0, bool inside,
                       float* gathered) {
  constexpr int T = tile_rows<kPanel>();
  const int valid = static_cast<int>(min64(kPanel, p.Cout - n0));
  const int64_t ih0 = oh * p.sh - p.ph, iw0 = ow0 * p.sw - p.pw;
  float* out[R];
  for (int i = 0; i < R; ++i) out[i] = p.y + ((n * p.OH + oh) * p.OW + ow0 + i) * p.Cout + n0;
  const float* panel = p.w + n0 * p.Kc;
  const float* bias = p.bias + n0;
  if (inside) {
    const float* a = p.x + n * p.xn + ih0 * p.xh + iw0 * p.xw;
    const int64_t lda = p.sw * p.xw;  // between neighbouring output pixels' windows
    if constexpr (R == T) {
      if (lda == 2) {  // an NCHW input at stride 2 (the stem)
        pw_tile<R, A, kPanel, true, 2>(a, lda, panel, p.Kc, valid, bias, nullptr, 0, out, p.off);
        return;
      }
      if (lda == 6) {  // a 3-channel channels-last input at stride 2
        pw_tile<R, A, kPanel, true, 6>(a, lda, panel, p.Kc, valid, bias, nullptr, 0, out, p.off);
        return;
      }
    }
    pw_tile<R, A, kPanel, true>(a, lda, panel, p.Kc, valid, bias, nullptr, 0, out, p.off);
    return;
  }
  for (int i = 0; i < R; ++i) {
    float* row = gathered + i * p.Kc;
    for (int64_t c = 0, k = 0; c < p.C; ++c)
      for (int64_t a = 0; a < p.kh; ++a)
        for (int64_t b = 0; b < p.kw; ++b, ++k) {
          const int64_t ih = ih0 + a * p.dh, iw = iw0 + i * p.sw + b * p.dw;
          row[k] = ih >= 0 && ih < p.H && iw >= 0 && iw < p.W ? p.x[n * p.xn + c * p.xc + ih * p.xh + iw * p.xw]
                                                               : 0.f;
        }
  }
  pw_tile<R, A, kPanel>(gathered, p.Kc, panel, p.Kc, valid, bias, nullptr, 0, out);
}

// Output pixels [ow, stop) of row (n, oh), one panel: tiles of the level's
// tile rows, then 8, 4, 2, 1.
template <Activation A>
MNV3_HD void conv_span(const ConvProblem& p, int64_t n, int64_t oh, int64_t ow, int64_t stop, int64_t n0,
                       bool inside, float* gathered) {
  constexpr int T = tile_rows<kPanel>();
  for (; ow + T <= stop; ow += T) conv_tile<T, A>(p, n, oh, ow, n0, inside, gathered);
  if constexpr (T > 8) {
    if (ow + 8 <= stop) { conv_tile<8, A>(p, n, oh, ow, n0, inside, gathered); ow += 8; }
  }
  if constexpr (T > 4) {
    if (ow + 4 <= stop) { conv_tile<4, A>(p, n, oh, ow, n0, inside, gathered); ow += 4; }
  }
  if constexpr (T > 2) {
    if (ow + 2 <= stop) { conv_tile<2, A>(p, n, oh, ow, n0, inside, gathered); ow += 2; }
  }
  if constexpr (T > 1) {
    if (ow + 1 <= stop) conv_tile<1, A>(p, n, oh, ow, n0, inside, gathered);
  }
}

// Tasks [begin, end) of (output row, panel).  In a row whose windows lie inside
// x vertically, the pixels [ow_lo, ow_hi) read x in place; the rest (the
// stem's first pixel of each row, its first row) gather.
template <Activation A>
void conv_range(const ConvProblem& p, float* gathered, int64_t begin, int64_t end) {
  const int64_t panels = (p.Cout + kPanel - 1) / kPanel;
  for (int64_t t = begin; t < end; ++t) {
    const int64_t row = t / panels, n0 = t % panels * kPanel;
    const int64_t n = row / p.OH, oh = row % p.OH, ih0 = oh * p.sh - p.ph;
    if (ih0 < 0 || ih0 + (p.kh - 1) * p.dh >= p.H) {
      conv_span<A>(p, n, oh, 0, p.OW, n0, false, gathered);
      continue;
    }
    conv_span<A>(p, n, oh, 0, p.ow_lo, n0, false, gathered);
    conv_span<A>(p, n, oh, p.ow_lo, p.ow_hi, n0, true, gathered);
    conv_span<A>(p, n, oh, p.ow_hi, p.OW, n0, false, gathered);
  }
}

// ---------------------------------------------------------------------------
// pointwise_dwconv on wide images: a thread walks a band of output rows and
// keeps the expanded input rows it needs in a ring of (K-1)*dilation+1 rows
// in 16-channel blocks; a row is computed (pw_rows) once per band, the first
// rows of a band again by the neighbouring band (the halo).  The padding
// columns and channels of the ring stay zero: pw_rows writes only the W real
// pixels' C channels.  row(r, n, oh, rows) then computes output row r = (n, oh)
// from its tap rows.
template <Activation A1, typename Row>
void ring_walk(const PwProblem& pw, const DwProblem& d, float* ring, int64_t* tags, float** out, int64_t begin,
               int64_t end, Row&& row) {
  const int64_t R = (d.K - 1) * d.dh + 1, row_floats = d.Wp * kDwBlock;
  const int64_t panels = (pw.Nc + kPanel - 1) / kPanel;
  const float* rows[kMaxDwSpan];
  for (int64_t i = 0; i < R; ++i) tags[i] = -1;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / d.OH, oh = r % d.OH;
    for (int64_t kh = 0; kh < d.K; ++kh) {
      const int64_t ih = oh * d.sh - d.ph + kh * d.dh;
      if (ih < 0 || ih >= d.H) {
        rows[kh] = d.zero;
        continue;
      }
      const int64_t slot = ih % R, tag = n * d.H + ih;
      float* buf = ring + slot * row_floats;
      if (tags[slot] != tag) {  // expand input row (n, ih) into the ring
        const float* a = pw.x + tag * d.W * pw.K;
        for (int64_t w = 0; w < d.W; ++w) out[w] = buf + (d.pw + w) * kDwBlock;
        for (int64_t pnl = 0; pnl < panels; ++pnl) pw_rows<A1>(pw, a, pw.K, 0, d.W, out, pnl * kPanel);
        tags[slot] = tag;
      }
      rows[kh] = buf;
    }
    row(r, n, oh, rows);
  }
}

template <Activation A1>
void pointwise_dw_range(const PwProblem& pw, const DwProblem& d, float* ring, int64_t* tags, float** out,
                        int64_t begin, int64_t end) {
  ring_walk<A1>(pw, d, ring, tags, out, begin, end,
                [&](int64_t, int64_t n, int64_t oh, const float* const* rows) { dw_ring_row(d, rows, n, oh); });
}

// The same walk with the block's projection behind it: the depthwise outputs
// of `group` output rows at a time go to `mid` ([group * OW][C]) instead of
// d.y, and proj (x, M, y, res set here) turns them into output rows there, so
// the depthwise output never leaves the thread's cache.
template <Activation A1>
void pointwise_dw_project_range(const PwProblem& pw, const DwProblem& d, const PwProblem& proj, Activation act3,
                                int64_t group, float* ring, int64_t* tags, float** out, float* mid, int64_t begin,
                                int64_t end) {
  const int64_t panels = (proj.Nc + kPanel - 1) / kPanel, pixels = d.OW;
  DwProblem into = d;
  into.row_sums = nullptr;
  int64_t first = begin;  // the pending group's first output row
  ring_walk<A1>(pw, d, ring, tags, out, begin, end, [&](int64_t r, int64_t, int64_t, const float* const* rows) {
    into.y = mid + (r - first) * pixels * d.C;
    dw_ring_row(into, rows, 0, 0);  // (n, oh) = (0, 0): the row at into.y
    if (r + 1 - first < group && r + 1 < end) return;
    PwProblem part = proj;
    part.x = mid;
    part.M = (r + 1 - first) * pixels;
    part.y = proj.y + first * pixels * proj.ldy;
    part.res = proj.res == nullptr ? nullptr : proj.res + first * pixels * proj.Nc;
    pointwise_tiles(part, act3, nullptr, 0, RowBlocks(part.M).count * panels);
    first = r + 1;
  });
}

}  // namespace

void pointwise_tiles(const PwProblem& p, Activation act, float* scaled, int64_t begin, int64_t end) {
  dispatch_activation(act, [&](auto a) { tiles_range<decltype(a)::value>(p, scaled, begin, end); });
}

void pointwise_gemv(const PwProblem& p, Activation act, int64_t begin, int64_t end) {
  dispatch_activation(act, [&](auto a) { gemv_range<decltype(a)::value>(p, begin, end); });
}

void conv_rows(const ConvProblem& p, Activation act, float* gathered, int64_t begin, int64_t end) {
  dispatch_activation(act, [&](auto a) { conv_range<decltype(a)::value>(p, gathered, begin, end); });
}

void pointwise_dw_rows(const PwProblem& pw, const DwProblem& d, Activation act, float* ring, int64_t* tags,
                       float** out, int64_t begin, int64_t end) {
  dispatch_activation(act, [&](auto a) { pointwise_dw_range<decltype(a)::value>(pw, d, ring, tags, out, begin, end); });
}

void pointwise_dw_project_rows(const PwProblem& pw, const DwProblem& d, Activation act, const PwProblem& proj,
                               Activation proj_act, int64_t group, float* ring, int64_t* tags, float** out,
                               float* mid, int64_t begin, int64_t end) {
  dispatch_activation(act, [&](auto a) {
    pointwise_dw_project_range<decltype(a)::value>(pw, d, proj, proj_act, group, ring, tags, out, mid, begin, end);
  });
}

}  // namespace MNV3_LEVEL_NS
}  // namespace mnv3
