// The fp32 depthwise walks of dwconv_bias_act that read their input in its
// own layout: channels-last rows (dw_walk_rows) and planes of any other
// strides (dw_planes).  Compiled once per vector ISA level (level.h).
#include "kernels.h"
#include "vec.h"

namespace mnv3 {
namespace MNV3_LEVEL_NS {
namespace {

// ---- channels-last ----
// Per output row (n, oh) and vector of V channels: the interior columns (all
// K taps inside the input along W) in tiles of TW pixels (7 where the width
// is a multiple of 7 but not of 4, as MobileNetV3's 7x7 and 14x14 planes at
// 224x224, else 4), then of one, with fixed tap counts; the border columns
// pixel by pixel over their valid taps.  Kernel rows outside the input are
// skipped for the whole row.  Same sums in the same order as dw_tile and
// dw_point (kernel rows, then taps left to right, per output), so all walks
// agree to rounding of the FMA contraction.
template <int K, int S, int TW, int V>
MNV3_HD void interior_tile(const float* xc, int64_t x_sh, int64_t C, const float* wc, int64_t i0, int64_t i1,
                           int64_t ih0, int64_t iw0, vfloat<V> (&acc)[TW]) {
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
MNV3_HD vfloat<V> border_point(const float* xc, int64_t x_sh, int64_t C, const float* wc, const DwGeometry& g,
                               int64_t i0, int64_t i1, int64_t ih0, int64_t ow) {
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
MNV3_HD void store_output(float* yp, vfloat<V> acc, vfloat<V> bias, bool with_sum, vfloat<V>& sum) {
  const vfloat<V> out = activate<A>(acc + bias);
  vstore<V>(yp, out);
  if (with_sum) sum += out;
}

// Channels [c, c + V) of output row oh; ow in [ow_lo, ow_hi) are the interior columns.
template <int K, int S, int TW, Activation A, int V>
MNV3_HD void row_vector(const DwWalkProblem& p, const float* xn, float* yrow, float* sums, int64_t oh, int64_t c,
                        int64_t ow_lo, int64_t ow_hi) {
  const DwGeometry& g = p.g;
  const int64_t C = g.C, x_sh = g.W * C;
  int64_t i0, i1;
  valid_taps(oh, S, g.ph, 1, K, g.H, &i0, &i1);
  const int64_t ih0 = oh * S - g.ph;
  const float* xc = xn + c;
  const float* wc = p.w + c;
  const vfloat<V> b = vload<V>(p.bias + c);
  const bool with_sum = sums != nullptr;
  vfloat<V> sum = vzero<V>();
  int64_t ow = 0;
  for (; ow < ow_lo; ++ow) {
    store_output<A, V>(yrow + ow * C + c, border_point<K, S, V>(xc, x_sh, C, wc, g, i0, i1, ih0, ow), b, with_sum,
                       sum);
  }
  for (; ow + TW <= ow_hi; ow += TW) {
    vfloat<V> acc[TW];
    interior_tile<K, S, TW, V>(xc, x_sh, C, wc, i0, i1, ih0, ow * S - g.pw, acc);
    for (int t = 0; t < TW; ++t) store_output<A, V>(yrow + (ow + t) * C + c, acc[t], b, with_sum, sum);
  }
  for (; ow < ow_hi; ++ow) {
    vfloat<V> acc[1];
    interior_tile<K, S, 1, V>(xc, x_sh, C, wc, i0, i1, ih0, ow * S - g.pw, acc);
    store_output<A, V>(yrow + ow * C + c, acc[0], b, with_sum, sum);
  }
  for (; ow < g.OW; ++ow) {
    store_output<A, V>(yrow + ow * C + c, border_point<K, S, V>(xc, x_sh, C, wc, g, i0, i1, ih0, ow), b, with_sum,
                       sum);
  }
  if (with_sum) vstore<V>(sums + c, sum);
}

// Rows [begin, end) of (n, oh): the channels in vectors of the level's width,
// then of 8 and 4 lanes where narrower (MobileNetV3's 72, 120, 184 and 200
// channels end in 8), then one at a time.
template <int K, int S, int TW, Activation A>
void walk_rows(const DwWalkProblem& p, int64_t begin, int64_t end) {
  const DwGeometry& g = p.g;
  const int64_t C = g.C;
  // Interior columns: ow * S - pw >= 0 and ow * S - pw + K <= W.
  const int64_t ow_lo = min64(g.OW, (g.pw + S - 1) / S);
  const int64_t last = g.W - K + g.pw;
  const int64_t ow_hi = max64(ow_lo, last < 0 ? 0 : min64(g.OW, last / S + 1));
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / g.OH, oh = r % g.OH;
    const float* xn = p.x + n * g.H * g.W * C;
    float* yrow = p.y + r * g.OW * C;
    float* sums = p.row_sums ? p.row_sums + r * C : nullptr;
    int64_t c = 0;
    for (; c + kVecLanes <= C; c += kVecLanes)
      row_vector<K, S, TW, A, kVecLanes>(p, xn, yrow, sums, oh, c, ow_lo, ow_hi);
    if constexpr (kVecLanes > 8) {
      if (c + 8 <= C) {
        row_vector<K, S, TW, A, 8>(p, xn, yrow, sums, oh, c, ow_lo, ow_hi);
        c += 8;
      }
    }
    if constexpr (kVecLanes > 4) {
      if (c + 4 <= C) {
        row_vector<K, S, TW, A, 4>(p, xn, yrow, sums, oh, c, ow_lo, ow_hi);
        c += 4;
      }
    }
    for (; c < C; ++c) row_vector<K, S, TW, A, 1>(p, xn, yrow, sums, oh, c, ow_lo, ow_hi);
  }
}

// ---- any other strides: planes ----
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

// n floats from src to dst as vectors, the last one overlapping the one
// before it (a copy loop compiles to a libc memmove call per row: 11% of a
// 14x14 layer's time).
template <int V>
MNV3_HD void copy_floats_as(float* dst, const float* src, int64_t n) {
  int64_t k = 0;
  for (; k + V <= n; k += V) vstore<V>(dst + k, vload<V>(src + k));
  if (k < n) vstore<V>(dst + n - V, vload<V>(src + n - V));
}

MNV3_HD void copy_floats(float* dst, const float* src, int64_t n) {
  if (n >= kVecLanes) {
    copy_floats_as<kVecLanes>(dst, src, n);
    return;
  }
  if constexpr (kVecLanes > 8) {
    if (n >= 8) {
      copy_floats_as<8>(dst, src, n);
      return;
    }
  }
  if constexpr (kVecLanes > 4) {
    if (n >= 4) {
      copy_floats_as<4>(dst, src, n);
      return;
    }
  }
  for (int64_t k = 0; k < n; ++k) dst[k] = src[k];
}

// Plane (n, c) of x into the scratch's data positions (the padding positions
// are never written: they stay zero).  Padded column col = w + pw goes to
// index col / sw of phase col % sw; per phase, the columns step by sw and the
// indices by 1.
MNV3_HD void copy_plane(const DwPlanesProblem& p, int64_t n, int64_t c, float* scratch) {
  const DwGeometry& g = p.g;
  const float* xp = p.x + n * p.xs[0] + c * p.xs[1];
  for (int64_t h = 0; h < g.H; ++h) {
    const float* src = xp + h * p.xs[2];
    float* dst = scratch + (h + g.ph) * p.ld;
    if (g.sw == 1 && p.xs[3] == 1) {
      copy_floats(dst + g.pw, src, g.W);
      continue;
    }
    for (int64_t q = 0; q < g.sw; ++q) {
      const int64_t w0 = p.first[q];
      float* out = dst + q * p.phase + p.first[g.sw + q];
      if (g.sw == 2 && p.xs[3] == 1) {  // a constant stride: the compiler vectorizes the split
        for (int64_t k = 0; w0 + 2 * k < g.W; ++k) out[k] = src[w0 + 2 * k];
      } else {
        for (int64_t k = 0; w0 + k * g.sw < g.W; ++k) out[k] = src[(w0 + k * g.sw) * p.xs[3]];
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

// Planes [begin, end) of (n, c).  Rows of 4 or more vectors go one at a time
// (4 vectors per tile), narrower ones 4 rows at a time (MobileNetV3's 7- to
// 28-wide planes), then 2 and 1.
template <int V, Activation A>
void planes_range(const DwPlanesProblem& q, float* scratch, int64_t begin, int64_t end) {
  const DwGeometry& g = q.g;
  const int64_t taps = g.kh * g.kw;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t n = i / g.C, c = i % g.C;
    copy_plane(q, n, c, scratch);
    const PlaneWalk p{scratch, q.off, taps, g.sh * q.ld, q.w + c * taps, q.bias[c], q.y + i * g.OH * g.OW, g.OH, g.OW};
    vfloat<V> sum = vzero<V>();
    int64_t oh = 0;
    if (g.OW < 4 * V) {
      for (; oh + 4 <= g.OH; oh += 4) plane_rows<V, 4, A>(p, oh, sum);
      for (; oh + 2 <= g.OH; oh += 2) plane_rows<V, 2, A>(p, oh, sum);
    }
    for (; oh < g.OH; ++oh) plane_rows<V, 1, A>(p, oh, sum);
    if (q.mean != nullptr) {
      float total = 0.f;
      for (int v = 0; v < V; ++v) total += sum[v];
      q.mean[i] = total / static_cast<float>(g.OH * g.OW);
    }
  }
}

}  // namespace

void dw_walk_rows(const DwWalkProblem& p, int64_t begin, int64_t end) {
  const bool sevens = p.g.OW % 7 == 0 && p.g.OW % 4 != 0;
  dispatch_dw_tile(p.g, [&](auto k_tag, auto s_tag) {
    constexpr int K = decltype(k_tag)::value, S = decltype(s_tag)::value;
    if constexpr (K > 0) {
      dispatch_activation(p.act, [&](auto act_tag) {
        constexpr Activation A = decltype(act_tag)::value;
        if (sevens) {
          walk_rows<K, S, 7, A>(p, begin, end);
        } else {
          walk_rows<K, S, 4, A>(p, begin, end);
        }
      });
    }
  });
}

void dw_planes(const DwPlanesProblem& p, float* scratch, int64_t begin, int64_t end) {
  constexpr int kHalf = kVecLanes > 4 ? kVecLanes / 2 : kVecLanes;
  dispatch_activation(p.act, [&](auto act_tag) {
    constexpr Activation A = decltype(act_tag)::value;
    if (p.V == kHalf && kHalf != kVecLanes) {
      planes_range<kHalf, A>(p, scratch, begin, end);
    } else {
      planes_range<kVecLanes, A>(p, scratch, begin, end);
    }
  });
}

}  // namespace MNV3_LEVEL_NS
}  // namespace mnv3
