// Causal self-attention on tensor cores (bf16 and f16, head dims 64 and 128), forward and
// backward, flash-style: no [T, T] score matrix in global memory. Same contract, strides and
// outputs as attention.cu (which keeps the f32 path and other cases); this file only runs the
// matmuls on tensor cores (wmma 16x16x16, f32 accumulation).
//
// Tiles of 64 query rows x 64 keys; 4 warps per block, each warp owning 16 rows of the tile.
// Per key tile a warp computes its 16 x 64 scores S = Q K^T into shared memory (f32), does the
// softmax arithmetic there in f32 (two lanes per row), rounds the probabilities P (and in the
// backward dS) once to the storage dtype, and multiplies them on the tensor cores. Rounding P
// and dS before their matmuls is what FlashAttention does; everything else matches the f32
// reference up to summation order.
//
//   attn_fwd_tc:    O = softmax(scale Q K^T) V with an online softmax over key tiles; the
//                   output accumulator lives in shared memory (f32) so each row can be rescaled.
//                   Writes o and lse (f32, [B, H, T]).
//   attn_delta:     delta_i = do_i . o_i (f32), for both backward kernels.
//   attn_bwd_dq_tc: per query tile: dS = P (dO V^T - delta), dQ = scale dS K, accumulated in
//                   registers (wmma fragments) over key tiles.
//   attn_bwd_dkv_tc: per key tile, over the query tiles at or below the diagonal and the query
//                   heads of the KV head's group: dV = P^T dO, dK = scale dS^T Q, both in
//                   registers. No atomics: results are deterministic.
//
// Shared memory is dynamic (over 48 KiB); the launcher raises the kernel's limit. Global rows
// are read as 16-byte vectors: the launcher checks that every row start is 16-byte aligned.
#include "common.cuh"
#include <mma.h>

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800

using namespace nvcuda;

#define TC_FULL 0xffffffffu
#define TILE 64   // query rows and keys per tile
#define TC_WARPS 4

__device__ __forceinline__ float tc_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(TC_FULL, v, o));
    return v;
}

struct TcStrides {
    long long b, h, t;
};

template <typename T>
__device__ __forceinline__ const T *tc_at(const T *p, TcStrides s, int b, int h) {
    return p + (size_t)b * s.b + (size_t)h * s.h;
}
template <typename T>
__device__ __forceinline__ T *tc_at(T *p, TcStrides s, int b, int h) {
    return p + (size_t)b * s.b + (size_t)h * s.h;
}

// Rows [r0, r0 + 64) of a [T, D] slice (row stride rs elements) into a 64 x LD tile; rows at or
// past t become zeros. 16-byte vectors.
template <typename T, int D, int LD>
__device__ __forceinline__ void tc_load_rows(T *dst, const T *src, long long rs, int r0, int t) {
    constexpr int CH = D / 8;
    for (int idx = threadIdx.x; idx < TILE * CH; idx += blockDim.x) {
        const int r = idx / CH, c = (idx % CH) * 8, row = r0 + r;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (row < t) v = *reinterpret_cast<const uint4 *>(src + (size_t)row * rs + c);
        *reinterpret_cast<uint4 *>(dst + r * LD + c) = v;
    }
}

template <typename T>
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
template <typename T>
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major>;
template <typename T>
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// out[16 x 64] (f32, row stride LS) = A[16 x D] B^T where B is 64 x D (both row-major tiles,
// row stride LD): B read column-major, i.e. as its transpose.
template <typename T, int D, int LD, int LS>
__device__ __forceinline__ void tc_abt(float *out, const T *a, const T *b) {
    FragA<T> fa;
    FragBCol<T> fb;
    FragC acc;
#pragma unroll
    for (int j = 0; j < TILE / 16; ++j) {
        wmma::fill_fragment(acc, 0.f);
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            wmma::load_matrix_sync(fa, a + kk * 16, LD);
            wmma::load_matrix_sync(fb, b + (j * 16) * LD + kk * 16, LD);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(out + j * 16, acc, LS, wmma::mem_row_major);
    }
}

// acc[n] += A[16 x 64] (row stride LP) B[64 x D] (row stride LD), n over D / 16 column blocks.
template <typename T, int D, int LD, int LP>
__device__ __forceinline__ void tc_ab_acc(FragC *acc, const T *a, const T *b) {
    FragA<T> fa;
    FragBRow<T> fb;
#pragma unroll
    for (int kk = 0; kk < TILE / 16; ++kk) {
        wmma::load_matrix_sync(fa, a + kk * 16, LP);
#pragma unroll
        for (int n = 0; n < D / 16; ++n) {
            wmma::load_matrix_sync(fb, b + (kk * 16) * LD + n * 16, LD);
            wmma::mma_sync(acc[n], fa, fb, acc[n]);
        }
    }
}

template <typename T, int D>
struct TcLayout {
    static constexpr int LD = D + 8;     // 16-bit tiles: rows of D plus 16 bytes (bank spread)
    static constexpr int LS = TILE + 4;  // f32 score tiles
    static constexpr int LP = TILE + 8;  // 16-bit probability tiles
    static constexpr int LO = D + 4;     // f32 output tiles
    static constexpr int TILE_BYTES = TILE * LD * sizeof(T);
    static constexpr int S_BYTES = TC_WARPS * 16 * LS * 4;
    static constexpr int P_BYTES = TC_WARPS * 16 * LP * sizeof(T);
    static constexpr int O_BYTES = TC_WARPS * 16 * LO * 4;
};

template <typename T, int D>
__device__ __forceinline__ void attn_fwd_tc_impl(const T *q, const T *k, const T *v, T *o, float *lse, int hq,
                                                 int hkv, int t, TcStrides qs_, TcStrides ks_, TcStrides vs_,
                                                 TcStrides os_, float scale) {
    using L = TcLayout<T, D>;
    constexpr int LD = L::LD, LS = L::LS, LP = L::LP, LO = L::LO;
    extern __shared__ __align__(128) unsigned char smem[];
    T *Qs = reinterpret_cast<T *>(smem);
    T *Ks = reinterpret_cast<T *>(smem + L::TILE_BYTES);
    T *Vs = reinterpret_cast<T *>(smem + 2 * L::TILE_BYTES);
    float *Ss = reinterpret_cast<float *>(smem + 3 * L::TILE_BYTES);
    T *Ps = reinterpret_cast<T *>(smem + 3 * L::TILE_BYTES + L::S_BYTES);
    float *Os = reinterpret_cast<float *>(smem + 3 * L::TILE_BYTES + L::S_BYTES + L::P_BYTES);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int b = blockIdx.y / hq, h = blockIdx.y % hq, hk = h / (hq / hkv);
    const int row0 = blockIdx.x * TILE;
    const T *qp = tc_at(q, qs_, b, h), *kp = tc_at(k, ks_, b, hk), *vp = tc_at(v, vs_, b, hk);
    float *Sw = Ss + warp * 16 * LS, *Ow = Os + warp * 16 * LO;
    T *Pw = Ps + warp * 16 * LP;
    tc_load_rows<T, D, LD>(Qs, qp, qs_.t, row0, t);
    for (int idx = lane; idx < 16 * LO; idx += 32) Ow[idx] = 0.f;
    __syncthreads();
    // The warp's 16 query rows stay in registers as A fragments for every key tile.
    FragA<T> qf[D / 16];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) wmma::load_matrix_sync(qf[kk], Qs + (warp * 16) * LD + kk * 16, LD);
    // Row statistics of the warp's 16 rows, held by every lane; lane l owns columns l and l + 32
    // of each row in the elementwise phase (conflict-free shared-memory access).
    const int i0 = row0 + warp * 16;
    float m[16], l[16];
#pragma unroll
    for (int r = 0; r < 16; ++r) m[r] = -INFINITY, l[r] = 0.f;
    const int last = min(row0 + TILE, t) - 1;
    for (int c0 = 0; c0 <= last; c0 += TILE) {
        __syncthreads();  // the previous K/V tiles are no longer read
        tc_load_rows<T, D, LD>(Ks, kp, ks_.t, c0, t);
        tc_load_rows<T, D, LD>(Vs, vp, vs_.t, c0, t);
        __syncthreads();
        if (c0 > i0 + 15) continue;  // no key of this tile is visible to any row of this warp
        {
            FragBCol<T> fb;
            FragC acc;
#pragma unroll
            for (int j = 0; j < TILE / 16; ++j) {
                wmma::fill_fragment(acc, 0.f);
#pragma unroll
                for (int kk = 0; kk < D / 16; ++kk) {
                    wmma::load_matrix_sync(fb, Ks + (j * 16) * LD + kk * 16, LD);
                    wmma::mma_sync(acc, qf[kk], fb, acc);
                }
                wmma::store_matrix_sync(Sw + j * 16, acc, LS, wmma::mem_row_major);
            }
        }
        __syncwarp();
#pragma unroll
        for (int r = 0; r < 16; ++r) {
            const int i = i0 + r, ja = c0 + lane, jb = ja + 32;
            const float sa = (ja <= i && ja < t) ? Sw[r * LS + lane] * scale : -INFINITY;
            const float sb = (jb <= i && jb < t) ? Sw[r * LS + lane + 32] * scale : -INFINITY;
            const float mn = fmaxf(m[r], tc_warp_max(fmaxf(sa, sb)));
            const float corr = m[r] == -INFINITY ? 0.f : expf(m[r] - mn);
            const float pa = sa == -INFINITY ? 0.f : expf(sa - mn);
            const float pb = sb == -INFINITY ? 0.f : expf(sb - mn);
            Pw[r * LP + lane] = from_f<T>(pa);
            Pw[r * LP + lane + 32] = from_f<T>(pb);
            l[r] = l[r] * corr + warp_sum(pa + pb);
            m[r] = mn;
#pragma unroll
            for (int d = lane; d < D; d += 32) Ow[r * LO + d] *= corr;
        }
        __syncwarp();
        FragA<T> fa;
        FragBRow<T> fb;
        FragC acc;
#pragma unroll
        for (int n = 0; n < D / 16; ++n) {
            wmma::load_matrix_sync(acc, Ow + n * 16, LO, wmma::mem_row_major);
#pragma unroll
            for (int kk = 0; kk < TILE / 16; ++kk) {
                wmma::load_matrix_sync(fa, Pw + kk * 16, LP);
                wmma::load_matrix_sync(fb, Vs + (kk * 16) * LD + n * 16, LD);
                wmma::mma_sync(acc, fa, fb, acc);
            }
            wmma::store_matrix_sync(Ow + n * 16, acc, LO, wmma::mem_row_major);
        }
        __syncwarp();
    }
#pragma unroll
    for (int r = 0; r < 16; ++r) {
        const int i = i0 + r;
        if (i >= t) break;
        T *op = tc_at(o, os_, b, h) + (size_t)i * os_.t;
        const float inv = 1.f / l[r];
        for (int d = lane; d < D; d += 32) op[d] = from_f<T>(Ow[r * LO + d] * inv);
        if (lane == 0) lse[((size_t)b * hq + h) * t + i] = m[r] + logf(l[r]);
    }
}

// delta_i = do_i . o_i in f32; one warp per row, 8 rows per block.
template <typename T>
__device__ __forceinline__ void attn_delta_impl(const T *o, const T *dout, float *delta, int hq, int t, int d,
                                                TcStrides os_, TcStrides dos_) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int b = blockIdx.y / hq, h = blockIdx.y % hq, i = blockIdx.x * 8 + warp;
    if (i >= t) return;
    const T *op = tc_at(o, os_, b, h) + (size_t)i * os_.t, *dop = tc_at(dout, dos_, b, h) + (size_t)i * dos_.t;
    float s = 0.f;
    for (int e = lane; e < d; e += 32) s += to_f(op[e]) * to_f(dop[e]);
    s = warp_sum(s);
    if (lane == 0) delta[((size_t)b * hq + h) * t + i] = s;
}

template <typename T, int D>
__device__ __forceinline__ void attn_bwd_dq_tc_impl(const T *q, const T *k, const T *v, const T *dout,
                                                    const float *lse, const float *delta, T *dq, int hq, int hkv,
                                                    int t, TcStrides qs_, TcStrides ks_, TcStrides vs_,
                                                    TcStrides dos_, TcStrides dqs_, float scale) {
    using L = TcLayout<T, D>;
    constexpr int LD = L::LD, LS = L::LS, LP = L::LP, LO = L::LO;
    extern __shared__ __align__(128) unsigned char smem[];
    T *Qs = reinterpret_cast<T *>(smem);
    T *dOs = reinterpret_cast<T *>(smem + L::TILE_BYTES);
    T *Ks = reinterpret_cast<T *>(smem + 2 * L::TILE_BYTES);
    T *Vs = reinterpret_cast<T *>(smem + 3 * L::TILE_BYTES);
    float *Ss = reinterpret_cast<float *>(smem + 4 * L::TILE_BYTES);
    float *dPs = reinterpret_cast<float *>(smem + 4 * L::TILE_BYTES + L::S_BYTES);
    T *dSs = reinterpret_cast<T *>(smem + 4 * L::TILE_BYTES + 2 * L::S_BYTES);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int b = blockIdx.y / hq, h = blockIdx.y % hq, hk = h / (hq / hkv);
    const int row0 = blockIdx.x * TILE;
    const T *qp = tc_at(q, qs_, b, h), *kp = tc_at(k, ks_, b, hk), *vp = tc_at(v, vs_, b, hk);
    const T *dop = tc_at(dout, dos_, b, h);
    float *Sw = Ss + warp * 16 * LS, *dPw = dPs + warp * 16 * LS;
    T *dSw = dSs + warp * 16 * LP;
    tc_load_rows<T, D, LD>(Qs, qp, qs_.t, row0, t);
    tc_load_rows<T, D, LD>(dOs, dop, dos_.t, row0, t);
    const int i0 = row0 + warp * 16;
    const size_t rows = ((size_t)b * hq + h) * t;
    float li[16], di[16];
#pragma unroll
    for (int r = 0; r < 16; ++r) {
        li[r] = i0 + r < t ? lse[rows + i0 + r] : 0.f;
        di[r] = i0 + r < t ? delta[rows + i0 + r] : 0.f;
    }
    __syncthreads();
    // The warp's Q and dO rows stay in registers as A fragments for every key tile.
    FragA<T> qf[D / 16], dof[D / 16];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        wmma::load_matrix_sync(qf[kk], Qs + (warp * 16) * LD + kk * 16, LD);
        wmma::load_matrix_sync(dof[kk], dOs + (warp * 16) * LD + kk * 16, LD);
    }
    FragC acc[D / 16];
#pragma unroll
    for (int n = 0; n < D / 16; ++n) wmma::fill_fragment(acc[n], 0.f);
    const int last = min(row0 + TILE, t) - 1;
    for (int c0 = 0; c0 <= last; c0 += TILE) {
        __syncthreads();
        tc_load_rows<T, D, LD>(Ks, kp, ks_.t, c0, t);
        tc_load_rows<T, D, LD>(Vs, vp, vs_.t, c0, t);
        __syncthreads();
        if (c0 > i0 + 15) continue;
        {
            FragBCol<T> fb;
            FragC sacc;
#pragma unroll
            for (int j = 0; j < TILE / 16; ++j) {
                wmma::fill_fragment(sacc, 0.f);
#pragma unroll
                for (int kk = 0; kk < D / 16; ++kk) {
                    wmma::load_matrix_sync(fb, Ks + (j * 16) * LD + kk * 16, LD);
                    wmma::mma_sync(sacc, qf[kk], fb, sacc);
                }
                wmma::store_matrix_sync(Sw + j * 16, sacc, LS, wmma::mem_row_major);
                wmma::fill_fragment(sacc, 0.f);
#pragma unroll
                for (int kk = 0; kk < D / 16; ++kk) {
                    wmma::load_matrix_sync(fb, Vs + (j * 16) * LD + kk * 16, LD);
                    wmma::mma_sync(sacc, dof[kk], fb, sacc);
                }
                wmma::store_matrix_sync(dPw + j * 16, sacc, LS, wmma::mem_row_major);
            }
        }
        __syncwarp();
#pragma unroll
        for (int r = 0; r < 16; ++r) {
            const int i = i0 + r;
#pragma unroll
            for (int c = lane; c < TILE; c += 32) {
                const int j = c0 + c;
                float ds = 0.f;
                if (j <= i && j < t && i < t) {
                    const float p = expf(Sw[r * LS + c] * scale - li[r]);
                    ds = p * (dPw[r * LS + c] - di[r]);
                }
                dSw[r * LP + c] = from_f<T>(ds);
            }
        }
        __syncwarp();
        tc_ab_acc<T, D, LD, LP>(acc, dSw, Ks);
    }
    __syncthreads();  // K/V tiles are done with: reuse them as f32 staging, 16 x LO per warp
    float *stage = reinterpret_cast<float *>(smem + 2 * L::TILE_BYTES) + warp * 16 * LO;
#pragma unroll
    for (int n = 0; n < D / 16; ++n) wmma::store_matrix_sync(stage + n * 16, acc[n], LO, wmma::mem_row_major);
    __syncwarp();
    for (int r = 0; r < 16; ++r) {
        const int i = i0 + r;
        if (i >= t) break;
        T *dqp = tc_at(dq, dqs_, b, h) + (size_t)i * dqs_.t;
        for (int d = lane; d < D; d += 32) dqp[d] = from_f<T>(stage[r * LO + d] * scale);
    }
}

template <typename T, int D>
__device__ __forceinline__ void attn_bwd_dkv_tc_impl(const T *q, const T *k, const T *v, const T *dout,
                                                     const float *lse, const float *delta, T *dk, T *dv, int hq,
                                                     int hkv, int t, TcStrides qs_, TcStrides ks_, TcStrides vs_,
                                                     TcStrides dos_, TcStrides dks_, TcStrides dvs_, float scale) {
    using L = TcLayout<T, D>;
    constexpr int LD = L::LD, LS = L::LS, LP = L::LP, LO = L::LO;
    extern __shared__ __align__(128) unsigned char smem[];
    T *Ks = reinterpret_cast<T *>(smem);
    T *Vs = reinterpret_cast<T *>(smem + L::TILE_BYTES);
    T *Qs = reinterpret_cast<T *>(smem + 2 * L::TILE_BYTES);
    T *dOs = reinterpret_cast<T *>(smem + 3 * L::TILE_BYTES);
    float *STs = reinterpret_cast<float *>(smem + 4 * L::TILE_BYTES);
    float *dPTs = reinterpret_cast<float *>(smem + 4 * L::TILE_BYTES + L::S_BYTES);
    T *PTs = reinterpret_cast<T *>(smem + 4 * L::TILE_BYTES + 2 * L::S_BYTES);
    T *dSTs = reinterpret_cast<T *>(smem + 4 * L::TILE_BYTES + 2 * L::S_BYTES + L::P_BYTES);
    float *lse_t = reinterpret_cast<float *>(smem + 4 * L::TILE_BYTES + 2 * L::S_BYTES + 2 * L::P_BYTES);
    float *delta_t = lse_t + TILE;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int b = blockIdx.y / hkv, hk = blockIdx.y % hkv, group = hq / hkv;
    const int j0 = blockIdx.x * TILE;
    const T *kp = tc_at(k, ks_, b, hk), *vp = tc_at(v, vs_, b, hk);
    float *STw = STs + warp * 16 * LS, *dPTw = dPTs + warp * 16 * LS;
    T *PTw = PTs + warp * 16 * LP, *dSTw = dSTs + warp * 16 * LP;
    tc_load_rows<T, D, LD>(Ks, kp, ks_.t, j0, t);
    tc_load_rows<T, D, LD>(Vs, vp, vs_.t, j0, t);
    const int jw = j0 + warp * 16;  // the warp's first key
    FragC dka[D / 16], dva[D / 16];
#pragma unroll
    for (int n = 0; n < D / 16; ++n) {
        wmma::fill_fragment(dka[n], 0.f);
        wmma::fill_fragment(dva[n], 0.f);
    }
    for (int h = hk * group; h < (hk + 1) * group; ++h) {
        const T *qp = tc_at(q, qs_, b, h), *dop = tc_at(dout, dos_, b, h);
        const size_t rows = ((size_t)b * hq + h) * t;
        // Queries i >= j only: the first query tile that sees any of these keys starts at j0.
        for (int c0 = j0; c0 < t; c0 += TILE) {
            __syncthreads();
            tc_load_rows<T, D, LD>(Qs, qp, qs_.t, c0, t);
            tc_load_rows<T, D, LD>(dOs, dop, dos_.t, c0, t);
            if (threadIdx.x < TILE) {
                const int i = c0 + threadIdx.x;
                lse_t[threadIdx.x] = i < t ? lse[rows + i] : 0.f;
                delta_t[threadIdx.x] = i < t ? delta[rows + i] : 0.f;
            }
            __syncthreads();
            tc_abt<T, D, LD, LS>(STw, Ks + (warp * 16) * LD, Qs);   // S^T: keys x queries
            tc_abt<T, D, LD, LS>(dPTw, Vs + (warp * 16) * LD, dOs);  // dP^T
            __syncwarp();
            const float lse_a = lse_t[lane], lse_b = lse_t[lane + 32];
            const float del_a = delta_t[lane], del_b = delta_t[lane + 32];
#pragma unroll
            for (int r = 0; r < 16; ++r) {
                const int j = jw + r;
#pragma unroll
                for (int hh = 0; hh < 2; ++hh) {
                    const int c = lane + 32 * hh, i = c0 + c;
                    float p = 0.f, ds = 0.f;
                    if (i >= j && i < t && j < t) {
                        p = expf(STw[r * LS + c] * scale - (hh ? lse_b : lse_a));
                        ds = p * (dPTw[r * LS + c] - (hh ? del_b : del_a));
                    }
                    PTw[r * LP + c] = from_f<T>(p);
                    dSTw[r * LP + c] = from_f<T>(ds);
                }
            }
            __syncwarp();
            tc_ab_acc<T, D, LD, LP>(dva, PTw, dOs);
            tc_ab_acc<T, D, LD, LP>(dka, dSTw, Qs);
        }
    }
    __syncthreads();  // Q/dO tiles are done with: reuse them as f32 staging, 16 x LO per warp
    float *stage = reinterpret_cast<float *>(smem + 2 * L::TILE_BYTES) + warp * 16 * LO;
#pragma unroll
    for (int n = 0; n < D / 16; ++n) wmma::store_matrix_sync(stage + n * 16, dka[n], LO, wmma::mem_row_major);
    __syncwarp();
    for (int r = 0; r < 16 && jw + r < t; ++r) {
        T *dkp = tc_at(dk, dks_, b, hk) + (size_t)(jw + r) * dks_.t;
        for (int d = lane; d < D; d += 32) dkp[d] = from_f<T>(stage[r * LO + d] * scale);
    }
    __syncwarp();
#pragma unroll
    for (int n = 0; n < D / 16; ++n) wmma::store_matrix_sync(stage + n * 16, dva[n], LO, wmma::mem_row_major);
    __syncwarp();
    for (int r = 0; r < 16 && jw + r < t; ++r) {
        T *dvp = tc_at(dv, dvs_, b, hk) + (size_t)(jw + r) * dvs_.t;
        for (int d = lane; d < D; d += 32) dvp[d] = from_f<T>(stage[r * LO + d]);
    }
}

#define ATTN_TC(TN, T, D)                                                                                  \
    extern "C" __global__ void __launch_bounds__(TC_WARPS * 32) attn_fwd_tc_##TN##_d##D(                   \
        const T *q, const T *k, const T *v, T *o, float *lse, int hq, int hkv, int t, TcStrides qs,        \
        TcStrides ks, TcStrides vs, TcStrides os, float scale) {                                           \
        attn_fwd_tc_impl<T, D>(q, k, v, o, lse, hq, hkv, t, qs, ks, vs, os, scale);                        \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(TC_WARPS * 32) attn_bwd_dq_tc_##TN##_d##D(                \
        const T *q, const T *k, const T *v, const T *dout, const float *lse, const float *delta, T *dq,    \
        int hq, int hkv, int t, TcStrides qs, TcStrides ks, TcStrides vs, TcStrides dos, TcStrides dqs,    \
        float scale) {                                                                                     \
        attn_bwd_dq_tc_impl<T, D>(q, k, v, dout, lse, delta, dq, hq, hkv, t, qs, ks, vs, dos, dqs, scale); \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(TC_WARPS * 32) attn_bwd_dkv_tc_##TN##_d##D(               \
        const T *q, const T *k, const T *v, const T *dout, const float *lse, const float *delta, T *dk,    \
        T *dv, int hq, int hkv, int t, TcStrides qs, TcStrides ks, TcStrides vs, TcStrides dos,            \
        TcStrides dks, TcStrides dvs, float scale) {                                                       \
        attn_bwd_dkv_tc_impl<T, D>(q, k, v, dout, lse, delta, dk, dv, hq, hkv, t, qs, ks, vs, dos, dks,    \
                                   dvs, scale);                                                            \
    }

#define ATTN_DELTA(TN, T)                                                                                  \
    extern "C" __global__ void __launch_bounds__(256) attn_delta_##TN(const T *o, const T *dout,           \
                                                                     float *delta, int hq, int t, int d,   \
                                                                     TcStrides os, TcStrides dos) {         \
        attn_delta_impl<T>(o, dout, delta, hq, t, d, os, dos);                                             \
    }

ATTN_TC(bf16, __nv_bfloat16, 64)
ATTN_TC(bf16, __nv_bfloat16, 128)
ATTN_TC(f16, __half, 64)
ATTN_TC(f16, __half, 128)
ATTN_DELTA(bf16, __nv_bfloat16)
ATTN_DELTA(f16, __half)

#endif
