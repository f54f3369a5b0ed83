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

#define SWIGLU(TN, T)                                                                                 \
    extern "C" __global__ void swiglu_fwd_##TN(const T *g, const T *u, T *y, size_t n) {              \
        swiglu_fwd_impl<T>(g, u, y, n);                                                               \
    }                                                                                                 \
    extern "C" __global__ void swiglu_bwd_##TN(const T *dy, const T *g, const T *u, T *dg, T *du,     \
                                               size_t n) {                                            \
        swiglu_bwd_impl<T>(dy, g, u, dg, du, n);                                                      \
    }

PIPE_DTYPES(SWIGLU)
