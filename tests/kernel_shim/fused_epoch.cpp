// The fused CUDA engine's kernel, compiled for the CPU through shim.h and exported for ctypes.
#include "shim.h"
#include "../../fastnn/engines/cuda_fused.cu"

extern "C" int shim_fused_epoch(int threads, std::size_t shared_bytes,
        const float* X, const float* Y, const long long* order, int n_order, int batch_size,
        const int* sizes, int n_layers, int hidden_act, int output_act, int cost,
        float* params, float* velocity, int has_velocity, double lr, float momentum, float keep,
        float decay, double* cost_out) {
    return shim_launch(fastnn_fused_epoch, threads, shared_bytes, X, Y, order, n_order, batch_size, sizes,
                       n_layers, hidden_act, output_act, cost, params, velocity, has_velocity, lr, momentum,
                       keep, decay, cost_out);
}
