// A CPU stand-in for the CUDA features fastnn's kernels use, so that the same .cu source compiles
// with g++ and its logic runs in CI without a GPU.  One block only: every CUDA thread is a std::thread,
// __syncthreads() is a std::barrier, dynamic shared memory is one static array.  Not simulated (the
// kernels must not use them): several blocks, warp intrinsics, atomics, static __shared__ variables.
#pragma once
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __shared__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx;
inline dim3 blockIdx, blockDim, gridDim;
inline std::barrier<>* shim_barrier = nullptr;

inline void __syncthreads() { shim_barrier->arrive_and_wait(); }

using std::exp;
using std::log;
using std::log1p;
using std::tanh;
using std::fabs;
using std::sqrt;

// The dynamic shared memory every kernel declares as `extern __shared__ float fastnn_smem[];`.
constexpr std::size_t SHIM_SHARED_FLOATS = std::size_t(1) << 22;  // 16 MiB
alignas(16) float fastnn_smem[SHIM_SHARED_FLOATS];

// Run kernel(args...) as one block of `threads` threads with `shared_bytes` of dynamic shared memory.
template <typename... P, typename... A>
int shim_launch(void (*kernel)(P...), int threads, std::size_t shared_bytes, A... args) {
    if (shared_bytes > sizeof(fastnn_smem) || threads < 1) return 1;
    std::barrier<> bar(threads);
    shim_barrier = &bar;
    blockDim.x = (unsigned)threads;
    for (std::size_t i = 0; i < shared_bytes / sizeof(float); i++) fastnn_smem[i] = NAN;  // catch unwritten reads
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (int t = 0; t < threads; t++) {
        pool.emplace_back([=] {
            threadIdx.x = (unsigned)t;
            kernel(args...);
        });
    }
    for (auto& th : pool) th.join();
    shim_barrier = nullptr;
    return 0;
}
