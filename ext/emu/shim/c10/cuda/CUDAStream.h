// Emulation stand-in for c10's CUDA streams: one stream, which runs a launch to completion.
#pragma once

namespace c10::cuda {
struct CUDAStream {};
inline CUDAStream getCurrentCUDAStream() { return {}; }
}  // namespace c10::cuda
