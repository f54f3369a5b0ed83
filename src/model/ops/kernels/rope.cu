// Rotary position embedding, rotate-half (Hugging Face / candle `rope`) convention, one thread per
// rotated pair (i, i + D/2):
//
//   forward:  y1 = x1 * cos - x2 * sin,   y2 = x2 * cos + x1 * sin
//   backward: the transpose, i.e. the same with sin negated (`sign` = -1).
//
// The input is read through strides (any [B, heads, T, D] view with a unit last stride, such as
// the transpose of a projection's [B, T, heads, D] output) and the output is written through
// strides too, so the layout change around RoPE costs nothing extra. cos/sin are f32 [>= T, D/2].
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void rope_impl(const T *__restrict__ x, const float *__restrict__ cos,
                                          const float *__restrict__ sin, T *__restrict__ y, int heads,
                                          int t, int d, long long xsb, long long xsh, long long xst,
                                          long long ysb, long long ysh, long long yst, size_t total,
                                          float sign) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const int half = d >> 1;
    const int i = (int)(idx % half);
    size_t rest = idx / half;
    const int ti = (int)(rest % t);
    rest /= t;
    const int hi = (int)(rest % heads);
    const size_t bi = rest / heads;
    const T *xr = x + bi * xsb + hi * xsh + ti * xst;
    T *yr = y + bi * ysb + hi * ysh + ti * yst;
    const float c = cos[(size_t)ti * half + i];
    const float s = sign * sin[(size_t)ti * half + i];
    const float x1 = to_f(xr[i]), x2 = to_f(xr[i + half]);
    yr[i] = from_f<T>(x1 * c - x2 * s);
    yr[i + half] = from_f<T>(x2 * c + x1 * s);
}

#define ROPE(TN, T)                                                                                   \
    extern "C" __global__ void rope_##TN(const T *x, const float *cos, const float *sin, T *y,        \
                                         int heads, int t, int d, long long xsb, long long xsh,       \
                                         long long xst, long long ysb, long long ysh, long long yst,  \
                                         size_t total, float sign) {                                  \
        rope_impl<T>(x, cos, sin, y, heads, t, d, xsb, xsh, xst, ysb, ysh, yst, total, sign);         \
    }

PIPE_DTYPES(ROPE)
