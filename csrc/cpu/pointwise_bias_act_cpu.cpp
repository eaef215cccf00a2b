// CPU kernel of mnv3::pointwise_bias_act: a 1x1 convolution (or a Linear) as
// a matrix product with its epilogue fused,
//   y[m, :] = act(W (x[m, :] * scale[sample(m), :]) + b) (+ residual[m, :]),
// on the rows of a channels-last activation ([N*H*W, Cin], the tensor's own
// memory) or of a 2-d [M, Cin] matrix.  `scale` is the SE gate: applying it
// where the projection reads its input saves the separate pass that scales the
// whole activation.
//
// Register tiles of kRows rows x 16 output channels (one AVX-512 register per
// row: 12 accumulators, the weight vector and the broadcast input).  Weights
// are read as panels of 16 output channels, [ceil(Cout/16)][Cin][16] with the
// last panel zero-padded (layout.pack_pointwise_weight): a tile reads its
// panel front to back, so the first pass over weights that are not in cache
// streams sequential memory (the hardware prefetcher runs ahead) instead of
// one cache line per weight row, a page apart for wide layers (measured: that
// first pass dominated the 7x7 layers' time in a whole forward).  A caller
// that packs once (cpu_conv.prepack) passes the panels; a [Cout, Cin] weight
// is packed per call.  The tiles are the unit of
// the parallel split (row blocks outer, 16-channel panels inner, so a thread
// reuses its rows across panels).  fp32 only: it backs the fp32 CPU fast path;
// other dtypes run the reference.
#include "cpu_utils.h"
#include "dw_row.h"
#include "simd.h"

#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <optional>
#include <vector>

namespace mnv3 {
namespace {

constexpr int kLanes = 16;  // output channels per panel
constexpr int kRows = 12;   // rows per full register tile (measured best of 6x32, 8x32, 12x16, 14x16 on AVX-512)

template <int L = kLanes>
MNV3_HD vfloat<L> vload_partial(const float* p, int n) {
  vfloat<L> v = vzero<L>();
  memcpy(&v, p, sizeof(float) * n);
  return v;
}

// One tile: MR rows of a (row stride lda) x one weight panel b ([K][16]; `valid`
// of its 16 channels exist, the rest are zero), L of its lanes computed (8 for
// a panel with at most 8 channels, see pw_tile_at).  Input k of row i is
// a[i * lda + k], or with Gather a[i * lda + off[k]] (conv_bias_act's taps);
// LDA > 0: lda known at compile time (the 12 loads of a step then address off
// one register, not 12 row pointers that no longer fit the integer registers).
// Output row i goes to c[i] (rows may be anywhere: the padded layout of
// pointwise_dwconv); residual row i (if any) is res + i * ldr.
template <int MR, Activation A, bool Gather = false, int LDA = 0, int L = kLanes>
MNV3_HD void pw_tile(const float* a, int64_t lda, const float* b, int64_t K, int valid, const float* bias,
                     const float* res, int64_t ldr, float* const* c, const int64_t* off = nullptr) {
  const int64_t step = LDA > 0 ? LDA : lda;
  const bool full = valid == L;
  // Every loop over the MR rows unrolled, the epilogue's cases outside them: the
  // accumulators then stay in registers (with runtime branches inside the row loop,
  // GCC kept acc[] on the stack: 12 stores before the k loop and 12 after, measured
  // ~20% of a K = 16 tile's time).
  vfloat<L> acc[MR];
  const vfloat<L> bv = full ? vload<L>(bias) : vload_partial<L>(bias, valid);
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) acc[i] = bv;
  for (int64_t k = 0; k < K; ++k) {
    const vfloat<L> w = vload<L>(b + k * kLanes);
    const float* ak = Gather ? a + off[k] : a + k;
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) acc[i] += ak[i * step] * w;
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) acc[i] = activate<A>(acc[i]);
  if (full && res == nullptr) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) vstore<L>(c[i], acc[i]);
  } else if (full) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) vstore<L>(c[i], acc[i] + vload<L>(res + i * ldr));
  } else {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      vfloat<L> y = acc[i];
      if (res != nullptr) y += vload_partial<L>(res + i * ldr, valid);
      float tmp[L];
      vstore<L>(tmp, y);
      memcpy(c[i], tmp, sizeof(float) * valid);
    }
  }
}

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
  // in 16-channel blocks, dw_row.h).
  int64_t panel_stride = kLanes;
  int64_t M, K, Nc, rows_per_sample;
  // Row-padded output (pointwise_dwconv): when out_w > 0, row m = pixel w of
  // image row r = m / out_w (of all samples' rows in turn) goes to
  // y + (r * Wp + w + pw) * ldy, and the pw pixels left of each image row and
  // the Wp - out_w - pw right of it get zeros (written with the row's first and
  // last pixel, panel by panel: no separate pass clears the padding).
  int64_t out_w, Wp, pw;
};

MNV3_HD float* pw_out_row(const PwProblem& p, int64_t m) {
  if (p.out_w == 0) return p.y + m * p.ldy;
  return p.y + ((m / p.out_w) * p.Wp + m % p.out_w + p.pw) * p.ldy;
}

// The padding pixels of row-padded output rows [m0, m0 + mr), channels [n0, n0 + 16).
MNV3_HD void pw_zero_padding(const PwProblem& p, int64_t m0, int64_t mr, float* const* out, int64_t n0) {
  const vfloat<kLanes> zero = vzero<kLanes>();
  for (int64_t i = 0; i < mr; ++i) {
    const int64_t col = (m0 + i) % p.out_w;
    if (col == 0)
      for (int64_t j = 1; j <= p.pw; ++j) vstore<kLanes>(out[i] - j * p.ldy + n0 / kLanes * p.panel_stride, zero);
    if (col == p.out_w - 1)
      for (int64_t j = 1; j < p.Wp - p.out_w - p.pw + 1; ++j)
        vstore<kLanes>(out[i] + j * p.ldy + n0 / kLanes * p.panel_stride, zero);
  }
}

// R rows from row m of one panel (a: those rows' inputs; out: their output rows).
template <int R, Activation A>
MNV3_HD void pw_tile_at(const PwProblem& p, const float* a, int64_t lda, int64_t m, float* const* out, int64_t n0,
                        int valid) {
  const float* res = p.res == nullptr ? nullptr : p.res + m * p.Nc + n0;
  float* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = out[i] + n0 / kLanes * p.panel_stride;
  // A last panel of at most 8 channels (24, 40, 72, 120, 184, 200 outputs) on
  // 8-lane vectors: half the multiply-adds (an AVX-512 core issues two 8-lane
  // FMAs where it issues one 16-lane FMA).
  if (valid <= kLanes / 2)
    pw_tile<R, A, false, 0, kLanes / 2>(a, lda, p.w + n0 * p.K, p.K, valid, p.bias + n0, res, p.Nc, rows);
  else
    pw_tile<R, A>(a, lda, p.w + n0 * p.K, p.K, valid, p.bias + n0, res, p.Nc, rows);
}

// Rows are cut into blocks of near-equal size: ceil(M / 12) blocks of
// floor(M / blocks) rows, the first M % blocks of them one row more (49 rows:
// 10, 10, 10, 10, 9 rather than 12, 12, 12, 12, 1, whose one-row tile costs a
// pass over the weights for one FMA per load, and splits unevenly between
// threads: measured on the 7x7 layers).
struct RowBlocks {
  int64_t count, base, extra;
  explicit RowBlocks(int64_t M) : count((M + kRows - 1) / kRows) {
    base = count > 0 ? M / count : 0;
    extra = count > 0 ? M % count : 0;
  }
  int64_t start(int64_t b) const { return b * base + std::min(b, extra); }
  int64_t size(int64_t b) const { return base + (b < extra ? 1 : 0); }
};

// Rows [m0, m0 + mr) (1 <= mr <= R <= kRows) of one panel as one tile of mr
// rows (each tile size is its own instantiation: the accumulators stay in
// registers); out[i]: the output row of row m0 + i.  (No lambdas here: a target
// clone compiles only what is inlined into it.)
template <Activation A, int R = kRows>
MNV3_HD void pw_block(const PwProblem& p, const float* a, int64_t lda, int64_t m0, int64_t mr, float* const* out,
                      int64_t n0) {
  if (mr == R) {
    pw_tile_at<R, A>(p, a, lda, m0, out, n0, static_cast<int>(std::min<int64_t>(kLanes, p.Nc - n0)));
  } else if constexpr (R > 1) {
    pw_block<A, R - 1>(p, a, lda, m0, mr, out, n0);
  }
}

// Rows [m0, m0 + mr) of one panel as tiles of kRows, then 8, 4, 2, 1 rows
// (pointwise_dwconv's rows of 56 or more pixels: short tails; and only 5 tile
// sizes compiled into each of its 16 activation pairs, against 12 in pw_block).
template <Activation A>
MNV3_HD void pw_rows(const PwProblem& p, const float* a, int64_t lda, int64_t m0, int64_t mr, float* const* out,
                     int64_t n0) {
  const int valid = static_cast<int>(std::min<int64_t>(kLanes, p.Nc - n0));
  int64_t i = 0;
  for (; i + kRows <= mr; i += kRows) pw_tile_at<kRows, A>(p, a + i * lda, lda, m0 + i, out + i, n0, valid);
  if (i + 8 <= mr) { pw_tile_at<8, A>(p, a + i * lda, lda, m0 + i, out + i, n0, valid); i += 8; }
  if (i + 4 <= mr) { pw_tile_at<4, A>(p, a + i * lda, lda, m0 + i, out + i, n0, valid); i += 4; }
  if (i + 2 <= mr) { pw_tile_at<2, A>(p, a + i * lda, lda, m0 + i, out + i, n0, valid); i += 2; }
  if (i + 1 <= mr) pw_tile_at<1, A>(p, a + i * lda, lda, m0 + i, out + i, n0, valid);
}

// Tasks [begin, end) of (row block (RowBlocks), panel), row blocks outer, or
// with panel_major of (panel, row block), panels outer (pointwise_dwconv's
// small images: a thread's depthwise half then reads the channel blocks it
// expanded).  Per row block, once: its output row addresses and, with a scale,
// its rows copied scaled into `scaled` (kRows x K), which every panel then reads.
template <Activation A>
MNV3_CPU_CLONES void pw_range(const PwProblem& p, float* scaled, int64_t begin, int64_t end, bool panel_major = false) {
  const int64_t panels = (p.Nc + kLanes - 1) / kLanes;
  const RowBlocks blocks(p.M);
  int64_t current = -1;
  float* out[kRows];
  for (int64_t t = begin; t < end; ++t) {
    const int64_t block = panel_major ? t % blocks.count : t / panels;
    const int64_t panel = panel_major ? t / blocks.count : t % panels;
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
    pw_block<A>(p, p.scale != nullptr ? scaled : a, p.K, m0, mr, out, panel * kLanes);
    if (p.out_w > 0) pw_zero_padding(p, m0, mr, out, panel * kLanes);
  }
}

// One row (M = 1: batch-1 Linears, SE fc layers): blocks of kGemvVectors
// panels, each with its accumulators in registers while the panels stream past
// side by side (k outer; each panel read front to back).  A panel at a time
// would keep one accumulator busy: a chain of dependent FMAs.
constexpr int kGemvVectors = 8;
constexpr int kGemvColumns = kGemvVectors * kLanes;

template <Activation A>
MNV3_CPU_CLONES void gemv_range(const PwProblem& p, int64_t begin, int64_t end) {
  for (int64_t blk = begin; blk < end; ++blk) {
    const int64_t n0 = blk * kGemvColumns;
    const int64_t width = std::min<int64_t>(kGemvColumns, p.Nc - n0);
    const int nv = static_cast<int>((width + kLanes - 1) / kLanes);
    const int last = static_cast<int>(width - (nv - 1) * kLanes);  // valid lanes of the last vector
    vfloat<kLanes> acc[kGemvVectors];
    for (int v = 0; v < kGemvVectors; ++v) acc[v] = vzero<kLanes>();
    const float* w = p.w + n0 * p.K;  // this block's first panel
    const int64_t panel = p.K * kLanes;
    if (nv == kGemvVectors) {
      for (int64_t k = 0; k < p.K; ++k) {
        const float a = p.scale == nullptr ? p.x[k] : p.x[k] * p.scale[k];
        for (int v = 0; v < kGemvVectors; ++v) acc[v] += a * vload<kLanes>(w + v * panel + k * kLanes);
      }
    } else {
      for (int64_t k = 0; k < p.K; ++k) {
        const float a = p.scale == nullptr ? p.x[k] : p.x[k] * p.scale[k];
        for (int v = 0; v < nv; ++v) acc[v] += a * vload<kLanes>(w + v * panel + k * kLanes);
      }
    }
    for (int v = 0; v < nv; ++v) {
      const int valid = v + 1 < nv ? kLanes : last;
      const float* bias = p.bias + n0 + v * kLanes;
      vfloat<kLanes> y = acc[v] + (valid == kLanes ? vload<kLanes>(bias) : vload_partial<kLanes>(bias, valid));
      y = activate<A>(y);
      float* out = p.y + n0 + v * kLanes;
      if (valid == kLanes) {
        if (p.res != nullptr) y += vload<kLanes>(p.res + n0 + v * kLanes);
        vstore<kLanes>(out, y);
      } else {
        if (p.res != nullptr) y += vload_partial<kLanes>(p.res + n0 + v * kLanes, valid);
        float tmp[kLanes];
        vstore<kLanes>(tmp, y);
        memcpy(out, tmp, sizeof(float) * valid);
      }
    }
  }
}

// p on the register tiles (M > 1) or the matrix-vector walk (M = 1), in parallel.
void run_pointwise(const PwProblem& p, Activation act) {
  const int64_t panels = (p.Nc + kLanes - 1) / kLanes, K = p.K;
  const int64_t tasks = ((p.M + kRows - 1) / kRows) * panels;
  dispatch_activation(act, [&](auto act_tag) {
    constexpr Activation A = decltype(act_tag)::value;
    if (p.M == 1) {  // a matrix-vector product: stream the weight panels
      const int64_t blocks = (p.Nc + kGemvColumns - 1) / kGemvColumns;
      torch::stable::parallel_for(0, blocks, grain_for(kGemvColumns * std::max<int64_t>(K, 1)),
                                  [&](int64_t begin, int64_t end) { gemv_range<A>(p, begin, end); });
      return;
    }
    torch::stable::parallel_for(0, tasks, grain_for(kRows * kLanes * std::max<int64_t>(K, 1)),
                                [&](int64_t begin, int64_t end) {
                                  std::vector<float> scaled(p.scale != nullptr ? kRows * K : 0);
                                  pw_range<A>(p, scaled.data(), begin, end);
                                });
  });
}

// Checks the weight of a 1x1 conv on x's channels (a [Cout, Cin] matrix, or its
// panels: a contiguous [ceil(Cout/16), Cin, 16] tensor, Cout from the bias) and
// its [Cout] bias; returns Cout.
int64_t check_pointwise_weights(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                const char* wname = "weight", const char* bname = "bias") {
  const int64_t K = x.size(1);
  STD_TORCH_CHECK(weight.scalar_type() == ScalarType::Float && bias.scalar_type() == ScalarType::Float, wname,
                  " and ", bname, " must be float32");
  STD_TORCH_CHECK(bias.dim() == 1, bname, " must be a [Cout] vector");
  const bool panels = weight.dim() == 3;
  const int64_t Nc = panels ? bias.size(0) : weight.size(0);
  if (panels) {
    STD_TORCH_CHECK(weight.size(0) == (Nc + kLanes - 1) / kLanes && weight.size(1) == K &&
                        weight.size(2) == kLanes &&
                        (weight.size(0) * K == 0 ||  // no elements: any strides (torch calls that contiguous)
                         ((weight.size(0) == 1 || weight.stride(0) == K * kLanes) &&
                          (K == 1 || weight.stride(1) == kLanes) && weight.stride(2) == 1)),
                    wname, " given as panels must be a contiguous [ceil(Cout/16), Cin, 16] = [",
                    (Nc + kLanes - 1) / kLanes, ", ", K, ", 16] tensor (layout.pack_pointwise_weight)");
  } else {
    STD_TORCH_CHECK(weight.dim() == 2 && weight.size(1) == K, wname,
                    " must be a float32 [Cout, Cin] matrix with Cin = ", K, " (or its [ceil(Cout/16), Cin, 16] panels)");
    STD_TORCH_CHECK(bias.size(0) == Nc, bname, " must be a float32 [Cout] vector with Cout = ", Nc);
  }
  check_same_device(x, "x", weight, wname);
  check_same_device(x, "x", bias, bname);
  return Nc;
}

// The weight's panels ([ceil(Nc/16)][K][16], zero-padded): the tensor's memory
// when given so, else packed into `storage`.
const float* weight_panels(const Tensor& weight, int64_t K, int64_t Nc, std::vector<float>& storage) {
  const float* w = static_cast<const float*>(weight.const_data_ptr());
  if (weight.dim() == 3) return w;
  storage.assign(static_cast<size_t>((Nc + kLanes - 1) / kLanes * K * kLanes), 0.f);
  const int64_t s0 = weight.stride(0), s1 = weight.stride(1);
  for (int64_t n = 0; n < Nc; ++n)
    for (int64_t k = 0; k < K; ++k) storage[(n / kLanes * K + k) * kLanes + n % kLanes] = w[n * s0 + k * s1];
  return storage.data();
}

bool is_row_major(const Tensor& t) { return t.dim() == 2 && t.stride(1) == 1 && t.stride(0) == t.size(1); }

Tensor pointwise_bias_act_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias,
                              const std::string& activation, std::optional<Tensor> scale,
                              std::optional<Tensor> residual) {
  STD_TORCH_CHECK(x.is_cpu(), "mnv3::pointwise_bias_act: x must be a CPU tensor");
  STD_TORCH_CHECK(x.scalar_type() == ScalarType::Float, "mnv3::pointwise_bias_act: x must be float32");
  STD_TORCH_CHECK((x.dim() == 4 && is_nhwc_dense(x)) || is_row_major(x),
                  "mnv3::pointwise_bias_act: x must be a channels-last dense 4-d tensor or a row-major 2-d one");
  const Activation act = parse_activation(activation);
  const int64_t K = x.size(1);
  const int64_t Nc = check_pointwise_weights(x, weight, bias);
  const int64_t samples = x.size(0);
  const int64_t rows_per_sample = x.dim() == 4 ? x.size(2) * x.size(3) : 1;
  const int64_t M = samples * rows_per_sample;
  if (scale.has_value()) {
    const Tensor& s = *scale;
    STD_TORCH_CHECK(is_row_major(s) && s.size(0) == samples && s.size(1) == K && s.scalar_type() == ScalarType::Float,
                    "scale must be a row-major float32 [N, Cin] = [", samples, ", ", K, "] matrix");
    check_same_device(x, "x", s, "scale");
  }
  Tensor y = x.dim() == 4 ? empty_4d(samples, Nc, x.size(2), x.size(3), true, ScalarType::Float, x)
                          : empty_2d(M, Nc, ScalarType::Float, x);
  if (residual.has_value()) {
    const Tensor& r = *residual;
    bool same_shape = r.dim() == y.dim();
    for (int64_t d = 0; same_shape && d < y.dim(); ++d) same_shape = r.size(d) == y.size(d);
    STD_TORCH_CHECK(same_shape && r.scalar_type() == ScalarType::Float &&
                        (y.dim() == 4 ? is_nhwc_dense(r) : is_row_major(r)),
                    "residual must be a float32 tensor of the output's shape and layout");
    check_same_device(x, "x", r, "residual");
  }
  if (M == 0 || Nc == 0) return y;

  std::vector<float> w_storage, b_storage;
  PwProblem p{};
  p.x = static_cast<const float*>(x.const_data_ptr());
  p.w = weight_panels(weight, K, Nc, w_storage);
  p.bias = vector_as_float<float>(bias, b_storage);
  p.scale = scale.has_value() ? static_cast<const float*>(scale->const_data_ptr()) : nullptr;
  p.res = residual.has_value() ? static_cast<const float*>(residual->const_data_ptr()) : nullptr;
  p.y = static_cast<float*>(y.mutable_data_ptr());
  p.ldy = Nc;
  p.M = M;
  p.K = K;
  p.Nc = Nc;
  p.rows_per_sample = rows_per_sample;

  run_pointwise(p, act);
  return y;
}

// ---------------------------------------------------------------------------
// mnv3::se_gate: an SE block's gate from its squeeze, G(W2 relu(W1 pooled + b1)
// + b2), its two fc layers on the GEMM above (matrix-vector walks at batch 1)
// in one op call (three before: two fc calls and the gate, ~4 us of dispatch
// each, paid by every SE block of the network).
Tensor se_gate_cpu(const Tensor& pooled, const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2,
                   const std::string& gate) {
  STD_TORCH_CHECK(pooled.is_cpu(), "mnv3::se_gate: pooled must be a CPU tensor");
  STD_TORCH_CHECK(pooled.scalar_type() == ScalarType::Float && is_row_major(pooled),
                  "mnv3::se_gate: pooled must be a row-major float32 [N, C] matrix");
  const Gate kind = parse_gate(gate);
  const int64_t N = pooled.size(0), C = pooled.size(1);
  const int64_t Cr = check_pointwise_weights(pooled, w1, b1, "w1", "b1");
  Tensor hidden = empty_2d(N, Cr, ScalarType::Float, pooled);
  STD_TORCH_CHECK(check_pointwise_weights(hidden, w2, b2, "w2", "b2") == C, "w2 and b2 must have C = ", C,
                  " output channels");
  Tensor y = empty_2d(N, C, ScalarType::Float, pooled);
  if (N == 0 || C == 0) return y;
  std::vector<float> w1_storage, w2_storage, b1_storage, b2_storage;
  PwProblem p{};
  p.x = static_cast<const float*>(pooled.const_data_ptr());
  p.w = weight_panels(w1, C, Cr, w1_storage);
  p.bias = vector_as_float<float>(b1, b1_storage);
  p.y = static_cast<float*>(hidden.mutable_data_ptr());
  p.ldy = Cr;
  p.M = N;
  p.K = C;
  p.Nc = Cr;
  p.rows_per_sample = 1;
  if (Cr > 0) run_pointwise(p, Activation::ReLU);
  p.x = p.y;
  p.w = weight_panels(w2, Cr, C, w2_storage);
  p.bias = vector_as_float<float>(b2, b2_storage);
  p.y = static_cast<float*>(y.mutable_data_ptr());
  p.ldy = C;
  p.K = Cr;
  p.Nc = C;
  run_pointwise(p, Activation::Identity);
  float* out = p.y;
  dispatch_gate(kind, [&](auto gate_tag) {
    constexpr Gate G = decltype(gate_tag)::value;
    for (int64_t i = 0; i < N * C; ++i) out[i] = apply_gate<G>(out[i]);
  });
  return y;
}

// ---------------------------------------------------------------------------
// mnv3::pointwise_dwconv: the expand 1x1 conv and the depthwise conv of an
// inverted residual block in one pass, so the expanded activation (the
// block's widest tensor: 3.2 MB at 112x112x64 in MobileNetV3-Large) never
// goes to memory.  The expanded rows are zero-padded left and right and laid
// out in 16-channel blocks, so the depthwise tiles (dw_row.h) have no borders
// and read their pixels at fixed offsets.  Images of width >= kRingMinWidth:
// a thread walks a band of output rows and keeps the expanded input rows it
// needs in a ring of (K-1)*dilation+1 rows; a row is computed (pw_rows) once
// per band, the first rows of a band again by the neighbouring band (the
// halo).  Smaller images: see pointwise_dwconv_cpu.

// Output rows [begin, end) of the flattened (n, oh) range.  ring: R rows in
// 16-channel blocks (block b of slot s at ring + (b * R + s) * Wp * 16),
// zero-initialized (the padding columns and channels stay zero: pw_rows writes
// only the W real pixels' C channels); out: room for W row addresses.
template <Activation A1>
MNV3_CPU_CLONES void pointwise_dw_range(const PwProblem& pw, const DwProblem& d, float* ring, int64_t* tags,
                                        float** out, int64_t begin, int64_t end) {
  const int64_t R = (d.K - 1) * d.dh + 1, row_floats = d.Wp * kLanes;
  const int64_t panels = (pw.Nc + kLanes - 1) / kLanes;
  const float* rows[16];
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
        for (int64_t w = 0; w < d.W; ++w) out[w] = buf + (d.pw + w) * kLanes;
        for (int64_t pnl = 0; pnl < panels; ++pnl) pw_rows<A1>(pw, a, pw.K, 0, d.W, out, pnl * kLanes);
        tags[slot] = tag;
      }
      rows[kh] = buf;
    }
    dw_row(d, rows, n, oh);
  }
}

// From this input width on, pointwise_dwconv walks rows with a ring of
// expanded rows; below it, it expands the whole image first (measured on 2
// cores: a row of 7 or 14 pixels fills few GEMM register rows, and two threads
// would recompute a large share of halo rows).
constexpr int64_t kRingMinWidth = 56;

std::tuple<Tensor, Tensor> pointwise_dwconv_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                                const std::string& activation, const Tensor& dw_weight,
                                                const Tensor& dw_bias, const std::vector<int64_t>& stride,
                                                const std::vector<int64_t>& padding,
                                                const std::vector<int64_t>& dilation,
                                                const std::string& dw_activation, bool with_mean) {
  STD_TORCH_CHECK(x.is_cpu(), "mnv3::pointwise_dwconv: x must be a CPU tensor");
  STD_TORCH_CHECK(x.scalar_type() == ScalarType::Float && x.dim() == 4 && is_nhwc_dense(x),
                  "mnv3::pointwise_dwconv: x must be a float32 channels-last dense 4-d tensor");
  const int64_t Cin = x.size(1);
  const int64_t C = check_pointwise_weights(x, weight, bias);
  STD_TORCH_CHECK(dw_weight.scalar_type() == ScalarType::Float && dw_bias.scalar_type() == ScalarType::Float,
                  "dw_weight and dw_bias must be float32");
  check_same_device(x, "x", dw_weight, "dw_weight");
  check_same_device(x, "x", dw_bias, "dw_bias");
  const DwGeometry g = dw_geometry(x.size(0), C, x.size(2), x.size(3), dw_weight, dw_bias, stride, padding,
                                   dilation, "dw_weight", "dw_bias");
  STD_TORCH_CHECK(g.kh == g.kw && (g.kh - 1) * g.dh + 1 <= 16,
                  "dw_weight must be a square kernel whose dilated span is at most 16 rows");
  DwProblem d{};
  static_cast<DwGeometry&>(d) = g;
  d.K = g.kh;
  const Activation act1 = parse_activation(activation);
  d.act = parse_activation(dw_activation);
  d.Cp = (C + kLanes - 1) / kLanes * kLanes;
  d.Wp = std::max(d.W + 2 * d.pw, dw_row_width(d));
  d.zero = zero_floats(d.Wp * kLanes);
  Tensor y = empty_4d(d.N, C, d.OH, d.OW, true, ScalarType::Float, x);
  Tensor mean = with_mean ? empty_2d(d.N, C, ScalarType::Float, x)
                          : empty_none(ScalarType::Float, x);
  if (d.N == 0 || C == 0) return {y, mean};

  // Depthwise taps [K*K][Cp] and bias [Cp], channel-padded with zeros: the
  // tensors' memory where they are laid out so already (a tap-major weight,
  // fused_layers.tap_major, with C a multiple of 16), else packed here.
  // (Strides read once: each Tensor accessor is a call through the stable ABI.)
  AlignedFloats wd, bd;
  const float* wsrc = static_cast<const float*>(dw_weight.const_data_ptr());
  const float* bsrc = static_cast<const float*>(dw_bias.const_data_ptr());
  const int64_t ws0 = dw_weight.stride(0), ws2 = dw_weight.stride(2), ws3 = dw_weight.stride(3);
  const int64_t bs0 = dw_bias.stride(0);
  if (C == d.Cp && ws0 == 1 && ws3 == C && ws2 == d.K * C && bs0 == 1) {
    d.w = wsrc;
    d.bias = bsrc;
  } else {
    wd.reset(d.K * d.K * d.Cp, true);
    bd.reset(d.Cp, true);
    float* wp = wd.data();
    for (int64_t kh = 0; kh < d.K; ++kh)
      for (int64_t kw = 0; kw < d.K; ++kw)
        for (int64_t c = 0; c < C; ++c) wp[(kh * d.K + kw) * d.Cp + c] = wsrc[c * ws0 + kh * ws2 + kw * ws3];
    for (int64_t c = 0; c < C; ++c) bd.data()[c] = bsrc[c * bs0];
    d.w = wd.data();
    d.bias = bd.data();
  }
  d.y = static_cast<float*>(y.mutable_data_ptr());
  const AlignedFloats row_sums(with_mean ? d.N * d.OH * d.Cp : 0);  // every (row, block) written
  d.row_sums = with_mean ? row_sums.data() : nullptr;

  std::vector<float> w_storage, b_storage;
  PwProblem pw{};
  pw.x = static_cast<const float*>(x.const_data_ptr());
  pw.w = weight_panels(weight, Cin, C, w_storage);
  pw.bias = vector_as_float<float>(bias, b_storage);
  pw.ldy = kLanes;  // the expanded rows in 16-channel blocks (dw_row.h)
  pw.M = d.W;
  pw.K = Cin;
  pw.Nc = C;
  pw.rows_per_sample = 1;

  const int64_t R = (d.K - 1) * d.dh + 1;
  const int64_t row_work = d.OW * d.Cp * d.K * d.K + d.W * C * Cin;
  dispatch_activation(act1, [&](auto a1) {
    constexpr Activation A1 = decltype(a1)::value;
    if (d.W >= kRingMinWidth) {
      PwProblem ring_pw = pw;
      ring_pw.panel_stride = d.block_stride = R * d.Wp * kLanes;
      torch::stable::parallel_for(0, d.N * d.OH, grain_for(row_work), [&](int64_t begin, int64_t end) {
        const AlignedFloats ring(R * d.Wp * d.Cp, true);
        std::vector<float*> out(static_cast<size_t>(d.W));
        int64_t tags[16];
        pointwise_dw_range<A1>(ring_pw, d, ring.data(), tags, out.data(), begin, end);
      });
      return;
    }
    // Small images: the expand GEMM over every pixel at once (full register
    // tiles), written into a row-padded copy of the expanded images in
    // 16-channel blocks ([Cp/16][count][H][Wp][16]; each row's left and right
    // padding zeroed by the GEMM, see PwProblem), then the depthwise rows from
    // it, block by block: a thread takes a range of channel blocks through
    // both halves (one parallel region; the block it expanded is in its own
    // cache, in L1 for a 7x7 or 14x14 image; measured on 2 threads, 28x28 to
    // 7x7: splitting rows in each half separately cost up to 40 us a layer
    // in the hand-over between them), a
    // zero row standing in above and below the image; samples in groups whose
    // copies fit the kept scratch.  Channels C..Cp of a pixel stay unset: the
    // depthwise loop computes those lanes but never stores them.  (A separate pass zeroing a padded border cost
    // up to 166 KB of single-threaded stores per call, 11x11 around 7x7 x 576.)
    const int64_t plane = d.H * d.Wp;
    const int64_t group = std::max<int64_t>(1, std::min<int64_t>(d.N, kKeptScratchFloats / (plane * d.Cp)));
    const Scratch buffer(group * plane * d.Cp);
    float* padded = buffer.data();
    for (int64_t n0 = 0; n0 < d.N; n0 += group) {
      const int64_t count = std::min(group, d.N - n0);
      PwProblem all = pw;
      all.x = pw.x + n0 * d.H * d.W * Cin;
      all.y = padded;
      all.M = count * d.H * d.W;
      all.out_w = d.W;
      all.Wp = d.Wp;
      all.pw = d.pw;
      all.panel_stride = d.block_stride = count * plane * kLanes;
      const int64_t panels = (C + kLanes - 1) / kLanes, rows = count * d.OH;
      torch::stable::parallel_for(0, panels, grain_for(all.M * kLanes * Cin + rows * d.OW * kLanes * d.K * d.K),
                                  [&](int64_t begin, int64_t end) {
                                    const int64_t blocks = RowBlocks(all.M).count;
                                    pw_range<A1>(all, nullptr, begin * blocks, end * blocks, true);
                                    dw_image_rows(d, padded, n0, rows, begin * rows, end * rows);
                                  });
    }
  });
  if (with_mean)
    mean_from_row_sums(d.row_sums, d.N, d.OH, d.OW, C, d.Cp, static_cast<float*>(mean.mutable_data_ptr()));
  return {y, mean};
}

// ---------------------------------------------------------------------------
// mnv3::conv_bias_act: a dense convolution (groups 1) with bias and activation,
// for layers with few input channels (MobileNetV3's 3x3 stem, 3 -> 16 channels)
// on the same register tiles: tile row i is output pixel (n, oh, ow0 + i), its
// inputs the window's (c, kh, kw) taps, read from x in place through a table of
// per-tap offsets, whatever x's layout (the model's NCHW input needs no
// channels-last copy first).  Pixels whose windows cross the border gather their
// taps, zeros outside, into a small buffer first.

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

// R output pixels (n, oh, ow0..ow0+R-1) x the panel at channel n0.  inside:
// their windows lie inside x (taps read in place), else the taps are gathered
// into `gathered` (room for kRows x Kc floats), zeros outside.
template <int R, Activation A>
MNV3_HD void conv_tile(const ConvProblem& p, int64_t n, int64_t oh, int64_t ow0, int64_t n0, bool inside,
                       float* gathered) {
  const int valid = static_cast<int>(std::min<int64_t>(kLanes, p.Cout - n0));
  const int64_t ih0 = oh * p.sh - p.ph, iw0 = ow0 * p.sw - p.pw;
  float* out[R];
  for (int i = 0; i < R; ++i) out[i] = p.y + ((n * p.OH + oh) * p.OW + ow0 + i) * p.Cout + n0;
  const float* panel = p.w + n0 * p.Kc;
  const float* bias = p.bias + n0;
  if (inside) {
    const float* a = p.x + n * p.xn + ih0 * p.xh + iw0 * p.xw;
    const int64_t lda = p.sw * p.xw;  // between neighbouring output pixels' windows
    if constexpr (R == kRows) {
      if (lda == 2) {  // an NCHW input at stride 2 (the stem)
        pw_tile<R, A, true, 2>(a, lda, panel, p.Kc, valid, bias, nullptr, 0, out, p.off);
        return;
      }
      if (lda == 6) {  // a 3-channel channels-last input at stride 2
        pw_tile<R, A, true, 6>(a, lda, panel, p.Kc, valid, bias, nullptr, 0, out, p.off);
        return;
      }
    }
    pw_tile<R, A, true>(a, lda, panel, p.Kc, valid, bias, nullptr, 0, out, p.off);
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
  pw_tile<R, A>(gathered, p.Kc, panel, p.Kc, valid, bias, nullptr, 0, out);
}

// Output pixels [ow, stop) of row (n, oh), one panel: tiles of kRows, then 8, 4, 2, 1.
template <Activation A>
MNV3_HD void conv_span(const ConvProblem& p, int64_t n, int64_t oh, int64_t ow, int64_t stop, int64_t n0,
                       bool inside, float* gathered) {
  for (; ow + kRows <= stop; ow += kRows) conv_tile<kRows, A>(p, n, oh, ow, n0, inside, gathered);
  if (ow + 8 <= stop) { conv_tile<8, A>(p, n, oh, ow, n0, inside, gathered); ow += 8; }
  if (ow + 4 <= stop) { conv_tile<4, A>(p, n, oh, ow, n0, inside, gathered); ow += 4; }
  if (ow + 2 <= stop) { conv_tile<2, A>(p, n, oh, ow, n0, inside, gathered); ow += 2; }
  if (ow + 1 <= stop) conv_tile<1, A>(p, n, oh, ow, n0, inside, gathered);
}

// Tasks [begin, end) of (output row, panel).  In a row whose windows lie inside
// x vertically, the pixels [ow_lo, ow_hi) read x in place; the rest (the
// stem's first pixel of each row, its first row) gather.
template <Activation A>
MNV3_CPU_CLONES void conv_range(const ConvProblem& p, float* gathered, int64_t begin, int64_t end) {
  const int64_t panels = (p.Cout + kLanes - 1) / kLanes;
  for (int64_t t = begin; t < end; ++t) {
    const int64_t row = t / panels, n0 = t % panels * kLanes;
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

Tensor conv_bias_act_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias, const std::vector<int64_t>& stride,
                         const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation,
                         const std::string& activation) {
  STD_TORCH_CHECK(x.is_cpu(), "mnv3::conv_bias_act: x must be a CPU tensor");
  STD_TORCH_CHECK(x.scalar_type() == ScalarType::Float && x.dim() == 4,
                  "mnv3::conv_bias_act: x must be a float32 4-d tensor [N, C, H, W]");
  const int64_t C = x.size(1);
  STD_TORCH_CHECK(weight.scalar_type() == ScalarType::Float && weight.dim() == 4 && weight.size(1) == C,
                  "weight must be a float32 [Cout, Cin, kh, kw] tensor with Cin = ", C);
  const int64_t Cout = weight.size(0);
  STD_TORCH_CHECK(bias.scalar_type() == ScalarType::Float && bias.dim() == 1 && bias.size(0) == Cout,
                  "bias must be a float32 [Cout] vector with Cout = ", Cout);
  check_same_device(x, "x", weight, "weight");
  check_same_device(x, "x", bias, "bias");
  ConvProblem p{};
  static_cast<DwGeometry&>(p) = conv_geometry(x.size(0), C, x.size(2), x.size(3), weight.size(2), weight.size(3),
                                              stride, padding, dilation);
  p.Cout = Cout;
  const Activation act = parse_activation(activation);
  Tensor y = empty_4d(p.N, p.Cout, p.OH, p.OW, true, ScalarType::Float, x);
  if (p.N == 0 || p.Cout == 0) return y;

  // The weight as panels, taps k = (c * kh + i) * kw + j (weight.flatten(1)'s order),
  // and each tap's offset in x.  (Strides read once: each accessor is a call through
  // the stable ABI.)
  p.Kc = p.C * p.kh * p.kw;
  const int64_t panels = (p.Cout + kLanes - 1) / kLanes;
  std::vector<float> w(static_cast<size_t>(panels * p.Kc * kLanes), 0.f), b_storage;
  std::vector<int64_t> off(static_cast<size_t>(p.Kc));
  const float* wsrc = static_cast<const float*>(weight.const_data_ptr());
  const int64_t w0 = weight.stride(0), w1 = weight.stride(1), w2 = weight.stride(2), w3 = weight.stride(3);
  p.xn = x.stride(0);
  p.xc = x.stride(1);
  p.xh = x.stride(2);
  p.xw = x.stride(3);
  for (int64_t c = 0, k = 0; c < p.C; ++c)
    for (int64_t i = 0; i < p.kh; ++i)
      for (int64_t j = 0; j < p.kw; ++j, ++k) {
        off[k] = c * p.xc + i * p.dh * p.xh + j * p.dw * p.xw;
        for (int64_t o = 0; o < p.Cout; ++o)
          w[(o / kLanes * p.Kc + k) * kLanes + o % kLanes] = wsrc[o * w0 + c * w1 + i * w2 + j * w3];
      }
  p.x = static_cast<const float*>(x.const_data_ptr());
  p.w = w.data();
  p.bias = vector_as_float<float>(bias, b_storage);
  p.y = static_cast<float*>(y.mutable_data_ptr());
  p.off = off.data();
  p.ow_lo = std::min(p.OW, (p.pw + p.sw - 1) / p.sw);
  const int64_t last = p.W - 1 + p.pw - (p.kw - 1) * p.dw;  // the last window start inside x, padded coordinates
  p.ow_hi = std::max(p.ow_lo, last < 0 ? int64_t{0} : std::min(p.OW, last / p.sw + 1));
  const int64_t tasks = p.N * p.OH * panels;
  dispatch_activation(act, [&](auto act_tag) {
    constexpr Activation A = decltype(act_tag)::value;
    torch::stable::parallel_for(0, tasks, grain_for(p.OW * kLanes * p.Kc), [&](int64_t begin, int64_t end) {
      std::vector<float> gathered(static_cast<size_t>(kRows * p.Kc));
      conv_range<A>(p, gathered.data(), begin, end);
    });
  });
  return y;
}

// ---------------------------------------------------------------------------
// mnv3::run_plan: the CPU fast plan of a whole MobileNetV3 forward in one op
// call.  `program` lists the plan's steps (ops.py: PLAN_* codes, then each
// step's tensor indices into `tensors` and its int arguments); each step calls
// the op's CPU kernel above directly.  Per step this saves the Python step, the
// dispatcher and the boxing of a custom op call (~5 us each, measured for a
// tiny pointwise_bias_act; MobileNetV3-Small runs ~45 steps).
enum PlanCode : int64_t { kPlanBlock = 0, kPlanConv = 1, kPlanDw = 2, kPlanPwDw = 3, kPlanGate = 4, kPlanPw = 5,
                          kPlanPool = 6 };

const char* activation_name(int64_t code) {
  static const char* const names[] = {"identity", "relu", "relu6", "hardswish"};
  STD_TORCH_CHECK(code >= 0 && code < 4, "mnv3::run_plan: bad activation code ", code);
  return names[code];
}

const char* gate_name(int64_t code) {
  STD_TORCH_CHECK(code == 0 || code == 1, "mnv3::run_plan: bad gate code ", code);
  return code == 0 ? "hardsigmoid" : "sigmoid";
}

// The spatial mean of a channels-last dense y: [N, C].
Tensor spatial_mean(const Tensor& y) {
  STD_TORCH_CHECK(y.dim() == 4 && is_nhwc_dense(y) && y.scalar_type() == ScalarType::Float,
                  "mnv3::run_plan: the pool step needs a float32 channels-last input");
  const int64_t N = y.size(0), C = y.size(1), HW = y.size(2) * y.size(3);
  Tensor out = empty_2d(N, C, ScalarType::Float, y);
  const float* src = static_cast<const float*>(y.const_data_ptr());
  float* dst = static_cast<float*>(out.mutable_data_ptr());
  const float inv = HW > 0 ? 1.f / static_cast<float>(HW) : 0.f;
  torch::stable::parallel_for(0, N, grain_for(HW * C), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      float* o = dst + n * C;
      std::fill(o, o + C, 0.f);
      for (int64_t p = 0; p < HW; ++p) {
        const float* row = src + (n * HW + p) * C;
        for (int64_t c = 0; c < C; ++c) o[c] += row[c];
      }
      for (int64_t c = 0; c < C; ++c) o[c] *= inv;
    }
  });
  return out;
}

Tensor run_plan_cpu(const Tensor& x, const std::vector<Tensor>& tensors, const std::vector<int64_t>& program) {
  size_t pc = 0;
  auto next = [&]() -> int64_t {
    STD_TORCH_CHECK(pc < program.size(), "mnv3::run_plan: program ends inside a step");
    return program[pc++];
  };
  auto tensor = [&]() -> const Tensor& {
    const int64_t k = next();
    STD_TORCH_CHECK(k >= 0 && k < static_cast<int64_t>(tensors.size()), "mnv3::run_plan: tensor index ", k,
                    " out of range");
    return tensors[static_cast<size_t>(k)];
  };
  auto pair = [&]() -> std::vector<int64_t> {
    const int64_t a = next();
    return {a, next()};
  };
  Tensor y = x, block_input = x, mean = x, gate = x;
  bool have_mean = false, have_gate = false;
  while (pc < program.size()) {
    const int64_t code = next();
    switch (code) {
      case kPlanBlock:
        block_input = y;
        break;
      case kPlanConv: {
        const Tensor& w = tensor();
        const Tensor& b = tensor();
        const std::vector<int64_t> s = pair(), p = pair(), d = pair();
        y = conv_bias_act_cpu(y, w, b, s, p, d, activation_name(next()));
        have_mean = false;
        break;
      }
      case kPlanDw: {
        const Tensor& w = tensor();
        const Tensor& b = tensor();
        const std::vector<int64_t> s = pair(), p = pair(), d = pair();
        const char* act = activation_name(next());
        have_mean = next() != 0;
        std::tie(y, mean) = dwconv_bias_act_cpu_kernel(y, w, b, s, p, d, act, have_mean);
        break;
      }
      case kPlanPwDw: {
        const Tensor& w = tensor();
        const Tensor& b = tensor();
        const char* act = activation_name(next());
        const Tensor& dw_w = tensor();
        const Tensor& dw_b = tensor();
        const std::vector<int64_t> s = pair(), p = pair(), d = pair();
        const char* dw_act = activation_name(next());
        have_mean = next() != 0;
        std::tie(y, mean) = pointwise_dwconv_cpu(y, w, b, act, dw_w, dw_b, s, p, d, dw_act, have_mean);
        break;
      }
      case kPlanGate: {
        const Tensor& w1 = tensor();
        const Tensor& b1 = tensor();
        const Tensor& w2 = tensor();
        const Tensor& b2 = tensor();
        const char* g = gate_name(next());
        STD_TORCH_CHECK(have_mean, "mnv3::run_plan: a gate step needs the squeeze of the step before it");
        gate = se_gate_cpu(mean, w1, b1, w2, b2, g);
        have_gate = true;
        have_mean = false;
        break;
      }
      case kPlanPw: {
        const Tensor& w = tensor();
        const Tensor& b = tensor();
        const char* act = activation_name(next());
        const bool scaled = next() != 0, residual = next() != 0;
        STD_TORCH_CHECK(!scaled || have_gate, "mnv3::run_plan: a scaled step needs a gate step before it");
        y = pointwise_bias_act_cpu(y, w, b, act, scaled ? std::optional<Tensor>(gate) : std::nullopt,
                                   residual ? std::optional<Tensor>(block_input) : std::nullopt);
        have_gate = have_mean = false;
        break;
      }
      case kPlanPool:
        y = spatial_mean(y);
        have_mean = have_gate = false;
        break;
      default:
        STD_TORCH_CHECK(false, "mnv3::run_plan: unknown step code ", code);
    }
  }
  return y;
}

}  // namespace
}  // namespace mnv3

STABLE_TORCH_LIBRARY_IMPL(mnv3, CPU, m) {
  m.impl("pointwise_bias_act", TORCH_BOX(&mnv3::pointwise_bias_act_cpu));
  m.impl("pointwise_dwconv", TORCH_BOX(&mnv3::pointwise_dwconv_cpu));
  m.impl("conv_bias_act", TORCH_BOX(&mnv3::conv_bias_act_cpu));
  m.impl("se_gate", TORCH_BOX(&mnv3::se_gate_cpu));
  m.impl("run_plan", TORCH_BOX(&mnv3::run_plan_cpu));
}
