// One vector ISA level's table of kernels (kernels.h CpuKernels), compiled
// once per level beside the kernels it points at.
#include "kernels.h"

namespace mnv3 {

#if defined(MNV3_CPU_LEVEL_AVX512)
const CpuKernels& cpu_kernels_avx512() {
#elif defined(MNV3_CPU_LEVEL_AVX2)
const CpuKernels& cpu_kernels_avx2() {
#else
const CpuKernels& cpu_kernels_baseline() {
#endif
  using namespace MNV3_LEVEL_NS;
  static const CpuKernels table = {
      MNV3_LEVEL_NAME, kVecLanes,      kGemvColumns,  &pointwise_tiles, &pointwise_gemv, &conv_rows,
      &pointwise_dw_rows, &pointwise_dw_project_rows, &dw_image_rows, &dw_walk_rows, &dw_planes, &dw_tile_rows,
      &se_hidden,         &se_gates,         &scale_nhwc,   &resize_rows,
  };
  return table;
}

}  // namespace mnv3
