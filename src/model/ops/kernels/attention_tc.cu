// Causal self-attention on tensor cores (bf16 and f16, head dims 64 and 128), forward and
// backward, FlashAttention-2 style: no [T, T] score matrix in global memory, and none in shared
// memory either. Same contract, strides and outputs as attention.cu (which keeps the f32 path
// and other layouts).
//
// Tiles of 64 query rows x 64 keys; 4 warps per block, each warp owning 16 rows (queries in the
// forward and dq kernels, keys in the dkv kernel). Shared memory holds only the 64-row Q/K/V/dO
// tiles (16-bit, rows padded by 16 bytes so ldmatrix is conflict-free). The matmuls are PTX
// `mma.sync.m16n8k16` (f32 accumulation) on fragments loaded with `ldmatrix`; scores,
// probabilities and their gradients never leave registers: an accumulator tile of S = Q K^T has
// the register layout of the A operand of the next matmul, so P (and dS) are rounded once to the
// storage dtype and fed straight back in. Rounding P and dS before their matmuls is what
// FlashAttention does; everything else matches the f32 reference up to summation order.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16/.f16): g = lane / 4, c = lane % 4.
//   A 16x16: a0 = (g, 2c..2c+1), a1 = (g+8, 2c..), a2 = (g, 2c+8..), a3 = (g+8, 2c+8..)
//   B 16x8:  b0 = (k 2c..2c+1, n g), b1 = (k 2c+8.., n g)
//   C 16x8:  c0, c1 = (g, 2c..2c+1), c2, c3 = (g+8, 2c..2c+1)
//
//   attn_fwd_tc:     online softmax over key tiles; O accumulates in registers. Writes o and lse.
//   attn_delta:      delta_i = do_i . o_i (f32), for both backward kernels.
//   attn_bwd_dq_tc:  per query tile: dS = P (dO V^T - delta), dQ = scale dS K.
//   attn_bwd_dkv_tc: per key tile, over the query tiles at or below the diagonal and the query
//                    heads of the KV head's group: dV = P^T dO, dK = scale dS^T Q.
// No atomics: results are deterministic. The launcher checks that every row start is 16-byte
// aligned (tiles are read as 16-byte vectors).
#include "common.cuh"

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800

#define TC_FULL 0xffffffffu
#define TILE 64  // query rows and keys per tile
#define TC_WARPS 4

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

// The same rows copied asynchronously (cp.async, 16 bytes per copy, L2 only): the caller commits
// the group and waits for it before a __syncthreads. Rows past t are zeroed with plain stores.
template <typename T, int D, int LD>
__device__ __forceinline__ void tc_load_rows_async(T *dst, const T *src, long long rs, int r0, int t) {
    constexpr int CH = D / 8;
    for (int idx = threadIdx.x; idx < TILE * CH; idx += blockDim.x) {
        const int r = idx / CH, c = (idx % CH) * 8, row = r0 + r;
        T *d = dst + r * LD + c;
        if (row < t) {
            const unsigned sa = static_cast<unsigned>(__cvta_generic_to_shared(d));
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sa), "l"(src + (size_t)row * rs + c));
        } else {
            *reinterpret_cast<uint4 *>(d) = make_uint4(0u, 0u, 0u, 0u);
        }
    }
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most `pending` committed groups of this thread are still in flight.
__device__ __forceinline__ void cp_async_wait(bool one_pending) {
    if (one_pending)
        asm volatile("cp.async.wait_group 1;\n" ::);
    else
        asm volatile("cp.async.wait_group 0;\n" ::);
}

__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const void *p) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

__device__ __forceinline__ void ldsm_x4_t(uint32_t r[4], const void *p) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

template <typename T>
__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma16816<__half>(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats rounded to the storage dtype and packed: `lo` in the low half (the lower column).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t *>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t *>(&v);
}

// The A fragment (16 x 16) at rows [0, 16), cols [k0, k0 + 16) of a row-major tile (stride LD).
template <int LD, typename T>
__device__ __forceinline__ void load_a(uint32_t a[4], const T *tile, int k0, int lane) {
    ldsm_x4(a, tile + (lane & 15) * LD + k0 + (lane >> 4) * 8);
}

// B fragments of two n8 blocks for B = tile^T: tile rows [n0, n0 + 16) are the n index, cols
// [k0, k0 + 16) the k index (scores against K rows). b[0..1]: rows n0..n0+7, b[2..3]: n0+8...
template <int LD, typename T>
__device__ __forceinline__ void load_bt(uint32_t b[4], const T *tile, int n0, int k0, int lane) {
    ldsm_x4(b, tile + (n0 + (lane & 7) + ((lane >> 4) << 3)) * LD + k0 + ((lane >> 3) & 1) * 8);
}

// B fragments of two n8 blocks for B = tile: tile rows [k0, k0 + 16) are the k index, cols
// [n0, n0 + 16) the n index (probabilities times V rows). b[0..1]: cols n0..n0+7, b[2..3]: n0+8...
template <int LD, typename T>
__device__ __forceinline__ void load_b(uint32_t b[4], const T *tile, int k0, int n0, int lane) {
    ldsm_x4_t(b, tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + n0 + (lane >> 4) * 8);
}

template <typename T, int D>
struct TcLayout {
    static constexpr int LD = D + 8;  // 16-bit tiles: rows of D plus 16 bytes (conflict-free ldmatrix)
    static constexpr int TILE_BYTES = TILE * LD * sizeof(T);
};

// acc[16 x 8 * NB] += (16 x 64 probabilities, as 8 C tiles of 16 x 8 in `p`) times the 64 x D
// tile `b` restricted to n8 blocks [nb0, nb0 + NB): the probabilities become A fragments.
template <typename T, int D, int LD>
__device__ __forceinline__ void pv_acc(float (*acc)[4], const float (*p)[4], const T *b, int lane) {
#pragma unroll
    for (int kk = 0; kk < TILE / 16; ++kk) {
        uint32_t a[4];
        a[0] = pack2<T>(p[2 * kk][0], p[2 * kk][1]);
        a[1] = pack2<T>(p[2 * kk][2], p[2 * kk][3]);
        a[2] = pack2<T>(p[2 * kk + 1][0], p[2 * kk + 1][1]);
        a[3] = pack2<T>(p[2 * kk + 1][2], p[2 * kk + 1][3]);
#pragma unroll
        for (int np = 0; np < D / 16; ++np) {
            uint32_t bf[4];
            load_b<LD>(bf, b, kk * 16, np * 16, lane);
            mma16816<T>(acc[2 * np], a, bf[0], bf[1]);
            mma16816<T>(acc[2 * np + 1], a, bf[2], bf[3]);
        }
    }
}

// s[16 x 64] = A (16 x D, fragments `a`) times tile^T (tile: 64 x D rows).
template <typename T, int D, int LD>
__device__ __forceinline__ void scores(float (*s)[4], const uint32_t (*a)[4], const T *tile, int lane) {
#pragma unroll
    for (int j = 0; j < TILE / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
        for (int jp = 0; jp < TILE / 16; ++jp) {
            uint32_t bf[4];
            load_bt<LD>(bf, tile, jp * 16, kk * 16, lane);
            mma16816<T>(s[2 * jp], a[kk], bf[0], bf[1]);
            mma16816<T>(s[2 * jp + 1], a[kk], bf[2], bf[3]);
        }
    }
}

// The same with the A rows read from shared memory per k step (rows [0, 16) of `atile`).
template <typename T, int D, int LD>
__device__ __forceinline__ void scores_smem(float (*s)[4], const T *atile, const T *tile, int lane) {
#pragma unroll
    for (int j = 0; j < TILE / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t a[4];
        load_a<LD>(a, atile, kk * 16, lane);
#pragma unroll
        for (int jp = 0; jp < TILE / 16; ++jp) {
            uint32_t bf[4];
            load_bt<LD>(bf, tile, jp * 16, kk * 16, lane);
            mma16816<T>(s[2 * jp], a, bf[0], bf[1]);
            mma16816<T>(s[2 * jp + 1], a, bf[2], bf[3]);
        }
    }
}

// Writes a warp's 16 x D accumulator (times `mul`) to rows row0.. of a [T, D] slice (row
// stride rs), rows at or past t skipped.
template <typename T, int D>
__device__ __forceinline__ void store_rows(T *dst, long long rs, int row0, int t, const float (*acc)[4], float mul,
                                           int lane) {
    const int g = lane >> 2, c = lane & 3;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int row = row0 + g + 8 * half;
        if (row >= t) continue;
        T *p = dst + (size_t)row * rs;
#pragma unroll
        for (int nb = 0; nb < D / 8; ++nb) {
            const uint32_t v = pack2<T>(acc[nb][2 * half] * mul, acc[nb][2 * half + 1] * mul);
            *reinterpret_cast<uint32_t *>(p + nb * 8 + 2 * c) = v;
        }
    }
}

template <typename T, int D>
__device__ __forceinline__ void attn_fwd_tc_impl(const T *q, const T *k, const T *v, T *o, float *lse, int hq,
                                                 int hkv, int t, Strides qs_, Strides ks_, Strides vs_,
                                                 Strides os_, float scale) {
    constexpr int LD = TcLayout<T, D>::LD, TB = TcLayout<T, D>::TILE_BYTES;
    extern __shared__ __align__(128) unsigned char smem[];
    // K and V tiles double-buffered: tile n + 1 is copied while tile n is multiplied.
    // Buffer n of K at smem + 2 n TB, of V one tile later.
    auto Kb = [&](int n) { return reinterpret_cast<T *>(smem + 2 * n * TB); };
    auto Vb = [&](int n) { return reinterpret_cast<T *>(smem + (2 * n + 1) * TB); };
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int b = blockIdx.y / hq, h = blockIdx.y % hq, hk = h / (hq / hkv);
    const int row0 = blockIdx.x * TILE, i0 = row0 + warp * 16;
    const T *qp = at(q, qs_, b, h), *kp = at(k, ks_, b, hk), *vp = at(v, vs_, b, hk);
    // The Q tile passes through the second K buffer into registers: the warp's 16 rows as A fragments.
    tc_load_rows<T, D, LD>(Kb(1), qp, qs_.t, row0, t);
    __syncthreads();
    uint32_t qa[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) load_a<LD>(qa[kk], Kb(1) + (warp * 16) * LD, kk * 16, lane);
    __syncthreads();
    // This thread's rows are i0 + g and i0 + g + 8; l is its partial sum over its own columns.
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    float acc[D / 8][4];
#pragma unroll
    for (int nb = 0; nb < D / 8; ++nb) acc[nb][0] = acc[nb][1] = acc[nb][2] = acc[nb][3] = 0.f;
    const int tiles = (min(row0 + TILE, t) - 1) / TILE + 1;
    tc_load_rows_async<T, D, LD>(Kb(0), kp, ks_.t, 0, t);
    tc_load_rows_async<T, D, LD>(Vb(0), vp, vs_.t, 0, t);
    cp_async_commit();
    for (int it = 0; it < tiles; ++it) {
        const int c0 = it * TILE;
        const bool more = it + 1 < tiles;
        if (more) {
            tc_load_rows_async<T, D, LD>(Kb((it + 1) & 1), kp, ks_.t, c0 + TILE, t);
            tc_load_rows_async<T, D, LD>(Vb((it + 1) & 1), vp, vs_.t, c0 + TILE, t);
            cp_async_commit();
        }
        cp_async_wait(more);
        __syncthreads();
        const T *Ks = Kb(it & 1), *Vs = Vb(it & 1);
        if (c0 <= i0 + 15) {  // else no key of this tile is visible to any row of this warp
        float s[TILE / 8][4];
        scores<T, D, LD>(s, qa, Ks, lane);
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int j = 0; j < TILE / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = i0 + g + 8 * (e >> 1), col = c0 + j * 8 + 2 * c + (e & 1);
                const float x = (col <= i && col < t) ? s[j][e] * scale : -INFINITY;
                s[j][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        float corr[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(TC_FULL, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(TC_FULL, mx[r], 2));
            const float mn = fmaxf(m[r], mx[r]);
            corr[r] = m[r] == -INFINITY ? 0.f : expf(m[r] - mn);
            m[r] = mn;
            l[r] *= corr[r];
        }
#pragma unroll
        for (int j = 0; j < TILE / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float p = s[j][e] == -INFINITY ? 0.f : expf(s[j][e] - m[e >> 1]);
                s[j][e] = p;
                l[e >> 1] += p;
            }
#pragma unroll
        for (int nb = 0; nb < D / 8; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[nb][e] *= corr[e >> 1];
        pv_acc<T, D, LD>(acc, s, Vs, lane);
        }
        __syncthreads();  // this buffer is refilled by the next iteration's copy
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(TC_FULL, l[r], 1);
        l[r] += __shfl_xor_sync(TC_FULL, l[r], 2);
    }
    T *ob = at(o, os_, b, h);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int i = i0 + g + 8 * half;
        if (i >= t) continue;
        const float inv = 1.f / l[half];
        T *p = ob + (size_t)i * os_.t;
#pragma unroll
        for (int nb = 0; nb < D / 8; ++nb)
            *reinterpret_cast<uint32_t *>(p + nb * 8 + 2 * c) =
                pack2<T>(acc[nb][2 * half] * inv, acc[nb][2 * half + 1] * inv);
        if (c == 0) lse[((size_t)b * hq + h) * t + i] = m[half] + logf(l[half]);
    }
}

// delta_i = do_i . o_i in f32; one warp per row, 8 rows per block.
template <typename T>
__device__ __forceinline__ void attn_delta_impl(const T *o, const T *dout, float *delta, int hq, int t, int d,
                                                Strides os_, Strides dos_) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int b = blockIdx.y / hq, h = blockIdx.y % hq, i = blockIdx.x * 8 + warp;
    if (i >= t) return;
    const T *op = at(o, os_, b, h) + (size_t)i * os_.t, *dop = at(dout, dos_, b, h) + (size_t)i * dos_.t;
    float s = 0.f;
    for (int e = lane; e < d; e += 32) s += to_f(op[e]) * to_f(dop[e]);
    s = warp_sum(s);
    if (lane == 0) delta[((size_t)b * hq + h) * t + i] = s;
}

template <typename T, int D>
__device__ __forceinline__ void attn_bwd_dq_tc_impl(const T *q, const T *k, const T *v, const T *dout,
                                                    const float *lse, const float *delta, T *dq, int hq, int hkv,
                                                    int t, Strides qs_, Strides ks_, Strides vs_,
                                                    Strides dos_, Strides dqs_, float scale) {
    constexpr int LD = TcLayout<T, D>::LD, TB = TcLayout<T, D>::TILE_BYTES;
    extern __shared__ __align__(128) unsigned char smem[];
    T *Qs = reinterpret_cast<T *>(smem);
    T *dOs = reinterpret_cast<T *>(smem + TB);
    // K and V tiles double-buffered: tile n + 1 is copied while tile n is multiplied.
    auto Kb = [&](int n) { return reinterpret_cast<T *>(smem + (2 + 2 * n) * TB); };
    auto Vb = [&](int n) { return reinterpret_cast<T *>(smem + (3 + 2 * n) * TB); };
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int b = blockIdx.y / hq, h = blockIdx.y % hq, hk = h / (hq / hkv);
    const int row0 = blockIdx.x * TILE, i0 = row0 + warp * 16;
    const T *qp = at(q, qs_, b, h), *kp = at(k, ks_, b, hk), *vp = at(v, vs_, b, hk);
    const T *dop = at(dout, dos_, b, h);
    tc_load_rows_async<T, D, LD>(Qs, qp, qs_.t, row0, t);
    tc_load_rows_async<T, D, LD>(dOs, dop, dos_.t, row0, t);
    tc_load_rows_async<T, D, LD>(Kb(0), kp, ks_.t, 0, t);
    tc_load_rows_async<T, D, LD>(Vb(0), vp, vs_.t, 0, t);
    cp_async_commit();
    const size_t rows = ((size_t)b * hq + h) * t;
    float li[2], di[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int i = i0 + g + 8 * r;
        li[r] = i < t ? lse[rows + i] : 0.f;
        di[r] = i < t ? delta[rows + i] : 0.f;
    }
    float acc[D / 8][4];
#pragma unroll
    for (int nb = 0; nb < D / 8; ++nb) acc[nb][0] = acc[nb][1] = acc[nb][2] = acc[nb][3] = 0.f;
    const int tiles = (min(row0 + TILE, t) - 1) / TILE + 1;
    for (int it = 0; it < tiles; ++it) {
        const int c0 = it * TILE;
        const bool more = it + 1 < tiles;
        if (more) {
            tc_load_rows_async<T, D, LD>(Kb((it + 1) & 1), kp, ks_.t, c0 + TILE, t);
            tc_load_rows_async<T, D, LD>(Vb((it + 1) & 1), vp, vs_.t, c0 + TILE, t);
            cp_async_commit();
        }
        cp_async_wait(more);
        __syncthreads();
        const T *Ks = Kb(it & 1), *Vs = Vb(it & 1);
        if (c0 <= i0 + 15) {
        float s[TILE / 8][4], dp[TILE / 8][4];
        scores_smem<T, D, LD>(s, Qs + (warp * 16) * LD, Ks, lane);
        scores_smem<T, D, LD>(dp, dOs + (warp * 16) * LD, Vs, lane);
#pragma unroll
        for (int j = 0; j < TILE / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = i0 + g + 8 * (e >> 1), col = c0 + j * 8 + 2 * c + (e & 1);
                float ds = 0.f;
                if (col <= i && col < t && i < t) {
                    const float p = expf(s[j][e] * scale - li[e >> 1]);
                    ds = p * (dp[j][e] - di[e >> 1]);
                }
                s[j][e] = ds;
            }
        pv_acc<T, D, LD>(acc, s, Ks, lane);  // dQ += dS K
        }
        __syncthreads();  // this buffer is refilled by the next iteration's copy
    }
    store_rows<T, D>(at(dq, dqs_, b, h), dqs_.t, i0, t, acc, scale, lane);
}

template <typename T, int D>
__device__ __forceinline__ void attn_bwd_dkv_tc_impl(const T *q, const T *k, const T *v, const T *dout,
                                                     const float *lse, const float *delta, T *dk, T *dv, int hq,
                                                     int hkv, int t, Strides qs_, Strides ks_, Strides vs_,
                                                     Strides dos_, Strides dks_, Strides dvs_, float scale) {
    constexpr int LD = TcLayout<T, D>::LD, TB = TcLayout<T, D>::TILE_BYTES;
    extern __shared__ __align__(128) unsigned char smem[];
    T *Ks = reinterpret_cast<T *>(smem);
    T *Vs = reinterpret_cast<T *>(smem + TB);
    // Q and dO tiles (and their rows' lse and delta) double-buffered.
    auto Qb = [&](int n) { return reinterpret_cast<T *>(smem + (2 + 2 * n) * TB); };
    auto dOb = [&](int n) { return reinterpret_cast<T *>(smem + (3 + 2 * n) * TB); };
    float *lse_b = reinterpret_cast<float *>(smem + 6 * TB);  // [2][TILE]
    float *delta_b = lse_b + 2 * TILE;                         // [2][TILE]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int b = blockIdx.y / hkv, hk = blockIdx.y % hkv, group = hq / hkv;
    const int j0 = blockIdx.x * TILE, jw = j0 + warp * 16;  // the block's and the warp's first key
    const T *kp = at(k, ks_, b, hk), *vp = at(v, vs_, b, hk);
    float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
    for (int nb = 0; nb < D / 8; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) dka[nb][e] = dva[nb][e] = 0.f;
    // Work items: (query head of the group, query tile at or below the diagonal). Queries i >= j
    // only, so the first query tile that sees any of these keys starts at j0.
    const int qtiles = (t - j0 + TILE - 1) / TILE, items = group * qtiles;
    auto issue = [&](int it) {
        const int h = hk * group + it / qtiles, c0 = j0 + (it % qtiles) * TILE;
        tc_load_rows_async<T, D, LD>(Qb(it & 1), at(q, qs_, b, h), qs_.t, c0, t);
        tc_load_rows_async<T, D, LD>(dOb(it & 1), at(dout, dos_, b, h), dos_.t, c0, t);
        if (threadIdx.x < TILE) {
            const size_t rows = ((size_t)b * hq + h) * t;
            const int i = c0 + threadIdx.x;
            lse_b[(it & 1) * TILE + threadIdx.x] = i < t ? lse[rows + i] : 0.f;
            delta_b[(it & 1) * TILE + threadIdx.x] = i < t ? delta[rows + i] : 0.f;
        }
    };
    tc_load_rows_async<T, D, LD>(Ks, kp, ks_.t, j0, t);
    tc_load_rows_async<T, D, LD>(Vs, vp, vs_.t, j0, t);
    issue(0);
    cp_async_commit();
    for (int it = 0; it < items; ++it) {
        const int c0 = j0 + (it % qtiles) * TILE;
        const bool more = it + 1 < items;
        if (more) {
            issue(it + 1);
            cp_async_commit();
        }
        cp_async_wait(more);
        __syncthreads();
        const T *Qs = Qb(it & 1), *dOs = dOb(it & 1);
        const float *lse_t = lse_b + (it & 1) * TILE, *delta_t = delta_b + (it & 1) * TILE;
        {
            // S^T (keys x queries) and dP^T = V dO^T, the warp's 16 keys against the 64 queries.
            float st[TILE / 8][4], dpt[TILE / 8][4];
            scores_smem<T, D, LD>(st, Ks + (warp * 16) * LD, Qs, lane);
            scores_smem<T, D, LD>(dpt, Vs + (warp * 16) * LD, dOs, lane);
#pragma unroll
            for (int jq = 0; jq < TILE / 8; ++jq)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int j = jw + g + 8 * (e >> 1), col = jq * 8 + 2 * c + (e & 1), i = c0 + col;
                    float p = 0.f, ds = 0.f;
                    if (i >= j && i < t && j < t) {
                        p = expf(st[jq][e] * scale - lse_t[col]);
                        ds = p * (dpt[jq][e] - delta_t[col]);
                    }
                    st[jq][e] = p;
                    dpt[jq][e] = ds;
                }
            pv_acc<T, D, LD>(dva, st, dOs, lane);  // dV += P^T dO
            pv_acc<T, D, LD>(dka, dpt, Qs, lane);  // dK += dS^T Q
        }
        __syncthreads();  // this buffer is refilled by the next iteration's copy
    }
    store_rows<T, D>(at(dk, dks_, b, hk), dks_.t, jw, t, dka, scale, lane);
    store_rows<T, D>(at(dv, dvs_, b, hk), dvs_.t, jw, t, dva, 1.f, lane);
}

#define ATTN_TC(TN, T, D)                                                                                  \
    extern "C" __global__ void __launch_bounds__(TC_WARPS * 32) attn_fwd_tc_##TN##_d##D(                   \
        const T *q, const T *k, const T *v, T *o, float *lse, int hq, int hkv, int t, Strides qs,        \
        Strides ks, Strides vs, Strides os, float scale) {                                           \
        attn_fwd_tc_impl<T, D>(q, k, v, o, lse, hq, hkv, t, qs, ks, vs, os, scale);                        \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(TC_WARPS * 32) attn_bwd_dq_tc_##TN##_d##D(                \
        const T *q, const T *k, const T *v, const T *dout, const float *lse, const float *delta, T *dq,    \
        int hq, int hkv, int t, Strides qs, Strides ks, Strides vs, Strides dos, Strides dqs,    \
        float scale) {                                                                                     \
        attn_bwd_dq_tc_impl<T, D>(q, k, v, dout, lse, delta, dq, hq, hkv, t, qs, ks, vs, dos, dqs, scale); \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(TC_WARPS * 32) attn_bwd_dkv_tc_##TN##_d##D(               \
        const T *q, const T *k, const T *v, const T *dout, const float *lse, const float *delta, T *dk,    \
        T *dv, int hq, int hkv, int t, Strides qs, Strides ks, Strides vs, Strides dos,            \
        Strides dks, Strides dvs, float scale) {                                                       \
        attn_bwd_dkv_tc_impl<T, D>(q, k, v, dout, lse, delta, dk, dv, hq, hkv, t, qs, ks, vs, dos, dks,    \
                                   dvs, scale);                                                            \
    }

#define ATTN_DELTA(TN, T)                                                                                  \
    extern "C" __global__ void __launch_bounds__(256) attn_delta_##TN(const T *o, const T *dout,           \
                                                                     float *delta, int hq, int t, int d,   \
                                                                     Strides os, Strides dos) {         \
        attn_delta_impl<T>(o, dout, delta, hq, t, d, os, dos);                                             \
    }

ATTN_TC(bf16, __nv_bfloat16, 64)
ATTN_TC(bf16, __nv_bfloat16, 128)
ATTN_TC(f16, __half, 64)
ATTN_TC(f16, __half, 128)
ATTN_DELTA(bf16, __nv_bfloat16)
ATTN_DELTA(f16, __half)

#endif
