// fp16 and bf16 storage for the CPU kernels, with the bit layout of torch's
// c10::Half / c10::BFloat16 (the op files pass those tensors' memory), and
// conversions compiled for the level: F16C's vcvtph2ps / vcvtps2ph on AVX2 and
// AVX-512 (as c10::Half does with F16C), NEON's on aarch64, the IEEE
// bit-level conversion on the x86 baseline.  Every conversion rounds to
// nearest even, like torch's; bf16 NaNs become 0x7FC0, as in c10.  (Not
// c10's own types: their inline functions would be compiled once per level
// under one name, see kernels.h.)
#pragma once

#include "../../common/macros.h"
#include "level.h"

#include <stdint.h>
#include <string.h>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace mnv3 {
namespace MNV3_LEVEL_NS {

MNV3_HD float float_from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

MNV3_HD uint32_t bits_from_float(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
}

struct BFloat16 {
  uint16_t bits;
  MNV3_HD operator float() const { return float_from_bits(static_cast<uint32_t>(bits) << 16); }
  MNV3_HD static BFloat16 from(float f) {
    if (f != f) return {0x7FC0};
    const uint32_t u = bits_from_float(f);
    return {static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16)};
  }
};

struct Half {
  uint16_t bits;
  MNV3_HD operator float() const {
#if defined(__F16C__)
    return _cvtsh_ss(bits);
#elif defined(__aarch64__)
    __fp16 h;
    memcpy(&h, &bits, sizeof(h));
    return static_cast<float>(h);
#else
    const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
    const uint32_t exponent = (bits >> 10) & 0x1Fu, mantissa = bits & 0x3FFu;
    if (exponent == 0x1F) return float_from_bits(sign | 0x7F800000u | (mantissa << 13));  // inf, NaN
    if (exponent != 0) return float_from_bits(sign | ((exponent + 112) << 23) | (mantissa << 13));
    // Zero or subnormal: mantissa * 2^-24, exactly representable in fp32.
    const float magnitude = static_cast<float>(mantissa) * float_from_bits(0x33800000u);  // 2^-24
    return sign ? -magnitude : magnitude;
#endif
  }
  MNV3_HD static Half from(float f) {
#if defined(__F16C__)
    return {static_cast<uint16_t>(_cvtss_sh(f, 0))};  // 0: round to nearest even
#elif defined(__aarch64__)
    const __fp16 h = static_cast<__fp16>(f);
    Half out;
    memcpy(&out.bits, &h, sizeof(h));
    return out;
#else
    uint32_t u = bits_from_float(f);
    const uint32_t sign = (u >> 16) & 0x8000u;
    u &= 0x7FFFFFFFu;
    if (u >= 0x7F800000u) return {static_cast<uint16_t>(sign | (u > 0x7F800000u ? 0x7E00u : 0x7C00u))};
    if (u >= 0x477FF000u) return {static_cast<uint16_t>(sign | 0x7C00u)};  // rounds past 65504: inf
    if (u < 0x38800000u) {
      // Subnormal or zero: adding 0.5 (2^-1) puts the fp16 subnormal's bits at
      // the bottom of the fp32 mantissa, rounded to nearest even by the add.
      const float sum = float_from_bits(u) + float_from_bits(0x3F000000u);
      return {static_cast<uint16_t>(sign | (bits_from_float(sum) - 0x3F000000u))};
    }
    // Normal: rebias the exponent, round the 13 dropped bits to nearest even.
    const uint32_t odd = (u >> 13) & 1u;
    u += 0xC8000FFFu + odd;  // (15 - 127) << 23, plus the rounding bias
    return {static_cast<uint16_t>(sign | (u >> 13))};
#endif
  }
};

static_assert(sizeof(Half) == 2 && sizeof(BFloat16) == 2, "fp16 / bf16 storage is two bytes, as torch's");

// float <-> a storage type T (float, Half or BFloat16).
template <typename T>
MNV3_HD T to_storage(float f) {
  if constexpr (sizeof(T) == sizeof(float)) {
    return f;
  } else {
    return T::from(f);
  }
}

}  // namespace MNV3_LEVEL_NS
}  // namespace mnv3
