// fastnn's fused CUDA engine: one launch trains one epoch of mini-batch SGD, in float32, for one network per
// thread block (gridDim.x independent networks of the same shape at once: block b trains model b).
//
// One thread block loops over every step of the epoch (a persistent kernel, as in Persistent RNNs): the
// parameters stay in shared memory for the whole epoch; the next batch's rows are copied into shared memory
// (cp.async, double buffered) while the current step computes.  The math is the generic engine's
// (fastnn/engines/generic.py, network.py, activations.py, costs.py):
//   Z^l = W^l A^{l-1} + b^l, A^l = σ(Z^l)         forward
//   δ^L = ∇_a C ⊙ σ'(Z^L), scaled by -η/m          BP1 (δ carries the step's scale, like the generic one)
//   δ^l = ((W^{l+1})^T δ^{l+1}) ⊙ σ'(Z^l)          BP2
//   s_b = Σ_batch δ^l, s_W = δ^l (A^{l-1})^T         BP3, BP4: the step -(η/m) g
//   plain     W ← W·keep + s_W,  b ← b + s_b                      (keep = 1 - ηλ/n)
//   momentum  v ← μ v + s - decay·W (weights only),  W ← W + v     (decay = ηλ/n)
//
// Dynamic shared memory of one block, in floats, every region starting on a 4-float (16-byte) boundary
// (the host computes the same layout: cuda_fused.shared_floats).  Everything is reached through integer
// offsets into fastnn_smem; no pointer is kept in an array, so the kernel has no stack frame.
//   W^l     n_l × ld(n_{l-1})   row-major, rows padded with zeros to ld(n) ≡ 4 (mod 32) floats, so that the
//                               16-byte reads of 8 consecutive rows (a quarter warp) hit 8 distinct bank quads
//   b^l     n_l
//   x       2 × B × r(n_0)      the batch's inputs, two buffers (this step's, the next one's), chunk-major:
//                               the 4-wide chunk c of example k at (c·B + k)·4 (chunked()); r(n) = n
//                               rounded up to 4, the pad zero
//   y       2 × B × n_L         the batch's target rows, two buffers
//   a^l     B × r(n_l)          activations, l = 1..L: chunk-major for hidden layers, rows for a^L (pads zero)
//   δ^l     B × r(n_l)          errors, one row per example
//   z^L     B × r(n_L)          the output layer's weighted inputs (the costs are computed from z)
//   cost    B                   each example's cost in this step
//   partial S × B × n_l         the split sums of the forward pass (S = the split of the widest layer; with W^0
//                               in registers, layer 0's: W0_SLOTS × FASTNN_MB × W0_LD)
//   δ^1 n_1 × W0_DT             with W^0 in registers: δ^1 unit-major, for the tile's BP4 (its rows after a^1
//                               are then unused)
//   ring    2 × B long longs    the row indices of the next two steps (fetch_rows reads one, the other is copied in)
//   table   20 × (L + 1) ints   each layer's offsets and shape (store_layer), read instead of recomputed, then
//                               the Layout itself (read from here during the step loop: no register holds it)
//   total   4                   the epoch's summed cost (a double), kept by thread 0
//   v0      n_1 × ld(n_0)       W^0's velocity, padded like W^0, when the launch gives room for it (else global)
// X, Y, the shuffled order and the velocity stay in global memory.  The velocity is read and written in
// place (in net.params' unpadded layout), once per weight per step.
//
// The work of a step, per phase (warps = blockDim.x / 32; blockDim.x must be a multiple of 32):
//   forward   lane = output unit j (32 per warp), warps split the inputs i (a split-K product): each lane
//             keeps up to FASTNN_MB examples' sums in registers and reads W[j, i..i+3] and x_k[i..i+3] as
//             16-byte words (x_k is one address for the whole warp: a broadcast); the split sums meet in
//             `partial` and one pass adds them with σ (one more barrier when the inputs are split).
//   BP1       thread k computes the output activation, the cost and δ^L of example k; beside it the warps past
//             the first issue the next step's copies (fetch_rows), their row indices read from the ring.
//   BP2       a group of G lanes (a power of two ≤ 32) per (example, input) pair sums over j; the lanes meet
//             through __shfl_xor_sync, no shared buffer.
//   BP3/BP4   lane = unit j, warps over 4-wide column chunks: δ_k[j] in registers, x_k[i..i+3] broadcast,
//             the update done in registers and stored as one 16-byte word.  The update of W^l runs beside
//             BP2 of layer l - 1 (both read δ^l's neighbours, neither writes what the other reads).
//   W^0 in registers (FASTNN_W0REG > 0, see W0Tile): the forward pass and BP4 + update of layer 0 read only
//             the inputs from shared memory; the slots' sums are split sums as above (split = W0_SLOTS).
// Barriers per step: 1 (buffer swap) + 1-2 per layer forward + 1 (BP1) + 1 per layer backward but the first.
//
// The same file compiles with g++ against tests/kernel_shim/shim.h (FASTNN_SHIM): each CUDA thread a
// std::thread, blocks one after another, shuffles as per-warp exchanges, cp.async as plain copies.

#ifndef FASTNN_THREADS  // the block size the host launches (cuda_fused.THREADS): 12 warps; at 512 the register cap
#define FASTNN_THREADS 384  // (128) spills at FASTNN_MB=16, at 384 (168) nothing spills
#endif
#ifndef FASTNN_MB  // examples per register block in the forward pass and BP4: the host compiles one kernel per
#define FASTNN_MB 16  // batch size up to 16 (-DFASTNN_MB=10 for the textbook), so that a full batch runs unguarded
#endif

#define ACT_SIGMOID 0
#define ACT_TANH 1
#define ACT_RELU 2
#define ACT_IDENTITY 3
#define ACT_SOFTMAX 4

#define COST_QUADRATIC 0
#define COST_CROSS_ENTROPY 1
#define COST_LOG_LIKELIHOOD 2

#ifndef FASTNN_W0REG  // W^0 held in registers for the whole epoch: 4-wide chunks of it per thread (see W0Tile);
#define FASTNN_W0REG 0  // 0: W^0 in shared memory.  The host compiles it where n_1 <= 32 and a batch fits FASTNN_MB
#endif

#ifndef FASTNN_W0ROWS  // rows of W^0 a thread holds in the tile (see W0Tile): the host's tile_shape
#define FASTNN_W0ROWS 2
#endif
#ifndef FASTNN_W0GROUP  // threads of a slot in the tile, each FASTNN_W0ROWS rows: the host's tile_shape
#define FASTNN_W0GROUP 16
#endif
#define W0_SLOTS (FASTNN_THREADS / FASTNN_W0GROUP)  // the tile's slots: groups of threads side by side
#define W0_DT ((FASTNN_MB + 3) & ~3)  // the stride of the tile's δ^1, unit-major: a unit's examples in 16-byte words
#define W0_LD (FASTNN_W0ROWS * FASTNN_W0GROUP)  // an example's split sums in the tile's forward pass: the tile's rows

#if FASTNN_W0REG > 0  // threads of the block: compiled in where the tile's mapping needs them (w0_fits checks the launch)
#define NTHREADS FASTNN_THREADS
#else
#define NTHREADS ((int)blockDim.x)
#endif

#ifndef FASTNN_CLUSTER  // blocks per network: 1 (one SM, sm_80+), or a thread-block cluster on sm_90 (-DFASTNN_CLUSTER=8)
#define FASTNN_CLUSTER 1
#endif

#ifndef FASTNN_SHIM
extern __shared__ float4 fastnn_smem4[];
#endif
#define SM ((float*)fastnn_smem4)

#ifndef FASTNN_SHIM
#if FASTNN_CLUSTER > 1
#define FASTNN_CLUSTER_DIMS __cluster_dims__(FASTNN_CLUSTER, 1, 1)
// This block's rank in its cluster.
__device__ __forceinline__ int cluster_rank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return (int)r;
}
// Every thread of the cluster arrives (its shared-memory writes released) and waits for all (acquired).
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
// The float at this block's shared address p, read in block `rank`'s shared memory (distributed shared memory:
// on sm_90 a generic LD through the cluster's window, the only way to reach another SM's shared memory).
__device__ __forceinline__ float remote_load(const float* p, int rank) {
    unsigned local = (unsigned)__cvta_generic_to_shared(p), remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    float v;
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
    return v;
}
#else
#define FASTNN_CLUSTER_DIMS
__device__ __forceinline__ int cluster_rank() { return 0; }
#endif
// Copy `bytes` (4, 8 or 16) from global memory to shared memory without holding a register (sm_80+).
__device__ __forceinline__ void copy_async(float* dst, const float* src, int bytes) {
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    if (bytes == 16) asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src));
    else if (bytes == 8) asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(d), "l"(src));
    else asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(d), "l"(src));
}
__device__ __forceinline__ void copy_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void copy_wait() { asm volatile("cp.async.wait_all;\n" ::); }

// Bytes of dynamic shared memory this launch was given.
__device__ __forceinline__ unsigned dynamic_smem_bytes() {
    unsigned bytes;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(bytes));
    return bytes;
}
#endif

__device__ __forceinline__ int round4(int n) { return (n + 3) & ~3; }

// Where example k's input i sits in a chunk-major buffer (x, a^l) of `cap` examples: the 4-wide chunks of
// every example side by side, so that one step of the forward and BP4 loops reads chunk c of examples
// 0, 1, ... at one base address and offsets known at compile time.
__device__ __forceinline__ int chunked(int k, int i, int cap) { return ((i >> 2) * cap + k) * 4 + (i & 3); }

// Row stride of a weight matrix with n inputs: ≥ round4(n) and ≡ 4 (mod 32) floats.
__device__ __forceinline__ int row_stride(int n) { return round4(n) + ((36 - round4(n) % 32) % 32); }

// σ(z) for the elementwise activations; sigmoid via tanh so that no |z| overflows.
__device__ __forceinline__ float act_forward(int act, float z) {
    switch (act) {
        case ACT_SIGMOID: return 0.5f * tanhf(0.5f * z) + 0.5f;
        case ACT_TANH: return tanhf(z);
        case ACT_RELU: return z < 0.0f ? 0.0f : z;
        default: return z;
    }
}

// σ'(z) written with a = σ(z): relu's a > 0 exactly where z > 0.
__device__ __forceinline__ float act_slope(int act, float a) {
    switch (act) {
        case ACT_SIGMOID: return (1.0f - a) * a;
        case ACT_TANH: return 1.0f - a * a;
        case ACT_RELU: return a > 0.0f ? 1.0f : 0.0f;
        default: return 1.0f;
    }
}

// ln(1 + e^z), as numpy's logaddexp(0, z) computes it.
__device__ __forceinline__ float softplus(float z) {
    return (z > 0.0f ? z : 0.0f) + log1pf(expf(-fabsf(z)));
}

__device__ __forceinline__ float dot4(float4 w, float4 x, float acc) {
    return acc + w.x * x.x + w.y * x.y + w.z * x.z + w.w * x.w;
}

// Where layer l (1-based output layer, 0-based weight index l) lives: offsets in floats into SM, and its shape.
struct Layer {
    int n_in, n_out, ld;  // inputs this block holds (a slice of layer 0's in a cluster), outputs, the row stride
    int w, b;             // W^l, b^l
    int in, r_in;         // the layer's inputs (x or a^{l-1}, chunk-major) and their width rounded to 4
    int cap;              // the batch size: examples per chunk in a chunk-major buffer
    int a, d, r;          // a^l, δ^l and their row stride
    int vw, vb;           // W^l and b^l in the global (unpadded) parameter/velocity layout
    int col0, g_in;       // this block's first input column and the global row length (layer 0 in a cluster)
    int vs, vsb;          // the velocity of W^l (l ≥ 1) and of b^l in shared memory (`vsmall`)
};

// The regions after the parameters: x, y, then per layer a, δ; then z, cost, partial (see the top comment).
#define LAYER_INTS 20  // a Layer as it is kept in shared memory (the `table`), one row of ints per layer
#define LAYOUT_INTS 13  // the Layout in the table's last row, then 5 step scalars (the scales, momentum, keep, decay)

struct Layout {
    int x, y, rx, z, cost, partial, table, vsmall, xchg, end, params_end;
    int dT;  // the W^0 tile's δ^1, one row of W0_DT examples per unit (see backward_layer)
    int ring;  // two steps' row indices (long longs): the one the next fetch reads, the one being copied in
};
static_assert(sizeof(Layout) <= LAYOUT_INTS * sizeof(int) && LAYOUT_INTS + 5 <= LAYER_INTS, "the table's last row");

// Inputs of layer l this block holds: all of them, or in a cluster layer 0's share of 4-wide chunks.
__device__ __forceinline__ int block_inputs(const int* sizes, int l) {
    if (l > 0 || FASTNN_CLUSTER == 1) return round4(sizes[l]);
    int chunks = round4(sizes[0]) / 4;
    return 4 * ((chunks + FASTNN_CLUSTER - 1) / FASTNN_CLUSTER);
}

// Floats of W^l in shared memory: its rows padded to row_stride; none for W^0 when it lives in registers.
__device__ __forceinline__ int weight_floats(const int* sizes, int l) {
    if (l == 0 && FASTNN_W0REG > 0) return 0;
    return sizes[l + 1] * row_stride(block_inputs(sizes, l));
}

__device__ Layout layout(const int* sizes, int n_layers, int batch, int warps) {
    Layout s;
    int at = 0;
    for (int l = 0; l < n_layers; l++) at += weight_floats(sizes, l);
    for (int l = 0; l < n_layers; l++) at += round4(sizes[l + 1]);
    s.params_end = at;
    s.rx = block_inputs(sizes, 0);
    s.x = at;
    at += 2 * batch * s.rx;
    s.y = at;
    at += round4(2 * batch * sizes[n_layers]);
    for (int l = 0; l < n_layers; l++) at += 2 * batch * round4(sizes[l + 1]);
    s.z = at;
    at += batch * round4(sizes[n_layers]);
    s.cost = at;
    at += round4(batch);
    s.partial = at;
    int most = 0;
    for (int l = 0; l < n_layers; l++) {
        int jblocks = (sizes[l + 1] + 31) / 32, chunks = block_inputs(sizes, l) / 4;
        int split = warps / jblocks < 1 ? 1 : warps / jblocks;
        split = split < chunks ? split : chunks;
        int need = split > 1 ? split * batch * sizes[l + 1] : 0;
#if FASTNN_W0REG > 0
        if (l == 0) need = W0_SLOTS * FASTNN_MB * W0_LD;  // the tile's slots, every example, the pairs' rows
#endif
        most = need > most ? need : most;
    }
    s.dT = at + round4(most);
    at = s.dT + (FASTNN_W0REG > 0 ? sizes[1] * W0_DT : 0);
    s.ring = at;
    at += 4 * batch;  // 2 × batch long longs
    s.table = at;
    at = s.table + LAYER_INTS * (n_layers + 1);  // a row per layer, then the Layout itself
    s.vsmall = at;  // the velocity of every W^l but the first, then of every b^l (unpadded, as in global memory)
    int small = 0;
    for (int l = 1; l < n_layers; l++) small += sizes[l + 1] * sizes[l];
    for (int l = 0; l < n_layers; l++) small += sizes[l + 1];
    at += round4(small);
    s.xchg = at;  // a cluster's exchange of layer 0's sums: two buffers of B × n_1
    if (FASTNN_CLUSTER > 1) at += round4(2 * batch * sizes[1]);
    s.end = at + 4;  // + the epoch's cost, a double, in the last 4 floats
    return s;
}

__device__ Layer layer(const int* sizes, int n_layers, int batch, const Layout& s, int l, int rank) {
    Layer L;
    int w = 0, b = 0, a = s.y + round4(2 * batch * sizes[n_layers]);
    int vw = 0, vb = 0, vs = s.vsmall, vsb = s.vsmall;
    for (int q = 0; q < n_layers; q++) {
        if (q == l) break;
        w += weight_floats(sizes, q);
        vw += sizes[q + 1] * sizes[q];
        if (q > 0) vs += sizes[q + 1] * sizes[q];
        a += 2 * batch * round4(sizes[q + 1]);
    }
    for (int q = 0; q < n_layers; q++) vb += sizes[q + 1] * sizes[q];  // the biases follow every W
    for (int q = 1; q < n_layers; q++) vsb += sizes[q + 1] * sizes[q];
    for (int q = 0; q < l; q++) {
        b += round4(sizes[q + 1]);
        vb += sizes[q + 1];
        vsb += sizes[q + 1];
    }
    int all_w = 0;
    for (int q = 0; q < n_layers; q++) all_w += weight_floats(sizes, q);
    L.r_in = block_inputs(sizes, l);
    L.col0 = l == 0 ? rank * L.r_in : 0;
    L.g_in = sizes[l];
    int left = L.g_in - L.col0;  // the real columns of this block's slice (the last block's may be short)
    L.n_in = left < 0 ? 0 : (left < L.r_in ? left : L.r_in);
    L.n_out = sizes[l + 1];
    L.ld = row_stride(L.r_in);
    L.w = w;
    L.b = all_w + b;
    L.r = round4(L.n_out);
    L.a = a;
    L.d = a + batch * L.r;
    L.in = l == 0 ? s.x : a - 2 * batch * L.r_in;  // a^{l-1} sits just before this layer's a^l, δ^l
    L.vw = vw;
    L.vb = vb;
    L.vs = vs;
    L.vsb = vsb;
    L.cap = batch;
    return L;
}

// Layer l's row of the table in shared memory: written once per launch, read at each phase (17 LDS with
// constant offsets, instead of walking `sizes` in global memory).
__device__ void store_layer(int table, int l, const Layer& L) {
    int* row = (int*)SM + table + LAYER_INTS * l;
    row[0] = L.n_in;
    row[1] = L.n_out;
    row[2] = L.ld;
    row[3] = L.w;
    row[4] = L.b;
    row[5] = L.in;
    row[6] = L.r_in;
    row[7] = L.cap;
    row[8] = L.a;
    row[9] = L.d;
    row[10] = L.r;
    row[11] = L.vw;
    row[12] = L.vb;
    row[13] = L.col0;
    row[14] = L.g_in;
    row[15] = L.vs;
    row[16] = L.vsb;
}

__device__ __forceinline__ Layer load_layer(int table, int l) {
    const int* row = (const int*)SM + table + LAYER_INTS * l;
    Layer L;
    L.n_in = row[0];
    L.n_out = row[1];
    L.ld = row[2];
    L.w = row[3];
    L.b = row[4];
    L.in = row[5];
    L.r_in = row[6];
    L.cap = row[7];
    L.a = row[8];
    L.d = row[9];
    L.r = row[10];
    L.vw = row[11];
    L.vb = row[12];
    L.col0 = row[13];
    L.g_in = row[14];
    L.vs = row[15];
    L.vsb = row[16];
    return L;
}

// Inputs split over warps in the forward pass (see layout()).
__device__ __forceinline__ int input_split(const Layer& L, int warps) {
    int jblocks = (L.n_out + 31) / 32, chunks = L.r_in / 4;
    int split = warps / jblocks < 1 ? 1 : warps / jblocks;
    return split < chunks ? split : chunks;
}

// Σ_c W[j, 4c..4c+3]·x_k[4c..4c+3] over chunks c = c0, c0 + step, ... < chunks into acc[kk] for the examples
// k0 + kk, kk < mb; FULL: mb == FASTNN_MB (no guard in the loop).  x_k: chunk-major, `cap` examples per chunk.
template <bool FULL>
__device__ __forceinline__ void dot_chunks(float (&acc)[FASTNN_MB], const float4* w, const float4* x, int c0,
                                           int chunks, int step, int cap, int mb) {
    for (int c = c0; c < chunks; c += step) {
        float4 wc = w[c];
        const float4* xc = x + c * cap;
#pragma unroll
        for (int kk = 0; kk < FASTNN_MB; kk++) {
            if (FULL || kk < mb) acc[kk] = dot4(wc, xc[kk], acc[kk]);
        }
    }
}

// Forward pass of layer L on m examples whose inputs (chunk-major) start at `in`: σ(z) into the chunk-major
// a^l (hidden layers), or z into the rows of z^L (the output layer: act is then identity).
// Ends with the block's barrier.
#define TO_HIDDEN 0   // σ(z) into the chunk-major a^l
#define TO_OUTPUT 1   // z into the rows of z^L
#define TO_CLUSTER 2  // this block's share of z - b (layer 0 in a cluster) into the exchange buffer, rows of n_out

__device__ void finish_forward(const Layer& L, int m, int split, int to, int act, const Layout& s, int xchg, int ld,
                               int stride);

__device__ void forward_layer(const Layer& L, int in, int m, int to, int act, const Layout& s, int xchg) {
    int warps = NTHREADS / 32, warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    int jblocks = (L.n_out + 31) / 32, split = input_split(L, warps), chunks = L.r_in / 4;
    for (int unit = warp; unit < jblocks * split; unit += warps) {
        int j = (unit % jblocks) * 32 + lane, part = unit / jblocks;
        if (j >= L.n_out) continue;
        const float4* w = fastnn_smem4 + (L.w + j * L.ld) / 4;
        for (int k0 = 0; k0 < m; k0 += FASTNN_MB) {
            int mb = m - k0 < FASTNN_MB ? m - k0 : FASTNN_MB;
            const float4* x = fastnn_smem4 + in / 4 + k0;
            float acc[FASTNN_MB];
#pragma unroll
            for (int kk = 0; kk < FASTNN_MB; kk++) acc[kk] = 0.0f;
            if (mb == FASTNN_MB) dot_chunks<true>(acc, w, x, part, chunks, split, L.cap, mb);
            else dot_chunks<false>(acc, w, x, part, chunks, split, L.cap, mb);
#pragma unroll
            for (int kk = 0; kk < FASTNN_MB; kk++) {
                if (kk < mb) {
                    int k = k0 + kk;
                    if (split > 1) SM[s.partial + (part * m + k) * L.n_out + j] = acc[kk];
                    else if (to == TO_CLUSTER) SM[xchg + k * L.n_out + j] = acc[kk];
                    else if (to == TO_OUTPUT) SM[s.z + k * L.r + j] = acc[kk] + SM[L.b + j];
                    else SM[L.a + chunked(k, j, L.cap)] = act_forward(act, acc[kk] + SM[L.b + j]);
                }
            }
        }
    }
    finish_forward(L, m, split, to, act, s, xchg, L.n_out, m * L.n_out);
}

// The end of a layer's forward pass: the block's barrier, then (inputs split over `split` warps) one pass adding
// the split sums in order with b and σ, and its barrier.  Part q's sum of example k, unit j is at
// s.partial + q·stride + k·ld + j.
__device__ void finish_forward(const Layer& L, int m, int split, int to, int act, const Layout& s, int xchg, int ld,
                               int stride) {
    __syncthreads();
    if (split > 1) {  // add the split sums: consecutive threads, consecutive units (no bank conflict); two units a
                      // thread at once and each as its even and odd parts, so that four short chains overlap
        int items = m * L.n_out;
        for (int t0 = threadIdx.x; t0 < items; t0 += 2 * NTHREADS) {
#pragma unroll
            for (int u = 0; u < 2; u++) {
                int t = t0 + u * NTHREADS;
                if (t >= items) break;
                int k = t / L.n_out, j = t % L.n_out;
                const float* part = SM + s.partial + k * ld + j;
                float even = 0.0f, odd = 0.0f;
                for (int q = 0; q + 1 < split; q += 2) {
                    even += part[q * stride];
                    odd += part[(q + 1) * stride];
                }
                if (split & 1) even += part[(split - 1) * stride];
                float z = (to == TO_CLUSTER ? 0.0f : SM[L.b + j]) + (even + odd);
                if (to == TO_CLUSTER) SM[xchg + k * L.n_out + j] = z;
                else if (to == TO_OUTPUT) SM[s.z + k * L.r + j] = z;
                else SM[L.a + chunked(k, j, L.cap)] = act_forward(act, z);
            }
        }
        __syncthreads();
    }
}

#if FASTNN_CLUSTER > 1
// Layer 0 in a cluster: z = b + Σ_rank (that block's share), the ranks added in order by every block, so that all
// blocks hold the same a^1 (or z^L) bit for bit.  The one cluster barrier of the step; ends with the block's.
__device__ void exchange(const Layer& L, int m, bool output, int act, const Layout& s, int xchg) {
    cluster_sync();
    for (int t = threadIdx.x; t < m * L.n_out; t += NTHREADS) {
        int k = t / L.n_out, j = t % L.n_out;
        float z = SM[L.b + j];
#pragma unroll
        for (int r = 0; r < FASTNN_CLUSTER; r++) z += remote_load(SM + xchg + t, r);
        if (output) SM[s.z + k * L.r + j] = z;
        else SM[L.a + chunked(k, j, L.cap)] = act_forward(act, z);
    }
    __syncthreads();
}
#endif

// BP2: δ^{l-1}[k, i] = (Σ_j W^l[j, i] δ^l[k, j]) ⊙ σ'(a^{l-1}[k, i]), for layer L = l, into its rows after
// a^{l-1}; or with dT >= 0 (δ^1, for the W^0 tile) unit-major at dT + i·W0_DT + k instead, and 0 there for the
// examples past a short batch (k = m .. cap - 1: the tile's BP4 reads every example's, unguarded, in 16-byte words;
// the biases' update reads it there too).  No barrier.
__device__ void backward_layer(const Layer& L, int m, int act, int dT) {
    int items = L.n_in * m;
    int g = 1;
    while (g < 32 && 2 * g * items <= NTHREADS) g *= 2;
    int per = NTHREADS / g, lane = (int)threadIdx.x % g;
    int d_prev = L.in + (L.a - L.in) / 2;  // δ^{l-1} follows a^{l-1}, batch rows of r_in after it
    int at = dT >= 0 ? dT : d_prev, k_step = dT >= 0 ? 1 : L.r_in, i_step = dT >= 0 ? W0_DT : 1;
    for (int base = 0; base < items; base += 2 * per) {  // the same trips for every lane: the shuffles meet; two
        int item0 = base + (int)threadIdx.x / g, item1 = item0 + per;  // items a thread, their chains side by side
        bool on0 = item0 < items, on1 = item1 < items;
        int k0 = on0 ? item0 / L.n_in : 0, i0 = on0 ? item0 % L.n_in : 0;
        int k1 = on1 ? item1 / L.n_in : 0, i1 = on1 ? item1 % L.n_in : 0;
        float sum0 = 0.0f, sum1 = 0.0f;
        for (int j = lane; j < L.n_out; j += g) {
            if (on0) sum0 += SM[L.w + j * L.ld + i0] * SM[L.d + k0 * L.r + j];
            if (on1) sum1 += SM[L.w + j * L.ld + i1] * SM[L.d + k1 * L.r + j];
        }
        for (int h = g / 2; h > 0; h /= 2) {
            sum0 += __shfl_xor_sync(0xffffffffu, sum0, h);
            sum1 += __shfl_xor_sync(0xffffffffu, sum1, h);
        }
        if (on0 && lane == 0) SM[at + k0 * k_step + i0 * i_step] = sum0 * act_slope(act, SM[L.in + chunked(k0, i0, L.cap)]);
        if (on1 && lane == 0) SM[at + k1 * k_step + i1 * i_step] = sum1 * act_slope(act, SM[L.in + chunked(k1, i1, L.cap)]);
    }
    if (dT >= 0) {
        for (int t = threadIdx.x; t < (L.cap - m) * L.n_in; t += NTHREADS)  // (none but on the epoch's short last step)
            SM[dT + (t % L.n_in) * W0_DT + m + t / L.n_in] = 0.0f;
    }
}

// The update of one weight from its step s: plain (with L2's keep) or momentum (with L2's decay).
__device__ __forceinline__ float plain_update(float w, float s, float keep, float decay) {
    return (decay != 0.0f ? w * keep : w) + s;
}

__device__ __forceinline__ float momentum_update(float w, float s, float& v, float momentum, float decay) {
    float u = v * momentum + s;
    if (decay != 0.0f) u = u - w * decay;
    v = u;
    return w + u;
}

// Entries 4c..4c+3 of one row in global memory's unpadded layout (n_in a row: the velocity, or W^0 itself): 0
// past the row's end when read, untouched there when written.
__device__ __forceinline__ float4 load_chunk(const float* row, int c, int n_in) {
    int i = 4 * c;  // a block of a cluster may hold fewer columns than chunks (even none): every one is guarded
    return make_float4(i < n_in ? row[i] : 0.0f, i + 1 < n_in ? row[i + 1] : 0.0f, i + 2 < n_in ? row[i + 2] : 0.0f,
                       i + 3 < n_in ? row[i + 3] : 0.0f);
}

__device__ __forceinline__ void store_chunk(float* row, int c, int n_in, float4 v) {
    int i = 4 * c;
    if (i < n_in) row[i] = v.x;
    if (i + 1 < n_in) row[i + 1] = v.y;
    if (i + 2 < n_in) row[i + 2] = v.z;
    if (i + 3 < n_in) row[i + 3] = v.w;
}

// The momentum update of weights 4c..4c+3 of one row held in registers, from their step s; the row's velocity `v`
// is padded like W in shared memory (PADDED: one 16-byte word) or unpadded in global memory (n_in a row, each
// weight guarded).  A row past n_l (`real` false) has no velocity: its weights stay 0.
__device__ __forceinline__ void w0_momentum(float4& w, float4 s, float* v, int c, bool real, int n_in, bool padded,
                                            float momentum, float decay) {
    if (!real) return;
    float4 vc = padded ? ((float4*)v)[c] : load_chunk(v, c, n_in);
    w.x = momentum_update(w.x, s.x, vc.x, momentum, decay);
    w.y = momentum_update(w.y, s.y, vc.y, momentum, decay);
    w.z = momentum_update(w.z, s.z, vc.z, momentum, decay);
    w.w = momentum_update(w.w, s.w, vc.w, momentum, decay);
    if (padded) ((float4*)v)[c] = vc;
    else store_chunk(v, c, n_in, vc);
}

// BP4 for one unit and one chunk: Σ_kk d[kk] x_kk[4c..4c+3] over the first FASTNN_MB examples (kk < m);
// FULL: m == FASTNN_MB.  xc: chunk c of a chunk-major buffer.
template <bool FULL>
__device__ __forceinline__ float4 weight_step(const float (&d)[FASTNN_MB], const float4* xc, int m) {
    float4 step = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int kk = 0; kk < FASTNN_MB; kk++) {
        if (FULL || kk < m) {
            float4 x = xc[kk];
            step.x += d[kk] * x.x;
            step.y += d[kk] * x.y;
            step.z += d[kk] * x.z;
            step.w += d[kk] * x.w;
        }
    }
    return step;
}

// BP4 and the update of unit j's weights, chunks c = c0, c0 + step_c, ... < chunks: W's row `w` (shared), its
// velocity row `v` (global; read one chunk ahead, so that its latency hides behind a chunk's work).  The rows'
// pads stay zero: their step is 0 (x's pad is 0), and so is their velocity.  FULL: m == FASTNN_MB.  V4: the
// velocity row is padded like W's, in shared memory, and read and written as 16-byte words.
template <bool FULL, bool V4>
__device__ __forceinline__ void update_chunks(const Layer& L, const float (&d)[FASTNN_MB], int j, const float4* X4,
                                              float4* w, float* v, int m, bool has_v, float momentum, float keep,
                                              float decay, int c0, int step_c, int chunks) {
    float4 v_next = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (!V4 && has_v && c0 < chunks) v_next = load_chunk(v, c0, L.n_in);
    for (int c = c0; c < chunks; c += step_c) {
        float4 vc = v_next;
        if (V4 && has_v) vc = ((float4*)v)[c];
        else if (has_v && c + step_c < chunks) v_next = load_chunk(v, c + step_c, L.n_in);
        const float4* xc = X4 + c * L.cap;
        float4 s = weight_step<FULL>(d, xc, m);
        if (!FULL) {
            for (int k = FASTNN_MB; k < m; k++) {  // batches larger than FASTNN_MB: δ read from shared memory
                float dk = SM[L.d + k * L.r + j];
                float4 x = xc[k];
                s.x += dk * x.x;
                s.y += dk * x.y;
                s.z += dk * x.z;
                s.w += dk * x.w;
            }
        }
        float4 wc = w[c];
        if (has_v) {
            wc.x = momentum_update(wc.x, s.x, vc.x, momentum, decay);
            wc.y = momentum_update(wc.y, s.y, vc.y, momentum, decay);
            wc.z = momentum_update(wc.z, s.z, vc.z, momentum, decay);
            wc.w = momentum_update(wc.w, s.w, vc.w, momentum, decay);
            if (V4) ((float4*)v)[c] = vc;
            else store_chunk(v, c, L.n_in, vc);
        } else {
            wc.x = plain_update(wc.x, s.x, keep, decay);
            wc.y = plain_update(wc.y, s.y, keep, decay);
            wc.z = plain_update(wc.z, s.z, keep, decay);
            wc.w = plain_update(wc.w, s.w, keep, decay);
        }
        w[c] = wc;
    }
}

// BP3/BP4 and the update of layer L from δ^l (already scaled by -η/m) and its inputs `in`.  No barrier.
// Lane = unit j; warps over the column chunks; δ_k[j] in registers for the whole layer.  Where the velocity of W^l
// is (VM): V_GLOBAL, W^0's in global memory (each block of a cluster its own columns); V_SMALL, the other layers'
// in shared memory (each block of a cluster its own copy, updated identically); V_PADDED, W^0's in shared memory
// at `v0`, padded like W^0 (where it fits: always on a cluster's blocks).
#define V_GLOBAL 0
#define V_SMALL 1
#define V_PADDED 2
__device__ void update_biases(const Layer& L, int m, bool has_v, float momentum, int dT);

template <int VM>
__device__ void update_layer(const Layer& L, int in, int m, float* velocity, bool has_v, float momentum,
                             float keep, float decay, int v0) {
    int warps = NTHREADS / 32, warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    int jblocks = (L.n_out + 31) / 32, chunks = L.r_in / 4;
    const float4* X4 = fastnn_smem4 + in / 4;
    for (int jb = 0; jb < jblocks; jb++) {
        int j = jb * 32 + lane;
        if (j >= L.n_out) continue;
        float d[FASTNN_MB];
#pragma unroll
        for (int kk = 0; kk < FASTNN_MB; kk++) d[kk] = kk < m ? SM[L.d + kk * L.r + j] : 0.0f;
        float4* w = fastnn_smem4 + (L.w + j * L.ld) / 4;
        float* v = VM == V_GLOBAL ? velocity + L.vw + (long long)j * L.g_in + L.col0
                   : VM == V_SMALL ? SM + L.vs + j * L.g_in : SM + v0 + j * L.ld;
        if (m == FASTNN_MB) {
            update_chunks<true, VM == V_PADDED>(L, d, j, X4, w, v, m, has_v, momentum, keep, decay, warp, warps,
                                                chunks);
        } else {
            update_chunks<false, VM == V_PADDED>(L, d, j, X4, w, v, m, has_v, momentum, keep, decay, warp, warps,
                                                 chunks);
        }
    }
    update_biases(L, m, has_v, momentum, -1);
}

// BP3 and the update of b^l (its velocity in shared memory): one thread per unit; δ^l in its rows, or with dT >= 0
// unit-major at dT (the W^0 tile's δ^1, see backward_layer).
__device__ void update_biases(const Layer& L, int m, bool has_v, float momentum, int dT) {
    int at = dT >= 0 ? dT : L.d, k_step = dT >= 0 ? 1 : L.r, j_step = dT >= 0 ? W0_DT : 1;
    for (int j = (int)threadIdx.x; j < L.n_out; j += NTHREADS) {
        float sum = 0.0f;
        for (int k = 0; k < m; k++) sum += SM[at + k * k_step + j * j_step];
        float b = SM[L.b + j];
        if (!has_v) {
            SM[L.b + j] = b + sum;
        } else {
            float u = SM[L.vsb + j] * momentum + sum;
            SM[L.vsb + j] = u;
            SM[L.b + j] = b + u;
        }
    }
}

#if FASTNN_W0REG > 0
// W^0 in registers for the whole epoch (FASTNN_W0REG > 0).  A thread holds FASTNN_W0ROWS rows of it: thread t, in
// group g = t % FASTNN_W0GROUP of its slot s = t / FASTNN_W0GROUP, holds rows g, g + group, g + 2·group, ... (zeros
// past n_1) over the 4-wide chunks c = s + W0_SLOTS·q, q < FASTNN_W0REG (zeros past the block's chunks; the threads
// past the last whole slot hold none).  The host picks rows and group (tile_shape) so that rows·group covers n_1
// with the fewest empty rows and the group is even: lanes 2i and 2i + 1 then always read one address (a slot's
// chunk), which lets shared memory return a warp's 16-byte read in 2 cycles rather than 4.  Each weight is read and
// written in registers alone: the forward pass and BP4 read only the inputs from shared memory, each 16-byte read
// feeding 4·rows FMAs.  The slots' sums are the forward pass's split sums (split = W0_SLOTS), added by
// finish_forward.  W^0 is read from the parameters in global memory at the start of the launch and written there at
// its end: shared memory holds no copy of it.
struct W0Tile {
    float4 w[FASTNN_W0ROWS][FASTNN_W0REG];  // row g + i·group, chunk q
};

static_assert(FASTNN_W0GROUP >= 1 && FASTNN_W0ROWS >= 1 && FASTNN_W0ROWS * FASTNN_W0GROUP <= 64 && W0_SLOTS >= 2,
              "the tile's forward pass leaves its sums as split sums: two slots at least");

// Whether the register tile covers layer 0 (n_1 outputs, r_in inputs in this block) on this launch: the block
// size and the batch it was compiled for (so that every offset into x is a constant), n_1 <= rows·group, and
// FASTNN_W0REG the chunks of the busiest slot: every slot holds the first FASTNN_W0REG - 1, some the last.
__device__ __forceinline__ bool w0_fits(int n_1, int r_in, int batch) {
    int chunks = r_in / 4;
    return (int)blockDim.x == FASTNN_THREADS && batch == FASTNN_MB && n_1 <= W0_LD
           && chunks <= W0_SLOTS * FASTNN_W0REG && chunks > W0_SLOTS * (FASTNN_W0REG - 1);
}

// This thread's place in the tile: its place in its group (its rows) and its slot (its chunks); slot W0_SLOTS
// holds none.
__device__ __forceinline__ int w0_row() { return (int)threadIdx.x % FASTNN_W0GROUP; }
__device__ __forceinline__ int w0_slot() { return (int)threadIdx.x / FASTNN_W0GROUP; }

// How many of this thread's chunks q = 0, 1, ... lie in layer L's inputs: chunk s + W0_SLOTS·q < chunks (none past
// the last slot).  W0_HELD(q): only the last, q = FASTNN_W0REG - 1, is guarded in the loops (w0_fits: every slot
// holds the others; a thread past the last slot runs them on its zeros, reading chunks that exist), except below 4
// examples a chunk: there each chunk's guard is kept, as the place where ptxas stops reading ahead (unguarded, it
// reads many chunks' few inputs early, a register each, and spills: batch 3 at 15 chunks).
__device__ __forceinline__ int w0_chunks(const Layer& L) {
    int s = w0_slot();
    return s < W0_SLOTS ? (L.r_in / 4 - s + W0_SLOTS - 1) / W0_SLOTS : 0;
}
#define W0_HELD(q) ((FASTNN_MB >= 4 && (q) < FASTNN_W0REG - 1) || (q) < nq)

// The tile read from and written to the network's parameters in global memory, once a launch (W^0 has no copy in
// shared memory: the block's shared memory is that much smaller).
__device__ __forceinline__ void w0_load(W0Tile& t, const Layer& L, const float* params) {
    int s = w0_slot(), g = w0_row(), nq = w0_chunks(L);
#pragma unroll
    for (int i = 0; i < FASTNN_W0ROWS; i++) {
        int row = g + i * FASTNN_W0GROUP;
        const float* p = params + L.vw + (long long)row * L.g_in + L.col0;
#pragma unroll
        for (int q = 0; q < FASTNN_W0REG; q++) {
            t.w[i][q] = q < nq && row < L.n_out ? load_chunk(p, s + W0_SLOTS * q, L.n_in)
                                                : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
    }
}

__device__ __forceinline__ void w0_store(const W0Tile& t, const Layer& L, float* params) {
    int s = w0_slot(), g = w0_row(), nq = w0_chunks(L);
#pragma unroll
    for (int i = 0; i < FASTNN_W0ROWS; i++) {
        int row = g + i * FASTNN_W0GROUP;
        float* p = params + L.vw + (long long)row * L.g_in + L.col0;
#pragma unroll
        for (int q = 0; q < FASTNN_W0REG; q++) {
            if (q < nq && row < L.n_out) store_chunk(p, s + W0_SLOTS * q, L.n_in, t.w[i][q]);
        }
    }
}

// The forward pass of layer 0 from the tile: each thread sums its rows over its chunks for every example and
// writes them as its slot's split sums, every example's row of W0_LD (a constant: no guard, an immediate offset
// each); finish_forward adds the slots' sums (split = W0_SLOTS) of the real ones.  A short batch (m < FASTNN_MB)
// runs the same code: the sums of the rows past m (an earlier step's inputs, or zeros) are written and not read.
__device__ __forceinline__ void w0_forward(const W0Tile& t, const Layer& L, int in, const Layout& s) {
    int slot = w0_slot(), g = w0_row();
    int nq = w0_chunks(L);
    float z[FASTNN_W0ROWS][FASTNN_MB];
#pragma unroll
    for (int i = 0; i < FASTNN_W0ROWS; i++) {
#pragma unroll
        for (int kk = 0; kk < FASTNN_MB; kk++) z[i][kk] = 0.0f;
    }
    const float4* x = fastnn_smem4 + in / 4 + slot * FASTNN_MB;
#pragma unroll
    for (int q = 0; q < FASTNN_W0REG; q++) {
        if (W0_HELD(q)) {
            const float4* xc = x + W0_SLOTS * q * FASTNN_MB;
#pragma unroll
            for (int kk = 0; kk < FASTNN_MB; kk++) {
                float4 v = xc[kk];
#pragma unroll
                for (int i = 0; i < FASTNN_W0ROWS; i++) z[i][kk] = dot4(t.w[i][q], v, z[i][kk]);
            }
        }
    }
    if (slot >= W0_SLOTS) return;
    float* part = SM + s.partial + slot * FASTNN_MB * W0_LD + g;  // this slot's split sums, this thread's rows
#pragma unroll
    for (int kk = 0; kk < FASTNN_MB; kk++) {
#pragma unroll
        for (int i = 0; i < FASTNN_W0ROWS; i++) part[kk * W0_LD + i * FASTNN_W0GROUP] = z[i][kk];
    }
}

// BP4 and the update of W^0 from the tile: for each chunk, the step of the thread's rows summed over the batch in
// registers (δ^1 of its rows read once), then the update: plain, W·keep + s as one FMA a weight (keep = 1 without
// L2: exactly W + s), or with momentum (HAS_V), the velocity read and written where it lives (VM as in
// update_layer).  No barrier.  δ^1 is read unit-major (at dT, backward_layer), W0_DT examples a row in 16-byte
// words.  A short batch runs the same code: δ^1 past m is 0 there, and 0·x adds nothing.
template <int VM, bool HAS_V>
__device__ __forceinline__ void w0_update(W0Tile& t, const Layer& L, int in, int dT, float* velocity,
                                          float momentum, float keep, float decay, int v0) {
    int slot = w0_slot(), g = w0_row();
    int nq = w0_chunks(L);
    float d[FASTNN_W0ROWS][W0_DT];
#pragma unroll
    for (int i = 0; i < FASTNN_W0ROWS; i++) {
        int row = g + i * FASTNN_W0GROUP;
        bool has = slot < W0_SLOTS && row < L.n_out;
        const float4* dt = fastnn_smem4 + (dT + row * W0_DT) / 4;
#pragma unroll
        for (int k4 = 0; k4 < W0_DT / 4; k4++) {
            float4 v = has ? dt[k4] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            d[i][4 * k4] = v.x, d[i][4 * k4 + 1] = v.y, d[i][4 * k4 + 2] = v.z, d[i][4 * k4 + 3] = v.w;
        }
    }
    const float4* X4 = fastnn_smem4 + in / 4 + slot * FASTNN_MB;
#pragma unroll
    for (int q = 0; q < FASTNN_W0REG; q++) {
        int c = slot + W0_SLOTS * q;
        if (W0_HELD(q)) {
            const float4* xc = X4 + W0_SLOTS * q * FASTNN_MB;
            float4 st[FASTNN_W0ROWS];
#pragma unroll
            for (int i = 0; i < FASTNN_W0ROWS; i++) st[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
            for (int kk = 0; kk < FASTNN_MB; kk++) {
                float4 x = xc[kk];
#pragma unroll
                for (int i = 0; i < FASTNN_W0ROWS; i++) {
                    st[i].x += d[i][kk] * x.x;
                    st[i].y += d[i][kk] * x.y;
                    st[i].z += d[i][kk] * x.z;
                    st[i].w += d[i][kk] * x.w;
                }
            }
#pragma unroll
            for (int i = 0; i < FASTNN_W0ROWS; i++) {
                float4& w = t.w[i][q];
                if (HAS_V) {
                    int row = g + i * FASTNN_W0GROUP;
                    float* v = VM == V_GLOBAL ? velocity + L.vw + (long long)row * L.g_in + L.col0 : SM + v0 + row * L.ld;
                    w0_momentum(w, st[i], v, c, slot < W0_SLOTS && row < L.n_out, L.n_in, VM == V_PADDED, momentum,
                                decay);
                } else {
                    w = make_float4(fmaf(w.x, keep, st[i].x), fmaf(w.y, keep, st[i].y), fmaf(w.z, keep, st[i].z),
                                    fmaf(w.w, keep, st[i].w));
                }
            }
        }
    }
}
#endif

// The output activation (softmax here, elementwise ones too), one example's cost, and BP1 scaled by
// `scale`, for one example: z, a, d are offsets of its rows of z^L, a^L, δ^L; y of its target row.
__device__ float output_error(int n, int z, int a, int d, int y, int act, int cost, float scale) {
    if (act != ACT_SOFTMAX && cost != COST_LOG_LIKELIHOOD) {  // elementwise σ: one pass, the same operations
        float c = 0.0f, yz = 0.0f;                            // in the same order as the passes below
        for (int j = 0; j < n; j++) {
            float zj = SM[z + j], yj = SM[y + j];
            float aj = act_forward(act, zj);
            SM[a + j] = aj;
            if (cost == COST_QUADRATIC) {
                float g = aj - yj;
                c += g * g;
                SM[d + j] = g * act_slope(act, aj) * scale;
            } else {  // cross-entropy: σ' cancels; C = Σ softplus(z) - y·z
                yz += yj * zj;
                c += softplus(zj);
                SM[d + j] = (aj - yj) * scale;
            }
        }
        return cost == COST_QUADRATIC ? 0.5f * c : c - yz;
    }
    float top = SM[z];
    for (int j = 1; j < n; j++) top = SM[z + j] > top ? SM[z + j] : top;
    float total = 0.0f;
    if (act == ACT_SOFTMAX) {
        for (int j = 0; j < n; j++) {
            SM[a + j] = expf(SM[z + j] - top);
            total += SM[a + j];
        }
        for (int j = 0; j < n; j++) SM[a + j] = SM[a + j] / total;
    } else {
        for (int j = 0; j < n; j++) SM[a + j] = act_forward(act, SM[z + j]);
    }
    float c = 0.0f;
    if (cost == COST_QUADRATIC) {
        float dot = 0.0f;  // Σ_j a_j g_j, for softmax's Jacobian-vector product
        for (int j = 0; j < n; j++) {
            float g = SM[a + j] - SM[y + j];
            c += g * g;
            dot += SM[a + j] * g;
            SM[d + j] = g;
        }
        c = 0.5f * c;
        for (int j = 0; j < n; j++) {
            if (act == ACT_SOFTMAX) SM[d + j] = (SM[d + j] - dot) * SM[a + j];
            else SM[d + j] = SM[d + j] * act_slope(act, SM[a + j]);
        }
    } else {
        float yz = 0.0f, ysum = 0.0f;
        for (int j = 0; j < n; j++) {
            yz += SM[y + j] * SM[z + j];
            ysum += SM[y + j];
            SM[d + j] = SM[a + j] - SM[y + j];  // σ' (or softmax's Jacobian) cancels
        }
        if (cost == COST_CROSS_ENTROPY) {
            for (int j = 0; j < n; j++) c += softplus(SM[z + j]);
            c = c - yz;
        } else {  // log-likelihood: logsumexp(z) Σ y - y·z
            float sum = 0.0f;
            for (int j = 0; j < n; j++) sum += expf(SM[z + j] - top);
            c = (top + logf(sum)) * ysum - yz;
        }
    }
    for (int j = 0; j < n; j++) SM[d + j] = SM[d + j] * scale;
    return c;
}

// Start copying rows k_lo .. k_hi - 1 of a batch, X's row idx[k] (this block's columns col0 .. col0 + cols) and
// Y's, into buffer `buf`, by the threads from t0 on (no commit, no wait here).  N rows at a time (N: the most in
// one call): their indices read at once (from the ring in shared memory in the step loop: one wavefront, every
// thread the same addresses) and kept in registers; then each thread copies its chunk q of every one of those rows,
// with no division and no index read per copy, unguarded where the group is whole; the targets' copies are taken
// by the last threads, the inputs' by the first.
template <int N>
__device__ __forceinline__ void fetch_rows(const float* __restrict__ X, const float* __restrict__ Y,
                                           const long long* idx, int k_lo, int k_hi, int buf, int batch, int n_in,
                                           int col0, int cols, int n_out, const Layout& s, int t0) {
    int xrow = s.x + buf * batch * s.rx, yrow = s.y + buf * batch * n_out;
    int t = (int)threadIdx.x - t0, step = NTHREADS - t0, ty = NTHREADS - 1 - (int)threadIdx.x;
    bool wide = n_in % 4 == 0;  // 16-byte copies (X's rows start on 16 bytes: cupy allocates 256-byte aligned)
    int per = wide ? cols / 4 : cols;
    if (t < 0 || (t >= per && ty >= n_out)) return;  // (a thread with no copy reads no index)
    for (int k0 = k_lo; k0 < k_hi; k0 += N) {
        int n = k_hi - k0 < N ? k_hi - k0 : N;
        long long r[N];  // the rows' indices
        const float* x[N];  // where this block's columns of each start in X
#pragma unroll
        for (int u = 0; u < N; u++) {
            r[u] = u < n ? idx[k0 + u] : 0;
            x[u] = X + r[u] * n_in + col0;
        }
        bool whole = n == N;
        if (wide && whole) {  // the common case, unguarded: an address and a copy a row
#pragma unroll 1
            for (int q = t; q < per; q += step) {
                float* dst = SM + xrow + chunked(k0, 4 * q, batch);
#pragma unroll
                for (int u = 0; u < N; u++) copy_async(dst + 4 * u, x[u] + 4 * q, 16);
            }
        } else {
#pragma unroll 1
            for (int q = t; q < per; q += step) {
                float* dst = SM + xrow + (wide ? chunked(k0, 4 * q, batch) : chunked(k0, q, batch));
                int at = wide ? 4 * q : q;
#pragma unroll
                for (int u = 0; u < N; u++) {
                    if (u < n) copy_async(dst + 4 * u, x[u] + at, wide ? 16 : 4);
                }
            }
        }
#pragma unroll 1
        for (int j = ty; j < n_out; j += step) {
#pragma unroll
            for (int u = 0; u < N; u++) {
                if (whole || u < n) copy_async(SM + yrow + (k0 + u) * n_out + j, Y + r[u] * n_out + j, 4);
            }
        }
    }
}

// One epoch for each network: network b is trained by block b (or the b-th cluster of FASTNN_CLUSTER blocks); its
// parameters, velocity, order and cost are params + b·n_params, velocity + b·n_params, order + b·n_order,
// cost_out[b]; its learning rate, momentum, keep and decay are lr[b], hyper[3b .. 3b+2].  The steps run over
// order[0 .. n_order) in batches of batch_size (the last may be short).  sizes holds n_layers + 1 layer widths.
// Launch with NTHREADS a multiple of 32 (FASTNN_THREADS on the GPU), gridDim.x = networks × FASTNN_CLUSTER and
// the shared memory above.  In a cluster, block `rank` holds layer 0's input columns [rank·r, rank·r + r) (r =
// layer 0's block_inputs) of W^0, of the inputs and of W^0's velocity; the other layers whole, in every block.
extern "C" __global__ void FASTNN_CLUSTER_DIMS __launch_bounds__(FASTNN_THREADS, 1) fastnn_fused_epoch(
        const float* __restrict__ X, const float* __restrict__ Y, const long long* __restrict__ orders,
        int n_order, int batch_size, const int* __restrict__ sizes, int n_layers, int hidden_act, int output_act,
        int cost, float* all_params, float* all_velocity, int has_velocity, const double* __restrict__ lrs,
        const float* __restrict__ hyper, double* cost_out) {
    int model = blockIdx.x / FASTNN_CLUSTER, rank = cluster_rank();
    int warps = NTHREADS / 32;
#if FASTNN_W0REG > 0
    if (!w0_fits(sizes[1], block_inputs(sizes, 0), batch_size)) {  // a launch the tile does not cover: refused
        if (threadIdx.x == 0 && rank == 0) cost_out[model] = __int_as_float(0x7fc00000);
        return;
    }
    const int batch = FASTNN_MB;  // what w0_fits checked: the compiled batch, so that its offsets are constants
#else
    const int batch = batch_size;
#endif
    Layout sr = layout(sizes, n_layers, batch, warps);
    long long n_params = 0;
    for (int l = 0; l < n_layers; l++) n_params += (long long)sizes[l + 1] * sizes[l] + sizes[l + 1];
    float* params = all_params + model * n_params;
    float* velocity = all_velocity + (has_velocity ? model * n_params : 0);
    const long long* order = orders + (long long)model * n_order;
    double lr = lrs[model];
    float momentum = hyper[3 * model], keep = hyper[3 * model + 1], decay = hyper[3 * model + 2];  // (the step loop
                                                                             // reads them in `scalars`)
    int n_in = sizes[0], n_out = sizes[n_layers], last = n_layers - 1;
    int col0 = rank * sr.rx, cols = n_in - col0 < 0 ? 0 : (n_in - col0 < sr.rx ? n_in - col0 : sr.rx);
    bool has_v = has_velocity != 0;
    // W^0's velocity in shared memory after everything else (padded like W^0), when the launch gave room for it
    int v0 = sr.end, v0_floats = sizes[1] * row_stride(block_inputs(sizes, 0));
    bool v0_shared = has_v && 4ull * (sr.end + v0_floats) <= dynamic_smem_bytes();
    if (4ull * sr.end > dynamic_smem_bytes() || blockDim.x % 32) {  // a launch that does not fit: refused, cost NaN
        if (threadIdx.x == 0 && rank == 0) cost_out[model] = __int_as_float(0x7fc00000);
        return;
    }

    // Zero everything (the pads must read 0), then copy the parameters in: W^l rows padded (W^0: this block's
    // columns), then b^l; and the velocity of all but W^0 (each block its own copy).
    for (int p = threadIdx.x; p < sr.end + (v0_shared ? v0_floats : 0); p += NTHREADS) SM[p] = 0.0f;
    __syncthreads();
    // The layout from here on is read from shared memory (the table's last row): a few loads a step, and no
    // register held for its fields across the step loop.
    Layout* shared_layout = (Layout*)((int*)SM + sr.table + LAYER_INTS * n_layers);
    if (threadIdx.x == 0) *shared_layout = sr;
    __syncthreads();
    const Layout& s = *shared_layout;
    for (int l = 0; l < n_layers; l++) {
        Layer L = layer(sizes, n_layers, batch, s, l, rank);
        for (int t = threadIdx.x; t < L.n_out * L.n_in; t += NTHREADS) {
            int j = t / L.n_in, i = t % L.n_in;
            if (FASTNN_W0REG == 0 || l > 0) SM[L.w + j * L.ld + i] = params[L.vw + j * L.g_in + L.col0 + i];
            if (has_v && l > 0) SM[L.vs + t] = velocity[L.vw + t];
            if (v0_shared && l == 0) SM[v0 + j * L.ld + i] = velocity[L.vw + j * L.g_in + L.col0 + i];
        }
        for (int j = threadIdx.x; j < L.n_out; j += NTHREADS) {
            SM[L.b + j] = params[L.vb + j];
            if (has_v) SM[L.vsb + j] = velocity[L.vb + j];
        }
        if (threadIdx.x == 0) store_layer(s.table, l, L);
    }
    fetch_rows<FASTNN_MB>(X, Y, order, 0, n_order < batch ? n_order : batch, 0, batch, n_in, col0, cols, n_out, s, 0);
    copy_commit();
    long long* ring = (long long*)(SM + s.ring);  // step t's row indices at ring[(t & 1)·batch ..]
    for (int k = threadIdx.x; k < batch && batch + k < n_order; k += NTHREADS) ring[batch + k] = order[batch + k];

    // δ's scale -η/m, for a full batch and for the epoch's last (which may be short): the double divisions here,
    // before the step loop (each is a call, whose saved registers would otherwise spill inside the loop)
    // They and the update's scalars are kept beside the layout in shared memory and read there each step: no
    // register holds them across the step loop.
    int m_last = n_order - (n_order - 1) / batch * batch;
    float* scalars = (float*)shared_layout + LAYOUT_INTS;
    if (threadIdx.x == 0) {
        scalars[0] = (float)(-lr / batch);
        scalars[1] = (float)(-lr / m_last);
        scalars[2] = momentum;
        scalars[3] = keep;
        scalars[4] = decay;
    }
    double* total = (double*)(SM + s.end - 4);  // the epoch's cost, kept by thread 0 in shared memory (a register
    if (threadIdx.x == 0) *total = 0.0;         // double live across the whole loop would spill)
    __syncthreads();
#if FASTNN_W0REG > 0
    W0Tile w0;  // W^0, this thread's tile of it, in registers until the epoch ends
    w0_load(w0, load_layer(s.table, 0), params);
#endif
    for (int start = 0; start < n_order; start += batch) {
        int buf = (start / batch) & 1;  // this step's input buffer (derived, not carried: one register less)
        int m = n_order - start < batch ? n_order - start : batch;
        copy_wait();
        __syncthreads();  // this step's rows are in; last step's readers of the other buffer are done
        int next = start + batch;  // the next step's rows (none past the order's end): copied while this one computes
        int x_in = s.x + buf * batch * s.rx;
        float scale = scalars[m == batch ? 0 : 1];
        for (int l = 0; l < n_layers; l++) {
            Layer L = load_layer(s.table, l);
#if FASTNN_W0REG > 0
            if (l == 0) {
                w0_forward(w0, L, x_in, s);
                int to = FASTNN_CLUSTER > 1 ? TO_CLUSTER : (l == last ? TO_OUTPUT : TO_HIDDEN);
                int xchg = s.xchg + buf * batch * L.n_out;
                finish_forward(L, m, W0_SLOTS, to, hidden_act, s, xchg, W0_LD, FASTNN_MB * W0_LD);
#if FASTNN_CLUSTER > 1
                exchange(L, m, last == 0, hidden_act, s, xchg);
#endif
                continue;
            }
#endif
#if FASTNN_CLUSTER > 1
            if (l == 0) {  // this block's share of layer 0, then the exchange (the step's one cluster barrier)
                int xchg = s.xchg + buf * batch * L.n_out;
                forward_layer(L, x_in, m, TO_CLUSTER, hidden_act, s, xchg);
                exchange(L, m, last == 0, hidden_act, s, xchg);
                continue;
            }
#endif
            forward_layer(L, l == 0 ? x_in : L.in, m, l == last ? TO_OUTPUT : TO_HIDDEN, hidden_act, s, 0);
        }
        Layer top = load_layer(s.table, last);
        if (next < n_order) {  // the next step's rows, their copies issued by the warps past the first while it
                               // computes BP1 (a phase of one thread an example), into the other buffer; and the
                               // indices of the step after it into this step's slot of the ring
            int m_next = n_order - next < batch ? n_order - next : batch, t0 = NTHREADS > 32 ? 32 : 0;
            fetch_rows<FASTNN_MB>(X, Y, ring + (buf ^ 1) * batch, 0, m_next, buf ^ 1, batch, n_in, col0, cols, n_out,
                                  s, t0);  // (a block of one warp: that warp)
            for (int k = (int)threadIdx.x - t0; k >= 0 && k < batch && next + batch + k < n_order; k += NTHREADS - t0)
                copy_async((float*)(ring + buf * batch + k), (const float*)(order + next + batch + k), 8);
            copy_commit();
        }
        for (int k = threadIdx.x; k < m; k += NTHREADS) {
            SM[s.cost + k] = output_error(n_out, s.z + k * top.r, top.a + k * top.r, top.d + k * top.r,
                                          s.y + buf * batch * n_out + k * n_out, output_act, cost, scale);
        }
        __syncthreads();
#if FASTNN_W0REG > 0
        if (last == 0) {  // one layer: the tile's δ^1 is δ^L, copied unit-major (0 past m; see backward_layer)
            for (int t = threadIdx.x; t < n_out * batch; t += NTHREADS) {
                int j = t / batch, k = t % batch;
                SM[s.dT + j * W0_DT + k] = k < m ? SM[top.d + k * top.r + j] : 0.0f;
            }
            __syncthreads();
        }
#endif
        if (threadIdx.x == 0) {
            float step_cost = 0.0f;
            for (int k = 0; k < m; k++) step_cost += SM[s.cost + k];
            *total += step_cost;
        }
        // BP2 of layer l, then the update of layer l beside BP2 of layer l - 1 (W^l is read by BP2 before
        // its update; δ^{l-1} is written by BP2 before the update of layer l - 1 reads it).
        if (last > 0) {
            backward_layer(top, m, hidden_act, FASTNN_W0REG > 0 && last == 1 ? s.dT : -1);
            __syncthreads();
        }
        for (int l = last; l >= 0; l--) {
            Layer L = load_layer(s.table, l);
            float momentum = scalars[2], keep = scalars[3], decay = scalars[4];
            if (l > 0) update_layer<V_SMALL>(L, L.in, m, velocity, has_v, momentum, keep, decay, v0);
#if FASTNN_W0REG > 0
            else {
                if (!has_v) w0_update<V_PADDED, false>(w0, L, x_in, s.dT, velocity, momentum, keep, decay, v0);
                else if (v0_shared) w0_update<V_PADDED, true>(w0, L, x_in, s.dT, velocity, momentum, keep, decay, v0);
                else w0_update<V_GLOBAL, true>(w0, L, x_in, s.dT, velocity, momentum, keep, decay, v0);
                update_biases(L, m, has_v, momentum, s.dT);
            }
#else
            else if (v0_shared) update_layer<V_PADDED>(L, x_in, m, velocity, has_v, momentum, keep, decay, v0);
            else update_layer<V_GLOBAL>(L, x_in, m, velocity, has_v, momentum, keep, decay, v0);
#endif
            if (l > 1) backward_layer(load_layer(s.table, l - 1), m, hidden_act, FASTNN_W0REG > 0 && l == 2 ? s.dT : -1);
            if (l > 1) __syncthreads();  // (after layer 1's update none: layer 0's reads nothing it writes)
        }
    }
    __syncthreads();
#if FASTNN_W0REG > 0
    w0_store(w0, load_layer(s.table, 0), params);
#endif
#if FASTNN_CLUSTER > 1
    cluster_sync();  // no block leaves while another may still read its exchange buffer
#endif

    for (int l = 0; l < n_layers; l++) {  // W^0's columns from every block, the rest from the cluster's first
        Layer L = layer(sizes, n_layers, batch, s, l, rank);
        if (l > 0 && rank > 0) break;
        for (int t = threadIdx.x; t < L.n_out * L.n_in; t += NTHREADS) {
            int j = t / L.n_in, i = t % L.n_in;
            if (FASTNN_W0REG == 0 || l > 0) params[L.vw + j * L.g_in + L.col0 + i] = SM[L.w + j * L.ld + i];
            if (has_v && l > 0) velocity[L.vw + t] = SM[L.vs + t];
            if (v0_shared && l == 0) velocity[L.vw + j * L.g_in + L.col0 + i] = SM[v0 + j * L.ld + i];
        }
    }
    for (int l = 0; l < n_layers && rank == 0; l++) {
        Layer L = load_layer(s.table, l);
        for (int j = threadIdx.x; j < L.n_out; j += NTHREADS) {
            params[L.vb + j] = SM[L.b + j];
            if (has_v) velocity[L.vb + j] = SM[L.vsb + j];
        }
    }
    if (threadIdx.x == 0 && rank == 0) cost_out[model] = *total;
}
