// LoRA dropout: y = x * mask with the mask a pure function of (seed, element index), bit-identical
// to the CPU's `dropout_mask` in llama.rs, so neither pass stores or uploads a mask and the
// backward applies the same mask by calling the same kernel on the gradient.
//
//   g = first + e (the element's index in the whole micro-batch: a data-parallel shard starts
//   `first` elements in),  r = splitmix(seed ^ splitmix(g / 2)),  bits = g even ? low32(r) : high32(r),
//   mask = bits >= threshold ? keep : 0,  threshold = (u32)(p * u32::MAX),  keep = 1 / (1 - p)
//
// One thread per element (an odd `first` splits hash pairs across threads).
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void dropout_impl(const T *__restrict__ x, T *__restrict__ y, size_t n,
                                             uint64_t first, uint64_t seed, unsigned int threshold,
                                             float keep) {
    const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    const uint64_t g = first + (uint64_t)e;
    const uint64_t r = splitmix(seed ^ splitmix(g >> 1));
    const unsigned int bits = (g & 1) ? (unsigned int)(r >> 32) : (unsigned int)r;
    y[e] = from_f<T>(to_f(x[e]) * (bits >= threshold ? keep : 0.f));
}

#define DROPOUT(TN, T)                                                                                \
    extern "C" __global__ void dropout_##TN(const T *x, T *y, size_t n, uint64_t first,               \
                                            uint64_t seed, unsigned int threshold, float keep) {      \
        dropout_impl<T>(x, y, n, first, seed, threshold, keep);                                       \
    }

PIPE_DTYPES(DROPOUT)
