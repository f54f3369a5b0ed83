// Fused cross-entropy: log-softmax + NLL + gradient in one kernel, one block per row, never
// materializing the softmax.
//
//   pass 1: online max / sum of exp over the row (each thread a strided slice, then a block merge
//           of (max, sum) pairs), lse = max + log(sum), row_loss = lse - z[label];
//   pass 2: dlogits = (exp(z - lse) - onehot(label)) * scale, written to `grad` (may alias
//           `logits`: each element is read before it is written, by the same thread).
//
// Rows whose label is -100 get loss 0 and a zero gradient. A label outside [0, V) gives a NaN
// loss (the CPU path reports an error instead). `ce_reduce` then sums the row losses and counts
// the labelled rows in one block, in a fixed order, so the loss is bitwise reproducible.
#include "common.cuh"

// Merges (m, s) into (M, S), where s is a sum of exp(z - m).
__device__ __forceinline__ void lse_merge(float &M, float &S, float m, float s) {
    if (m == -INFINITY) return;
    if (M == -INFINITY) {
        M = m;
        S = s;
    } else if (m > M) {
        S = S * expf(M - m) + s;
        M = m;
    } else {
        S += s * expf(m - M);
    }
}

template <typename T>
__device__ __forceinline__ void ce_impl(const T *logits, const int64_t *__restrict__ labels, T *grad,
                                        float *__restrict__ row_loss, int v, float scale) {
    __shared__ float sm[32], ss[32];
    const size_t row = blockIdx.x;
    const T *z = logits + row * v;
    T *g = grad == nullptr ? nullptr : grad + row * v;
    const int64_t label = labels[row];
    if (label == -100) {
        if (threadIdx.x == 0) row_loss[row] = 0.f;
        if (g != nullptr)
            for (int i = threadIdx.x; i < v; i += blockDim.x) g[i] = from_f<T>(0.f);
        return;
    }
    float m = -INFINITY, s = 0.f;
    for (int i = threadIdx.x; i < v; i += blockDim.x) {
        const float zi = to_f(z[i]);
        if (zi > m) {
            s = (m == -INFINITY ? 0.f : s * expf(m - zi)) + 1.f;
            m = zi;
        } else if (zi != -INFINITY) {
            s += expf(zi - m);
        }
    }
    // Merge (m, s) across the warp, then across warps.
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float mo = __shfl_xor_sync(0xffffffffu, m, o);
        const float so = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, mo, so);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    if (lane == 0) {
        sm[warp] = m;
        ss[warp] = s;
    }
    __syncthreads();
    m = lane < nwarps ? sm[lane] : -INFINITY;
    s = lane < nwarps ? ss[lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float mo = __shfl_xor_sync(0xffffffffu, m, o);
        const float so = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, mo, so);
    }
    const float lse = m + logf(s);
    const bool ok = label >= 0 && label < v;
    // Read the target logit before anyone overwrites it (grad may alias logits).
    const float zt = ok ? to_f(z[label]) : 0.f;
    __syncthreads();
    if (threadIdx.x == 0) row_loss[row] = ok ? lse - zt : NAN;
    if (g != nullptr)
        for (int i = threadIdx.x; i < v; i += blockDim.x) {
            const float p = expf(to_f(z[i]) - lse);
            g[i] = from_f<T>((p - (i == label ? 1.f : 0.f)) * scale);
        }
}

#define CE(TN, T)                                                                                     \
    extern "C" __global__ void ce_fwd_bwd_##TN(const T *logits, const int64_t *labels, T *grad,       \
                                               float *row_loss, int v, float scale) {                 \
        ce_impl<T>(logits, labels, grad, row_loss, v, scale);                                         \
    }

PIPE_DTYPES(CE)

// out[0] = sum of row_loss, out_count[0] = number of rows with label != -100. One block.
extern "C" __global__ void ce_reduce(const float *row_loss, const int64_t *labels, int rows, float *out,
                                     unsigned int *out_count) {
    __shared__ float scratch[32];
    __shared__ unsigned int counts[32];
    float s = 0.f;
    unsigned int c = 0;
    for (int i = threadIdx.x; i < rows; i += blockDim.x) {
        s += row_loss[i];
        c += labels[i] != -100 ? 1u : 0u;
    }
    s = block_sum(s, scratch);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) c += __shfl_xor_sync(0xffffffffu, c, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    if (lane == 0) counts[warp] = c;
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned int total = 0;
        for (int w = 0; w < nwarps; ++w) total += counts[w];
        out[0] = s;
        out_count[0] = total;
    }
}
