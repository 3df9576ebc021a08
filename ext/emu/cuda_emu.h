// A small host emulation of the CUDA execution model, so that the project's
// kernel bodies run on the CPU: every CUDA thread is a user-space coroutine,
// and warp shuffles, __syncwarp and __syncthreads are meeting points of the
// threads concerned.  A launch checks the limits a GPU enforces (threads per
// block, grid y/z <= 65535, dynamic shared memory against the function's
// limit); a block whose threads can no longer all meet is reported as a
// deadlock instead of hanging; shared memory is poisoned (0xFF bytes: NaN for
// floating point) at block start and guarded by canaries checked at block end.
// What it cannot show: memory ordering between threads (a coroutine runs until
// its next meeting point, so races are serialised), timing, and occupancy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace emu {

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// Misuse of the execution model: a broken launch, a deadlock, a bad shuffle.
class EmulationError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

constexpr unsigned kWarpSize = 32;
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxGridX = 2147483647u;
constexpr unsigned kMaxGridYZ = 65535u;
constexpr size_t kDefaultSharedBytes = 48 * 1024;   // without cudaFuncSetAttribute
constexpr size_t kMaxSharedBytes = 227 * 1024;      // opt-in maximum of an H100 / H200

const dim3& thread_idx();
const dim3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

void sync_threads();
void sync_warp(unsigned mask);
// The shuffle meeting: every lane of `mask` hands over `bits`; each gets the bits
// of lane `source(lane)`, or its own where that lane lies outside its width segment.
uint64_t exchange(unsigned mask, uint64_t bits, int lane_or_mask, int width, bool xor_lanes);

void* dynamic_shared();
// Per-block storage of one `__shared__` declaration (identified by its site).
void* static_shared(const void* site, size_t bytes, size_t align);

// Runs `body` once per thread of every block (blocks one after another).
// `shared_limit`: the kernel's dynamic shared memory limit (its attribute).
void launch(const std::function<void()>& body, dim3 grid, dim3 block, size_t shared_bytes,
            size_t shared_limit, const char* kernel);

template <typename T>
T shuffle(unsigned mask, T value, int lane_or_mask, int width, bool xor_lanes) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>,
                "shuffles move values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = exchange(mask, bits, lane_or_mask, width, xor_lanes);
  T result;
  std::memcpy(&result, &bits, sizeof(T));
  return result;
}

}  // namespace emu

#define EMU_SHARED(type, name, count)                                                \
  static const char name##_site = 0;                                                \
  type* name = static_cast<type*>(::emu::static_shared(&name##_site, sizeof(type) * (count), \
                                                       alignof(type)))

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())
#define warpSize (::emu::kWarpSize)

inline void __syncthreads() { ::emu::sync_threads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::emu::sync_warp(mask); }
template <typename T>
T __shfl_sync(unsigned mask, T value, int lane, int width = 32) {
  return ::emu::shuffle(mask, value, lane, width, false);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  return ::emu::shuffle(mask, value, lane_mask, width, true);
}
