// The depthwise half of mnv3::pointwise_dwconv (pointwise_bias_act_cpu.cpp):
// depthwise conv + bias + activation rows from the expanded activation, which
// the expand GEMM writes zero-padded left and right, in 16-channel blocks: a
// row of block b is Wp pixels x 16 channels, contiguous, so a tile's inputs
// and taps sit at compile-time offsets from one pointer (with channels-last
// rows, every pixel and tap of a 5x5 tile needed an address register of its
// own: measured 85 vector spills in the fully unrolled tile).  Own translation
// unit (dw_row_cpu.cpp): the tiles are instantiated per kernel size, stride
// and activation, and compile beside the GEMM file.
#pragma once

#include "cpu_utils.h"

namespace mnv3 {

constexpr int kDwLanes = 16;  // channels per block (and the multiple Cp is padded to)

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

// The row width (pixels) the depthwise tiles read: every tile whole, the last
// one past OW included (its extra pixels are computed from the zero padding
// and never stored).
int64_t dw_row_width(const DwGeometry& g);

// Output row (n, oh), every channel block: rows[kh] is tap row kh's input row
// in block 0 (padded column 0 = input column -pw), block b's at
// rows[kh] + b * block_stride; or d.zero where the tap row is outside the input.
void dw_row(const DwProblem& d, const float* const* rows, int64_t n, int64_t oh);

// Tasks [begin, end) of (channel block, output row (n, oh) from sample n_first),
// rows inner, from whole padded images: block b of sample n's input row ih at
// images + b * block_stride + ((n - n_first) * H + ih) * Wp * 16.
void dw_image_rows(const DwProblem& d, const float* images, int64_t n_first, int64_t rows, int64_t begin,
                   int64_t end);

// Whether dw_row / dw_image_rows run g on a compile-time tile (3x3 or 5x5,
// across: stride 1 or 2 without dilation, or stride 1 with dilation 2); else
// a generic one.
bool dw_has_fixed_tile(const DwGeometry& g);

// mnv3::dwconv_bias_act on a small fp32 channels-last image (dwconv_bias_act_cpu.cpp):
// x copied into zero-padded rows of 16-channel blocks, then dw_image_rows, a
// thread taking a range of blocks through both.  w: taps [kh*kw][C] (tap-major),
// bias [C]; y: [N, OH, OW, C]; row_sums: [N*OH, ceil(C/16)*16] or nullptr.
void dw_nhwc_blocked(const float* x, const float* w, const float* bias, float* y, float* row_sums,
                     const DwGeometry& g, Activation act);

}  // namespace mnv3
