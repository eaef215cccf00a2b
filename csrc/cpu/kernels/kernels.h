// The CPU microkernels' interface: the problems they solve (plain structs of
// pointers and sizes, no torch types) and the table of one vector ISA level's
// kernels (CpuKernels).  The op files (csrc/cpu/*_cpu.cpp) check arguments,
// pack, allocate and split the work between threads; they reach the kernels
// only through the table that cpu_isa.cpp picked (cpu_kernels()).  The kernel
// sources (csrc/cpu/kernels/*.cpp) are compiled once per level (level.h) and
// include nothing of torch, so no symbol of theirs is shared between levels.
//
// Everything defined here is MNV3_HD (always inlined) or constexpr: an
// out-of-line copy of a function compiled for AVX-512 could otherwise be the
// one the linker keeps for every level (setup.py checks the kernel objects).
#pragma once

#include "../../common/activation.h"
#include "../../common/dwconv.h"
#include "../../common/macros.h"

#include <stdint.h>

#if defined(MNV3_CPU_LEVEL_AVX512) || defined(MNV3_CPU_LEVEL_AVX2) || defined(MNV3_CPU_LEVEL_BASELINE)
#include "level.h"  // a kernel source: its level's namespace (MNV3_LEVEL_NS)
#endif

namespace mnv3 {

// Output channels per weight panel of the 1x1 convs: [ceil(Cout/16)][Cin][16]
// (mnv3_kernels/layout.py PANEL).  The same at every level: a level with
// fewer lanes covers a panel with several vectors.
constexpr int kPanel = 16;
// Rows per GEMM task (a row block), at every level; a level's register tile
// covers a block with one tile (AVX-512) or several.
constexpr int kGemmBlockRows = 12;
// Channels per block of the depthwise row layout (pointwise_dwconv's
// expanded rows, dw_nhwc_blocked's copies); channel counts are padded to it.
constexpr int kDwBlock = 16;
static_assert(kDwBlock == kPanel, "pointwise_dwconv writes a weight panel's outputs into one channel block");
// Output pixels per compile-time depthwise tile: fixes the row width the
// tiles read (dw_row_width), so it is one number for every level.
constexpr int kDwTile = 8;
// Rows of a dilated kernel the blocked depthwise walks support (the ring).
constexpr int kMaxDwSpan = 16;

// Rows are cut into blocks of near-equal size: ceil(M / 12) blocks of
// floor(M / blocks) rows, the first M % blocks of them one row more (49 rows:
// 10, 10, 10, 10, 9 rather than 12, 12, 12, 12, 1, whose one-row tile costs a
// pass over the weights for one FMA per load, and splits unevenly between
// threads: measured on the 7x7 layers).
struct RowBlocks {
  int64_t count, base, extra;
  MNV3_HD explicit RowBlocks(int64_t M) : count((M + kGemmBlockRows - 1) / kGemmBlockRows) {
    base = count > 0 ? M / count : 0;
    extra = count > 0 ? M % count : 0;
  }
  MNV3_HD int64_t start(int64_t b) const { return b * base + (b < extra ? b : extra); }
  MNV3_HD int64_t size(int64_t b) const { return base + (b < extra ? 1 : 0); }
};

// y[m, :] = act(W (x[m, :] * scale[sample(m), :]) + b) (+ res[m, :]).
struct PwProblem {
  const float* x;      // [M, K] row-major
  const float* w;      // panels [ceil(Nc/16)][K][16]: w[(n / 16) * K * 16 + k * 16 + n % 16]
  const float* bias;   // [Nc]
  const float* scale;  // [samples, K] or nullptr
  const float* res;    // [M, Nc] row-major or nullptr
  float* y;            // [M, Nc] rows, row stride ldy
  int64_t ldy;
  // Floats between the outputs of consecutive 16-channel panels of a row: 16
  // (channels contiguous), or a block stride (pointwise_dwconv's expanded rows
  // in 16-channel blocks).
  int64_t panel_stride = kPanel;
  int64_t M, K, Nc, rows_per_sample;
  // Row-padded output (pointwise_dwconv): when out_w > 0, row m = pixel w of
  // image row r = m / out_w (of all samples' rows in turn) goes to
  // y + (r * Wp + w + pw) * ldy, and the pw pixels left of each image row and
  // the Wp - out_w - pw right of it get zeros (written with the row's first and
  // last pixel, panel by panel: no separate pass clears the padding).
  int64_t out_w, Wp, pw;
  // Software prefetch of the weight panel this many k steps (64-byte lines)
  // ahead of a register tile's reads, 0: none (weight_prefetch_steps,
  // pointwise_common.h; the matrix-vector walk does not prefetch).
  int64_t prefetch;
};

// A depthwise conv on rows of 16-channel blocks (pointwise_dwconv, dw_nhwc_blocked):
// a row of block b is Wp pixels x 16 channels, contiguous, zero-padded left and right.
struct DwProblem : DwGeometry {  // kh == kw == K
  int64_t K, Cp, Wp;     // Cp: channels padded to 16; Wp: row width in pixels (>= dw_row_width)
  int64_t block_stride;  // floats between the same row of consecutive channel blocks
  Activation act;
  const float* w;        // taps [K*K][Cp], zero-padded channels
  const float* bias;     // [Cp]
  const float* zero;     // a zero row (Wp * 16 floats), for taps above or below the image
  float* y;              // [N, OH, OW, C] channels-last
  float* row_sums;       // [N*OH, Cp]: per output row, the sum of its activated pixels; or nullptr
};

// Whether the blocked depthwise walks run g on a compile-time tile (3x3 or
// 5x5, across: stride 1 or 2 without dilation, or stride 1 with dilation 2);
// else on a generic one (runtime kernel size, stride and dilation).
MNV3_HD bool dw_has_fixed_tile(const DwGeometry& g) {
  const bool stride_dilation = (g.dw == 1 && (g.sw == 1 || g.sw == 2)) || (g.dw == 2 && g.sw == 1);
  return g.kw == g.kh && (g.kw == 3 || g.kw == 5) && stride_dilation;
}

// The row width (pixels) the blocked depthwise tiles read: every tile whole,
// the last one past OW included (its extra pixels are computed from the zero
// padding and never stored).
MNV3_HD int64_t dw_row_width(const DwGeometry& g) {
  if (dw_has_fixed_tile(g)) return ((g.OW + kDwTile - 1) / kDwTile * kDwTile - 1) * g.sw + (g.kw - 1) * g.dw + 1;
  return (g.OW - 1) * g.sw + (g.kw - 1) * g.dw + 1;
}

// A dense convolution (groups 1) as GEMM tiles over gathered taps (conv_bias_act).
struct ConvProblem : DwGeometry {  // (the geometry of any conv: op_glue.h conv_geometry)
  const float* x;
  int64_t xn, xc, xh, xw;  // x's strides
  int64_t Kc, Cout;        // Kc = C * kh * kw taps
  const float* w;          // panels [ceil(Cout/16)][Kc][16]
  const float* bias;       // [Cout]
  float* y;                // [N][OH][OW][Cout]
  const int64_t* off;      // [Kc]: x offset of tap (c, i, j) from its window's first element
  int64_t ow_lo, ow_hi;    // the output columns whose windows lie inside x horizontally
};

// The fp32 channels-last depthwise walk that reads x in place (dwconv_bias_act).
struct DwWalkProblem {
  DwGeometry g;          // ph, pw = 0 when x is a zero-padded copy
  Activation act;
  const float* x;        // [N, H, W, C]
  const float* w;        // taps [kh*kw][C]
  const float* bias;     // [C]
  float* y;              // [N, OH, OW, C]
  float* row_sums;       // [N*OH, C] or nullptr
};

// The fp32 depthwise walk over planes (n, c) of any other layout (NCHW, views).
// Each plane is copied into a zero-padded scratch whose columns are split by
// their phase modulo the column stride sw (see dw_planes in dw_walks.cpp).
struct DwPlanesProblem {
  DwGeometry g;
  Activation act;
  const float* x;
  int64_t xs[4];         // x's strides
  const float* w;        // channel-major [C][kh*kw]
  const float* bias;     // [C]
  float* y;              // contiguous NCHW
  float* mean;           // [N*C] or nullptr
  int V;                 // output columns per vector (dw_plane_lanes)
  int64_t rows;          // padded input rows, H + 2 ph
  int64_t ld;            // floats per row of a phase: every index a vector reads
  int64_t phase;         // floats per phase, rows * ld
  // Per phase q: its first input column, first[q] = (q - pw) mod sw, and
  // that column's index, first[sw + q] = (first[q] + pw) / sw.
  const int64_t* first;
  const int64_t* off;    // [kh*kw]: each tap's offset in the scratch from a tile's base
};

// The element type of a tensor a kernel reads or writes in its own dtype
// (fp16 / bf16 with torch's bit layout, kernels/lowp.h).
enum class Storage : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

// The channels-last depthwise walk on the CUDA kernels' tile arithmetic
// (dwconv_bias_act on fp16 / bf16, and on fp32 geometries without a vector tile).
struct DwTileProblem {
  DwGeometry g;
  Activation act;
  Storage dtype;         // of x and y
  const void* x;         // [N, H, W, C]
  const float* w;        // taps [kh*kw][C]
  const float* bias;     // [C]
  void* y;               // [N, OH, OW, C]
  float* row_sums;       // [N*OH, C] or nullptr
};

// Bilinear resize of a channels-last x [N, H, W, C] to y [N, OH, OW, C] (the
// plan's resize step): output index o of an axis blends input indices i0[o]
// and i0[o] + step[o] with weights 1 - l[o] and l[o] (run_plan_cpu.cpp
// computes the tables as aten does).
struct ResizeProblem {
  const float* x;
  float* y;
  int64_t N, C, H, W, OH, OW;
  const int64_t *row_i0, *row_step, *col_i0, *col_step;
  const float *row_l, *col_l;
};

// Output columns per vector of the plane walk: a level's full vector, or half
// of one (at least 4) for planes no wider than that.
MNV3_HD int dw_plane_lanes(int lanes, int64_t OW) { return lanes > 4 && OW <= lanes / 2 ? lanes / 2 : lanes; }

// One vector ISA level's kernels.  Each range function runs tasks
// [begin, end) of its problem on the calling thread; the op files split the
// tasks between threads.
struct CpuKernels {
  const char* level;   // "avx512", "avx2", "baseline"
  int lanes;           // fp32 lanes per vector
  int gemv_columns;    // output columns per pointwise_gemv task

  // Tasks of (row block (RowBlocks), panel), row blocks outer.  scaled: room
  // for 12 x K floats when p.scale is set (each block's rows, scaled).
  void (*pointwise_tiles)(const PwProblem& p, Activation act, float* scaled, int64_t begin, int64_t end);
  // M = 1: tasks of gemv_columns output columns.
  void (*pointwise_gemv)(const PwProblem& p, Activation act, int64_t begin, int64_t end);
  // Tasks of (output row (n, oh), panel); gathered: room for 12 x Kc floats.
  void (*conv_rows)(const ConvProblem& p, Activation act, float* gathered, int64_t begin, int64_t end);
  // pointwise_dwconv on wide images: output rows [begin, end) of the flattened
  // (n, oh) range, each expanded input row computed once into a ring of
  // (K-1)*dilation+1 rows in 16-channel blocks (block b of slot s at
  // ring + (b * R + s) * Wp * 16, zero-initialized); tags: room for 16;
  // out: room for W row addresses.
  void (*pointwise_dw_rows)(const PwProblem& pw, const DwProblem& d, Activation act, float* ring, int64_t* tags,
                            float** out, int64_t begin, int64_t end);
  // The same rows with the block's projection behind them (the plan's pwdwpw
  // step): each `group` output rows' depthwise outputs go to mid (room for
  // group * OW * C floats) and proj (its w, bias, K = C, Nc, ldy = Nc, res
  // and y of the whole output; x and M are set per group) projects them.
  void (*pointwise_dw_project_rows)(const PwProblem& pw, const DwProblem& d, Activation act, const PwProblem& proj,
                                    Activation proj_act, int64_t group, float* ring, int64_t* tags, float** out,
                                    float* mid, int64_t begin, int64_t end);
  // Tasks of (channel block, output row (n, oh) from sample n_first), rows
  // inner, from whole padded images: block b of sample n's input row ih at
  // images + b * block_stride + ((n - n_first) * H + ih) * Wp * 16.
  void (*dw_image_rows)(const DwProblem& d, const float* images, int64_t n_first, int64_t rows, int64_t begin,
                        int64_t end);
  // Output rows [begin, end) of (n, oh); g must have a compile-time tile
  // (dispatch_dw_tile: square 3x3 / 5x5, stride 1 or 2, no dilation).
  void (*dw_walk_rows)(const DwWalkProblem& p, int64_t begin, int64_t end);
  // Planes [begin, end) of (n, c); scratch: p.phase * sw floats, zeroed.
  void (*dw_planes)(const DwPlanesProblem& p, float* scratch, int64_t begin, int64_t end);
  // Output rows [begin, end) of (n, oh), any geometry.
  void (*dw_tile_rows)(const DwTileProblem& p, int64_t begin, int64_t end);
  // The SE gate's two phases: units [begin, end) of (sample, hidden unit) and
  // of (sample, channel); w1 [Cr, C], w2 [C, Cr] row-major.
  void (*se_hidden)(const float* pooled, const float* w1, const float* b1, float* hidden, int64_t C, int64_t Cr,
                    int64_t begin, int64_t end);
  void (*se_gates)(Gate gate, const float* hidden, const float* w2, const float* b2, float* gates, int64_t C,
                   int64_t Cr, int64_t begin, int64_t end);
  // y = x * gate over pixels [begin, end) of a channels-last x (gates [N, C]).
  void (*scale_nhwc)(Storage dtype, const void* x, const float* gates, void* y, int64_t HW, int64_t C,
                     int64_t begin, int64_t end);
  // Output rows [begin, end) of (n, oh).
  void (*resize_rows)(const ResizeProblem& p, int64_t begin, int64_t end);
};

// The tables of the levels built (each defined by its level's table.cpp).
const CpuKernels& cpu_kernels_avx512();
const CpuKernels& cpu_kernels_avx2();
const CpuKernels& cpu_kernels_baseline();

#if defined(MNV3_LEVEL_NS)
// Inside a kernel source: the level's own functions that another kernel
// source of the same level calls or puts in the table.
namespace MNV3_LEVEL_NS {
constexpr int kGemvVectors = 8;                         // accumulators of the matrix-vector walk
constexpr int kGemvColumns = kGemvVectors * kVecLanes;  // output columns per pointwise_gemv task
static_assert(kGemvColumns % kPanel == 0, "a matrix-vector task covers whole panels");

void pointwise_tiles(const PwProblem& p, Activation act, float* scaled, int64_t begin, int64_t end);
void pointwise_gemv(const PwProblem& p, Activation act, int64_t begin, int64_t end);
void conv_rows(const ConvProblem& p, Activation act, float* gathered, int64_t begin, int64_t end);
void pointwise_dw_rows(const PwProblem& pw, const DwProblem& d, Activation act, float* ring, int64_t* tags,
                       float** out, int64_t begin, int64_t end);
void pointwise_dw_project_rows(const PwProblem& pw, const DwProblem& d, Activation act, const PwProblem& proj,
                               Activation proj_act, int64_t group, float* ring, int64_t* tags, float** out,
                               float* mid, int64_t begin, int64_t end);
// Output row (n, oh), every channel block: rows[kh] is tap row kh's input row
// in block 0 (padded column 0 = input column -pw), block b's at
// rows[kh] + b * block_stride; or d.zero where the tap row is outside the input.
void dw_ring_row(const DwProblem& d, const float* const* rows, int64_t n, int64_t oh);
void dw_image_rows(const DwProblem& d, const float* images, int64_t n_first, int64_t rows, int64_t begin,
                   int64_t end);
void dw_walk_rows(const DwWalkProblem& p, int64_t begin, int64_t end);
void dw_planes(const DwPlanesProblem& p, float* scratch, int64_t begin, int64_t end);
void dw_tile_rows(const DwTileProblem& p, int64_t begin, int64_t end);
void se_hidden(const float* pooled, const float* w1, const float* b1, float* hidden, int64_t C, int64_t Cr,
               int64_t begin, int64_t end);
void se_gates(Gate gate, const float* hidden, const float* w2, const float* b2, float* gates, int64_t C,
              int64_t Cr, int64_t begin, int64_t end);
void scale_nhwc(Storage dtype, const void* x, const float* gates, void* y, int64_t HW, int64_t C, int64_t begin,
                int64_t end);
void resize_rows(const ResizeProblem& p, int64_t begin, int64_t end);
}  // namespace MNV3_LEVEL_NS
#endif

}  // namespace mnv3
