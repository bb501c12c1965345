// A CPU stand-in for the CUDA features fastnn's kernels use, so that the same .cu source compiles
// with g++ and its logic runs in CI without a GPU.
//
// - Every CUDA thread of a block is a std::thread; __syncthreads() is a std::barrier of the block.
// - A grid runs its blocks one after another (blockIdx set before each); the kernels' blocks are independent.
// - Warp shuffles are per-warp exchanges: each lane writes its value to the warp's slot array, the warp meets
//   at its own barrier, each lane reads its partner's slot, and the warp meets again (so a slot is not
//   overwritten before it is read).  A block must be whole warps (blockDim.x % 32 == 0), as on the GPU.
// - cp.async (copy_async) is a plain copy; its commit and wait are no-ops: the copy is done when it returns.
// - Dynamic shared memory is one static array, filled with NaN before each block (an unwritten read shows),
//   and a launch asking for more than an H100's 227 KiB (SHIM_SHARED_LIMIT) is refused, not run.
// Not simulated (the kernels must not use them): atomics, static __shared__ variables, other warp intrinsics.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define FASTNN_SHIM 1
#define __global__
#define __device__
#define __shared__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

struct alignas(16) float4 {
    float x, y, z, w;
};

inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

inline float __int_as_float(int bits) {
    float out;
    std::memcpy(&out, &bits, sizeof out);
    return out;
}

inline thread_local dim3 threadIdx;
inline dim3 blockIdx, blockDim, gridDim;
inline std::barrier<>* shim_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> shim_warp_barriers;
inline std::vector<float> shim_warp_slots;

inline std::size_t shim_shared_bytes = 0;
inline unsigned dynamic_smem_bytes() { return (unsigned)shim_shared_bytes; }

inline void __syncthreads() { shim_barrier->arrive_and_wait(); }

// __shfl_xor_sync(mask, v, lane_mask): the value of lane (lane ^ lane_mask) of this warp (the whole warp takes part).
inline float __shfl_xor_sync(unsigned, float value, int lane_mask) {
    unsigned t = threadIdx.x, warp = t / 32;
    std::barrier<>& bar = *shim_warp_barriers[warp];
    shim_warp_slots[t] = value;
    bar.arrive_and_wait();
    float other = shim_warp_slots[warp * 32 + ((t % 32) ^ (unsigned)lane_mask)];
    bar.arrive_and_wait();
    return other;
}

// cp.async as a plain copy of `bytes` (4 or 16); commit and wait have nothing left to do.  The bytes copied
// are counted (shim_copied_bytes), so a test can see that every row was fetched once and none past the order.
inline std::atomic<long long> shim_copied_bytes{0};
inline void copy_async(float* dst, const float* src, int bytes) {
    std::memcpy(dst, src, (std::size_t)bytes);
    shim_copied_bytes += bytes;
}
inline void copy_commit() {}
inline void copy_wait() {}

using std::exp;
using std::log;
using std::log1p;
using std::tanh;
using std::fabs;
using std::sqrt;

// The dynamic shared memory every kernel declares as `extern __shared__ float4 fastnn_smem4[];`.
constexpr std::size_t SHIM_SHARED_LIMIT = 227 * 1024;  // an H100's / H200's opt-in limit per block
alignas(16) inline float4 fastnn_smem4[SHIM_SHARED_LIMIT / sizeof(float4)];

// Run kernel(args...) as `blocks` blocks of `threads` threads (a multiple of 32) with `shared_bytes` of dynamic
// shared memory, the blocks one after another.  Returns 0, or 1 for a launch the GPU would refuse.
template <typename... P, typename... A>
int shim_launch(void (*kernel)(P...), int blocks, int threads, std::size_t shared_bytes, A... args) {
    if (shared_bytes > SHIM_SHARED_LIMIT || threads < 32 || threads % 32 || threads > 1024 || blocks < 1) return 1;
    std::barrier<> bar(threads);
    shim_barrier = &bar;
    shim_warp_barriers.clear();
    for (int w = 0; w < threads / 32; w++) shim_warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
    shim_warp_slots.assign((std::size_t)threads, 0.0f);
    blockDim.x = (unsigned)threads;
    shim_shared_bytes = shared_bytes;
    gridDim.x = (unsigned)blocks;
    for (int b = 0; b < blocks; b++) {
        blockIdx.x = (unsigned)b;
        float* smem = reinterpret_cast<float*>(fastnn_smem4);
        for (std::size_t i = 0; i < shared_bytes / sizeof(float); i++) smem[i] = NAN;  // catch unwritten reads
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (int t = 0; t < threads; t++) {
            pool.emplace_back([=] {
                threadIdx.x = (unsigned)t;
                kernel(args...);
            });
        }
        for (auto& th : pool) th.join();
    }
    shim_barrier = nullptr;
    return 0;
}
