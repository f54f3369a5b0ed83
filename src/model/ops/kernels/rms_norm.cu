// RMS norm forward and backward, one warp per row (rows are short: H = 576 to 8192).
//
//   forward:  rstd = 1 / sqrt(mean(x^2) + eps),  y = (x * rstd) * w
//   backward: n = x * rstd, dn = dy * w,  dx = rstd * (dn - n * mean(dn * n))   (w is frozen)
//
// The row is read twice (reduction, then the elementwise pass); the second read hits L1/L2.
// Rows whose length is a multiple of 8 with 16-byte aligned buffers are read and written eight
// values at a time (same arithmetic per element; only the reduction's summation order differs).
#include "common.cuh"

template <typename T, typename W>
__device__ __forceinline__ void rms_norm_fwd_impl(const T *__restrict__ x, const W *__restrict__ w,
                                                  T *__restrict__ y, float *__restrict__ rstd,
                                                  int rows, int h, float eps) {
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const T *xr = x + (size_t)row * h;
    T *yr = y + (size_t)row * h;
    const bool vec = (h & 7) == 0 && aligned16(xr) && aligned16(yr) && aligned16(w);
    float ss = 0.f;
    if (vec) {
        for (int i = lane * 8; i < h; i += 256) {
            float v[8];
            load8(xr + i, v);
#pragma unroll
            for (int k = 0; k < 8; ++k) ss += v[k] * v[k];
        }
    } else {
        for (int i = lane; i < h; i += 32) {
            const float v = to_f(xr[i]);
            ss += v * v;
        }
    }
    ss = warp_sum(ss);
    const float r = 1.f / sqrtf(ss / (float)h + eps);
    if (lane == 0) rstd[row] = r;
    if (vec) {
        for (int i = lane * 8; i < h; i += 256) {
            float v[8], wv[8];
            load8(xr + i, v);
            load8(w + i, wv);
#pragma unroll
            for (int k = 0; k < 8; ++k) v[k] = v[k] * r * wv[k];
            store8(yr + i, v);
        }
    } else {
        for (int i = lane; i < h; i += 32) yr[i] = from_f<T>(to_f(xr[i]) * r * to_f(w[i]));
    }
}

template <typename T, typename W>
__device__ __forceinline__ void rms_norm_bwd_impl(const T *__restrict__ dy, const T *__restrict__ x,
                                                  const W *__restrict__ w, const float *__restrict__ rstd,
                                                  T *__restrict__ dx, int rows, int h) {
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const size_t off = (size_t)row * h;
    const float r = rstd[row];
    const bool vec = (h & 7) == 0 && aligned16(dy + off) && aligned16(x + off) && aligned16(dx + off) && aligned16(w);
    float dot = 0.f;
    if (vec) {
        for (int i = lane * 8; i < h; i += 256) {
            float g[8], wv[8], xv[8];
            load8(dy + off + i, g);
            load8(w + i, wv);
            load8(x + off + i, xv);
#pragma unroll
            for (int k = 0; k < 8; ++k) dot += g[k] * wv[k] * (xv[k] * r);
        }
    } else {
        for (int i = lane; i < h; i += 32) dot += to_f(dy[off + i]) * to_f(w[i]) * (to_f(x[off + i]) * r);
    }
    dot = warp_sum(dot) / (float)h;
    if (vec) {
        for (int i = lane * 8; i < h; i += 256) {
            float g[8], wv[8], xv[8];
            load8(dy + off + i, g);
            load8(w + i, wv);
            load8(x + off + i, xv);
#pragma unroll
            for (int k = 0; k < 8; ++k) g[k] = (g[k] * wv[k] - (xv[k] * r) * dot) * r;
            store8(dx + off + i, g);
        }
    } else {
        for (int i = lane; i < h; i += 32) {
            const float dn = to_f(dy[off + i]) * to_f(w[i]);
            const float n = to_f(x[off + i]) * r;
            dx[off + i] = from_f<T>((dn - n * dot) * r);
        }
    }
}

#define RMS_NORM(TN, T, WN, W)                                                                        \
    extern "C" __global__ void rms_norm_fwd_##TN##_##WN(const T *x, const W *w, T *y, float *rstd,     \
                                                       int rows, int h, float eps) {                \
        rms_norm_fwd_impl<T, W>(x, w, y, rstd, rows, h, eps);                                        \
    }                                                                                                \
    extern "C" __global__ void rms_norm_bwd_##TN##_##WN(const T *dy, const T *x, const W *w,           \
                                                       const float *rstd, T *dx, int rows, int h) {  \
        rms_norm_bwd_impl<T, W>(dy, x, w, rstd, dx, rows, h);                                        \
    }

RMS_NORM(f32, float, f32, float)
RMS_NORM(bf16, __nv_bfloat16, bf16, __nv_bfloat16)
RMS_NORM(bf16, __nv_bfloat16, f32, float)
RMS_NORM(f16, __half, f16, __half)
RMS_NORM(f16, __half, f32, float)
