// conv_bias_act_cuda.cu compiled as host C++ for the emulator (cuda_utils.cuh).
#include "../conv_bias_act_cuda.cu"
