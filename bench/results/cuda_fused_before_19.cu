// fastnn's fused CUDA engine: one launch trains one epoch of mini-batch SGD, in float32.
//
// One thread block loops over every step of the epoch (a persistent kernel, as in Persistent RNNs):
// per step it gathers the batch by index, runs the forward pass, BP1, BP2 (the transposed product),
// BP3/BP4 and the update, with __syncthreads() between the phases, and sums the cost on the device.
// The math is the generic engine's (fastnn/engines/generic.py, network.py, activations.py, costs.py):
//   Z^l = W^l A^{l-1} + b^l, A^l = σ(Z^l)         forward
//   δ^L = ∇_a C ⊙ σ'(Z^L), scaled by -η/m          BP1 (δ carries the step's scale, like the generic one)
//   δ^l = ((W^{l+1})^T δ^{l+1}) ⊙ σ'(Z^l)          BP2
//   s_b = Σ_batch δ^l, s_W = δ^l (A^{l-1})^T         BP3, BP4: the step -(η/m) g
//   plain     W ← W·keep + s_W,  b ← b + s_b                      (keep = 1 - ηλ/n)
//   momentum  v ← μ v + s - decay·W (weights only),  W ← W + v     (decay = ηλ/n)
//
// Dynamic shared memory, in floats (the host computes the same size: cuda_fused.shared_bytes):
//   params   P            every W^l (n_out, n_in) row-major, then every b^l: the epoch's working copy
//   a^l      B × n_l      activations, one row per example, l = 1..L   (B = the batch size)
//   δ^l      B × n_l      errors, l = 1..L
//   z^L      B × n_L      the output layer's weighted inputs (the costs are computed from z)
//   cost     B            each example's cost in this step
//   partial  blockDim.x × FASTNN_MB   partial sums of the dot products
// X, Y, the shuffled order and the velocity stay in global memory; a batch's rows are read in place
// by index (the gather).  Every loop strides by blockDim.x, so any block size works.
//
// The same file compiles with g++ against tests/kernel_shim/shim.h (one std::thread per CUDA thread,
// std::barrier for __syncthreads), which is how CI runs this code's logic without a GPU.  It uses no
// warp intrinsics, no atomics and no static __shared__ variables, so the shim stays small.

#define FASTNN_MAX_LAYERS 16
#define FASTNN_THREADS 512  // the block size the host launches (cuda_fused.THREADS): registers are fitted to it
#define FASTNN_MB 8  // examples per register block in the forward pass
#define FASTNN_MU 10  // batches up to this size keep δ in registers in the update (the textbook's 10: more spills)

#define ACT_SIGMOID 0
#define ACT_TANH 1
#define ACT_RELU 2
#define ACT_IDENTITY 3
#define ACT_SOFTMAX 4

#define COST_QUADRATIC 0
#define COST_CROSS_ENTROPY 1
#define COST_LOG_LIKELIHOOD 2

extern __shared__ float fastnn_smem[];

// σ(z) for the elementwise activations; sigmoid via tanh so that no |z| overflows.
__device__ float act_forward(int act, float z) {
    switch (act) {
        case ACT_SIGMOID: return 0.5f * tanhf(0.5f * z) + 0.5f;
        case ACT_TANH: return tanhf(z);
        case ACT_RELU: return z < 0.0f ? 0.0f : z;
        default: return z;
    }
}

// σ'(z) written with a = σ(z): relu's a > 0 exactly where z > 0.
__device__ float act_slope(int act, float a) {
    switch (act) {
        case ACT_SIGMOID: return (1.0f - a) * a;
        case ACT_TANH: return 1.0f - a * a;
        case ACT_RELU: return a > 0.0f ? 1.0f : 0.0f;
        default: return 1.0f;
    }
}

// ln(1 + e^z), as numpy's logaddexp(0, z) computes it.
__device__ float softplus(float z) {
    return (z > 0.0f ? z : 0.0f) + log1pf(expf(-fabsf(z)));
}

// Threads per dot product: a power of two up to 32, as many as keep the block busy.
__device__ int group_size(int items) {
    int g = 1;
    while (g < 32 && 2 * g * items <= (int)blockDim.x) g *= 2;
    return g;
}

// Forward pass of one layer: out[k, j] = σ(Σ_i W[j, i] in_k[i] + b[j]) for j < n_out, k < m.
// in_k is row idx[k] of X (layer 0, global memory) or row k of the previous activations.
// With z_out the weighted inputs are stored there and out is left to the output phase.
// g threads share a row of W (lanes over i); each keeps up to FASTNN_MB examples' sums in registers,
// so a weight is read once per block of examples and the sums are independent chains.  The lanes'
// sums meet in `partial` (blockDim.x × FASTNN_MB floats), added pairwise.
__device__ void forward_layer(const float* W, const float* b, int n_in, int n_out, int m,
                              const float* X, const long long* idx, const float* a_prev,
                              float* out, float* z_out, int act, float* partial) {
    int g = 1;
    while (g < 32 && 2 * g * n_out <= (int)blockDim.x) g *= 2;
    int per = (int)blockDim.x / g;
    int lane = (int)threadIdx.x % g;
    int blocks = (m + FASTNN_MB - 1) / FASTNN_MB;
    int size = (m + blocks - 1) / blocks;  // examples per block, balanced (10 = 5 + 5, not 8 + 2)
    float* mine = partial + threadIdx.x * FASTNN_MB;
    for (int k0 = 0; k0 < m; k0 += size) {
        int mb = m - k0 < size ? m - k0 : size;
        for (int base = 0; base < n_out; base += per) {
            int j = base + (int)threadIdx.x / g;
            bool active = (int)threadIdx.x < per * g && j < n_out;
            float acc[FASTNN_MB];
            const float* x[FASTNN_MB];
#pragma unroll
            for (int kk = 0; kk < FASTNN_MB; kk++) {
                acc[kk] = 0.0f;
                int k = k0 + (kk < mb ? kk : 0);
                x[kk] = a_prev != 0 ? a_prev + (long long)k * n_in : X + idx[k] * n_in;
            }
            if (active) {
                const float* w = W + (long long)j * n_in;
                for (int i = lane; i < n_in; i += g) {
                    float wi = w[i];
#pragma unroll
                    for (int kk = 0; kk < FASTNN_MB; kk++) {
                        if (kk < mb) acc[kk] += wi * x[kk][i];
                    }
                }
            }
            if (g > 1) {
#pragma unroll
                for (int kk = 0; kk < FASTNN_MB; kk++) mine[kk] = acc[kk];
                for (int h = g / 2; h > 0; h /= 2) {
                    __syncthreads();
                    if (active && lane < h) {
                        const float* other = mine + h * FASTNN_MB;
#pragma unroll
                        for (int kk = 0; kk < FASTNN_MB; kk++) mine[kk] += other[kk];
                    }
                }
                __syncthreads();
#pragma unroll
                for (int kk = 0; kk < FASTNN_MB; kk++) acc[kk] = mine[kk];
            }
            if (active && lane == 0) {
#pragma unroll
                for (int kk = 0; kk < FASTNN_MB; kk++) {
                    if (kk < mb) {
                        int k = k0 + kk;
                        float z = acc[kk] + b[j];
                        if (z_out != 0) z_out[k * n_out + j] = z;
                        else out[k * n_out + j] = act_forward(act, z);
                    }
                }
            }
            if (g > 1) __syncthreads();
        }
    }
}

// BP2: d_prev[k, i] = (Σ_j W[j, i] δ[k, j]) ⊙ σ'(a_prev[k, i]).
__device__ void backward_layer(const float* W, int n_in, int n_out, int m, const float* delta,
                               const float* a_prev, float* d_prev, int act, float* partial) {
    int items = n_in * m;
    int g = group_size(items);
    int per = (int)blockDim.x / g;
    int lane = (int)threadIdx.x % g;
    for (int base = 0; base < items; base += per) {
        int item = base + (int)threadIdx.x / g;
        bool active = (int)threadIdx.x < per * g && item < items;
        float s = 0.0f;
        if (active) {
            int k = item / n_in, i = item % n_in;  // consecutive threads read consecutive columns of W
            const float* d = delta + (long long)k * n_out;
            for (int j = lane; j < n_out; j += g) s += W[(long long)j * n_in + i] * d[j];
        }
        if (g > 1) {
            partial[threadIdx.x] = s;
            __syncthreads();
        }
        if (active && lane == 0) {
            for (int r = 1; r < g; r++) s += partial[threadIdx.x + r];
            d_prev[item] = s * act_slope(act, a_prev[item]);
        }
        if (g > 1) __syncthreads();
    }
}

// The update of one weight from its step s: plain (with L2's keep) or momentum (with L2's decay).
__device__ void update_weight(float* W, float* vW, long long w, float s, float momentum, float keep, float decay) {
    float weight = W[w];
    if (vW == 0) {
        if (decay != 0.0f) weight = weight * keep;
        W[w] = weight + s;
    } else {
        float v = vW[w] * momentum + s;
        if (decay != 0.0f) v = v - weight * decay;
        vW[w] = v;
        W[w] = weight + v;
    }
}

// BP3/BP4 and the update of one layer: the step s = Σ_k δ[k, j] in_k[i] (δ already holds -η/m).
// For batches of up to FASTNN_MU examples each thread keeps one row's δ in registers and walks a
// strided set of that row's columns (consecutive threads, consecutive columns); larger batches
// read δ for every weight.
__device__ void update_layer(float* W, float* b, float* vW, float* vb, int n_in, int n_out, int m,
                             const float* X, const long long* idx, const float* a_prev, const float* delta,
                             float momentum, float keep, float decay) {
    if (m <= FASTNN_MU) {
        int lanes = (int)blockDim.x / n_out;
        if (lanes < 1) lanes = 1;
        int units = n_out * lanes;
        for (int u = threadIdx.x; u < units; u += blockDim.x) {
            int j = u / lanes, lane = u % lanes;
            float d[FASTNN_MU];
            const float* x[FASTNN_MU];
#pragma unroll
            for (int kk = 0; kk < FASTNN_MU; kk++) {
                int k = kk < m ? kk : 0;
                d[kk] = delta[k * n_out + j];
                x[kk] = a_prev != 0 ? a_prev + (long long)k * n_in : X + idx[k] * n_in;
            }
            for (int i = lane; i < n_in; i += lanes) {
                float s = 0.0f;
#pragma unroll
                for (int kk = 0; kk < FASTNN_MU; kk++) {
                    if (kk < m) s += d[kk] * x[kk][i];
                }
                update_weight(W, vW, (long long)j * n_in + i, s, momentum, keep, decay);
            }
        }
    } else {
        long long n_w = (long long)n_out * n_in;
        for (long long w = threadIdx.x; w < n_w; w += blockDim.x) {
            int j = (int)(w / n_in), i = (int)(w % n_in);
            float s = 0.0f;
            for (int k = 0; k < m; k++) {
                float x = a_prev != 0 ? a_prev[(long long)k * n_in + i] : X[idx[k] * n_in + i];
                s += delta[k * n_out + j] * x;
            }
            update_weight(W, vW, w, s, momentum, keep, decay);
        }
    }
    for (int j = threadIdx.x; j < n_out; j += blockDim.x) {
        float s = 0.0f;
        for (int k = 0; k < m; k++) s += delta[k * n_out + j];
        if (vb == 0) {
            b[j] = b[j] + s;
        } else {
            float v = vb[j] * momentum + s;
            vb[j] = v;
            b[j] = b[j] + v;
        }
    }
}

// The output activation (softmax here, elementwise ones too), one example's cost, and BP1 scaled by
// `scale`, for example k.  z, a, d are row k of z^L, a^L, δ^L; y is the target row.
__device__ float output_error(int n, const float* z, float* a, float* d, const float* y, int act, int cost,
                              float scale) {
    float top = z[0];
    for (int j = 1; j < n; j++) top = z[j] > top ? z[j] : top;
    float total = 0.0f;
    if (act == ACT_SOFTMAX) {
        for (int j = 0; j < n; j++) {
            a[j] = expf(z[j] - top);
            total += a[j];
        }
        for (int j = 0; j < n; j++) a[j] = a[j] / total;
    } else {
        for (int j = 0; j < n; j++) a[j] = act_forward(act, z[j]);
    }
    float c = 0.0f;
    if (cost == COST_QUADRATIC) {
        float dot = 0.0f;  // Σ_j a_j g_j, for softmax's Jacobian-vector product
        for (int j = 0; j < n; j++) {
            float g = a[j] - y[j];
            c += g * g;
            dot += a[j] * g;
            d[j] = g;
        }
        c = 0.5f * c;
        for (int j = 0; j < n; j++) {
            if (act == ACT_SOFTMAX) d[j] = (d[j] - dot) * a[j];
            else d[j] = d[j] * act_slope(act, a[j]);
        }
    } else {
        float yz = 0.0f, ysum = 0.0f;
        for (int j = 0; j < n; j++) {
            yz += y[j] * z[j];
            ysum += y[j];
            d[j] = a[j] - y[j];  // σ' (or softmax's Jacobian) cancels
        }
        if (cost == COST_CROSS_ENTROPY) {
            for (int j = 0; j < n; j++) c += softplus(z[j]);
            c = c - yz;
        } else {  // log-likelihood: logsumexp(z) Σ y - y·z
            float sum = 0.0f;
            for (int j = 0; j < n; j++) sum += expf(z[j] - top);
            c = (top + logf(sum)) * ysum - yz;
        }
    }
    for (int j = 0; j < n; j++) d[j] = d[j] * scale;
    return c;
}

// One epoch: the steps over order[0 .. n_order) in batches of batch_size (the last may be short).
// sizes holds n_layers + 1 layer widths; params (and velocity, when has_velocity) are updated in place;
// cost_out[0] receives the epoch's summed cost.  Launch with one block and the shared memory above.
extern "C" __global__ void __launch_bounds__(FASTNN_THREADS) fastnn_fused_epoch(
        const float* X, const float* Y, const long long* order, int n_order, int batch_size,
        const int* sizes, int n_layers, int hidden_act, int output_act, int cost,
        float* params, float* velocity, int has_velocity, double lr, float momentum, float keep,
        float decay, double* cost_out) {
    float* sp = fastnn_smem;
    int n_params = 0;
    for (int l = 0; l < n_layers; l++) {
        n_params += sizes[l + 1] * sizes[l] + sizes[l + 1];
    }
    int n_out = sizes[n_layers];
    float* W[FASTNN_MAX_LAYERS];
    float* b[FASTNN_MAX_LAYERS];
    float* vW[FASTNN_MAX_LAYERS];
    float* vb[FASTNN_MAX_LAYERS];
    float* act[FASTNN_MAX_LAYERS];
    float* delta[FASTNN_MAX_LAYERS];
    int at = 0;
    for (int l = 0; l < n_layers; l++) {
        W[l] = sp + at;
        vW[l] = has_velocity ? velocity + at : 0;
        at += sizes[l + 1] * sizes[l];
    }
    for (int l = 0; l < n_layers; l++) {
        b[l] = sp + at;
        vb[l] = has_velocity ? velocity + at : 0;
        at += sizes[l + 1];
    }
    int vat = at;
    for (int l = 0; l < n_layers; l++) {
        act[l] = sp + vat;
        vat += batch_size * sizes[l + 1];
        delta[l] = sp + vat;
        vat += batch_size * sizes[l + 1];
    }
    float* z_out = sp + vat;
    float* costs = z_out + batch_size * n_out;
    float* partial = costs + batch_size;

    for (int p = threadIdx.x; p < n_params; p += blockDim.x) sp[p] = params[p];
    __syncthreads();

    double total = 0.0;  // the epoch's cost, kept by thread 0
    int last = n_layers - 1;
    for (int start = 0; start < n_order; start += batch_size) {
        int m = n_order - start < batch_size ? n_order - start : batch_size;
        const long long* idx = order + start;
        float scale = (float)(-lr / m);
        for (int l = 0; l < n_layers; l++) {
            forward_layer(W[l], b[l], sizes[l], sizes[l + 1], m, X, idx, l > 0 ? act[l - 1] : 0,
                          act[l], l == last ? z_out : 0, hidden_act, partial);
            __syncthreads();
        }
        for (int k = threadIdx.x; k < m; k += blockDim.x) {
            costs[k] = output_error(n_out, z_out + k * n_out, act[last] + k * n_out, delta[last] + k * n_out,
                                    Y + idx[k] * n_out, output_act, cost, scale);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            float step_cost = 0.0f;
            for (int k = 0; k < m; k++) step_cost += costs[k];
            total += step_cost;
        }
        for (int l = last; l >= 0; l--) {
            if (l > 0) {  // BP2 reads W^l before its update below
                backward_layer(W[l], sizes[l], sizes[l + 1], m, delta[l], act[l - 1], delta[l - 1], hidden_act,
                               partial);
                __syncthreads();
            }
            update_layer(W[l], b[l], vW[l], vb[l], sizes[l], sizes[l + 1], m, X, idx, l > 0 ? act[l - 1] : 0,
                         delta[l], momentum, keep, decay);
            __syncthreads();
        }
    }

    for (int p = threadIdx.x; p < n_params; p += blockDim.x) params[p] = sp[p];
    if (threadIdx.x == 0) cost_out[0] = total;
}
