// pointwise_dwconv_cuda.cu compiled as host C++ for the emulator (cuda_utils.cuh).
#include "../pointwise_dwconv_cuda.cu"
