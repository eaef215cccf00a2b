// CPU kernel of mnv3::pointwise_dwconv, and the same with the block's
// projection behind it (pointwise_dwconv_project_cpu: the plan's pwdwpw
// step).  fp32 only (see pointwise_bias_act_cpu.cpp).
#include "cpu_isa.h"
#include "cpu_ops.h"
#include "pointwise_common.h"

#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <optional>
#include <vector>

namespace mnv3 {

// mnv3::pointwise_dwconv: the expand 1x1 conv and the depthwise conv of an
// inverted residual block in one pass, so the expanded activation (the
// block's widest tensor: 3.2 MB at 112x112x64 in MobileNetV3-Large) never
// goes to memory.  The expanded rows are zero-padded left and right and laid
// out in 16-channel blocks, so the depthwise tiles (kernels/dw_rows.cpp) have no borders
// and read their pixels at fixed offsets.  Images of width >= ring_min_width:
// a thread walks a band of output rows and keeps the expanded input rows it
// needs in a ring of (K-1)*dilation+1 rows; a row is computed (pw_rows) once
// per band, the first rows of a band again by the neighbouring band (the
// halo).  Smaller images: see run_pointwise_dwconv.
//
// pointwise_dwconv_project_cpu: on the ring walk, a thread's depthwise output
// rows go to a small buffer of its own and the projection (1x1 conv + bias +
// activation + residual) runs on them there, so the block's depthwise output
// (as wide as the expanded map: 14 MB at batch 8, 56x56x144 in MobileNetV2)
// is never written to memory and read back.  Smaller images (7x7: their maps
// fit the caches) run the two ops.

// From this input width on, pointwise_dwconv walks rows with a ring of
// expanded rows; below it, it expands the whole image first.  Measured on Zen
// 4, 2 threads, whole frozen models with the threshold switched in one process
// (6-8 interleaved rounds each, time with / time without): at avx512, 56 -> 28
// made MobileNetV2, MNASNet, LCNet, MobileNetV3-Large and -Small 0.90-0.98x at
// batch 1 and 8 (faster in 6-8 of 8 rounds; with pwdwpw the ring also keeps
// the 28x28 blocks' depthwise output in cache), 28 -> 14 0.92-0.98x (LCNet
// batch 1 level), 14 -> 7 1.02-1.12x (a 7-pixel row fills one short GEMM tile,
// and the halo rows two threads recompute are a large share of a 7-row image);
// at avx2, 56 -> 28 0.92-1.01x, but 56 -> 14 made batch 1 1.03-1.13x slower
// (LCNet, Large, MNASNet; batch 8 0.91-0.99x); at baseline, 56 -> 28
// 0.92-0.99x, 28 -> 14 level.  All on 2 threads: with many threads a small
// image's bands are a few rows each and the halo rows recomputed per band
// grow in share (not measured).
inline int64_t ring_min_width(const CpuKernels& k) { return k.lanes >= 16 ? 14 : 28; }

// Floats of expanded rows a thread writes before it runs their depthwise rows
// (the small-image path): 256 KB, a quarter of a Zen 4/5 core's L2.
// At least kChunkPanels channel blocks (or all) of each sample per chunk: the
// small-image path groups fewer samples where a chunk would hold fewer
// (batch 8, 40 -> 120 at 28x28: one block of all 8 samples a chunk, 336-373 us
// on 2 threads; 4 blocks of one sample, 283-291).
constexpr int64_t kChunkFloats = int64_t{64} << 10;
constexpr int64_t kChunkPanels = 4;

// The ring walk with the block's projection behind it (the plan's pwdwpw
// step) projects the depthwise outputs of as many output rows at once as
// make at least this many pixels.
constexpr int64_t kProjectMinRows = 48;

namespace {

// The checked arguments of pointwise_dwconv as the kernels' problems: d (its
// y and row_sums set by the caller) and pw, the depthwise taps and the 1x1
// weights packed when the tensors are not laid out so already.  Holds the
// packed copies: constructed in place, never copied.
class PwdwSetup {
 public:
  PwdwSetup(const Tensor& x, const Tensor& weight, const Tensor& bias, const std::string& activation,
            const Tensor& dw_weight, const Tensor& dw_bias, const std::vector<int64_t>& stride,
            const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation,
            const std::string& dw_activation) {
    STD_TORCH_CHECK(x.is_cpu(), "mnv3::pointwise_dwconv: x must be a CPU tensor");
    STD_TORCH_CHECK(x.scalar_type() == ScalarType::Float && x.dim() == 4 && is_nhwc_dense(x),
                    "mnv3::pointwise_dwconv: x must be a float32 channels-last dense 4-d tensor");
    Cin = x.size(1);
    C = check_pointwise_weights(x, weight, bias);
    STD_TORCH_CHECK(dw_weight.scalar_type() == ScalarType::Float && dw_bias.scalar_type() == ScalarType::Float,
                    "dw_weight and dw_bias must be float32");
    check_same_device(x, "x", dw_weight, "dw_weight");
    check_same_device(x, "x", dw_bias, "dw_bias");
    const DwGeometry g = dw_geometry(x.size(0), C, x.size(2), x.size(3), dw_weight, dw_bias, stride, padding,
                                     dilation, "dw_weight", "dw_bias");
    STD_TORCH_CHECK(g.kh == g.kw && (g.kh - 1) * g.dh + 1 <= kMaxDwSpan,
                    "dw_weight must be a square kernel whose dilated span is at most ", kMaxDwSpan, " rows");
    d = DwProblem{};
    static_cast<DwGeometry&>(d) = g;
    d.K = g.kh;
    act1 = parse_activation(activation);
    d.act = parse_activation(dw_activation);
    d.Cp = (C + kDwBlock - 1) / kDwBlock * kDwBlock;
    d.Wp = std::max(d.W + 2 * d.pw, dw_row_width(d));
    d.zero = zero_floats(d.Wp * kDwBlock);
    if (d.N == 0 || C == 0) return;

    // Depthwise taps [K*K][Cp] and bias [Cp], channel-padded with zeros: the
    // tensors' memory where they are laid out so already (a tap-major weight,
    // fused_layers.tap_major, with C a multiple of 16), else packed here.
    // (Strides read once: each Tensor accessor is a call through the stable ABI.)
    const float* wsrc = static_cast<const float*>(dw_weight.const_data_ptr());
    const float* bsrc = static_cast<const float*>(dw_bias.const_data_ptr());
    const int64_t ws0 = dw_weight.stride(0), ws2 = dw_weight.stride(2), ws3 = dw_weight.stride(3);
    const int64_t bs0 = dw_bias.stride(0);
    if (C == d.Cp && ws0 == 1 && ws3 == C && ws2 == d.K * C && bs0 == 1) {
      d.w = wsrc;
      d.bias = bsrc;
    } else {
      wd_.reset(d.K * d.K * d.Cp, true);
      bd_.reset(d.Cp, true);
      float* wp = wd_.data();
      for (int64_t kh = 0; kh < d.K; ++kh)
        for (int64_t kw = 0; kw < d.K; ++kw)
          for (int64_t c = 0; c < C; ++c) wp[(kh * d.K + kw) * d.Cp + c] = wsrc[c * ws0 + kh * ws2 + kw * ws3];
      for (int64_t c = 0; c < C; ++c) bd_.data()[c] = bsrc[c * bs0];
      d.w = wd_.data();
      d.bias = bd_.data();
    }
    pw = PwProblem{};
    pw.x = static_cast<const float*>(x.const_data_ptr());
    pw.w = weight_panels(weight, Cin, C, w_storage_);
    pw.bias = vector_as_float<float>(bias, b_storage_);
    pw.ldy = kDwBlock;  // the expanded rows in 16-channel blocks (a panel's outputs fill one block)
    pw.M = d.W;
    pw.K = Cin;
    pw.Nc = C;
    pw.rows_per_sample = 1;
    pw.prefetch = weight_prefetch_steps(Cin, C);
  }
  PwdwSetup(const PwdwSetup&) = delete;
  PwdwSetup& operator=(const PwdwSetup&) = delete;

  // Whether the image is wide enough for the ring walk (ring_min_width).
  bool ring() const { return d.W >= ring_min_width(cpu_kernels()); }
  // The ring walk over all output rows (n, oh) in parallel bands: per band a
  // zeroed ring of (K-1)*dilation+1 expanded rows, its tags and row addresses,
  // then walk(ring_pw, ring, tags, out, begin, end) with ring_pw the expand
  // problem writing into the ring's blocks (d.block_stride set to the ring's).
  // extra_row_work: multiply-adds per output row beyond the expand and the
  // depthwise conv (the projection), for the parallel grain.
  template <typename Walk>
  void ring_bands(int64_t extra_row_work, Walk&& walk) {
    const int64_t R = (d.K - 1) * d.dh + 1;
    PwProblem ring_pw = pw;
    ring_pw.panel_stride = d.block_stride = R * d.Wp * kDwBlock;
    const int64_t row_work = d.OW * d.Cp * d.K * d.K + d.W * C * Cin + extra_row_work;
    torch::stable::parallel_for(0, d.N * d.OH, grain_for(row_work), [&](int64_t begin, int64_t end) {
      const AlignedFloats ring(R * d.Wp * d.Cp, true);
      std::vector<float*> out(static_cast<size_t>(d.W));
      int64_t tags[kMaxDwSpan];
      walk(ring_pw, ring.data(), tags, out.data(), begin, end);
    });
  }

  DwProblem d;
  PwProblem pw;
  Activation act1;
  int64_t Cin, C;

 private:
  AlignedFloats wd_, bd_;
  std::vector<float> w_storage_, b_storage_;
};

// pointwise_dwconv of s into d.y (and d.row_sums when set).
void run_pointwise_dwconv(PwdwSetup& s) {
  DwProblem& d = s.d;
  const PwProblem& pw = s.pw;
  const int64_t C = s.C, Cin = s.Cin;
  const CpuKernels& k = cpu_kernels();
  if (s.ring()) {
    s.ring_bands(0, [&](const PwProblem& ring_pw, float* ring, int64_t* tags, float** out, int64_t begin,
                        int64_t end) { k.pointwise_dw_rows(ring_pw, d, s.act1, ring, tags, out, begin, end); });
    return;
  }
  // Small images: the expand GEMM over every pixel at once (full register
  // tiles), written into a row-padded copy of the expanded images in
  // 16-channel blocks ([Cp/16][count][H][Wp][16]; each row's left and right
  // padding zeroed by the GEMM, see PwProblem), then the depthwise rows from
  // it: a thread takes a range of channel blocks and runs both halves on a
  // chunk of them before the next (one parallel region; the blocks it
  // expanded are in its own cache; measured on 2 threads, 28x28 to 7x7:
  // splitting rows in each half separately cost up to 40 us a layer in the
  // hand-over between them; all of a thread's blocks expanded first outgrew
  // L2 at batch 8: 28x28 40 -> 240, 5x5, 1.64-1.87 -> 1.39-1.60 ms, hence
  // chunks of at most kChunkFloats), a
  // zero row standing in above and below the image; samples in groups whose
  // copies fit the kept scratch.  Channels C..Cp of a pixel stay unset: the
  // depthwise loop computes those lanes but never stores them.  (A separate pass zeroing a padded border cost
  // up to 166 KB of single-threaded stores per call, 11x11 around 7x7 x 576.)
  const int64_t plane = d.H * d.Wp;
  // Sample groups small enough that a chunk holds kChunkPanels blocks of every
  // sample in it (else the GEMM reads its input rows once per panel again).
  const int64_t chunk_panels = std::min<int64_t>(kChunkPanels, d.Cp / kDwBlock);
  const int64_t group = std::max<int64_t>(
      1, std::min({d.N, kKeptScratchFloats / (plane * d.Cp), kChunkFloats / (plane * kDwBlock * chunk_panels)}));
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
    all.panel_stride = d.block_stride = count * plane * kDwBlock;
    const int64_t panels = (C + kPanel - 1) / kPanel, rows = count * d.OH;
    // Per chunk: the expand GEMM over the chunk's panels row block by row
    // block (a block's input rows read from L1 for all of the chunk's panels;
    // one panel at a time streamed the whole input once per panel: 32 -> 192
    // at 28x28, 1 thread, 114 us against 92 as two separate ops; 94 now), then
    // the depthwise rows of the chunk's blocks.
    const int64_t chunk = std::max<int64_t>(1, kChunkFloats / (plane * kDwBlock * count));
    torch::stable::parallel_for(0, panels, grain_for(all.M * kPanel * Cin + rows * d.OW * kDwBlock * d.K * d.K),
                                [&](int64_t begin, int64_t end) {
                                  const int64_t blocks = RowBlocks(all.M).count;
                                  for (int64_t b = begin; b < end; b += chunk) {
                                    const int64_t e = std::min(end, b + chunk);
                                    PwProblem part = all;
                                    part.w = all.w + b * kPanel * Cin;
                                    part.bias = all.bias + b * kPanel;
                                    part.y = padded + b * all.panel_stride;
                                    part.Nc = std::min(C, e * kPanel) - b * kPanel;
                                    k.pointwise_tiles(part, s.act1, nullptr, 0, blocks * (e - b));
                                    k.dw_image_rows(d, padded, n0, rows, b * rows, e * rows);
                                  }
                                });
  }
}

}  // namespace

std::tuple<Tensor, Tensor> pointwise_dwconv_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                                const std::string& activation, const Tensor& dw_weight,
                                                const Tensor& dw_bias, const std::vector<int64_t>& stride,
                                                const std::vector<int64_t>& padding,
                                                const std::vector<int64_t>& dilation,
                                                const std::string& dw_activation, bool with_mean) {
  PwdwSetup s(x, weight, bias, activation, dw_weight, dw_bias, stride, padding, dilation, dw_activation);
  DwProblem& d = s.d;
  Tensor y = empty_4d(d.N, s.C, d.OH, d.OW, true, ScalarType::Float, x);
  Tensor mean = with_mean ? empty_2d(d.N, s.C, ScalarType::Float, x) : empty_none(ScalarType::Float, x);
  if (d.N == 0 || s.C == 0) return {y, mean};
  d.y = static_cast<float*>(y.mutable_data_ptr());
  const AlignedFloats row_sums(with_mean ? d.N * d.OH * d.Cp : 0);  // every (row, block) written
  d.row_sums = with_mean ? row_sums.data() : nullptr;
  run_pointwise_dwconv(s);
  if (with_mean)
    mean_from_row_sums(d.row_sums, d.N, d.OH, d.OW, s.C, d.Cp, static_cast<float*>(mean.mutable_data_ptr()));
  return {y, mean};
}

Tensor pointwise_dwconv_project_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                    const std::string& activation, const Tensor& dw_weight, const Tensor& dw_bias,
                                    const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                                    const std::vector<int64_t>& dilation, const std::string& dw_activation,
                                    const Tensor& proj_weight, const Tensor& proj_bias,
                                    const std::string& proj_activation, std::optional<Tensor> residual) {
  PwdwSetup s(x, weight, bias, activation, dw_weight, dw_bias, stride, padding, dilation, dw_activation);
  DwProblem& d = s.d;
  const int64_t Cout = check_pointwise_weights(x, s.C, proj_weight, proj_bias, "proj_weight", "proj_bias");
  const Activation act3 = parse_activation(proj_activation);
  if (!s.ring() || s.C == 0) {  // small images: the two ops (see ring_min_width)
    Tensor mid = empty_4d(d.N, s.C, d.OH, d.OW, true, ScalarType::Float, x);
    if (d.N > 0 && s.C > 0) {
      d.y = static_cast<float*>(mid.mutable_data_ptr());
      run_pointwise_dwconv(s);
    }
    return pointwise_bias_act_cpu(mid, proj_weight, proj_bias, proj_activation, std::nullopt, residual);
  }
  Tensor y = empty_4d(d.N, Cout, d.OH, d.OW, true, ScalarType::Float, x);
  if (residual.has_value()) check_pointwise_residual(x, y, *residual);
  if (d.N == 0 || Cout == 0) return y;

  std::vector<float> w_storage, b_storage;
  PwProblem proj{};
  proj.w = weight_panels(proj_weight, s.C, Cout, w_storage);
  proj.bias = vector_as_float<float>(proj_bias, b_storage);
  proj.res = residual.has_value() ? static_cast<const float*>(residual->const_data_ptr()) : nullptr;
  proj.y = static_cast<float*>(y.mutable_data_ptr());
  proj.ldy = Cout;
  proj.K = s.C;
  proj.Nc = Cout;
  proj.rows_per_sample = 1;
  proj.prefetch = weight_prefetch_steps(s.C, Cout);

  // Output rows projected together: at least kProjectMinRows pixels (full
  // register tiles; a 28-pixel row alone is three 9-10 row tiles).
  const int64_t group = std::max<int64_t>(1, (kProjectMinRows + d.OW - 1) / d.OW);
  const CpuKernels& k = cpu_kernels();
  s.ring_bands(d.OW * s.C * Cout, [&](const PwProblem& ring_pw, float* ring, int64_t* tags, float** out,
                                      int64_t begin, int64_t end) {
    const AlignedFloats mid(group * d.OW * s.C);
    k.pointwise_dw_project_rows(ring_pw, d, s.act1, proj, act3, group, ring, tags, out, mid.data(), begin, end);
  });
  return y;
}

}  // namespace mnv3

STABLE_TORCH_LIBRARY_IMPL(mnv3, CPU, m) {
  m.impl("pointwise_dwconv", TORCH_BOX(&mnv3::pointwise_dwconv_cpu));
}
