// se_excite_scale_cuda.cu compiled as host C++ for the emulator (cuda_utils.cuh).
#include "../se_excite_scale_cuda.cu"
