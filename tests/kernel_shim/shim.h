// A CPU stand-in for the CUDA features fastnn's kernels use, so that the same .cu source compiles
// with g++ and its logic runs in CI without a GPU.
//
// - Every CUDA thread of a block is a std::thread; __syncthreads() is a std::barrier of the block.
// - A grid runs cluster by cluster (a cluster of one block when the kernel has none): the blocks of a cluster
//   run at once, each with its own shared memory; cluster_sync() is a std::barrier of all the cluster's threads,
//   and remote_load(p, rank) reads the float at p's offset in block `rank`'s shared memory (distributed shared
//   memory).  Clusters run one after another; the kernels' clusters are independent.
// - Warp shuffles are per-warp exchanges: each lane writes its value to the warp's slot array, the warp meets
//   at its own barrier, each lane reads its partner's slot, and the warp meets again (so a slot is not
//   overwritten before it is read).  A block must be whole warps (blockDim.x % 32 == 0), as on the GPU.
// - cp.async (copy_async) is a plain copy; its commit and wait are no-ops: the copy is done when it returns.
// - Dynamic shared memory is filled with NaN before each launch (an unwritten read shows), and a launch asking
//   for more than an H100's 227 KiB per block (SHIM_SHARED_LIMIT) is refused, not run.
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

// What a thread of the stand-in knows of its place: its block's shared memory, barriers and warp slots, its cluster.
struct ShimBlock {
    std::vector<float4> smem;
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::unique_ptr<std::barrier<>>> warp_bars;
    std::vector<float> slots;
};
struct ShimCluster {
    std::vector<ShimBlock> blocks;
    std::unique_ptr<std::barrier<>> bar;
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline thread_local float4* fastnn_smem4 = nullptr;  // this block's dynamic shared memory
inline thread_local ShimBlock* shim_block = nullptr;
inline thread_local ShimCluster* shim_cluster = nullptr;
inline thread_local int shim_rank = 0;
inline std::size_t shim_shared_bytes = 0;

inline unsigned dynamic_smem_bytes() { return (unsigned)shim_shared_bytes; }
inline void __syncthreads() { shim_block->bar->arrive_and_wait(); }
inline int cluster_rank() { return shim_rank; }
inline void cluster_sync() { shim_cluster->bar->arrive_and_wait(); }
inline float remote_load(const float* p, int rank) {
    std::ptrdiff_t at = p - reinterpret_cast<const float*>(fastnn_smem4);
    return reinterpret_cast<const float*>(shim_cluster->blocks[(std::size_t)rank].smem.data())[at];
}
#define FASTNN_CLUSTER_DIMS

// __shfl_xor_sync(mask, v, lane_mask): the value of lane (lane ^ lane_mask) of this warp (the whole warp takes part).
inline float __shfl_xor_sync(unsigned, float value, int lane_mask) {
    unsigned t = threadIdx.x, warp = t / 32;
    std::barrier<>& bar = *shim_block->warp_bars[warp];
    shim_block->slots[t] = value;
    bar.arrive_and_wait();
    float other = shim_block->slots[warp * 32 + ((t % 32) ^ (unsigned)lane_mask)];
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

constexpr std::size_t SHIM_SHARED_LIMIT = 227 * 1024;  // an H100's / H200's opt-in limit per block

// Run kernel(args...) as `blocks` blocks (a multiple of `cluster`) of `threads` threads (a multiple of 32) with
// `shared_bytes` of dynamic shared memory each.  Returns 0, or 1 for a launch the GPU would refuse.
template <typename... P, typename... A>
int shim_launch(void (*kernel)(P...), int cluster, int blocks, int threads, std::size_t shared_bytes, A... args) {
    if (shared_bytes > SHIM_SHARED_LIMIT || threads < 32 || threads % 32 || threads > 1024 || blocks < 1
        || cluster < 1 || blocks % cluster) {
        return 1;
    }
    shim_shared_bytes = shared_bytes;
    blockDim.x = (unsigned)threads;
    gridDim.x = (unsigned)blocks;
    for (int first = 0; first < blocks; first += cluster) {
        ShimCluster group;
        group.bar = std::make_unique<std::barrier<>>(cluster * threads);
        group.blocks.resize((std::size_t)cluster);
        for (auto& b : group.blocks) {
            b.smem.assign(SHIM_SHARED_LIMIT / sizeof(float4), float4{NAN, NAN, NAN, NAN});  // catch unwritten reads
            b.bar = std::make_unique<std::barrier<>>(threads);
            for (int w = 0; w < threads / 32; w++) b.warp_bars.push_back(std::make_unique<std::barrier<>>(32));
            b.slots.assign((std::size_t)threads, 0.0f);
        }
        std::vector<std::thread> pool;
        pool.reserve((std::size_t)(cluster * threads));
        for (int r = 0; r < cluster; r++) {
            for (int t = 0; t < threads; t++) {
                pool.emplace_back([=, &group] {
                    threadIdx.x = (unsigned)t;
                    blockIdx.x = (unsigned)(first + r);
                    shim_rank = r;
                    shim_cluster = &group;
                    shim_block = &group.blocks[(std::size_t)r];
                    fastnn_smem4 = shim_block->smem.data();
                    kernel(args...);
                });
            }
        }
        for (auto& th : pool) th.join();
    }
    return 0;
}
