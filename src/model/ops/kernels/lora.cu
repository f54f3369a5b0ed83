// LoRA's memory-bound passes, fused: each reads an [N, in] or [N, out] activation once, with the
// dropout mask hashed on the fly (the same mask as dropout.cu), and keeps the small factors
// (A [r, in], sB = scaling * B [out, r]) in registers.
//
//   forward   z = drop(x) A^T                         lora_down (partials) + lora_reduce -> z [N, r]
//             y' = y + z sB^T                         lora_up_add
//   backward  dz = dy sB,  dB = s dy^T z              lora_bwd_dy (partials) + lora_reduce
//             dA = dz^T drop(x),  dx' = dx + drop(dz A)   lora_bwd_x (partials) + lora_reduce
//
// Layout of the work: a warp owns a tile of 32 * C adjacent columns (C per lane, loaded as one
// 16-byte vector where the shape and alignment allow) and LORA_ROWS consecutive rows; a block is
// LORA_WARPS such warps stacked along the rows (one column tile, LORA_BLOCK_ROWS rows). Grid:
// (ceil(K / (32 C)), ceil(N / LORA_BLOCK_ROWS)). A lane keeps its columns' slice of the factor
// (C x R floats) in registers for all its rows.
//
// Reductions are deterministic (fixed order, no atomics):
// - over columns (z, dz: a sum over K per row): each lane's partial is summed across the warp
//   (`lora_warp_spread`), and each column tile writes its own partial [tiles, N, R] (f32);
// - over rows (dA, dB): each lane accumulates its rows in registers, the block's warps are summed
//   in a fixed tree through shared memory, and each row block writes a partial [blocks, K, R];
// then `lora_reduce` sums the partials in order, one thread per output element, and writes the
// result where it belongs (rounded to the compute dtype, or f32 into the gradient buffer).
//
// Ranks: kernels are compiled for R = 8, 16, 32, 64 and take any runtime r <= R (factor entries
// and partial components at j >= r are zero / never read). Numerics follow the CPU composition
// (generic.rs): the dropped-out input is rounded to the compute dtype before the matmul (as
// `lora_dropout` rounds its output), z and dz are rounded once, every sum runs in f32.
#include "common.cuh"

#ifndef LORA_WARPS
#define LORA_WARPS 8
#endif
#ifndef LORA_ROWS
#define LORA_ROWS 16
#endif
#define LORA_BLOCK_ROWS (LORA_WARPS * LORA_ROWS)
// Rows loaded ahead of their arithmetic (memory-level parallelism).
#ifndef LORA_UNROLL
#define LORA_UNROLL 4
#endif
// lora_bwd_x loads two activations per row; fewer rows ahead keep it within 128 registers.
#ifndef LORA_UNROLL_X
#define LORA_UNROLL_X 2
#endif

template <int B> struct lora_vec_t;
template <> struct lora_vec_t<2> { typedef unsigned short t; };
template <> struct lora_vec_t<4> { typedef unsigned int t; };
template <> struct lora_vec_t<8> { typedef uint2 t; };
template <> struct lora_vec_t<16> { typedef uint4 t; };

// Bytes of one vector access for C elements of T (at most 16).
template <typename T, int C> __device__ __forceinline__ constexpr int lora_vb() {
    return C * (int)sizeof(T) < 16 ? C * (int)sizeof(T) : 16;
}

__device__ __forceinline__ bool lora_aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

// Whether rows of `k` elements starting at 16-byte aligned bases can be read C at a time with
// vector loads (each lane's first column is a multiple of C).
template <typename T, int C> __device__ __forceinline__ bool lora_vec_ok(int k) {
    return ((size_t)k * sizeof(T)) % lora_vb<T, C>() == 0;
}

// out[c] = p[c] for c < valid (0 beyond); one or more vector loads when `whole`: all C elements
// exist (valid == C) and the span is aligned for vector access. Callers compute `whole` from the
// unclamped distance to the row's end (LoraTile::full), never as `valid == C` with `valid` a
// clamp: ptxas (CUDA 13.0, sm_90) fuses `max(min(left, C), 0) == C` into the predicate output of
// one VIMNMX.RELU instruction that is also true at left == 0, so the lane just past the row's end
// took the vector path and wrote C values over the first columns of the next row (see
// BENCHMARKS.md, "the LoRA kernels' partial tiles").
template <typename T, int C>
__device__ __forceinline__ void lora_load(const T *p, int valid, bool whole, float (&out)[C]) {
    if (whole) {
        constexpr int VB = lora_vb<T, C>();
        constexpr int NV = C * (int)sizeof(T) / VB;
        typedef typename lora_vec_t<VB>::t V;
        V raw[NV];
#pragma unroll
        for (int i = 0; i < NV; ++i) raw[i] = reinterpret_cast<const V *>(p)[i];
        T t[C];
        memcpy(t, raw, sizeof(t));
#pragma unroll
        for (int c = 0; c < C; ++c) out[c] = to_f(t[c]);
    } else {
#pragma unroll
        for (int c = 0; c < C; ++c) out[c] = c < valid ? to_f(p[c]) : 0.f;
    }
}

// p[c] = round(v[c]) for c < valid; vector stores when `whole` (as lora_load).
template <typename T, int C>
__device__ __forceinline__ void lora_store(T *p, int valid, bool whole, const float (&v)[C]) {
    T t[C];
#pragma unroll
    for (int c = 0; c < C; ++c) t[c] = from_f<T>(v[c]);
    if (whole) {
        constexpr int VB = lora_vb<T, C>();
        constexpr int NV = C * (int)sizeof(T) / VB;
        typedef typename lora_vec_t<VB>::t V;
        V raw[NV];
        memcpy(raw, t, sizeof(t));
#pragma unroll
        for (int i = 0; i < NV; ++i) reinterpret_cast<V *>(p)[i] = raw[i];
    } else {
#pragma unroll
        for (int c = 0; c < C; ++c)
            if (c < valid) p[c] = t[c];
    }
}

// One row of a [N, r] matrix (z) as R floats, zero beyond r.
template <typename T, int R> __device__ __forceinline__ void lora_load_row(const T *p, int r, float (&out)[R]) {
    const bool whole = r >= R && ((uintptr_t)p % lora_vb<T, R>()) == 0;
    lora_load<T, R>(p, r < R ? r : R, whole, out);
}

// The lane's slice of sB [k, r]: rows col .. col + C (R floats each, zero beyond r and past
// `valid`), one vector load per row where r == R (a warp reads its 32 C rows contiguously).
template <typename T, int C, int R>
__device__ __forceinline__ void lora_load_sb(const T *sb, int col, int valid, int r, float (&w)[C][R]) {
#pragma unroll
    for (int c = 0; c < C; ++c) {
        if (c < valid) {
            lora_load_row<T, R>(sb + (size_t)(col + c) * r, r, w[c]);
        } else {
#pragma unroll
            for (int j = 0; j < R; ++j) w[c][j] = 0.f;
        }
    }
}

// The dropout multipliers (0 or keep) of elements g0 .. g0 + C of the mask: element g takes the
// low (even g) or high (odd g) 32 bits of splitmix(seed ^ splitmix(g / 2)), as dropout.cu.
template <int C>
__device__ __forceinline__ void lora_mask(uint64_t g0, uint64_t seed, unsigned int threshold, float keep,
                                          float (&m)[C]) {
    uint64_t r = 0;
#pragma unroll
    for (int c = 0; c < C; ++c) {
        const uint64_t g = g0 + (uint64_t)c;
        if (c == 0 || (g & 1) == 0) r = splitmix(seed ^ splitmix(g >> 1));
        const unsigned int bits = (g & 1) ? (unsigned int)(r >> 32) : (unsigned int)r;
        m[c] = bits >= threshold ? keep : 0.f;
    }
}

// One step of `lora_warp_spread`: M values held, lanes S apart exchange, then the next step.
template <int M, int S> struct LoraSpread {
    template <int R> static __device__ __forceinline__ void run(float (&v)[R], int lane, int &base) {
        if constexpr (M >= 2) {
            constexpr int HALF = M / 2;
            const bool up = (lane & S) != 0;
#pragma unroll
            for (int i = 0; i < HALF; ++i) {
                const float send = up ? v[i] : v[HALF + i];
                const float mine = up ? v[HALF + i] : v[i];
                v[i] = mine + __shfl_xor_sync(0xffffffffu, send, S);
            }
            if (up) base += HALF;
        } else {
            v[0] += __shfl_xor_sync(0xffffffffu, v[0], S);
        }
        if constexpr (S > 1) LoraSpread<(M >= 2 ? M / 2 : 1), S / 2>::run(v, lane, base);
    }
};

// Sums v component-wise over the warp's 32 lanes, spreading the components over the lanes
// (log2 steps that each halve what a lane holds: R - 1 + ... shuffles instead of 5 R). On
// return v[0 .. M) (M = max(R / 32, 1)) hold the full sums of components base .. base + M, with
// base the return value; for R < 32 each component is held by the 32 / R lanes that differ only
// in their low bits, and `lora_spread_owner` picks one of them. Fixed order: deterministic.
template <int R> __device__ __forceinline__ int lora_warp_spread(float (&v)[R]) {
    int base = 0;
    LoraSpread<R, 16>::run(v, (int)(threadIdx.x & 31), base);
    return base;
}

template <int R> __device__ __forceinline__ bool lora_spread_owner() {
    return R >= 32 || (threadIdx.x & (unsigned int)(R >= 32 ? 0 : 32 / R - 1)) == 0;
}

// Sums `acc` over the block's warps (a fixed tree through shared memory); warp 0 ends with the
// total. Every thread of the block must call it.
template <int N> __device__ __forceinline__ void lora_block_sum(float (&acc)[N]) {
    __shared__ float sh[(LORA_WARPS / 2) * N * 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int s = LORA_WARPS / 2; s >= 1; s >>= 1) {
        if (warp >= s && warp < 2 * s) {
#pragma unroll
            for (int i = 0; i < N; ++i) sh[((warp - s) * N + i) * 32 + lane] = acc[i];
        }
        __syncthreads();
        if (warp < s) {
#pragma unroll
            for (int i = 0; i < N; ++i) acc[i] += sh[(warp * N + i) * 32 + lane];
        }
        __syncthreads();
    }
}

// The lane's first column, how many of its C columns exist (`valid`), whether all of them do
// (`full`, from the unclamped distance to the row's end: see lora_load), and its warp's rows
// [row0, row1).
struct LoraTile {
    int tile, col, valid, row0, row1;
    bool full;
};

template <int C> __device__ __forceinline__ LoraTile lora_tile(int n, int k) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    LoraTile t;
    t.tile = blockIdx.x;
    t.col = (blockIdx.x * 32 + lane) * C;
    const int left = k - t.col;
    t.valid = left < 0 ? 0 : (left < C ? left : C);
    t.full = left >= C;
    t.row0 = blockIdx.y * LORA_BLOCK_ROWS + warp * LORA_ROWS;
    const int end = t.row0 + LORA_ROWS;
    t.row1 = end < n ? end : n;
    return t;
}

// ---- forward ----

// zp[tile, row, j] = sum over the tile's columns c of drop(x)[row, c] * a[j, c].
template <typename T, int R, int C>
__device__ __forceinline__ void lora_down_impl(const T *__restrict__ x, const T *__restrict__ a,
                                               float *__restrict__ zp, int n, int k, int r, int masked,
                                               uint64_t first, uint64_t seed, unsigned int threshold,
                                               float keep) {
    const LoraTile t = lora_tile<C>(n, k);
    const bool vec = lora_aligned16(x) && lora_vec_ok<T, C>(k);
    float w[R][C];
#pragma unroll
    for (int j = 0; j < R; ++j)
        lora_load<T, C>(a + (size_t)j * k + t.col, j < r ? t.valid : 0, vec && t.full && j < r && lora_aligned16(a), w[j]);
    const bool owner = lora_spread_owner<R>();
    for (int r0 = t.row0; r0 < t.row1; r0 += LORA_UNROLL) {
        float xv[LORA_UNROLL][C];
#pragma unroll
        for (int u = 0; u < LORA_UNROLL; ++u) {
            const bool in = r0 + u < t.row1;
            lora_load<T, C>(x + (size_t)(r0 + u) * k + t.col, in ? t.valid : 0, vec && t.full && in, xv[u]);
        }
#pragma unroll
        for (int u = 0; u < LORA_UNROLL; ++u) {
            const int row = r0 + u;
            if (row >= t.row1) continue;  // uniform over the warp
            if (masked) {
                float m[C];
                lora_mask<C>(first + (uint64_t)row * k + t.col, seed, threshold, keep, m);
#pragma unroll
                for (int c = 0; c < C; ++c) xv[u][c] = to_f(from_f<T>(xv[u][c] * m[c]));
            }
            float p[R];
#pragma unroll
            for (int j = 0; j < R; ++j) {
                float s = 0.f;
#pragma unroll
                for (int c = 0; c < C; ++c) s += xv[u][c] * w[j][c];
                p[j] = s;
            }
            const int base = lora_warp_spread<R>(p);
            if (owner) {
#pragma unroll
                for (int i = 0; i < (R >= 32 ? R / 32 : 1); ++i)
                    if (base + i < r) zp[((size_t)t.tile * n + row) * R + base + i] = p[i];
            }
        }
    }
}

// out = y + z sB^T.
template <typename T, int R, int C>
__device__ __forceinline__ void lora_up_add_impl(const T *__restrict__ y, const T *__restrict__ z,
                                                 const T *__restrict__ sb, T *__restrict__ out, int n,
                                                 int k, int r) {
    const LoraTile t = lora_tile<C>(n, k);
    const bool vec = lora_aligned16(y) && lora_aligned16(out) && lora_vec_ok<T, C>(k);
    float w[C][R];
    lora_load_sb<T, C, R>(sb, t.col, t.valid, r, w);
    for (int r0 = t.row0; r0 < t.row1; r0 += LORA_UNROLL) {
        float yv[LORA_UNROLL][C];
#pragma unroll
        for (int u = 0; u < LORA_UNROLL; ++u) {
            const bool in = r0 + u < t.row1;
            lora_load<T, C>(y + (size_t)(r0 + u) * k + t.col, in ? t.valid : 0, vec && t.full && in, yv[u]);
        }
#pragma unroll
        for (int u = 0; u < LORA_UNROLL; ++u) {
            const int row = r0 + u;
            if (row >= t.row1) continue;
            float zr[R];
            lora_load_row<T, R>(z + (size_t)row * r, r, zr);
            float o[C];
#pragma unroll
            for (int c = 0; c < C; ++c) {
                float s = 0.f;
#pragma unroll
                for (int j = 0; j < R; ++j) s += zr[j] * w[c][j];
                o[c] = yv[u][c] + s;
            }
            lora_store<T, C>(out + (size_t)row * k + t.col, t.valid, vec && t.full, o);
        }
    }
}

// ---- backward ----

// dzp[tile, row, j] = sum over the tile's columns o of dy[row, o] * sb[o, j];
// dbp[block row, o, j] = sum over the block's rows of dy[row, o] * z[row, j] (unscaled).
template <typename T, int R, int C>
__device__ __forceinline__ void lora_bwd_dy_impl(const T *__restrict__ dy, const T *__restrict__ z,
                                                 const T *__restrict__ sb, float *__restrict__ dzp,
                                                 float *__restrict__ dbp, int n, int k, int r) {
    const LoraTile t = lora_tile<C>(n, k);
    const bool vec = lora_aligned16(dy) && lora_vec_ok<T, C>(k);
    float w[C][R];
    float acc[C * R];
    lora_load_sb<T, C, R>(sb, t.col, t.valid, r, w);
#pragma unroll
    for (int i = 0; i < C * R; ++i) acc[i] = 0.f;
    const bool owner = lora_spread_owner<R>();
    for (int r0 = t.row0; r0 < t.row1; r0 += LORA_UNROLL) {
        float dv[LORA_UNROLL][C];
#pragma unroll
        for (int u = 0; u < LORA_UNROLL; ++u) {
            const bool in = r0 + u < t.row1;
            lora_load<T, C>(dy + (size_t)(r0 + u) * k + t.col, in ? t.valid : 0, vec && t.full && in, dv[u]);
        }
#pragma unroll
        for (int u = 0; u < LORA_UNROLL; ++u) {
            const int row = r0 + u;
            if (row >= t.row1) continue;
            float zr[R];
            lora_load_row<T, R>(z + (size_t)row * r, r, zr);
            float p[R];
#pragma unroll
            for (int j = 0; j < R; ++j) {
                float s = 0.f;
#pragma unroll
                for (int c = 0; c < C; ++c) {
                    s += dv[u][c] * w[c][j];
                    acc[c * R + j] += dv[u][c] * zr[j];
                }
                p[j] = s;
            }
            const int base = lora_warp_spread<R>(p);
            if (owner) {
#pragma unroll
                for (int i = 0; i < (R >= 32 ? R / 32 : 1); ++i)
                    if (base + i < r) dzp[((size_t)t.tile * n + row) * R + base + i] = p[i];
            }
        }
    }
    lora_block_sum<C * R>(acc);
    if ((threadIdx.x >> 5) == 0) {
#pragma unroll
        for (int c = 0; c < C; ++c)
            if (c < t.valid) {
#pragma unroll
                for (int j = 0; j < R; ++j)
                    if (j < r) dbp[((size_t)blockIdx.y * k + t.col + c) * R + j] = acc[c * R + j];
            }
    }
}

// With xd = drop(x) (rounded to T) and dz [N, R] f32 (zero beyond r):
// dx_out = dx + drop(dz A); dap[block row, c, j] = sum over the block's rows of dz[row, j] * xd[row, c].
template <typename T, int R, int C>
__device__ __forceinline__ void lora_bwd_x_impl(const T *__restrict__ x, const T *__restrict__ dx,
                                                const float *__restrict__ dz, const T *__restrict__ a,
                                                T *__restrict__ dx_out, float *__restrict__ dap, int n,
                                                int k, int r, int masked, uint64_t first, uint64_t seed,
                                                unsigned int threshold, float keep) {
    const LoraTile t = lora_tile<C>(n, k);
    const bool vec = lora_aligned16(x) && lora_aligned16(dx) && lora_aligned16(dx_out) && lora_vec_ok<T, C>(k);
    float w[R][C];
    float acc[C * R];
#pragma unroll
    for (int j = 0; j < R; ++j)
        lora_load<T, C>(a + (size_t)j * k + t.col, j < r ? t.valid : 0, vec && t.full && j < r && lora_aligned16(a), w[j]);
#pragma unroll
    for (int i = 0; i < C * R; ++i) acc[i] = 0.f;
    for (int r0 = t.row0; r0 < t.row1; r0 += LORA_UNROLL_X) {
        float xv[LORA_UNROLL_X][C], dxv[LORA_UNROLL_X][C];
#pragma unroll
        for (int u = 0; u < LORA_UNROLL_X; ++u) {
            const bool in = r0 + u < t.row1;
            const int valid = in ? t.valid : 0;
            lora_load<T, C>(x + (size_t)(r0 + u) * k + t.col, valid, vec && t.full && in, xv[u]);
            lora_load<T, C>(dx + (size_t)(r0 + u) * k + t.col, valid, vec && t.full && in, dxv[u]);
        }
#pragma unroll
        for (int u = 0; u < LORA_UNROLL_X; ++u) {
            const int row = r0 + u;
            if (row >= t.row1) continue;
            float dzr[R];
            lora_load<float, R>(dz + (size_t)row * R, R, true, dzr);
            float m[C];
            if (masked) {
                lora_mask<C>(first + (uint64_t)row * k + t.col, seed, threshold, keep, m);
#pragma unroll
                for (int c = 0; c < C; ++c) xv[u][c] = to_f(from_f<T>(xv[u][c] * m[c]));
            } else {
#pragma unroll
                for (int c = 0; c < C; ++c) m[c] = 1.f;
            }
            float o[C];
#pragma unroll
            for (int c = 0; c < C; ++c) {
                float g = 0.f;
#pragma unroll
                for (int j = 0; j < R; ++j) {
                    g += dzr[j] * w[j][c];
                    acc[c * R + j] += dzr[j] * xv[u][c];
                }
                o[c] = dxv[u][c] + m[c] * g;
            }
            lora_store<T, C>(dx_out + (size_t)row * k + t.col, t.valid, vec && t.full, o);
        }
    }
    lora_block_sum<C * R>(acc);
    if ((threadIdx.x >> 5) == 0) {
#pragma unroll
        for (int c = 0; c < C; ++c)
            if (c < t.valid) {
#pragma unroll
                for (int j = 0; j < R; ++j)
                    if (j < r) dap[((size_t)blockIdx.y * k + t.col + c) * R + j] = acc[c * R + j];
            }
    }
}

// ---- partial sums ----

// For each row < rows and j < cols: s = sum over p < parts of part[p * part_stride + row * R + j]
// (0 for j >= r), written to out[row * s_row + j * s_j] as
//   mode 0: T (z),  mode 1: f32 holding s rounded to T (dz),  mode 2: f32 s * scale (gradients).
// One thread per output element, consecutive threads along the output's unit stride.
template <typename T>
__device__ __forceinline__ void lora_reduce_impl(const float *__restrict__ part, int parts, size_t part_stride,
                                                 int rows, int cols, int r, int R, void *__restrict__ out,
                                                 long long s_row, long long s_j, float scale, int mode) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * cols) return;
    int row, j;
    if (s_row == 1) {
        j = (int)(i / rows);
        row = (int)(i % rows);
    } else {
        row = (int)(i / cols);
        j = (int)(i % cols);
    }
    float s = 0.f;
    if (j < r) {
        const float *p = part + (size_t)row * R + j;
        for (int q = 0; q < parts; ++q) s += p[(size_t)q * part_stride];
    }
    const size_t o = (size_t)row * s_row + (size_t)j * s_j;
    if (mode == 0) {
        reinterpret_cast<T *>(out)[o] = from_f<T>(s);
    } else if (mode == 1) {
        reinterpret_cast<float *>(out)[o] = to_f(from_f<T>(s));
    } else {
        reinterpret_cast<float *>(out)[o] = s * scale;
    }
}

// Columns per lane: the forward kernels hold one C x R factor block, the backward ones two.
#define LORA_C_FWD(R) ((R) >= 64 ? 1 : 64 / (R))
#define LORA_C_BWD(R) ((R) >= 32 ? 1 : 32 / (R))
// Two blocks (16 warps) per SM for the common ranks: caps registers at 128 per thread.
#ifndef LORA_MINB
#define LORA_MINB 2
#endif
#define LORA_MIN_BLOCKS(R) ((R) <= 16 ? LORA_MINB : 1)

#define LORA_RANK(TN, T, R)                                                                           \
    extern "C" __global__ void __launch_bounds__(LORA_WARPS * 32, LORA_MIN_BLOCKS(R))                \
        lora_down_##TN##_r##R(const T *x, const T *a, float *zp, int n, int k, int r, int masked,      \
                              uint64_t first, uint64_t seed, unsigned int threshold, float keep) {     \
        lora_down_impl<T, R, LORA_C_FWD(R)>(x, a, zp, n, k, r, masked, first, seed, threshold, keep); \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(LORA_WARPS * 32, LORA_MIN_BLOCKS(R))                \
        lora_up_add_##TN##_r##R(const T *y, const T *z, const T *sb, T *out, int n, int k, int r) {   \
        lora_up_add_impl<T, R, LORA_C_FWD(R)>(y, z, sb, out, n, k, r);                                \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(LORA_WARPS * 32, LORA_MIN_BLOCKS(R))                \
        lora_bwd_dy_##TN##_r##R(const T *dy, const T *z, const T *sb, float *dzp, float *dbp, int n,  \
                                int k, int r) {                                                       \
        lora_bwd_dy_impl<T, R, LORA_C_BWD(R)>(dy, z, sb, dzp, dbp, n, k, r);                          \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(LORA_WARPS * 32, LORA_MIN_BLOCKS(R))                \
        lora_bwd_x_##TN##_r##R(const T *x, const T *dx, const float *dz, const T *a, T *dx_out,       \
                               float *dap, int n, int k, int r, int masked, uint64_t first,           \
                               uint64_t seed, unsigned int threshold, float keep) {                   \
        lora_bwd_x_impl<T, R, LORA_C_BWD(R)>(x, dx, dz, a, dx_out, dap, n, k, r, masked, first, seed, \
                                             threshold, keep);                                        \
    }

#define LORA(TN, T)                                                                                   \
    LORA_RANK(TN, T, 8)                                                                               \
    LORA_RANK(TN, T, 16)                                                                              \
    LORA_RANK(TN, T, 32)                                                                              \
    LORA_RANK(TN, T, 64)                                                                              \
    extern "C" __global__ void lora_reduce_##TN(const float *part, int parts, size_t part_stride,     \
                                                int rows, int cols, int r, int R, void *out,          \
                                                long long s_row, long long s_j, float scale,          \
                                                int mode) {                                           \
        lora_reduce_impl<T>(part, parts, part_stride, rows, cols, r, R, out, s_row, s_j, scale, mode); \
    }

PIPE_DTYPES(LORA)
