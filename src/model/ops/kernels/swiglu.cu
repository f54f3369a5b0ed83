// SwiGLU: y = silu(g) * u with silu(g) = g * sigmoid(g), and its backward
//
//   s = sigmoid(g),  du = dy * g * s,  dg = dy * u * s * (1 + g * (1 - s))
//
// Elementwise, one thread per element; the backward recomputes s instead of saving it.
#include "common.cuh"

__device__ __forceinline__ float sigmoid(float g) { return 1.f / (expf(-g) + 1.f); }

template <typename T>
__device__ __forceinline__ void swiglu_fwd_impl(const T *__restrict__ g, const T *__restrict__ u,
                                                T *__restrict__ y, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float gv = to_f(g[i]);
    y[i] = from_f<T>(gv * sigmoid(gv) * to_f(u[i]));
}

template <typename T>
__device__ __forceinline__ void swiglu_bwd_impl(const T *__restrict__ dy, const T *__restrict__ g,
                                                const T *__restrict__ u, T *__restrict__ dg,
                                                T *__restrict__ du, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float d = to_f(dy[i]), gv = to_f(g[i]), uv = to_f(u[i]);
    const float s = sigmoid(gv);
    du[i] = from_f<T>(d * (gv * s));
    dg[i] = from_f<T>(d * uv * (s * (gv * (1.f - s) + 1.f)));
}

// Eight elements per thread (n a multiple of 8, 16-byte aligned buffers: the launcher checks).
template <typename T>
__device__ __forceinline__ void swiglu_fwd8_impl(const T *__restrict__ g, const T *__restrict__ u,
                                                 T *__restrict__ y, size_t n) {
    const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    float gv[8], uv[8];
    load8(g + i, gv);
    load8(u + i, uv);
#pragma unroll
    for (int k = 0; k < 8; ++k) gv[k] = gv[k] * sigmoid(gv[k]) * uv[k];
    store8(y + i, gv);
}

template <typename T>
__device__ __forceinline__ void swiglu_bwd8_impl(const T *__restrict__ dy, const T *__restrict__ g,
                                                 const T *__restrict__ u, T *__restrict__ dg,
                                                 T *__restrict__ du, size_t n) {
    const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    float d[8], gv[8], uv[8], a[8], b[8];
    load8(dy + i, d);
    load8(g + i, gv);
    load8(u + i, uv);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const float s = sigmoid(gv[k]);
        a[k] = d[k] * (gv[k] * s);
        b[k] = d[k] * uv[k] * (s * (gv[k] * (1.f - s) + 1.f));
    }
    store8(du + i, a);
    store8(dg + i, b);
}

#define SWIGLU(TN, T)                                                                                 \
    extern "C" __global__ void swiglu_fwd_##TN(const T *g, const T *u, T *y, size_t n) {              \
        swiglu_fwd_impl<T>(g, u, y, n);                                                               \
    }                                                                                                 \
    extern "C" __global__ void swiglu_bwd_##TN(const T *dy, const T *g, const T *u, T *dg, T *du,     \
                                               size_t n) {                                            \
        swiglu_bwd_impl<T>(dy, g, u, dg, du, n);                                                      \
    }                                                                                                 \
    extern "C" __global__ void swiglu_fwd8_##TN(const T *g, const T *u, T *y, size_t n) {             \
        swiglu_fwd8_impl<T>(g, u, y, n);                                                              \
    }                                                                                                 \
    extern "C" __global__ void swiglu_bwd8_##TN(const T *dy, const T *g, const T *u, T *dg, T *du,    \
                                                size_t n) {                                           \
        swiglu_bwd8_impl<T>(dy, g, u, dg, du, n);                                                     \
    }

PIPE_DTYPES(SWIGLU)
