// The part of the CUDA runtime API and of CUDA C++ that the project's kernels
// use, for their host build against the emulation (force-included before every
// translated source; see translate.py).  Device queries answer as a small GPU
// of kEmulatedProcessors multiprocessors, so that grid-stride loops really loop.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>

#include "cuda_emu.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __align__(n) alignas(n)

using dim3 = ::emu::dim3;

template <typename T>
inline T min(T a, T b) { return b < a ? b : a; }
template <typename T>
inline T max(T a, T b) { return a < b ? b : a; }

template <typename T>
inline T atomicAdd(T* address, T value) {  // coroutines never interleave inside it
  const T old = *address;
  *address = old + value;
  return old;
}

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace emu {

constexpr int kEmulatedProcessors = 2;

// Each kernel's dynamic shared memory limit, as cudaFuncSetAttribute set it.
inline std::map<const void*, size_t>& shared_limits() {
  static std::map<const void*, size_t> limits;
  return limits;
}

template <typename Kernel>
size_t shared_limit_of(Kernel kernel) {
  const auto found = shared_limits().find(reinterpret_cast<const void*>(kernel));
  return found == shared_limits().end() ? kDefaultSharedBytes : found->second;
}

// kernel<<<grid, block, bytes, stream>>>(args...) becomes
// launch_kernel(kernel, "kernel", grid, block, bytes, stream)(args...).
template <typename Kernel, typename... Stream>
auto launch_kernel(Kernel kernel, const char* name, dim3 grid, dim3 block, size_t bytes, Stream...) {
  return [=](auto&&... args) {
    launch([&] { kernel(args...); }, grid, block, bytes, shared_limit_of(kernel), name);
  };
}

}  // namespace emu

inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int) {
  if (attribute != cudaDevAttrMultiProcessorCount) return cudaErrorInvalidValue;
  *value = ::emu::kEmulatedProcessors;
  return cudaSuccess;
}

template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel kernel, cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      size_t(value) > ::emu::kMaxSharedBytes)
    return cudaErrorInvalidValue;
  ::emu::shared_limits()[reinterpret_cast<const void*>(kernel)] = size_t(value);
  return cudaSuccess;
}

inline const char* cudaGetErrorString(cudaError_t error) {
  return error == cudaSuccess ? "no error" : "invalid value";
}
