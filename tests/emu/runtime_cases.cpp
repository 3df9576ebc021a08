// Cases for the CUDA emulation's own test (tests/test_cuda_emulation.py): small
// kernels in CUDA's style; each case exits 0 when the emulation did what a GPU
// would (or refused what a GPU refuses, with the expected message).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "../../ext/emu/cuda_emu.h"

namespace {

using emu::dim3;

bool refused(const std::function<void()>& run, const char* expected) {
  try {
    run();
  } catch (const emu::EmulationError& error) {
    if (std::strstr(error.what(), expected)) return true;
    std::fprintf(stderr, "refused with \"%s\", expected \"%s\"\n", error.what(), expected);
    return false;
  }
  std::fprintf(stderr, "not refused, expected \"%s\"\n", expected);
  return false;
}

void launch(const std::function<void()>& body, dim3 grid, dim3 block, size_t shared = 0,
            size_t limit = emu::kDefaultSharedBytes) {
  emu::launch(body, grid, block, shared, limit, "case");
}

// warp sums by xor shuffles, one per warp, in a grid of 3 blocks of 64 threads
bool warp_sum() {
  std::vector<float> out(3 * 64, -1.0f);
  launch([&] {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    float value = float(i);
    for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
    out[i] = value;
  }, dim3(3), dim3(64));
  for (unsigned i = 0; i < out.size(); ++i) {
    const unsigned first = i / 32 * 32;
    if (out[i] != float(32 * first + 31 * 32 / 2)) return false;
  }
  return true;
}

// shuffle from a given lane, with a width of 8: each segment of 8 reads its lane 3
bool shuffle_width() {
  std::vector<int> out(32);
  launch([&] { out[threadIdx.x] = __shfl_sync(0xffffffffu, int(threadIdx.x) * 10, 3, 8); },
         dim3(1), dim3(32));
  for (int lane = 0; lane < 32; ++lane)
    if (out[lane] != (lane / 8 * 8 + 3) * 10) return false;
  return true;
}

// a block-wide reduction through static shared memory and __syncthreads, in 2-D blocks
bool block_reduction() {
  std::vector<int> out(4);
  launch([&] {
    EMU_SHARED(int, partial, 128);
    const unsigned t = threadIdx.y * blockDim.x + threadIdx.x;
    partial[t] = int(t + blockIdx.x);
    __syncthreads();
    for (unsigned half = 64; half > 0; half >>= 1) {
      if (t < half) partial[t] += partial[t + half];
      __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = partial[0];
  }, dim3(4), dim3(16, 8));
  for (int b = 0; b < 4; ++b)
    if (out[b] != 127 * 128 / 2 + 128 * b) return false;
  return true;
}

// dynamic shared memory above 48 KiB, with the raised limit
bool dynamic_shared() {
  const size_t bytes = 64 * 1024;
  double total = 0;
  launch([&] {
    auto* buffer = static_cast<float*>(emu::dynamic_shared());
    for (size_t i = threadIdx.x; i < bytes / sizeof(float); i += blockDim.x) buffer[i] = 1.0f;
    __syncthreads();
    if (threadIdx.x == 0)
      for (size_t i = 0; i < bytes / sizeof(float); ++i) total += buffer[i];
  }, dim3(1), dim3(256), bytes, emu::kMaxSharedBytes);
  return total == double(bytes / sizeof(float));
}

// shared memory starts poisoned: a read before any write is NaN, not zero
bool poisoned_shared() {
  float seen = 0;
  launch([&] {
    EMU_SHARED(float, cells, 32);
    if (threadIdx.x == 0) seen = cells[5];
  }, dim3(1), dim3(32));
  return std::isnan(seen);
}

bool atomics_and_early_exit() {
  int counter = 0;
  launch([&] {
    if (threadIdx.x >= 40) return;     // threads may leave when no barrier follows
    counter += 1;
  }, dim3(2), dim3(64));
  return counter == 80;
}

bool deadlock() {
  return refused([] {
    launch([] {
      if (threadIdx.x == 7) return;    // skips the barrier the others wait at
      __syncthreads();
    }, dim3(1), dim3(64));
  }, "deadlock in case block (0,0,0): 63 at __syncthreads, 0 at a warp operation, 1 exited");
}

bool divergent_warp_meeting() {
  return refused([] {
    launch([] {
      if (threadIdx.x < 16) __syncthreads(); else __syncwarp();
    }, dim3(1), dim3(32));
  }, "deadlock");
}

bool partial_warp() {
  return refused([] {
    float sink = 0;
    launch([&] { sink += __shfl_xor_sync(0xffffffffu, 1.0f, 1); }, dim3(1), dim3(48));
  }, "names lane 16, which this block does not have");
}

bool lane_outside_mask() {
  return refused([] {
    launch([] { __shfl_sync(0x0000ffffu, 1, 20); }, dim3(1), dim3(16));
  }, "shuffle reads lane 20, outside the mask");
}

bool grid_y_limit() {
  return refused([] { launch([] {}, dim3(1, 65536), dim3(32)); }, "beyond (2^31-1, 65535, 65535)");
}

bool threads_limit() {
  return refused([] { launch([] {}, dim3(1), dim3(64, 32)); }, "2048 threads per block");
}

bool shared_limit() {
  return refused([] { launch([] {}, dim3(1), dim3(32), 64 * 1024); },
                 "65536 bytes of dynamic shared memory, the kernel's limit is 49152");
}

bool empty_grid() {
  return refused([] { launch([] {}, dim3(0), dim3(32)); }, "an empty grid or block");
}

bool shared_overrun() {
  return refused([] {
    launch([] {
      auto* buffer = static_cast<float*>(emu::dynamic_shared());
      buffer[threadIdx.x] = 0.0f;      // 32 floats into 64 bytes
    }, dim3(1), dim3(32), 64);
  }, "wrote outside its 64 bytes of dynamic shared memory");
}

bool outside_a_kernel() {
  return refused([] { __syncthreads(); }, "__syncthreads called outside a kernel");
}

}  // namespace

int main(int argc, char** argv) {
  const std::map<std::string, bool (*)()> cases = {
      {"warp_sum", warp_sum}, {"shuffle_width", shuffle_width}, {"block_reduction", block_reduction},
      {"dynamic_shared", dynamic_shared}, {"poisoned_shared", poisoned_shared},
      {"atomics_and_early_exit", atomics_and_early_exit}, {"deadlock", deadlock},
      {"divergent_warp_meeting", divergent_warp_meeting}, {"partial_warp", partial_warp},
      {"lane_outside_mask", lane_outside_mask}, {"grid_y_limit", grid_y_limit},
      {"threads_limit", threads_limit}, {"shared_limit", shared_limit}, {"empty_grid", empty_grid},
      {"shared_overrun", shared_overrun}, {"outside_a_kernel", outside_a_kernel}};
  if (argc == 2 && std::string(argv[1]) == "--list") {
    for (const auto& [name, run] : cases) std::printf("%s\n", name.c_str());
    return 0;
  }
  const auto found = argc == 2 ? cases.find(argv[1]) : cases.end();
  if (found == cases.end()) {
    std::fprintf(stderr, "usage: %s CASE | --list\n", argv[0]);
    return 2;
  }
  return found->second() ? 0 : 1;
}
