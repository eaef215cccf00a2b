// Which vector ISA level's kernels (kernels/kernels.h) the CPU ops run: the
// best level this CPU supports, or the one MNV3_CPU_ISA asks for (read once,
// at the first use).  As ATen's CPU_CAPABILITY: every level is built, one
// table is chosen at load time, a lower level can be forced so that one
// machine tests them all.
#pragma once

#include "kernels/kernels.h"

#include <string>
#include <vector>

namespace mnv3 {

struct CpuIsaChoice {
  const CpuKernels* kernels = nullptr;  // null when `error` is set
  std::string level;                    // "avx512", "avx2", "baseline"
  std::string reason;                   // why this level
  std::string error;                    // MNV3_CPU_ISA asks for what cannot run here
  std::vector<std::string> built;       // levels in this build, best first
  std::vector<std::string> supported;   // of those, the ones this CPU runs, best first
  std::string features;                 // the CPU features the levels need, as this CPU reports them
};

// The choice, made once.
const CpuIsaChoice& cpu_isa_choice();

// The chosen level's kernels; raises (the message of CpuIsaChoice::error)
// when MNV3_CPU_ISA asks for a level this CPU or build lacks.
const CpuKernels& cpu_kernels();

}  // namespace mnv3
