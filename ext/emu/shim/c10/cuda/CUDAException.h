// Emulation stand-in for c10's CUDA error checks (tests only; see ../../../cuda_runtime_emu.h).
#pragma once
#include <c10/util/Exception.h>

#include "cuda_runtime_emu.h"

#define C10_CUDA_CHECK(expression)                                                        \
  do {                                                                                    \
    const cudaError_t emu_error = (expression);                                           \
    TORCH_CHECK(emu_error == cudaSuccess, "CUDA error: ", cudaGetErrorString(emu_error)); \
  } while (0)
// launches throw emu::EmulationError themselves
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
