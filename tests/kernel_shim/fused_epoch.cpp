// The fused CUDA engine's kernel, compiled for the CPU through shim.h and exported for ctypes.
#include "shim.h"
#include "../../fastnn/engines/cuda_fused.cu"

extern "C" int shim_fused_epoch(int blocks, int threads, std::size_t shared_bytes,
        const float* X, const float* Y, const long long* orders, int n_order, int batch_size,
        const int* sizes, int n_layers, int hidden_act, int output_act, int cost,
        float* params, float* velocity, int has_velocity, const double* lrs, const float* hyper,
        double* cost_out) {
    return shim_launch(fastnn_fused_epoch, FASTNN_CLUSTER, blocks, threads, shared_bytes, X, Y, orders, n_order, batch_size, sizes,
                       n_layers, hidden_act, output_act, cost, params, velocity, has_velocity, lrs, hyper, cost_out);
}

// Bytes copied by cp.async since the last call (and reset to 0).
extern "C" long long shim_copied() { return shim_copied_bytes.exchange(0); }
