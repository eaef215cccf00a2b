// CPU kernel of mnv3::dwconv_bias_act: depthwise conv + bias + activation in
// one pass over the output, with the per-(n, c) mean of the activated output
// (the SE squeeze) accumulated in the same pass when asked for.
//
// The walks over the same arithmetic (csrc/common/dwconv.h):
//  - fp32 channels-last: rows (n, oh) in parallel, vectors of channels
//    (kernels/dw_walks.cpp dw_walk_rows), or for small images and tile-less
//    geometries the 16-channel-block tiles of pointwise_dwconv after a copy
//    into their layout (dw_nhwc_blocked, kernels/dw_rows.cpp);
//  - fp16 / bf16 channels-last: tiles of a few output pixels x a vector of
//    channels (dw_tile, the CUDA kernel's tile, kernels/dw_tiles.cpp), filter
//    packed tap-major so channel loads are contiguous;
//  - any other strides (NCHW, views): planes (n, c) in parallel, output
//    contiguous NCHW; fp32 as vectors along each output row over a padded
//    copy of the plane (kernels/dw_walks.cpp dw_planes), fp16/bf16 one output
//    at a time.
// The channels-last walks and the fp32 plane walk run on the vector ISA
// level's kernels (cpu_isa.h).  The squeeze is deterministic: per-row fp32
// partial sums, reduced in row order.
#include "cpu_isa.h"
#include "cpu_ops.h"
#include "cpu_utils.h"

#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <vector>

namespace mnv3 {
namespace {

// The channels-last walk on the CUDA kernels' tile arithmetic
// (kernels/dw_tiles.cpp): fp16 / bf16, and fp32 geometries without a vector tile.
void dwconv_nhwc_tiles(const void* x, const float* w_packed, const float* bias, void* y, float* row_sums,
                       const DwGeometry& g, Activation act, ScalarType dtype) {
  const CpuKernels& k = cpu_kernels();
  const DwTileProblem p{g, act, storage_of(dtype), x, w_packed, bias, y, row_sums};
  torch::stable::parallel_for(0, g.N * g.OH, grain_for(g.OW * g.C * g.kh * g.kw),
                              [&](int64_t begin, int64_t end) { k.dw_tile_rows(p, begin, end); });
}

// ---- fp32 channels-last ----

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

// x copied into zero-padded rows of 16-channel blocks, then the blocked
// depthwise rows, a thread taking a range of blocks and running both on one
// block before the next (as pointwise_dwconv's small images).  w: taps
// [kh*kw][C] (tap-major), bias [C]; y: [N, OH, OW, C]; row_sums:
// [N*OH, ceil(C/16)*16] or nullptr.
void dw_nhwc_blocked(const float* x, const float* w, const float* bias, float* y, float* row_sums,
                     const DwGeometry& g, Activation act) {
  DwProblem d{};
  static_cast<DwGeometry&>(d) = g;
  d.K = g.kh;
  d.act = act;
  d.Cp = (g.C + kDwBlock - 1) / kDwBlock * kDwBlock;
  d.Wp = std::max(g.W + 2 * g.pw, dw_row_width(g));
  d.zero = zero_floats(d.Wp * kDwBlock);
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
  const CpuKernels& k = cpu_kernels();
  const int64_t blocks = d.Cp / kDwBlock, plane = g.H * d.Wp;
  const int64_t group = std::max<int64_t>(1, std::min<int64_t>(g.N, kKeptScratchFloats / (plane * d.Cp)));
  const Scratch buffer(group * plane * d.Cp);
  float* images = buffer.data();
  for (int64_t n0 = 0; n0 < g.N; n0 += group) {
    const int64_t count = std::min(group, g.N - n0), rows = count * g.OH;
    d.block_stride = count * plane * kDwBlock;
    const int64_t block_work = count * (g.H * g.W * kDwBlock + g.OH * g.OW * kDwBlock * g.kh * g.kw);
    torch::stable::parallel_for(0, blocks, grain_for(block_work), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {  // block b of every input row, zero-padded left and right
        const int64_t c0 = b * kDwBlock, valid = std::min<int64_t>(kDwBlock, g.C - c0);
        for (int64_t r = 0; r < count * g.H; ++r) {
          float* dst = images + b * d.block_stride + r * d.Wp * kDwBlock;
          const float* src = x + ((n0 * g.H + r) * g.W) * g.C + c0;
          memset(dst, 0, sizeof(float) * kDwBlock * g.pw);
          for (int64_t i = 0; i < g.W; ++i)
            memcpy(dst + (g.pw + i) * kDwBlock, src + i * g.C, sizeof(float) * valid);
          memset(dst + (g.pw + g.W) * kDwBlock, 0, sizeof(float) * kDwBlock * (d.Wp - g.pw - g.W));
        }
        k.dw_image_rows(d, images, n0, rows, b * rows, (b + 1) * rows);  // while the block is in cache
      }
    });
  }
}

// The vector walk that reads x in place (g has a compile-time tile); planes
// narrower than kPadCopyMaxW run on a zero-padded copy (no border columns).
void dwconv_nhwc_f32(const float* x, const float* w_packed, const float* bias, float* y, float* row_sums,
                     const DwGeometry& g, Activation act) {
  const int64_t work = g.OW * g.C * g.kh * g.kw;
  std::vector<float> padded;
  DwWalkProblem p{g, act, x, w_packed, bias, y, row_sums};
  if (g.W < kPadCopyMaxW && (g.ph > 0 || g.pw > 0)) {
    DwGeometry& gp = p.g;
    gp.H = g.H + 2 * g.ph;
    gp.W = g.W + 2 * g.pw;
    gp.ph = gp.pw = 0;
    padded.assign(static_cast<size_t>(g.N * gp.H * gp.W * g.C), 0.f);
    const int64_t row = g.W * g.C;
    torch::stable::parallel_for(0, g.N * g.H, grain_for(row), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / g.H, h = r % g.H;
        std::copy(x + r * row, x + (r + 1) * row, padded.data() + ((n * gp.H + h + g.ph) * gp.W + g.pw) * g.C);
      }
    });
    p.x = padded.data();
  }
  const CpuKernels& k = cpu_kernels();
  torch::stable::parallel_for(0, g.N * g.OH, grain_for(work),
                              [&](int64_t begin, int64_t end) { k.dw_walk_rows(p, begin, end); });
}

// ---- fp32, any other strides (NCHW, views): planes (kernels/dw_walks.cpp) ----
void dwconv_planes_f32(const float* x, const int64_t* xs, const float* w, const float* bias, float* y, float* mean,
                       const DwGeometry& g, Activation act) {
  const CpuKernels& k = cpu_kernels();
  DwPlanesProblem p{};
  p.g = g;
  p.act = act;
  p.x = x;
  for (int i = 0; i < 4; ++i) p.xs[i] = xs[i];
  p.w = w;
  p.bias = bias;
  p.y = y;
  p.mean = mean;
  p.V = dw_plane_lanes(k.lanes, g.OW);
  const int64_t vectors = (g.OW + p.V - 1) / p.V;
  const int64_t columns = (g.W + 2 * g.pw + g.sw - 1) / g.sw;  // of a phase
  const int64_t reach = vectors * p.V + (g.kw - 1) * g.dw / g.sw;  // one past the last index read
  p.rows = g.H + 2 * g.ph;
  p.ld = std::max(columns, reach);
  p.phase = p.rows * p.ld;
  std::vector<int64_t> first(static_cast<size_t>(2 * g.sw));
  for (int64_t q = 0; q < g.sw; ++q) {
    first[q] = ((q - g.pw) % g.sw + g.sw) % g.sw;
    first[g.sw + q] = (first[q] + g.pw) / g.sw;
  }
  p.first = first.data();
  std::vector<int64_t> off(static_cast<size_t>(g.kh * g.kw));
  for (int64_t i = 0; i < g.kh; ++i)
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t col = j * g.dw;
      off[i * g.kw + j] = (col % g.sw) * p.phase + i * g.dh * p.ld + col / g.sw;
    }
  p.off = off.data();
  torch::stable::parallel_for(0, g.N * g.C, grain_for(g.OH * g.OW * g.kh * g.kw), [&](int64_t begin, int64_t end) {
    const AlignedFloats scratch(p.phase * g.sw, true);
    k.dw_planes(p, scratch.data(), begin, end);
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

}  // namespace

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
      // fp32 on the blocked tiles of pointwise_dwconv where dw_blocked says
      // so; their row sums have a padded stride.
      const bool blocked = std::is_same_v<T, float> && dw_blocked(g);
      const int64_t rs_stride = blocked ? (g.C + kDwBlock - 1) / kDwBlock * kDwBlock : g.C;
      std::vector<float> row_sums(with_mean ? static_cast<size_t>(g.N * g.OH * rs_stride) : 0);
      float* rs = with_mean ? row_sums.data() : nullptr;
      if constexpr (std::is_same_v<T, float>) {
        if (blocked) dw_nhwc_blocked(xp, w, b, yp, rs, g, act);
      }
      if (!blocked) {
        if (std::is_same_v<T, float> && f32_walk_has_tile(g)) {
          dwconv_nhwc_f32(reinterpret_cast<const float*>(xp), w, b, reinterpret_cast<float*>(yp), rs, g, act);
        } else {
          dwconv_nhwc_tiles(xp, w, b, yp, rs, g, act, x.scalar_type());
        }
      }
      if (with_mean) mean_from_row_sums(rs, g.N, g.OH, g.OW, g.C, rs_stride, mp);
    } else {
      const int64_t xs[4] = {x.stride(0), x.stride(1), x.stride(2), x.stride(3)};
      if constexpr (std::is_same_v<T, float>) {
        dwconv_planes_f32(xp, xs, w, b, yp, mp, g, act);
      } else {
        dispatch_activation(act, [&](auto act_tag) {
          dwconv_strided<T, decltype(act_tag)::value>(xp, xs, w, b, yp, mp, g);
        });
      }
    }
  });
  return {y, mean};
}

}  // namespace mnv3

STABLE_TORCH_LIBRARY_IMPL(mnv3, CPU, m) {
  m.impl("dwconv_bias_act", TORCH_BOX(&mnv3::dwconv_bias_act_cpu));
}
