// The scheduler of the CUDA emulation (see cuda_emu.h): one block at a time,
// its threads as ucontext coroutines on the calling OS thread.  A thread runs
// until it reaches a meeting point (or returns); when no thread can run, the
// meetings whose participants have all arrived are completed; when none can
// be, the block is deadlocked.
#include "cuda_emu.h"

#include <ucontext.h>

#include <exception>
#include <map>
#include <memory>
#include <sstream>
#include <vector>

namespace emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kCanaryBytes = 4096;  // guards, so that an overrun is reported, not a heap corruption
constexpr unsigned char kPoison = 0xFF, kCanary = 0xA5;

enum class Wait { kRunnable, kBlock, kWarp, kDone };

struct Thread {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  dim3 index;
  unsigned linear = 0;
  Wait wait = Wait::kRunnable;
  unsigned mask = 0;          // of a warp meeting
  bool shuffle = false;       // a shuffle (true) or __syncwarp (false)
  uint64_t bits = 0;          // handed over
  int lane_or_mask = 0, width = kWarpSize;
  bool xor_lanes = false;
  uint64_t result = 0;
};

struct Launch {
  const std::function<void()>* body = nullptr;
  const char* kernel = "";
  dim3 grid, block, block_index;
  std::vector<Thread> threads;
  ucontext_t scheduler;
  Thread* current = nullptr;
  std::exception_ptr failure;
  std::vector<unsigned char> dynamic;                 // canaries, the bytes, canaries
  size_t dynamic_bytes = 0;
  std::map<const void*, std::vector<unsigned char>> statics;
};

Launch* active = nullptr;

Launch& launch_state(const char* what) {
  if (active == nullptr || active->current == nullptr)
    throw EmulationError(std::string(what) + " called outside a kernel");
  return *active;
}

std::string where(const Launch& run, const Thread& thread) {
  std::ostringstream out;
  out << run.kernel << " block (" << run.block_index.x << "," << run.block_index.y << ","
      << run.block_index.z << ") thread (" << thread.index.x << "," << thread.index.y << ","
      << thread.index.z << ")";
  return out.str();
}

void yield(Launch& run) {
  Thread* thread = run.current;
  swapcontext(&thread->context, &run.scheduler);
}

void entry() {
  Launch& run = *active;
  try {
    (*run.body)();
  } catch (...) {
    if (!run.failure) run.failure = std::current_exception();
  }
  run.current->wait = Wait::kDone;
  // returning resumes uc_link: the scheduler
}

void check_launch(dim3 grid, dim3 block, size_t shared_bytes, size_t shared_limit, const char* kernel) {
  std::ostringstream problem;
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0)
    problem << "an empty grid or block (" << grid.x << "," << grid.y << "," << grid.z << ") x ("
            << block.x << "," << block.y << "," << block.z << ")";
  else if (threads > kMaxThreadsPerBlock || block.z > 64)
    problem << threads << " threads per block (at most " << kMaxThreadsPerBlock << ", z <= 64)";
  else if (grid.x > kMaxGridX || grid.y > kMaxGridYZ || grid.z > kMaxGridYZ)
    problem << "grid (" << grid.x << "," << grid.y << "," << grid.z << ") beyond (2^31-1, 65535, 65535)";
  else if (shared_bytes > shared_limit || shared_limit > kMaxSharedBytes)
    problem << shared_bytes << " bytes of dynamic shared memory, the kernel's limit is " << shared_limit
            << " (at most " << kMaxSharedBytes << " with cudaFuncSetAttribute)";
  if (!problem.str().empty())
    throw EmulationError(std::string("invalid launch of ") + kernel + ": " + problem.str());
}

unsigned lane_of(const Thread& thread) { return thread.linear % kWarpSize; }

// Completes the warp meetings whose lanes have all arrived; true if any did.
bool complete_warp_meetings(Launch& run) {
  bool released = false;
  const unsigned count = static_cast<unsigned>(run.threads.size());
  for (unsigned first = 0; first < count; first += kWarpSize) {
    const unsigned lanes = std::min(kWarpSize, count - first);
    for (unsigned lane = 0; lane < lanes; ++lane) {
      Thread& thread = run.threads[first + lane];
      if (thread.wait != Wait::kWarp) continue;
      bool ready = true;
      for (unsigned other = 0; other < kWarpSize; ++other) {
        if (!(thread.mask >> other & 1u)) continue;
        if (other >= lanes)
          throw EmulationError(where(run, thread) + ": warp mask 0x" + [&] {
            std::ostringstream hex; hex << std::hex << thread.mask; return hex.str(); }() +
            " names lane " + std::to_string(other) + ", which this block does not have");
        const Thread& peer = run.threads[first + other];
        if (peer.wait == Wait::kDone)
          throw EmulationError(where(run, thread) + ": lane " + std::to_string(other) +
                               " of its warp mask has exited");
        if (peer.wait != Wait::kWarp) { ready = false; break; }
        if (peer.mask != thread.mask || peer.shuffle != thread.shuffle)
          throw EmulationError(where(run, thread) + ": lanes of one mask meet at different warp "
                               "operations (a shuffle and __syncwarp, or different masks)");
      }
      if (!ready) continue;
      for (unsigned other = 0; other < lanes; ++other) {
        Thread& peer = run.threads[first + other];
        if (!(thread.mask >> other & 1u)) continue;
        if (peer.shuffle) {
          const int width = peer.width;
          const unsigned segment = other / width * width;
          const unsigned target = peer.xor_lanes ? (other ^ peer.lane_or_mask)
                                                 : segment + unsigned(peer.lane_or_mask) % width;
          const unsigned source = (target >= segment && target < segment + width) ? target : other;
          if (!(thread.mask >> source & 1u))
            throw EmulationError(where(run, peer) + ": shuffle reads lane " + std::to_string(source) +
                                 ", outside the mask");
          peer.result = run.threads[first + source].bits;
        }
        peer.wait = Wait::kRunnable;
      }
      released = true;
    }
  }
  return released;
}

std::string states(const Launch& run) {
  std::ostringstream out;
  unsigned block = 0, warp = 0, done = 0;
  for (const Thread& thread : run.threads) {
    block += thread.wait == Wait::kBlock;
    warp += thread.wait == Wait::kWarp;
    done += thread.wait == Wait::kDone;
  }
  out << block << " at __syncthreads, " << warp << " at a warp operation, " << done << " exited";
  return out.str();
}

void run_block(Launch& run) {
  for (auto& [site, bytes] : run.statics) std::memset(bytes.data(), kPoison, bytes.size());
  std::memset(run.dynamic.data(), kCanary, run.dynamic.size());
  std::memset(run.dynamic.data() + kCanaryBytes, kPoison, run.dynamic_bytes);
  for (Thread& thread : run.threads) {
    thread.wait = Wait::kRunnable;
    getcontext(&thread.context);
    thread.context.uc_stack.ss_sp = thread.stack.get();
    thread.context.uc_stack.ss_size = kStackBytes;
    thread.context.uc_link = &run.scheduler;
    makecontext(&thread.context, entry, 0);
  }
  while (true) {
    bool ran = false;
    for (Thread& thread : run.threads) {
      if (thread.wait != Wait::kRunnable) continue;
      run.current = &thread;
      swapcontext(&run.scheduler, &thread.context);
      run.current = nullptr;
      ran = true;
      if (run.failure) std::rethrow_exception(run.failure);
    }
    if (ran) continue;
    unsigned at_barrier = 0, done = 0;
    for (const Thread& thread : run.threads) {
      at_barrier += thread.wait == Wait::kBlock;
      done += thread.wait == Wait::kDone;
    }
    if (done == run.threads.size()) break;
    if (complete_warp_meetings(run)) continue;
    if (at_barrier + done == run.threads.size() && done == 0) {
      for (Thread& thread : run.threads) thread.wait = Wait::kRunnable;
      continue;
    }
    throw EmulationError(std::string("deadlock in ") + run.kernel + " block (" +
                         std::to_string(run.block_index.x) + "," + std::to_string(run.block_index.y) +
                         "," + std::to_string(run.block_index.z) + "): " + states(run));
  }
  for (size_t i = 0; i < kCanaryBytes; ++i) {
    if (run.dynamic[i] != kCanary || run.dynamic[kCanaryBytes + run.dynamic_bytes + i] != kCanary)
      throw EmulationError(std::string(run.kernel) + " wrote outside its " +
                           std::to_string(run.dynamic_bytes) + " bytes of dynamic shared memory");
  }
}

}  // namespace

const dim3& thread_idx() { return launch_state("threadIdx").current->index; }
const dim3& block_idx() { return launch_state("blockIdx").block_index; }
const dim3& block_dim() { return launch_state("blockDim").block; }
const dim3& grid_dim() { return launch_state("gridDim").grid; }

void sync_threads() {
  Launch& run = launch_state("__syncthreads");
  run.current->wait = Wait::kBlock;
  yield(run);
}

void sync_warp(unsigned mask) {
  Launch& run = launch_state("__syncwarp");
  Thread& thread = *run.current;
  if (!(mask >> lane_of(thread) & 1u))
    throw EmulationError(where(run, thread) + ": __syncwarp with a mask that excludes the caller");
  thread.wait = Wait::kWarp;
  thread.mask = mask;
  thread.shuffle = false;
  yield(run);
}

uint64_t exchange(unsigned mask, uint64_t bits, int lane_or_mask, int width, bool xor_lanes) {
  Launch& run = launch_state("__shfl_sync");
  Thread& thread = *run.current;
  if (!(mask >> lane_of(thread) & 1u))
    throw EmulationError(where(run, thread) + ": shuffle with a mask that excludes the caller");
  if (width < 1 || width > int(kWarpSize) || (width & (width - 1)))
    throw EmulationError(where(run, thread) + ": shuffle width " + std::to_string(width) +
                         " is not a power of two <= 32");
  thread.wait = Wait::kWarp;
  thread.mask = mask;
  thread.shuffle = true;
  thread.bits = bits;
  thread.lane_or_mask = lane_or_mask;
  thread.width = width;
  thread.xor_lanes = xor_lanes;
  yield(run);
  return thread.result;
}

void* dynamic_shared() {
  Launch& run = launch_state("extern __shared__");
  return run.dynamic.data() + kCanaryBytes;
}

void* static_shared(const void* site, size_t bytes, size_t align) {
  Launch& run = launch_state("__shared__");
  auto found = run.statics.find(site);
  if (found == run.statics.end()) {
    found = run.statics.emplace(site, std::vector<unsigned char>(bytes + align, kPoison)).first;
  }
  auto address = reinterpret_cast<uintptr_t>(found->second.data());
  return reinterpret_cast<void*>((address + align - 1) / align * align);
}

void launch(const std::function<void()>& body, dim3 grid, dim3 block, size_t shared_bytes,
            size_t shared_limit, const char* kernel) {
  check_launch(grid, block, shared_bytes, shared_limit, kernel);
  if (active != nullptr) throw EmulationError(std::string("nested launch of ") + kernel);
  Launch run;
  run.body = &body;
  run.kernel = kernel;
  run.grid = grid;
  run.block = block;
  run.dynamic_bytes = shared_bytes;
  run.dynamic.assign(shared_bytes + 2 * kCanaryBytes, kCanary);
  run.threads.resize(size_t(block.x) * block.y * block.z);
  for (unsigned z = 0, linear = 0; z < block.z; ++z)
    for (unsigned y = 0; y < block.y; ++y)
      for (unsigned x = 0; x < block.x; ++x, ++linear) {
        Thread& thread = run.threads[linear];
        thread.index = dim3(x, y, z);
        thread.linear = linear;
        thread.stack.reset(new char[kStackBytes]);
      }
  active = &run;
  try {
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          run.block_index = dim3(x, y, z);
          run_block(run);
        }
  } catch (...) {
    active = nullptr;
    throw;
  }
  active = nullptr;
}

}  // namespace emu
