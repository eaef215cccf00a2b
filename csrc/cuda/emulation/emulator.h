// What the emulator tells the Python module (module.cpp) about the launches
// it ran: for the tests that check the CUDA op sweep reaches every launch
// branch of the kernels.
#pragma once

#include <stddef.h>

#include <string>
#include <vector>

namespace mnv3 {
namespace emu {

struct LaunchRecord {
  std::string kernel;  // as check_launch named it; "" when nothing checked the launch
  unsigned grid[3];
  unsigned block[3];
  size_t dynamic_smem;
};

// The launches since the last call (at most the last kMaxLaunchRecords), oldest first.
constexpr size_t kMaxLaunchRecords = 1 << 16;
std::vector<LaunchRecord> take_launch_records();

}  // namespace emu
}  // namespace mnv3
