// The plan's resize step (bilinear interpolation, channels-last): each output
// pixel a blend of four input pixels' channel rows, in aten's order of the
// products.  The channel loop is left to the compiler's vectorizer at each
// level's width: the rows are contiguous and C is any count (LR-ASPP's 21).
// Compiled once per vector ISA level (level.h).
#include "kernels.h"

namespace mnv3 {
namespace MNV3_LEVEL_NS {

void resize_rows(const ResizeProblem& p, int64_t begin, int64_t end) {
  const int64_t C = p.C, row = p.W * C;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / p.OH, oh = r % p.OH;
    const float h1l = p.row_l[oh], h0l = 1.f - h1l;
    const float* r0 = p.x + (n * p.H + p.row_i0[oh]) * row;
    const float* r1 = r0 + p.row_step[oh] * row;
    float* out = p.y + r * p.OW * C;
    for (int64_t ow = 0; ow < p.OW; ++ow, out += C) {
      const float w1l = p.col_l[ow], w0l = 1.f - w1l;
      const int64_t c0 = p.col_i0[ow] * C, c1 = c0 + p.col_step[ow] * C;
      const float* __restrict__ p00 = r0 + c0;
      const float* __restrict__ p01 = r0 + c1;
      const float* __restrict__ p10 = r1 + c0;
      const float* __restrict__ p11 = r1 + c1;
      float* __restrict__ o = out;
      for (int64_t c = 0; c < C; ++c) o[c] = h0l * (w0l * p00[c] + w1l * p01[c]) + h1l * (w0l * p10[c] + w1l * p11[c]);
    }
  }
}

}  // namespace MNV3_LEVEL_NS
}  // namespace mnv3
