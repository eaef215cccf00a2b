// The choice of the CPU kernels' vector ISA level (cpu_isa.h).
#include "cpu_isa.h"

#include "../common/op_glue.h"

#include <ctype.h>
#include <stdlib.h>

#include <utility>

namespace mnv3 {
namespace {

struct Level {
  const char* name;
  const CpuKernels& (*table)();
  std::vector<std::pair<const char*, bool>> needs;  // the CPU features its compiler flags may use, and whether present
};

#if defined(MNV3_CPU_X86_LEVELS)
// What -march=x86-64-v4 and -march=x86-64-v3 let the compiler emit; libgcc's
// cpu probe reports AVX and AVX-512 features only where the OS saves their registers.
#define MNV3_FEATURE(name) std::pair<const char*, bool>(name, __builtin_cpu_supports(name) != 0)

std::vector<Level> built_levels() {
  __builtin_cpu_init();
  const std::vector<std::pair<const char*, bool>> v3 = {
      MNV3_FEATURE("avx"),  MNV3_FEATURE("avx2"),  MNV3_FEATURE("fma"),   MNV3_FEATURE("bmi"), MNV3_FEATURE("bmi2"),
      MNV3_FEATURE("f16c"), MNV3_FEATURE("lzcnt"), MNV3_FEATURE("movbe"), MNV3_FEATURE("xsave")};
  std::vector<std::pair<const char*, bool>> v4 = v3;
  for (const auto& f : {MNV3_FEATURE("avx512f"), MNV3_FEATURE("avx512bw"), MNV3_FEATURE("avx512cd"),
                        MNV3_FEATURE("avx512dq"), MNV3_FEATURE("avx512vl")})
    v4.push_back(f);
  return {{"avx512", &cpu_kernels_avx512, v4}, {"avx2", &cpu_kernels_avx2, v3}, {"baseline", &cpu_kernels_baseline, {}}};
}
#undef MNV3_FEATURE
#else
// Other targets: one level, the target's baseline (aarch64: NEON).
std::vector<Level> built_levels() { return {{"baseline", &cpu_kernels_baseline, {}}}; }
#endif

std::string missing_features(const Level& level) {
  std::string out;
  for (const auto& f : level.needs)
    if (!f.second) out += (out.empty() ? "" : ", ") + std::string(f.first);
  return out;
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

// MNV3_TEST_HIDE_CPU_FEATURES (comma or space separated, e.g. "avx512f"):
// features to treat as absent, so that the tests can see what a CPU without
// them gets (the choice, the error naming what it lacks) on any machine.
void hide_features(std::vector<Level>& levels) {
  const char* env = getenv("MNV3_TEST_HIDE_CPU_FEATURES");
  std::vector<std::string> hidden(1);
  for (const char* p = env ? env : ""; *p; ++p) {
    if (*p == ',' || isspace(static_cast<unsigned char>(*p))) {
      if (!hidden.back().empty()) hidden.emplace_back();
    } else {
      hidden.back() += static_cast<char>(tolower(static_cast<unsigned char>(*p)));
    }
  }
  for (Level& l : levels)
    for (auto& f : l.needs)
      for (const std::string& h : hidden)
        if (h == f.first) f.second = false;
}

CpuIsaChoice choose() {
  CpuIsaChoice c;
  std::vector<Level> levels = built_levels();
  hide_features(levels);
  std::vector<std::pair<const char*, bool>> all;  // every feature any level needs, once
  for (const Level& l : levels) {
    c.built.push_back(l.name);
    if (missing_features(l).empty()) c.supported.push_back(l.name);
    for (const auto& f : l.needs) {
      bool seen = false;
      for (const auto& a : all) seen = seen || std::string(a.first) == f.first;
      if (!seen) all.push_back(f);
    }
  }
  for (const auto& f : all) c.features += (c.features.empty() ? "" : " ") + std::string(f.first) + (f.second ? "+" : "-");

  const char* env = getenv("MNV3_CPU_ISA");
  std::string want;
  for (const char* p = env ? env : ""; *p; ++p)
    if (!isspace(static_cast<unsigned char>(*p))) want += static_cast<char>(tolower(static_cast<unsigned char>(*p)));
  const Level* chosen = nullptr;
  if (want.empty() || want == "auto") {
    for (const Level& l : levels) {
      if (missing_features(l).empty()) {
        chosen = &l;
        break;
      }
    }
    c.reason = "the best level this CPU supports (built: " + join(c.built) + "; MNV3_CPU_ISA forces a lower one)";
  } else {
    for (const Level& l : levels)
      if (want == l.name) chosen = &l;
    if (chosen == nullptr) {
      const bool known = want == "avx512" || want == "avx2" || want == "baseline";
      c.error = known ? "MNV3_CPU_ISA=" + want + ": this build has no " + want + " kernels (built for this target: " +
                            join(c.built) + ")"
                      : "MNV3_CPU_ISA must be one of avx512, avx2, baseline or auto; got '" + std::string(env) + "'";
      return c;
    }
    const std::string missing = missing_features(*chosen);
    if (!missing.empty()) {
      c.error = "MNV3_CPU_ISA=" + want + " asks for more than this CPU has: it lacks " + missing +
                " (it runs: " + join(c.supported) + ")";
      return c;
    }
    c.reason = "forced by MNV3_CPU_ISA=" + want + " (this CPU supports: " + join(c.supported) + ")";
  }
  c.kernels = &chosen->table();
  c.level = chosen->name;
  return c;
}

}  // namespace

const CpuIsaChoice& cpu_isa_choice() {
  static const CpuIsaChoice choice = choose();
  return choice;
}

const CpuKernels& cpu_kernels() {
  const CpuIsaChoice& c = cpu_isa_choice();
  STD_TORCH_CHECK(c.kernels != nullptr, "mnv3_kernels CPU kernels: ", c.error);
  return *c.kernels;
}

}  // namespace mnv3
