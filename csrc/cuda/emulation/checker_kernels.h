// Kernels with planted defects, one per emulator check (checker_kernels.cpp).
#pragma once

#include <string>
#include <vector>

namespace mnv3 {

std::vector<std::string> checker_cases();
// Runs one case; returns the "sum" case's result (0 for the others, which
// raise std::runtime_error with the emulator's message when the check fires).
double run_checker_case(const std::string& name);

}  // namespace mnv3
