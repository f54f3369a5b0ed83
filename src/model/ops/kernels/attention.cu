// Causal self-attention, forward and backward, flash-style: no [T, T] score matrix in global
// memory. CUDA cores in f32 (no tensor cores): a correctness-first kernel for head dims that
// are multiples of 32 (instantiated for 64 and 128), with grouped KV heads read in place (no
// repeat_kv copies) and every tensor addressed through (batch, head, position) strides, so the
// callers' [B, T, heads, D] projections are read and written without transposes.
//
// Scores s_ij = scale * q_i . k_j for keys j <= i; lse_i = log sum_j exp(s_ij); p_ij = exp(s_ij - lse_i).
//
//   attn_fwd:    one warp per query row, WARPS rows per block sharing 32-key K/V tiles in shared
//                memory. Lane l scores key (tile + l) with a float4 dot product, then an online
//                softmax over the tile updates the row's output, each lane owning D/32 of its dims.
//                Writes o and lse (f32, [B, H, T]).
//   attn_bwd_dq: one warp per query row as above; also computes delta_i = do_i . o_i (kept for
//                attn_bwd_dkv). dq_i = scale * sum_j p_ij (do_i . v_j - delta_i) k_j.
//   attn_bwd_dkv: one warp per key row, WARPS key rows per block sharing 32-query Q/dO tiles;
//                loops over the query heads of the key's group, so dk/dv are summed per KV head
//                without atomics. dv_j = sum_i p_ij do_i, dk_j = scale * sum_i ds_ij q_i.
//
// No atomics anywhere: the results are deterministic.
#include "common.cuh"

#define WARPS 8
#define FULL 0xffffffffu

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL, v, o));
    return v;
}

// Dot product of two f32 rows in shared memory, 16-byte aligned, D a multiple of 4.
template <int D>
__device__ __forceinline__ float dot_row(const float *a, const float *b) {
    float s = 0.f;
#pragma unroll
    for (int d = 0; d < D; d += 4) {
        const float4 x = *reinterpret_cast<const float4 *>(a + d);
        const float4 y = *reinterpret_cast<const float4 *>(b + d);
        s += x.x * y.x + x.y * y.y + x.z * y.z + x.w * y.w;
    }
    return s;
}

// Loads rows [r0, r0 + 32) of a [T, D] slice (row stride `rs`) into a 32 x (D + 4) f32 tile,
// times `mul`; rows at or past `t` become zeros. The + 4 padding keeps lane-per-row float4
// reads free of bank conflicts.
template <typename T, int D>
__device__ __forceinline__ void load_tile(float (*tile)[D + 4], const T *src, long long rs, int r0, int t, float mul) {
    for (int idx = threadIdx.x; idx < 32 * D; idx += blockDim.x) {
        const int r = idx / D, d = idx % D;
        const int row = r0 + r;
        tile[r][d] = row < t ? to_f(src[(size_t)row * rs + d]) * mul : 0.f;
    }
}

template <typename T, int D>
__device__ __forceinline__ void attn_fwd_impl(const T *q, const T *k, const T *v, T *o, float *lse, int hq, int hkv,
                                              int t, Strides qs_, Strides ks_, Strides vs_, Strides os_, float scale) {
    constexpr int R = D / 32;
    __shared__ __align__(16) float ks[32][D + 4];
    __shared__ __align__(16) float vs[32][D + 4];
    __shared__ __align__(16) float qs[WARPS][D];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int b = blockIdx.y / hq, h = blockIdx.y % hq, hk = h / (hq / hkv);
    const int row0 = blockIdx.x * WARPS, i = row0 + warp;
    const bool active = i < t;
    const T *qp = at(q, qs_, b, h), *kp = at(k, ks_, b, hk), *vp = at(v, vs_, b, hk);
    for (int d = lane; d < D; d += 32) qs[warp][d] = active ? to_f(qp[(size_t)i * qs_.t + d]) * scale : 0.f;
    float m = -INFINITY, l = 0.f, acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
    const int last = min(row0 + WARPS, t) - 1;  // the last key any row of this block sees
    for (int c0 = 0; c0 <= last; c0 += 32) {
        __syncthreads();  // the previous tile is no longer read (and qs is written, first time)
        load_tile<T, D>(ks, kp, ks_.t, c0, t, 1.f);
        load_tile<T, D>(vs, vp, vs_.t, c0, t, 1.f);
        __syncthreads();
        const int j = c0 + lane;
        const bool valid = active && j <= i;
        const float s = valid ? dot_row<D>(qs[warp], ks[lane]) : -INFINITY;
        const float mc = warp_max(s);
        if (mc == -INFINITY) continue;  // no key of this tile is visible to this row (warp-uniform)
        const float mn = fmaxf(m, mc);
        const float corr = expf(m - mn);  // 0 on the first tile (m = -inf)
        const float p = valid ? expf(s - mn) : 0.f;
        l = l * corr + warp_sum(p);
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r] *= corr;
#pragma unroll 8
        for (int jj = 0; jj < 32; ++jj) {
            const float pj = __shfl_sync(FULL, p, jj);
#pragma unroll
            for (int r = 0; r < R; ++r) acc[r] += pj * vs[jj][lane + 32 * r];
        }
        m = mn;
    }
    if (!active) return;
    T *op = at(o, os_, b, h) + (size_t)i * os_.t;
    const float inv = 1.f / l;
#pragma unroll
    for (int r = 0; r < R; ++r) op[lane + 32 * r] = from_f<T>(acc[r] * inv);
    if (lane == 0) lse[((size_t)b * hq + h) * t + i] = m + logf(l);
}

template <typename T, int D>
__device__ __forceinline__ void attn_bwd_dq_impl(const T *q, const T *k, const T *v, const T *o, const T *dout,
                                                 const float *lse, float *delta, T *dq, int hq, int hkv, int t,
                                                 Strides qs_, Strides ks_, Strides vs_, Strides os_, Strides dos_,
                                                 Strides dqs_, float scale) {
    constexpr int R = D / 32;
    __shared__ __align__(16) float ks[32][D + 4];
    __shared__ __align__(16) float vs[32][D + 4];
    __shared__ __align__(16) float qs[WARPS][D];
    __shared__ __align__(16) float dos[WARPS][D];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int b = blockIdx.y / hq, h = blockIdx.y % hq, hk = h / (hq / hkv);
    const int row0 = blockIdx.x * WARPS, i = row0 + warp;
    const bool active = i < t;
    const T *qp = at(q, qs_, b, h), *kp = at(k, ks_, b, hk), *vp = at(v, vs_, b, hk);
    const T *op = at(o, os_, b, h), *dop = at(dout, dos_, b, h);
    float dl = 0.f;
    for (int d = lane; d < D; d += 32) {
        const float g = active ? to_f(dop[(size_t)i * dos_.t + d]) : 0.f;
        qs[warp][d] = active ? to_f(qp[(size_t)i * qs_.t + d]) * scale : 0.f;
        dos[warp][d] = g;
        dl += active ? g * to_f(op[(size_t)i * os_.t + d]) : 0.f;
    }
    dl = warp_sum(dl);
    const size_t row = ((size_t)b * hq + h) * t + i;
    const float li = active ? lse[row] : 0.f;
    if (active && lane == 0) delta[row] = dl;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
    const int last = min(row0 + WARPS, t) - 1;
    for (int c0 = 0; c0 <= last; c0 += 32) {
        __syncthreads();
        load_tile<T, D>(ks, kp, ks_.t, c0, t, 1.f);
        load_tile<T, D>(vs, vp, vs_.t, c0, t, 1.f);
        __syncthreads();
        const int j = c0 + lane;
        const bool valid = active && j <= i;
        float ds = 0.f;
        if (valid) {
            const float p = expf(dot_row<D>(qs[warp], ks[lane]) - li);
            ds = p * (dot_row<D>(dos[warp], vs[lane]) - dl);
        }
#pragma unroll 8
        for (int jj = 0; jj < 32; ++jj) {
            const float dsj = __shfl_sync(FULL, ds, jj);
#pragma unroll
            for (int r = 0; r < R; ++r) acc[r] += dsj * ks[jj][lane + 32 * r];
        }
    }
    if (!active) return;
    T *dqp = at(dq, dqs_, b, h) + (size_t)i * dqs_.t;
#pragma unroll
    for (int r = 0; r < R; ++r) dqp[lane + 32 * r] = from_f<T>(acc[r] * scale);
}

template <typename T, int D>
__device__ __forceinline__ void attn_bwd_dkv_impl(const T *q, const T *k, const T *v, const T *dout,
                                                  const float *lse, const float *delta, T *dk, T *dv, int hq,
                                                  int hkv, int t, Strides qs_, Strides ks_, Strides vs_,
                                                  Strides dos_, Strides dks_, Strides dvs_, float scale) {
    constexpr int R = D / 32;
    __shared__ __align__(16) float qt[32][D + 4];
    __shared__ __align__(16) float dot[32][D + 4];
    __shared__ __align__(16) float kj[WARPS][D];
    __shared__ __align__(16) float vj[WARPS][D];
    __shared__ float lse_t[32], delta_t[32];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int b = blockIdx.y / hkv, hk = blockIdx.y % hkv, group = hq / hkv;
    const int row0 = blockIdx.x * WARPS, j = row0 + warp;
    const bool active = j < t;
    const T *kp = at(k, ks_, b, hk), *vp = at(v, vs_, b, hk);
    for (int d = lane; d < D; d += 32) {
        kj[warp][d] = active ? to_f(kp[(size_t)j * ks_.t + d]) : 0.f;
        vj[warp][d] = active ? to_f(vp[(size_t)j * vs_.t + d]) : 0.f;
    }
    float dka[R], dva[R];
#pragma unroll
    for (int r = 0; r < R; ++r) dka[r] = dva[r] = 0.f;
    for (int h = hk * group; h < (hk + 1) * group; ++h) {
        const T *qp = at(q, qs_, b, h), *dop = at(dout, dos_, b, h);
        const size_t rows = ((size_t)b * hq + h) * t;
        for (int c0 = row0; c0 < t; c0 += 32) {
            __syncthreads();
            load_tile<T, D>(qt, qp, qs_.t, c0, t, scale);
            load_tile<T, D>(dot, dop, dos_.t, c0, t, 1.f);
            if (threadIdx.x < 32) {
                const int i = c0 + threadIdx.x;
                lse_t[threadIdx.x] = i < t ? lse[rows + i] : 0.f;
                delta_t[threadIdx.x] = i < t ? delta[rows + i] : 0.f;
            }
            __syncthreads();
            const int i = c0 + lane;
            const bool valid = active && i < t && i >= j;
            float p = 0.f, ds = 0.f;
            if (valid) {
                p = expf(dot_row<D>(kj[warp], qt[lane]) - lse_t[lane]);
                ds = p * (dot_row<D>(vj[warp], dot[lane]) - delta_t[lane]);
            }
#pragma unroll 8
            for (int ii = 0; ii < 32; ++ii) {
                const float pi = __shfl_sync(FULL, p, ii), dsi = __shfl_sync(FULL, ds, ii);
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    dva[r] += pi * dot[ii][lane + 32 * r];
                    dka[r] += dsi * qt[ii][lane + 32 * r];  // qt holds scale * q
                }
            }
        }
    }
    if (!active) return;
    T *dkp = at(dk, dks_, b, hk) + (size_t)j * dks_.t, *dvp = at(dv, dvs_, b, hk) + (size_t)j * dvs_.t;
#pragma unroll
    for (int r = 0; r < R; ++r) {
        dkp[lane + 32 * r] = from_f<T>(dka[r]);
        dvp[lane + 32 * r] = from_f<T>(dva[r]);
    }
}

#define ATTN(TN, T, D)                                                                                     \
    extern "C" __global__ void __launch_bounds__(WARPS * 32) attn_fwd_##TN##_d##D(                         \
        const T *q, const T *k, const T *v, T *o, float *lse, int hq, int hkv, int t, Strides qs,          \
        Strides ks, Strides vs, Strides os, float scale) {                                                 \
        attn_fwd_impl<T, D>(q, k, v, o, lse, hq, hkv, t, qs, ks, vs, os, scale);                           \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(WARPS * 32) attn_bwd_dq_##TN##_d##D(                      \
        const T *q, const T *k, const T *v, const T *o, const T *dout, const float *lse, float *delta,     \
        T *dq, int hq, int hkv, int t, Strides qs, Strides ks, Strides vs, Strides os, Strides dos,        \
        Strides dqs, float scale) {                                                                        \
        attn_bwd_dq_impl<T, D>(q, k, v, o, dout, lse, delta, dq, hq, hkv, t, qs, ks, vs, os, dos, dqs,    \
                               scale);                                                                     \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(WARPS * 32) attn_bwd_dkv_##TN##_d##D(                     \
        const T *q, const T *k, const T *v, const T *dout, const float *lse, const float *delta, T *dk,    \
        T *dv, int hq, int hkv, int t, Strides qs, Strides ks, Strides vs, Strides dos, Strides dks,       \
        Strides dvs, float scale) {                                                                        \
        attn_bwd_dkv_impl<T, D>(q, k, v, dout, lse, delta, dk, dv, hq, hkv, t, qs, ks, vs, dos, dks, dvs,  \
                                scale);                                                                    \
    }

#define ATTN_DIMS(TN, T) ATTN(TN, T, 64) ATTN(TN, T, 128)
PIPE_DTYPES(ATTN_DIMS)
